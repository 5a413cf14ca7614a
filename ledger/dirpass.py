"""The directory pass at the end of a run, shared out between slots.

Later batches disturb directory times by adding files, so once every batch is
done the directories are sent again, alone, to set their modes and times (and,
with --delete, to remove what is no longer in SRC first). The pass is cut into
parts (at batch boundaries, or every MAX_DIRS directories of the tree) and handed
out by a cursor in the migration row, so any number of slots can take parts of
it; a lost host sends the pass back to the start (every part is idempotent).

SQL style: SQLAlchemy text() with bound parameters (a few statements per part
of the pass; the cursor's groupby reads rows in one streaming SELECT).
"""
from __future__ import annotations

import itertools
import os
import time

from sqlalchemy import Connection, text

from .migration import PASS_AFTER
from .states import AttemptStatus

# A batch with one of these attempts may have had an rsync killed mid-file.
_DIRTY = (AttemptStatus.LOST.value, AttemptStatus.RETRY.value, AttemptStatus.FAILED.value)

MAX_DIRS = 1000
MAX_NAME_BYTES = 64 * 1024


def next_part(conn: Connection, delete: bool = False) -> list[bytes] | None:
    """The directories of the next part of the pass, or None when it is all handed out.

    Without --delete: the directories of the batches after the cursor (a task_id),
    whole batches at a time: from the first batch (a full pass) or, in a rescan,
    from the first batch of the rescan (only what it touched needs its times set),
    less the directories the last walk no longer found in SRC.
    With --delete (or --delete-dry-run): every directory of SRC as the last walk
    listed it (walk_dirs), the cursor a dir_id. DEST may hold, in any of them, what
    an earlier run without --delete left behind, so the dry run that the bound
    checks and the real pass that deletes walk the very same set (run restarts the
    pass before each).
    A change list's run (migration.pass_after_copied): the directories of its own
    batches, with or without --delete."""
    with conn.begin():   # BEGIN IMMEDIATE: one slot at a time moves the cursor
        cursor, done = conn.execute(text(
            "SELECT coalesce(dirs_pass_cursor, 0), dirs_pass_done_ts FROM migration")).one()
        if done is not None:
            return None
        # A change list's run: only its batches' directories, with --delete too
        # (ledger/migration.py, pass_after_copied).
        floor = conn.execute(text(
            f"SELECT json_extract(options, '$.{PASS_AFTER}') FROM migration")).scalar()
        if floor is not None:
            part, cursor = _batch_part(conn, max(cursor, floor), walked=False)
        else:
            part, cursor = (_tree_part if delete else _batch_part)(conn, cursor)
        if not part:
            conn.execute(text("UPDATE migration SET dirs_pass_done_ts = :t"), {"t": time.time()})
            return None
        conn.execute(text("UPDATE migration SET dirs_pass_cursor = :c"), {"c": cursor})
    return part


def _batch_part(conn: Connection, cursor: int, walked: bool = True
                ) -> tuple[list[bytes], int]:
    # A directory batched by an earlier walk and gone from SRC since is no longer
    # in walk_dirs (a rescan lists the tree anew): rsync would only fail on it.
    # walked false: a change list's batches, whose directories it stat-ed itself
    # (a new one is in no walk's walk_dirs).
    rows = conn.execute(text(
        "SELECT task_id, path FROM batch_files WHERE task_id > :c AND is_dir = 1 "
        + ("AND (path = x'2e' OR path IN (SELECT path FROM walk_dirs)) " if walked else "")
        + "ORDER BY task_id, path"), {"c": cursor})
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
    return part, cursor


def _tree_part(conn: Connection, cursor: int) -> tuple[list[bytes], int]:
    rows = conn.execute(text(
        "SELECT dir_id, path FROM walk_dirs WHERE dir_id > :c ORDER BY dir_id LIMIT :n"),
        {"c": cursor, "n": MAX_DIRS}).all()
    part, size = [], 0
    for dir_id, path in rows:
        path = bytes(path) or b"."           # walk_dirs names SRC b""
        if part and size + len(path) + 1 > MAX_NAME_BYTES:
            break
        part.append(path)
        size += len(path) + 1
        cursor = dir_id
    return part, cursor


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


def restart(conn: Connection, after: int | None = None) -> None:
    """A part may have been lost with its host: the whole pass runs again.
    after: only the directories of the batches after this task_id (without --delete)."""
    with conn.begin():
        conn.execute(text("UPDATE migration SET dirs_pass_cursor = :c, "
                          "dirs_pass_done_ts = NULL"), {"c": after})


