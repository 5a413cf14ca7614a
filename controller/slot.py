"""What a worker host runs next: called by the `fleetsync_claim` lookup plugin.

Each host is one Ansible loop (one fork of the fleet's ansible-playbook run)
whose items are templated one at a time, on the controller, just before they
run. Templating an item calls this module, which claims waiting batches in the
ledger and returns one command that runs them on the host, its slots side by
side (rsync.item_command). How many: what the host finishes in about
ITEM_SECONDS at the pace of its previous items, at least one per slot, never
more than its share of what waits. So batch results reach the ledger at most a
few seconds after their rsync ends, a fast host takes more, and Ansible's cost
per item (~20-50 ms of controller CPU) is shared by all the item's batches.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

from fleetsync.ledger import (bandwidth, batches, clock, custody, db, dirpass, filter_rules,
                              migration, timetable, verify, workers)
from fleetsync.ledger.states import DeleteMode, OutcomeKind, VerifyState

from . import processes, rsync
from .hostrun import worker_file
from .protocol import IDLE, STOP   # what a slot answers when it has no batch to run

# Seconds a slot waits for work before it reports idle (one raw item). An idle item
# costs the controller ~40 ms of CPU (Ansible's item, an ssh client, its events and
# ansible-playbook's hand-over); every 5 s, with a counters read every POLL, an idle
# host cost ~11 ms of CPU a second, 4x a paced host (bench/fleet_cost.py). The wait
# sees work, a stop, a lost controller or the host leaving within POLL (it reads the
# counters again only when the ledger changed: db.data_version); the worker's reads
# of /proc keep the host heard; only a dead idle host is noticed later, by this item.
IDLE_WAIT = 30.0
POLL = 0.1          # a waiting slot looks at the counters this often (a read, no lock)
# An item carries about this many seconds of the host's work: its results wait in
# the item until it ends, so this bounds how late they reach the ledger; a host
# leaving the inventory starts its last claimed batches within it.
ITEM_SECONDS = 1.5
MAX_ITEM_BATCHES = 64          # batches in one item at most
# The jobs' branches of one item's command (rsync.job_bytes: lists and rsync commands);
# with the item's own shell (~2 KB) it stays under Linux's 128 KiB for one argument.
ITEM_COMMAND_BYTES = 96 * 1024

_engines: dict[tuple[str, bool], object] = {}


def _conn(ledger_path: str, readonly: bool = False):
    # One engine of each kind per process: the lookup runs in an Ansible worker
    # process that lives for the whole loop.
    key = (ledger_path, readonly)
    if key not in _engines:
        _engines[key] = (db.reader if readonly else db.writer)(ledger_path)
    return _engines[key].connect()


def bwlimit_options(conn, fleet_bwlimit: int | None) -> list[str]:
    """This rsync's share of the fleet's cap (the cap in force when it is claimed,
    bandwidth.cap_at: a change, by `fleetsync bwlimit` or by the timetable, applies
    to the batches claimed after it)."""
    if not fleet_bwlimit:
        return []
    share = fleet_bwlimit // max(1, workers.total_slots(conn))
    return [f"--bwlimit={max(1, share // 1024)}"]     # rsync counts KiB/s


_noted: set[str] = set()


def _note_worker(stop_file: str) -> None:
    """Say which process runs this host's items: this one (the lookup runs in the
    Ansible worker that then runs the item and reads its output). The dispatcher
    hears the host's beats by what that process reads (hostrun.HostRun.heard).
    Written once per worker, atomically, before its first item runs."""
    if stop_file in _noted:
        return
    path = worker_file(stop_file)
    pid = os.getpid()
    with open(path + ".tmp", "w") as f:
        f.write(f"{pid}:{processes.start_time(pid)}")
    os.replace(path + ".tmp", path)
    _noted.add(stop_file)


_dirty: dict[str, set[bytes]] = {}


def _dirs_command(conn, mig, run_token: str, rsync_options: list[str],
                  delete: DeleteMode) -> str:
    """The next part of the directory pass, or STOP when it is all handed out."""
    part = dirpass.next_part(conn, DeleteMode(delete) is not DeleteMode.OFF)
    if part is None:
        return STOP
    if run_token not in _dirty:     # every batch is done: the set no longer changes
        _dirty[run_token] = dirpass.dirty_directories(conn)
    return rsync.dirs_command(part, mig.src, mig.dest, rsync_options,
                                 rsync.marker(mig.migration_id, run_token), delete,
                                 _dirty[run_token], filter_rules.stored(mig.options) or [],
                                 filter_rules.delete_excluded(mig.options))


def _batch_files(conn, task_id: int) -> tuple[list[bytes], int]:
    """A batch's paths and the bytes of its files (what bounds its `timeout`)."""
    files = batches.entries(conn, task_id)
    return [p for p, _, _ in files], sum(s for _, d, s in files if not d)


