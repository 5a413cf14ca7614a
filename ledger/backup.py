"""The ledger as one file that stands on its own: the WAL folded in at the end of a
run, and a consistent copy at any time (`fleetsync backup`).

In WAL mode the newest transactions live in `LEDGER-wal` until a checkpoint
copies them into the main file; a read-only connection (the API's) cannot do
that, so a run whose API had clients could leave the main file stale: a `cp` of
it alone showed batches still pending.
"""
from __future__ import annotations

import logging
import os
import sqlite3

from . import db

log = logging.getLogger(__name__)

# A checkpoint at the end of a run waits this long for a reader (another
# `fleetsync serve`, an operator's sqlite3) to end its transaction.
CHECKPOINT_WAIT_MS = 5_000


def checkpoint(path: str) -> bool:
    """Fold the WAL into the main file and truncate it (TRUNCATE), then leave WAL mode
    (the next writer turns it on again): a WAL-mode file can be opened read-only
    only where its -shm exists or its directory is writable, so a finished ledger
    in rollback-journal mode opens anywhere, for anyone who may read it. False when
    a reader kept part of the WAL (the main file alone is then not the whole ledger)."""
    with db.connect(path) as conn:
        raw = conn.connection.driver_connection    # no transaction: a checkpoint needs none
        raw.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
        busy, _log, _done = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy == 0:
            try:
                raw.execute("PRAGMA journal_mode = DELETE")
            except sqlite3.OperationalError as e:
                # A reader is still connected: the file is whole all the same (the
                # checkpoint passed), it only stays in WAL mode until the next run ends.
                log.info("ledger %s stays in WAL mode: %s", path, e)
    return busy == 0


def backup(path: str, out: str) -> int:
    """A consistent copy of the ledger at `out`, safe while a run writes: SQLite's online
    backup in one step (one read snapshot; in WAL mode writers go on meanwhile). The
    copy is a self-contained file in rollback-journal mode, so it opens read-only
    anywhere, without a -wal or -shm beside it. Returns its size in bytes."""
    tmp = f"{out}.partial"
    with db.connect(path, readonly=True) as conn:
        copy = sqlite3.connect(tmp)
        try:
            conn.connection.driver_connection.backup(copy)
            copy.execute("PRAGMA journal_mode = DELETE")
            check = copy.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise db.LedgerError(f"the copy of {path} is damaged: {check}")
        finally:
            copy.close()
    os.replace(tmp, out)
    return os.path.getsize(out)
