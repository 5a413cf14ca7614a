"""A run's window: --stop-at, --max-duration, --max-transfer and --cutoff.

When the window closes no new batch is claimed: the lookups that claim work stop
by themselves at its end in time (slot.window_closed, given the end as
fleetsync_window_stop_at), and the Watch, a thread of `fleetsync run`, stops the
dispatcher, as a first Ctrl-C does, when the end or the volume is reached. With
--cutoff soft the batches running finish; with --cutoff hard they go back to the
queue at once (an attempt of their own, status stopped, no retry used) and this
run's rsyncs are ended as a second Ctrl-C ends them (hostrun.stop_now: SIGTERM,
so each rsync removes its temporary file from DEST; a remote host's item ends
them when it finds its output gone, at its next beat). The run then exits
WINDOW_EXIT; the next run resumes. The directory pass, --delete and --verify run
only in a run that finishes its copy. A window is one run's: it is not stored.

Times are the windows' clock (ledger/clock.py); --stop-at is the next such local time.
"""
from __future__ import annotations

import datetime as dt
import enum
import re
import sys
import threading
from dataclasses import dataclass

from fleetsync.ledger import batches, clock, db, queries, runs, sizes
from fleetsync.ledger.states import BatchState

from .errors import UsageError
from .hostrun import stop_now

WINDOW_EXIT = 3       # "stopped by its window; run again to resume"
CHECK_EVERY = 0.2     # seconds between the Watch's looks (the dispatcher's own pace)
# rsync's own limits end a batch with exit 30 and retries: fleetsync's options stop a run.
RSYNC_OWN = ("--stop-at", "--stop-after", "--time-limit")
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


class Cutoff(str, enum.Enum):
    SOFT = "soft"     # the batches running finish
    HARD = "hard"     # they stop at once, back to the queue


@dataclass
class Window:
    stop_at: float | None = None       # no claim from then on (windows' clock)
    max_transfer: int | None = None    # bytes rsync sent in this run
    cutoff: Cutoff = Cutoff.SOFT
    said: str = ""                     # the options, as the summary names them

    @property
    def open_ended(self) -> bool:
        return self.stop_at is None and self.max_transfer is None


def duration(text: str) -> float:
    """--max-duration: 6h, 90m, 30s, 1h30m, or seconds; above 0."""
    m = _DURATION.fullmatch(str(text).strip().lower())
    if not m or not any(m.groups()):
        raise UsageError(f"--max-duration {text}: write a duration such as 6h, 90m, 30s "
                         "or 1h30m")
    h, mins, secs = (float(g or 0) for g in m.groups())
    seconds = h * 3600 + mins * 60 + secs
    if seconds <= 0:
        raise UsageError(f"--max-duration {text}: must be more than 0")
    return seconds


def next_time(text: str, now: float) -> float:
    """--stop-at HH:MM: the next such local time after now."""
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", str(text).strip())
    if not m or int(m[1]) > 23 or int(m[2]) > 59:
        raise UsageError(f"--stop-at {text}: write a local time HH:MM, from 00:00 to 23:59")
    local = dt.datetime.fromtimestamp(now)
    at = local.replace(hour=int(m[1]), minute=int(m[2]), second=0, microsecond=0)
    if at <= local:
        at += dt.timedelta(days=1)
    return at.timestamp()


def from_args(args, now: float | None = None) -> Window:
    """The run's window from its options (bad input: one line, UsageError)."""
    now = clock.now() if now is None else now
    ends, said = [], []
    if args.stop_at is not None:
        ends.append(next_time(args.stop_at, now))
        said.append(f"--stop-at {args.stop_at}")
    if args.max_duration is not None:
        ends.append(now + duration(args.max_duration))
        said.append(f"--max-duration {args.max_duration}")
    volume = None
    if args.max_transfer is not None:
        try:
            volume = sizes.parse(args.max_transfer)
        except sizes.SizeError as e:
            raise UsageError(f"--max-transfer {args.max_transfer}: {e}") from None
        said.append(f"--max-transfer {args.max_transfer}")
    return Window(min(ends) if ends else None, volume, Cutoff(args.cutoff), ", ".join(said))


def rsync_option_warnings(options: list[str]) -> list[str]:
    """A line for each of rsync's own time limits given through --rsync-option."""
    return [f"fleetsync: warning: --rsync-option={o}: rsync ends its batches with exit 30 "
            "and fleetsync retries them; use fleetsync's --stop-at, --max-duration or "
            "--max-transfer (with --cutoff) to stop a run"
            for o in options if o.split("=", 1)[0] in RSYNC_OWN]


class Watch(threading.Thread):
    """Closes the run's window: stops the dispatcher that runs then (stopped.dispatcher),
    and with --cutoff hard, what it runs. stopped: commands.Stopped, set as a first
    signal sets it, so that nothing else (directory pass, --delete, --verify) starts."""

    def __init__(self, window: Window, ledger_path: str, migration_id: str, run_token: str,
                 stopped):
        super().__init__(name="window", daemon=True)
        self.window, self.ledger_path, self.stopped = window, ledger_path, stopped
        self.migration_id, self.run_token = migration_id, run_token
        self.closed: str | None = None          # why it closed
        self._end = threading.Event()

    def start(self) -> "Watch":
        if not self.window.open_ended:
            self._engine = db.writer(self.ledger_path)
            with self._engine.connect() as conn:
                self._after = runs.last_attempt(conn)
            self._sent = 0
            super().start()
        return self

    def run(self) -> None:
        with self._engine.connect() as conn:
            while not self._end.wait(CHECK_EVERY):
                why = self._reached(conn)
                if why:
                    self._close(conn, why)
                    return

    def _reached(self, conn) -> str | None:
        w = self.window
        if w.stop_at is not None and clock.now() >= w.stop_at:
            return f"its end, {queries.local_time(w.stop_at)}"
        if w.max_transfer is not None:
            sent, self._after = runs.sent_after(conn, self._after)
            self._sent += sent
            if self._sent >= w.max_transfer:
                return f"{sizes.show(self._sent)} sent"
        return None

    def _close(self, conn, why: str) -> None:
        self.closed = why
        hard = self.window.cutoff is Cutoff.HARD
        print(f"fleetsync: the run's window closed ({self.window.said}: {why}): no new "
              "batch; " + ("stopping the batches running (--cutoff hard)" if hard
                           else "the batches running finish (--cutoff soft)"),
              file=sys.stderr, flush=True)
        self.stopped.set()
        if self.stopped.dispatcher is not None:
            self.stopped.dispatcher.stop()
        if hard:
            why = "stopped by its run's window (--cutoff hard)"
            batches.stop_all(conn, why)
            stop_now(self.migration_id, self.run_token)
            batches.stop_all(conn, why)     # a claim made while they were stopped

    def stop(self) -> None:
        """The run is over: stop watching (an open-ended window never watched)."""
        self._end.set()
        if self.is_alive():
            self.join()
        if not self.window.open_ended:
            self._engine.dispose()


def summary(ledger_path: str, watch: Watch) -> str:
    """What the window left, for the run's last lines."""
    with db.connect(ledger_path, readonly=True) as conn, conn.begin():
        counts = queries.batch_counts(conn)
    left = [counts[s.value] for s in (BatchState.PENDING, BatchState.RUNNING)]
    n, size = sum(c["batches"] for c in left), sum(c["bytes"] for c in left)
    return (f"fleetsync: stopped by its window ({watch.window.said}: {watch.closed}); "
            f"{n} batches ({sizes.show(size)}) left, and the "
            "directory pass; run again to resume")
