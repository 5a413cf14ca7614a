"""The walk's shared queue of directories, and enqueueing the batches it cuts.

Crash safety rests on two rules. A directory becomes `done` (or moves its
`offset`) only in the transaction that enqueues the batch holding its entries,
so an entry is enqueued exactly once. Subdirectories may be pushed earlier (so
idle producers can take them) because `path` is UNIQUE: a directory listed again
after a crash pushes nothing twice.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection, text


@dataclass
class Dir:
    dir_id: int
    path: bytes
    offset: int


@dataclass
class Cut:
    """One batch as the walk cut it, and the walk progress it completes."""
    entries: list[tuple[bytes, int, int]]   # (path, is_dir, size)
    file_count: int
    directory_count: int
    estimated_bytes: int
    done_dirs: list[int]                    # dir_ids fully listed into this and earlier batches
    partial: tuple[int, int] | None         # (dir_id, offset) of the directory cut in the middle


def seed(conn: Connection) -> None:
    """Queue SRC itself (path b'') when the walk has never started."""
    with conn.begin():
        conn.execute(text("INSERT OR IGNORE INTO walk_dirs(path) VALUES (x'')"))


def reset_claimed(conn: Connection) -> int:
    """At start-up: directories claimed by a dead run are listed again from their offset."""
    with conn.begin():
        return conn.execute(text(
            "UPDATE walk_dirs SET state = 'pending', producer_id = NULL "
            "WHERE state = 'claimed'")).rowcount


def push_and_claim(conn: Connection, producer_id: int, subdirs: list[bytes],
                   limit: int) -> list[Dir]:
    """Push newly seen directories and claim up to `limit` waiting ones, in one transaction."""
    with conn.begin():
        if subdirs:
            conn.exec_driver_sql("INSERT OR IGNORE INTO walk_dirs(path) VALUES (?)",
                                 [(p,) for p in subdirs])
        if limit <= 0:
            return []
        rows = conn.execute(text(
            "UPDATE walk_dirs SET state = 'claimed', producer_id = :p "
            "WHERE dir_id IN (SELECT dir_id FROM walk_dirs WHERE state = 'pending' "
            "                 ORDER BY dir_id DESC LIMIT :n) AND state = 'pending' "
            "RETURNING dir_id, path, offset"), {"p": producer_id, "n": limit}).all()
    return [Dir(r.dir_id, bytes(r.path), r.offset) for r in sorted(rows)]


def walk_finished(conn: Connection) -> bool:
    """No directory waits and none is being listed."""
    with conn.begin():
        row = conn.execute(text(
            "SELECT EXISTS (SELECT 1 FROM walk_dirs WHERE state IN ('pending', 'claimed'))")).one()
    return not row[0]


def enqueue(conn: Connection, producer_id: int, cut: Cut) -> int:
    """Enqueue one batch and the walk progress it completes; returns its task_id."""
    now = time.time()
    with conn.begin():
        if cut.entries:
            task_id = conn.execute(text(
                "INSERT INTO batches(file_count, directory_count, estimated_bytes, "
                "producer_id, created_ts) VALUES (:f, :d, :b, :p, :t) RETURNING task_id"),
                {"f": cut.file_count, "d": cut.directory_count, "b": cut.estimated_bytes,
                 "p": producer_id, "t": now}).scalar_one()
            conn.exec_driver_sql(
                "INSERT OR IGNORE INTO batch_files(task_id, path, is_dir, size) "
                "VALUES (?, ?, ?, ?)", [(task_id, p, d, s) for p, d, s in cut.entries])
        else:
            task_id = 0
        if cut.done_dirs:
            conn.exec_driver_sql("UPDATE walk_dirs SET state = 'done' WHERE dir_id = ?",
                                 [(d,) for d in cut.done_dirs])
        if cut.partial:
            conn.execute(text("UPDATE walk_dirs SET offset = :o WHERE dir_id = :d"),
                         {"d": cut.partial[0], "o": cut.partial[1]})
        conn.execute(text(
            "UPDATE producers SET entries = entries + :e, bytes = bytes + :b, "
            "dirs = dirs + :n WHERE producer_id = :p"),
            {"e": len(cut.entries), "b": cut.estimated_bytes, "n": len(cut.done_dirs),
             "p": producer_id})
    return task_id


def finish_producer(conn: Connection, producer_id: int) -> None:
    with conn.begin():
        conn.execute(text("UPDATE producers SET state = 'done', finished_ts = :t "
                          "WHERE producer_id = :p"), {"t": time.time(), "p": producer_id})

