"""What a worker slot runs next: called by the `fleetsync_claim` lookup plugin.

Each slot of a host is one Ansible loop whose items are templated one at a
time, on the controller, just before they run. Templating an item calls this
module, which claims the next waiting batch in the ledger and returns its
command. So one ansible-playbook run feeds a slot batch after batch with true
dynamic balancing, and Ansible's cost is a `raw` item (~15 ms) per batch
instead of a playbook run (~0.9 s).
"""
from __future__ import annotations

import os
import time

from fleetsync.ledger import batches, db, dirpass, migration, verify, workers
from fleetsync.ledger.states import DeleteMode, OutcomeKind, VerifyState

from . import rsync

IDLE_WAIT = 5.0     # seconds a slot waits for work before it reports idle (one raw item)
POLL = 0.1          # a waiting slot looks at the counters this often (a read, no lock)
STOP = f"echo {rsync.MARK} stop"
IDLE = f"echo {rsync.MARK} idle"

_engines: dict[tuple[str, bool], object] = {}


def _conn(ledger_path: str, readonly: bool = False):
    # One engine of each kind per process: the lookup runs in an Ansible worker
    # process that lives for the whole loop.
    key = (ledger_path, readonly)
    if key not in _engines:
        _engines[key] = (db.reader if readonly else db.writer)(ledger_path)
    return _engines[key].connect()


def _bwlimit(conn, fleet_bwlimit: int | None) -> list[str]:
    """This rsync's share of the fleet's cap (read per batch, so a change made during
    the run applies to the batches that start after it)."""
    if not fleet_bwlimit:
        return []
    share = fleet_bwlimit // max(1, workers.total_slots(conn))
    return [f"--bwlimit={max(1, share // 1024)}"]     # rsync counts KiB/s


def parse_worker(preflight_stdout: str) -> str:
    for line in preflight_stdout.splitlines():
        if line.startswith(f"{rsync.MARK} worker "):
            return line.split(" ", 2)[2].strip()
    raise ValueError("the preflight did not name the worker")


_dirty: dict[str, set[bytes]] = {}


def _dirs_command(conn, mig, run_token: str, rsync_options: list[str],
                  delete: DeleteMode) -> str:
    """The next part of the directory pass, or STOP when it is all handed out."""
    part = dirpass.next_part(conn)
    if part is None:
        return STOP
    if run_token not in _dirty:     # every batch is done: the set no longer changes
        _dirty[run_token] = dirpass.dirty_directories(conn)
    return rsync.dirs_command(part, mig.src, mig.dest, rsync_options,
                                 rsync.marker(mig.migration_id, run_token), delete,
                                 _dirty[run_token])


def _batch_files(conn, task_id: int) -> tuple[list[bytes], int]:
    """A batch's paths and the bytes of its files (what bounds its `timeout`)."""
    files = batches.entries(conn, task_id)
    return [p for p, _, _ in files], sum(s for _, d, s in files if not d)


def next_verify_command(ledger_path: str, worker_id: str, stop_file: str, run_token: str,
                        rsync_options: list[str]) -> str:
    """Claim the next succeeded batch to check and return its command (or idle/stop)."""
    with _conn(ledger_path) as conn, _conn(ledger_path, readonly=True) as look:
        mig = migration.load(conn)
        conn.rollback()
        deadline = time.monotonic() + IDLE_WAIT
        while not os.path.exists(stop_file):
            claimed = verify.claim(conn, worker_id)
            if claimed:
                paths, size = _batch_files(conn, claimed[0])
                return rsync.verify_command(*claimed, paths, mig.src, mig.dest, rsync_options,
                                               rsync.marker(mig.migration_id, run_token), size)
            with look.begin():       # a waiting slot reads without the write lock
                running = verify.counts(look)[VerifyState.RUNNING]
            if running == 0:
                return STOP
            if time.monotonic() > deadline:
                return IDLE
            time.sleep(POLL)
        return STOP


def next_command(ledger_path: str, worker_id: str, stop_file: str, run_token: str,
                 rsync_options: list[str], mode: OutcomeKind = OutcomeKind.COPY,
                 delete: DeleteMode = DeleteMode.OFF) -> str:
    """Claim the next batch for this worker and return its command; when every batch
    is done, the slots share the directory pass; then STOP."""
    if mode is OutcomeKind.VERIFY:
        return next_verify_command(ledger_path, worker_id, stop_file, run_token, rsync_options)
    with _conn(ledger_path) as conn, _conn(ledger_path, readonly=True) as look:
        mig = migration.load(conn)
        conn.rollback()
        mark = rsync.marker(mig.migration_id, run_token)
        deadline = time.monotonic() + IDLE_WAIT
        while True:
            if os.path.exists(stop_file):
                return STOP
            # A waiting slot reads the counters; only a batch in sight is worth the
            # write lock of a claim.
            left = batches.work_left(look)
            claimed = batches.claim(conn, worker_id, 1) if left.pending else []
            if claimed:
                c = claimed[0]
                paths, size = _batch_files(conn, c.task_id)
                options = (rsync_options + _bwlimit(conn, mig.bwlimit)
                           + (["--checksum"] if c.checksum else [])
                           + (["--sparse"] if c.sparse else []))
                return rsync.batch_command(c.task_id, c.claim_no, paths, mig.src, mig.dest,
                                              options, mark, size)
            if left.finished:
                return _dirs_command(conn, mig, run_token, rsync_options, delete)
            if time.monotonic() > deadline:
                return IDLE
            time.sleep(POLL)
