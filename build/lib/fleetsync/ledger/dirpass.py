"""The directory pass at the end of a run, shared out between slots.

Later batches disturb directory times by adding files, so once every batch is
done the directories are sent again, alone, to set their modes and times (and,
with --delete, to remove what is no longer in SRC first). The pass is cut at
batch boundaries and handed out by a cursor in the migration row, so any number
of slots can take parts of it; a lost host sends the pass back to the start
(every part of it is idempotent).

SQL style: SQLAlchemy text() with bound parameters (a few statements per part
of the pass; the cursor's groupby reads rows in one streaming SELECT).
"""
from __future__ import annotations

import itertools
import os
import time

from sqlalchemy import Connection, text

from .states import AttemptStatus

# A batch with one of these attempts may have had an rsync killed mid-file.
_DIRTY = (AttemptStatus.LOST.value, AttemptStatus.RETRY.value, AttemptStatus.FAILED.value)

MAX_DIRS = 1000
MAX_NAME_BYTES = 64 * 1024


def next_part(conn: Connection) -> list[bytes] | None:
    """The directories of the next few batches (whole batches, within the limits),
    or None when the pass is handed out."""
    with conn.begin():   # BEGIN IMMEDIATE: one slot at a time moves the cursor
        cursor, done = conn.execute(text(
            "SELECT coalesce(dirs_pass_cursor, 0), dirs_pass_done_ts FROM migration")).one()
        if done is not None:
            return None
        rows = conn.execute(text(
            "SELECT task_id, path FROM batch_files WHERE task_id > :c AND is_dir = 1 "
            "ORDER BY task_id, path"), {"c": cursor})
        part, size = [], 0
        for task_id, group in itertools.groupby(rows, key=lambda r: r[0]):
            dirs = [bytes(path) for _, path in group]
            more = sum(len(d) + 1 for d in dirs)
            if part and (len(part) + len(dirs) > MAX_DIRS or size + more > MAX_NAME_BYTES):
                break
            part += dirs
            size += more
            cursor = task_id
        rows.close()
        if not part:
            conn.execute(text("UPDATE migration SET dirs_pass_done_ts = :t"), {"t": time.time()})
            return None
        conn.execute(text("UPDATE migration SET dirs_pass_cursor = :c"), {"c": cursor})
    return part


def dirty_directories(conn: Connection) -> set[bytes]:
    """Directories where an rsync may have died mid-file (its batch was lost, retried or
    failed) and left its temporary `.NAME.XXXXXX` behind."""
    with conn.begin():
        rows = conn.execute(text(
            "SELECT path FROM batch_files WHERE is_dir = 0 AND task_id IN "
            "(SELECT DISTINCT task_id FROM attempts WHERE status IN (:a, :b, :c))"),
            dict(zip("abc", _DIRTY)))
        return {os.path.dirname(bytes(p)) or b"." for (p,) in rows}


def done(conn: Connection) -> bool:
    with conn.begin():
        return conn.execute(text("SELECT dirs_pass_done_ts FROM migration")).scalar() is not None


def restart(conn: Connection) -> None:
    """A part may have been lost with its host: the whole pass runs again."""
    with conn.begin():
        conn.execute(text("UPDATE migration SET dirs_pass_cursor = NULL, "
                          "dirs_pass_done_ts = NULL"))