@dataclass
class _Pace:
    """A host's recent pace, as its lookups see it (one lookup process per host)."""
    since: float | None = None     # when the previous item was handed out
    batches: int = 0               # how many batches it carried
    job_bytes: int = 2048          # command bytes per batch, lately (bounds a claim)
    carry: list = None             # claimed batches that did not fit the previous item
    cap: int | None = None         # the fleet's cap when they were claimed


_paces: dict[str, _Pace] = {}


def _how_many(pace: _Pace, lanes: int, pending: int, own_slots: int, fleet_slots: int) -> int:
    """Batches for the next item: ITEM_SECONDS of work at the pace of the previous
    item (its batches over the time from its hand-out to now), at least one per
    lane, at most the host's share of what waits (the tail of a run stays spread)."""
    now = time.monotonic()
    want = lanes
    if pace.since is not None and pace.batches:
        want = int(ITEM_SECONDS * pace.batches / max(now - pace.since, 0.01))
    want = min(max(want, lanes), MAX_ITEM_BATCHES, max(1, ITEM_COMMAND_BYTES // pace.job_bytes))
    share = math.ceil(pending * own_slots / max(fleet_slots, own_slots, 1))
    return max(1, min(want, max(share, 1)))


def _copy_jobs(conn, cap: int | None, worker_id: str, n: int, algorithm: str
               ) -> list[rsync.Job]:
    claimed = batches.claim(conn, worker_id, n)
    if not claimed:
        return []
    share = bwlimit_options(conn, cap)
    jobs = []
    for c in claimed:
        paths, size = _batch_files(conn, c.task_id)
        with conn.begin():
            regular = custody.regular_paths(conn, c.task_id)
        jobs.append(rsync.Job(c.task_id, c.claim_no, paths,
                              share + rsync.COMPARE_OPTIONS[c.compare]
                              + (["--sparse"] if c.sparse else []), size,
                              sums=algorithm, regular=len(regular.intersection(paths))))
    return jobs


def _verify_jobs(conn, worker_id: str, n: int, algorithm: str,
                 rate: int | None) -> list[rsync.Job]:
    """Checks of succeeded batches: their regular files, hashed at DEST; rate: the
    fleet's bound on DEST reads, shared by its slots (as bwlimit_options shares a cap)."""
    pace = rate and max(1, rate // max(1, workers.total_slots(conn)))
    jobs = []
    while len(jobs) < n:
        claimed = verify.claim(conn, worker_id)
        if not claimed:
            break
        with conn.begin():
            files = custody.regular_files(conn, claimed.task_id)
        sizes = [s for _, _, s in files]
        jobs.append(rsync.Job(claimed.task_id, claimed.claim_no, [p for p, _, _ in files], [],
                              sum(sizes), OutcomeKind.VERIFY, sums=algorithm,
                              regular=len(files), pace=pace,
                              parts=rsync.pace_parts(sizes, pace) if pace else None))
    return jobs


def _fit(jobs: list[rsync.Job], sizes: list[int]
         ) -> tuple[list[rsync.Job], list[rsync.Job] | None]:
    """The first jobs whose commands (sizes: rsync.job_bytes) fit one item, and whose
    output at most fits one result (at least one job); the rest stay claimed and
    ride in the next item."""
    total = output = 0
    for i, job in enumerate(jobs):
        total += sizes[i]
        output += rsync.output_bound(job)
        if (total > ITEM_COMMAND_BYTES or output > rsync.ITEM_OUTPUT_BYTES) and i > 0:
            return jobs[:i], jobs[i:]
    return jobs, None


def _cap_now(look) -> int | None:
    with look.begin():
        return bandwidth.cap_at(look)


def _held_back(conn, look, pace: _Pace, worker_id: str, stop: str | None) -> None:
    """Claimed batches that did not fit the previous item (copies) wait again when
    the host stops (stop: why), or when the cap changed since they were claimed:
    they have not started, so the stop, or the new share, is not held back by work
    claimed before it."""
    if not pace.carry or pace.carry[0].kind is not OutcomeKind.COPY:
        return
    why = stop
    if why is None:
        cap = _cap_now(look)
        if cap == pace.cap:
            return
        why = (f"the bandwidth cap changed ({timetable.shown(pace.cap)} -> "
               f"{timetable.shown(cap)})")
    batches.unclaim(conn, worker_id, [(j.task_id, j.claim) for j in pace.carry], why)
    pace.carry = None


def window_closed(stop_at: float | None) -> bool:
    """The run's window (controller/window.py) allows no new claim: its end, a time
    on the windows' clock (ledger/clock.py), has come."""
    return stop_at is not None and clock.now() >= stop_at


def _work_in_sight(look, mode: OutcomeKind, closed: bool) -> tuple[int, bool]:
    """The batches waiting for a claim (copy or verify), and whether all are done; a
    closed window sees none and waits for its stop."""
    if closed:
        return 0, False
    if mode is OutcomeKind.VERIFY:
        with look.begin():
            counts = verify.counts(look)
        pending, running = counts[VerifyState.PENDING], counts[VerifyState.RUNNING]
        return pending, pending == running == 0
    left = batches.work_left(look)
    return left.pending, left.finished


def next_command(ledger_path: str, worker_id: str, stop_file: str, run_token: str,
                 rsync_options: list[str], mode: OutcomeKind = OutcomeKind.COPY,
                 delete: DeleteMode = DeleteMode.OFF, lanes: int = 1,
                 controller: str | None = None, beat: float = rsync.BEAT_SECONDS,
                 stop_at: float | None = None, verify_rate: int | None = None) -> str:
    """Claim the next batches for this host and return the command that runs them
    (lanes: its slots); when every batch is done, the hosts share the directory
    pass; then STOP. Verify mode checks succeeded batches the same way. From stop_at
    on (the run's window closed: window_closed), it claims nothing and waits for
    its stop."""
    pace = _paces.setdefault(worker_id, _Pace())
    _note_worker(stop_file)
    with _conn(ledger_path) as conn, _conn(ledger_path, readonly=True) as look:
        mig = migration.load(conn)
        conn.rollback()
        mark = rsync.marker(mig.migration_id, run_token)
        deadline = time.monotonic() + IDLE_WAIT
        seen, sight = None, (0, False)     # what the last read saw, and when
        while True:
            if os.path.exists(stop_file) or not processes.controller_alive(controller):
                _held_back(conn, look, pace, worker_id, "the host stops")
                pace.since = None
                return STOP
            closed = window_closed(stop_at)
            _held_back(conn, look, pace, worker_id, "the run's window closed" if closed else None)
            # A waiting slot reads the counters when the ledger changed (or the
            # window closed) since it last did; only a batch in sight is worth the
            # write lock of a claim.
            now_seen = (db.data_version(look), closed)
            if now_seen != seen:
                sight, seen = _work_in_sight(look, mode, closed), now_seen
            pending, finished = sight
            fleet_slots = workers.total_slots(look) if pending else 0
            jobs, pace.carry = pace.carry or [], None
            if pending and not jobs:
                n = _how_many(pace, lanes, pending, lanes, fleet_slots)
                algorithm = custody.choice(mig.options)
                if mode is OutcomeKind.VERIFY:
                    jobs = _verify_jobs(conn, worker_id, n, algorithm, verify_rate)
                else:
                    pace.cap = _cap_now(look)
                    jobs = _copy_jobs(conn, pace.cap, worker_id, n, algorithm)
                for job in jobs:
                    job.options = rsync_options + job.options
            if jobs:
                sizes = [rsync.job_bytes(j, mig.src, mig.dest, mark) for j in jobs]
                jobs, pace.carry = _fit(jobs, sizes)
                pace.job_bytes = max(256, sum(sizes[:len(jobs)]) // len(jobs))
                pace.since, pace.batches = time.monotonic(), len(jobs)
                return rsync.item_command(jobs, mig.src, mig.dest, mark, lanes,
                                          rsync.item_dir_prefix(mig.migration_id, run_token), beat)
            pace.since = None
            if finished:
                if mode is OutcomeKind.VERIFY:
                    return STOP
                return _dirs_command(conn, mig, run_token, rsync_options, delete)
            if time.monotonic() > deadline:
                return IDLE
            time.sleep(POLL)
