"""The room the ledger has on its filesystem: what the walk is expected to need, and
the one line said when that filesystem is full; and the batches that failed on a
full DEST, for the run's summary.

A full ledger disk is not bad input and not a bug: every writer of the run (the
controller, its walkers, the claims in ansible-playbook) gets SQLITE_FULL at its next
commit, nothing committed is lost, and the next run resumes once space is freed. So
the writers recognise it here (full()) and the run stops whole, in one line
(LedgerFull, exit status 4: ledger/faults.py), rather than each printing a
traceback.
"""
from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass

from sqlalchemy import Connection

from . import db, sizes
from .defaults import LEDGER_BYTES_PER_ENTRY
from .errors import CannotGoOn
from .states import BatchState

# SQLite cannot grow the -shm file on a full filesystem (it writes every new page of
# it rather than risk a SIGBUS): the same cause as SQLITE_FULL.
_SQLITE_IOERR_SHMSIZE = 4874
# Below this many entries a ledger's size is mostly its schema's fixed pages: its own
# bytes per entry would be far too high, so the default stands.
_MEASURED_FROM = 10_000


class LedgerFull(CannotGoOn):
    """The ledger's filesystem is full: the run stopped, nothing recorded is lost."""


def full(exc: BaseException) -> bool:
    """exc (or the sqlite3 error it wraps) says the ledger's disk is full. An OSError
    ENOSPC is not taken for it: it may come from another filesystem ($TMPDIR)."""
    code = db.sqlite_code(exc)
    return code is not None and (code & 0xFF == sqlite3.SQLITE_FULL
                                 or code == _SQLITE_IOERR_SHMSIZE)


def mount_point(path: str) -> str:
    """The mount point of the filesystem that holds path (the first directory above
    it on another device)."""
    path = os.path.realpath(path)
    dev = os.stat(path).st_dev
    while path != "/":
        parent = os.path.dirname(path)
        if os.stat(parent).st_dev != dev:
            break
        path = parent
    return path


def _free(folder: str) -> tuple[int, int]:
    """(free bytes for this user, size) of the filesystem holding folder."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def full_error(ledger_path: str) -> LedgerFull:
    """The one line of a run stopped by its ledger's full disk."""
    folder = os.path.dirname(os.path.abspath(ledger_path))
    free, size = _free(folder)
    return LedgerFull(f"the ledger's filesystem {mount_point(folder)} is full "
                      f"({sizes.show(free)} of {sizes.show(size)} free now): the run stopped, "
                      f"nothing recorded is lost; free space there (or move {ledger_path} "
                      "with its -wal file to a larger one), then run again to resume")


@dataclass(frozen=True)
class Room:
    """The ledger's filesystem: free bytes, and what this migration's walk is expected
    to add to the ledger (entries x bytes per entry, less what it holds already)."""
    filesystem: str
    free: int
    needed: int
    entries: int
    per_entry: int
    counted: str        # where the entries come from

    @property
    def short(self) -> bool:
        return self.free < self.needed

    def warning(self) -> str:
        return (f"warning: the ledger's filesystem {self.filesystem} has "
                f"{sizes.show(self.free)} free; this migration's ledger is expected to "
                f"need {sizes.show(self.needed)} more ({self.entries:,} entries, "
                f"{self.counted}, at ~{self.per_entry} bytes each): when it fills, the run "
                "stops (exit 4) until space is freed")


def room(conn: Connection, ledger_path: str | None = None) -> Room | None:
    """The ledger's room, read inside the caller's transaction (None: no migration yet).
    Entries: the count of a complete walk (or scan) where the ledger has one, else
    SRC's used inodes (a bound: SRC may be part of its filesystem; 0 where the
    filesystem counts none)."""
    if ledger_path is None:      # the file of the connection's main database
        ledger_path = conn.exec_driver_sql("PRAGMA database_list").one()[2]
    row = conn.exec_driver_sql("SELECT src, walk_done FROM migration").first()
    if row is None:
        return None
    src, walk_done = row
    held = conn.exec_driver_sql(
        "SELECT coalesce(sum(files + directories), 0) FROM batch_counts").scalar()
    if walk_done:
        entries, counted = held, "the walk's count"
    else:
        try:
            st = os.statvfs(src)
            entries, counted = max(0, st.f_files - st.f_ffree), "SRC's used inodes"
        except OSError:
            entries, counted = held, "the walk's count so far (SRC cannot be read)"
    size = sum(os.path.getsize(p) for p in (ledger_path, ledger_path + "-wal")
               if os.path.exists(p))
    per_entry = max(LEDGER_BYTES_PER_ENTRY, size // held if held >= _MEASURED_FROM else 0)
    folder = os.path.dirname(os.path.abspath(ledger_path))
    return Room(mount_point(folder), _free(folder)[0], max(0, per_entry * entries - size),
                entries, per_entry, counted)


# rsync's words for ENOSPC (strerror), in a failed attempt's error lines.
_NO_SPACE = "No space left on device"


@dataclass(frozen=True)
class DestFull:
    """Failed batches whose last attempt ran out of space at DEST: how many, and one
    of them (its worker and rsync's line) as the example the summary names."""
    batches: int
    worker_id: str
    line: str

    def advice(self) -> str:
        return (f"{self.batches} failed batches ran out of space at DEST (host "
                f"{self.worker_id}: {self.line}): {DEST_FULL_ADVICE}")


# What the operator does about a full DEST. A full DEST is a failure like any other,
# not a condition a plain run again heals by itself: only the operator knows when
# space is back (a run cannot tell a disk freed from one still full, or a quota from
# a full disk), and a run again on a disk still full would spend every failed
# batch's retries again for nothing. `retry --failed` is the one way to say "fixed,
# send again", for every failure; and since the entries that are at DEST whole were
# recorded as arrived (controller/rsync.py: _dest_check), it sends only the rest.
DEST_FULL_ADVICE = ("free space on DEST's filesystem, then `fleetsync retry --failed` and "
                    "run again: only their entries that are not at DEST are sent again (a "
                    "full DEST is not waited out, and a run again alone does not send a "
                    "failed batch again)")


def dest_full(conn: Connection) -> DestFull | None:
    """The batches that failed (for good) on a full DEST, read once at a run's end: a
    walk of the failed batches and their last attempt each."""
    rows = conn.exec_driver_sql(
        "SELECT a.worker_id, a.errors FROM batches b JOIN attempts a ON a.attempt_id = "
        "(SELECT max(attempt_id) FROM attempts WHERE task_id = b.task_id) "
        # the state spelt out, as the partial index batches_failed is: it serves then
        f"WHERE b.state = '{BatchState.FAILED.value}' AND a.errors LIKE ?",
        (f"%{_NO_SPACE}%",)).all()
    if not rows:
        return None
    worker_id, errors = rows[0]
    line = next(e for e in json.loads(errors) if _NO_SPACE in e)
    return DestFull(len(rows), worker_id, line)
