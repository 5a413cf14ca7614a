"""Hard links: held aside during the walk, batched by inode when it ends.

Entries with more than one link wait in the `hardlinks` table; once the walk
is done they are cut into batches so that every link of a file rides in the
same rsync --hard-links. The batches are created by batches.create, the one
creator of batches.

SQL style: SQLAlchemy text() (a few statements per batch, off the walk's hot
path); the batch's own rows are written by batches.create, in the same
transaction.
"""
from __future__ import annotations

import time

from sqlalchemy import Connection, text

from . import batches
from .states import Compare


# The links not batched yet, with what the walk recorded of each (schema._walked).
_STAGED = ("SELECT dev, ino, path, size, type, mtime, blocks FROM hardlinks "
           "WHERE task_id IS NULL")


def cut_batches(conn: Connection, limits, compare: Compare = Compare.QUICK) -> int:
    """After the walk: the staged hard links become batches, every link of an inode
    in the same batch (rsync -H keeps them linked there), cut at inode boundaries
    by the walk's limits (one inode with more links than a batch holds gets a batch
    of its own, however big). One transaction per batch: a crash resumes here.
    compare: how their rsync compares (a rescan's links changed: Compare.ALWAYS)."""
    made = 0
    while True:
        with conn.begin():
            rows = conn.execute(text(_STAGED + " ORDER BY dev, ino LIMIT :n"),
                                {"n": limits.entries * 4}).all()
            if not rows:
                return made
            batch, names, size, last = [], 0, 0, None
            for dev, ino, path, sz, *walked in rows:
                if (dev, ino) != last and batch and (
                        len(batch) >= limits.entries or size + sz > limits.bytes
                        or names + len(path) + 1 > limits.name_bytes):
                    break
                batch.append((dev, ino, bytes(path), sz, *walked))
                names, size, last = names + len(path) + 1, size + sz, (dev, ino)
            else:
                if len(rows) == limits.entries * 4:   # the last inode may go on: take it whole
                    rest = conn.execute(text(_STAGED + " AND dev = :d AND ino = :i"),
                                        {"d": last[0], "i": last[1]}).all()
                    seen = {b[2] for b in batch}
                    batch += [(d, i, bytes(p), z, *w) for d, i, p, z, *w in rest
                              if bytes(p) not in seen]
            task_id = batches.create(conn, [(p, 0, z, *w) for _, _, p, z, *w in batch],
                                     len(batch), 0, sum(b[3] for b in batch), int(compare),
                                     time.time())
            conn.execute(text("UPDATE hardlinks SET task_id = :t WHERE dev = :d AND ino = :i "
                              "AND path = :p"),
                         [{"t": task_id, "d": d, "i": i, "p": p} for d, i, p, *_ in batch])
            made += 1


def bring_names(conn: Connection, inodes: list[tuple[int, int]]) -> int:
    """A change list named one link of these inodes: every name the ledger knows for
    each waits again, so that cut_batches puts them in one batch and rsync -H keeps
    them linked at DEST (a link batched alone would arrive as a copy of its own)."""
    if not inodes:
        return 0
    with conn.begin():
        return sum(conn.execute(text(
            "UPDATE hardlinks SET task_id = NULL WHERE dev = :d AND ino = :i"),
            {"d": d, "i": i}).rowcount for d, i in set(inodes))


def groups_in(conn: Connection, task_id: int) -> list[set[bytes]]:
    """The hard link groups of one batch (the names of each inode it carries), inside
    the caller's transaction: one name of a group cannot arrive alone (a copy of it
    alone would be a file of its own at DEST, not a link)."""
    found: dict[tuple[int, int], set[bytes]] = {}
    for dev, ino, path in conn.execute(text(
            "SELECT dev, ino, path FROM hardlinks WHERE task_id = :t"), {"t": task_id}):
        found.setdefault((dev, ino), set()).add(bytes(path))
    return list(found.values())
