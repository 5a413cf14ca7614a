"""One progress line: batches, files, bytes, rate and ETA, from the ledger.

`fleetsync run` redraws it on a terminal once a second (nothing when stderr is
not a terminal: logs stay clean); `fleetsync status` prints it once.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from fleetsync.ledger import census, db, estimate, lock, queries, sizes
from fleetsync.ledger.states import RunState

log = logging.getLogger(__name__)



def _duration(sec: float) -> str:
    sec = int(sec)
    return f"{sec // 3600}:{sec % 3600 // 60:02d}:{sec % 60:02d}"


def _heard(ts: float | None, now: float) -> str:
    """When the controller was last heard from: HH:MM:SS today, with the date before."""
    if ts is None:
        return "never"
    shown = queries.local_time(ts)
    return shown[11:] if shown[:10] == queries.local_time(now)[:10] else shown


def line(conn, held: bool | None = None, now: float | None = None) -> str:
    """batches done/total (failed), files, bytes (with what is in flight); while a run
    goes on, the rate now and the ETA; else that no run goes on, and why.
    held: the ledger's lock (lock.held), True from the run itself. Every number comes
    from ledger/estimate.py, as the dashboard's and /run's do."""
    now = time.time() if now is None else now
    est = estimate.estimate(conn, now=now, held=held)
    tp = queries.throughput(conn, now)
    flight = f" (+{sizes.show(est['bytes_in_flight'])} in flight)" if est["bytes_in_flight"] else ""
    head = (f"batches {est['batches_done']}/{est['batches_total']} "
            f"({est['batches_failed']} failed)  files {tp['files_processed']:,}  "
            f"{sizes.show(est['bytes_done'])}{flight}/{sizes.show(est['bytes_total'])}  "
            f"{est['percent']:.1f} %")
    state = RunState(est["state"])
    # Not running: no rate or ETA (nothing moves, and an average would read as a speed).
    ran = f"after {_duration(tp['elapsed_sec'])}"
    heard = _heard(est["last_heard_ts"], now)
    if state is RunState.FINISHED:
        return f"{head}  finished {ran}"
    if state is RunState.STOPPED:
        return f"{head}  not running (stopped, last heard {heard}) {ran}"
    if state is RunState.CRASHED:
        return (f"{head}  not running (crashed, last heard {heard}; "
                f"`fleetsync run` resumes)")
    if state is RunState.WAITING:
        n = est["batches_waiting"]
        return (f"{head}  not running ({n} batch{'' if n == 1 else 'es'} waiting; "
                f"`fleetsync run` copies {'it' if n == 1 else 'them'})")
    rate = "?" if est["bytes_per_sec"] is None else sizes.show(est["bytes_per_sec"])
    eta = est["eta_sec"]
    # Under a second left by the estimate: the last results (or the directory pass) land.
    left = "?" if eta is None else "finishing" if eta < 1 else _duration(eta)
    return f"{head}  {rate}/s  ETA {left}"


def scan_line(conn, now: float | None = None) -> str:
    """`fleetsync scan`'s line: what its walk enqueued so far, and how fast."""
    now = time.time() if now is None else now
    w = census.walked(conn)
    rate = w["entries"] / (now - w["started"]) if w["started"] and now > w["started"] else 0
    return (f"scan: {w['entries']:,} entries  {w['dirs']:,} directories listed  "
            f"{sizes.show(w['bytes'])}  {rate:,.0f} entries/s")


@dataclass
class Reading:
    """`fleetsync status`'s view of a ledger: one read transaction, and whether a run
    holds the ledger's lock."""
    conn: object
    held: bool | None

    def line(self) -> str:
        return line(self.conn, held=self.held)

    def summary(self) -> dict:
        """The API's /status, /progress and /throughput, and its /run beside them."""
        return {**queries.summary(self.conn),
                "run": estimate.estimate(self.conn, held=self.held)}


@contextlib.contextmanager
def reading(ledger_path: str) -> Iterator[Reading]:
    """A Reading of the ledger; the lock is asked first, so a run that died is known
    at once, not once its heartbeat is old."""
    held = lock.held(ledger_path)
    with db.connect(ledger_path, readonly=True) as conn, conn.begin():
        yield Reading(conn, held)


class Live:
    """Redraws the line on stderr every second while a run goes on (terminals only).
    draw: the line, from a read connection (default: the run's, with its lock held)."""

    def __init__(self, ledger_path: str, stream=sys.stderr, draw=None):
        self.ledger_path, self.stream = ledger_path, stream
        self.draw = draw or (lambda conn: line(conn, held=True))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def start(self) -> "Live":
        if self.stream.isatty():
            self._thread.start()
        return self

    def _loop(self) -> None:
        engine = db.reader(self.ledger_path)   # one engine for the whole run
        while not self._stop.wait(1.0):
            try:
                with engine.connect() as conn, conn.begin():
                    text = self.draw(conn)
                self.stream.write("\r\033[K" + text)
                self.stream.flush()
            except Exception as e:   # a busy or vanished ledger: skip one redraw
                log.debug("progress line not drawn: %s", e)
        engine.dispose()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self.stream.write("\r\033[K")
            self.stream.flush()
