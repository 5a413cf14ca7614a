"""Hard links: held aside during the walk, batched by inode when it ends.

Entries with more than one link wait in the `hardlinks` table; once the walk
is done they are cut into batches so that every link of a file rides in the
same rsync --hard-links. Written with SQLAlchemy text(): a few statements per
batch, off the walk's hot path.
"""
from __future__ import annotations

import time

from sqlalchemy import Connection, text

from .states import Compare


def cut_batches(conn: Connection, limits, compare: Compare = Compare.QUICK) -> int:
    """After the walk: the staged hard links become batches, every link of an inode
    in the same batch (rsync -H keeps them linked there), cut at inode boundaries
    by the walk's limits (one inode with more links than a batch holds gets a batch
    of its own, however big). One transaction per batch: a crash resumes here.
    compare: how their rsync compares (a rescan's links changed: Compare.ALWAYS)."""
    made = 0
    while True:
        with conn.begin():
            rows = conn.execute(text(
                "SELECT dev, ino, path, size FROM hardlinks WHERE task_id IS NULL "
                "ORDER BY dev, ino LIMIT :n"), {"n": limits.entries * 4}).all()
            if not rows:
                return made
            batch, names, size, last = [], 0, 0, None
            for dev, ino, path, sz in rows:
                if (dev, ino) != last and batch and (
                        len(batch) >= limits.entries or size + sz > limits.bytes
                        or names + len(path) + 1 > limits.name_bytes):
                    break
                batch.append((dev, ino, bytes(path), sz))
                names, size, last = names + len(path) + 1, size + sz, (dev, ino)
            else:
                if len(rows) == limits.entries * 4:   # the last inode may go on: take it whole
                    rest = conn.execute(text(
                        "SELECT dev, ino, path, size FROM hardlinks WHERE task_id IS NULL "
                        "AND dev = :d AND ino = :i"), {"d": last[0], "i": last[1]}).all()
                    seen = {b[2] for b in batch}
                    batch += [(d, i, bytes(p), z) for d, i, p, z in rest if bytes(p) not in seen]
            task_id = conn.execute(text(
                "INSERT INTO batches(file_count, directory_count, estimated_bytes, checksum, "
                "created_ts) VALUES (:f, 0, :b, :c, :t) RETURNING task_id"),
                {"f": len(batch), "b": sum(b[3] for b in batch), "c": int(compare),
                 "t": time.time()}).scalar_one()
            conn.exec_driver_sql("INSERT INTO batch_files(task_id, path, is_dir, size) "
                                 "VALUES (?, ?, 0, ?)", [(task_id, p, z) for _, _, p, z in batch])
            conn.exec_driver_sql("UPDATE hardlinks SET task_id = ? WHERE dev = ? AND ino = ? "
                                 "AND path = ?", [(task_id, d, i, p) for d, i, p, _ in batch])
            made += 1
