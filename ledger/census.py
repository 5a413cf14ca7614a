"""The census of a walk: what SRC holds, as `fleetsync scan` prints it (issue 22).

Everything is read from what the walk recorded, in one read transaction, by
streaming aggregates: a few passes over batch_files and one over each of the
walk's small tables, never a list of the tree's rows in memory. Counts by type,
bytes and blocks are plain SQL; the size histogram, the deepest path and the odd
names are one Python aggregate (`_Names`, registered on the raw sqlite3
connection: SQLite has no log2 in every build and no UTF-8 check at all), which
keeps a bucket per power of two and a bounded list of examples whatever the size
of the tree. The largest directories come from walk_prints (one 8-byte print per
entry kept, per directory), the hard links from the `hardlinks` table, what
could not be read from entry_outcomes (source walk / walk-list), what the rules
left out from `pruned`.

What it counts is the ledger's batch_files: after a first walk, every entry the
walk kept, once (SRC itself among the directories, as `find SRC` lists it; a
hard-linked file once per name). A `run --rescan` adds the entries it queued
again, which are then counted twice: the census describes a scan's ledger, or a
first walk's.

SQL style: plain SQL (sqlite3 dialect) on the raw cursor of the caller's
read connection, for the Python aggregate it registers there.
"""
from __future__ import annotations

import os
import sqlite3

from sqlalchemy import Connection

from .defaults import CENSUS_EXAMPLES
from .logbook import show_path
from .schema import has_table
from .states import EntrySource, EntryType


def _shown(path: bytes) -> dict:
    """A path as the API shows one: readable, and its exact bytes in hex."""
    return {"path": show_path(path) or ".", "path_hex": path.hex()}


class _Names:
    """A streaming aggregate over (path, size, is_file): the histogram of file sizes
    (bucket k holds sizes of bit length k: 0, 1, 2-3, 4-7, ...), the deepest path,
    and the names that are not UTF-8 or hold a newline (counts, a few examples)."""

    def __init__(self):
        self.buckets: dict[int, list[int]] = {}
        self.deepest, self.depth = b"", -1
        self.not_utf8 = self.newline = 0
        self.odd: list[bytes] = []

    def step(self, path: bytes, size: int, is_file: int) -> None:
        if is_file:
            b = self.buckets.setdefault(size.bit_length(), [0, 0])
            b[0] += 1
            b[1] += size
        depth = path.count(b"/")
        if depth > self.depth or (depth == self.depth and path < self.deepest):
            self.deepest, self.depth = path, depth
        name = path[path.rfind(b"/") + 1:]
        odd = False
        if not name.isascii():
            try:
                name.decode("utf-8")
            except UnicodeDecodeError:
                self.not_utf8 += 1
                odd = True
        if b"\n" in name:
            self.newline += 1
            odd = True
        if odd and len(self.odd) < CENSUS_EXAMPLES:
            self.odd.append(path)

    def finalize(self) -> int:
        return 0    # an SQL value; the caller reads the instance (see _names)


def census(conn: Connection) -> dict:
    """The census of the ledger's walk (the module doc says what it counts); a
    ledger written before the walk recorded types counts such rows by is_dir
    alone (`unknown_type`)."""
    cur = conn.connection.driver_connection.cursor()
    out = {**_types(cur), **_names(cur)}
    out["largest_dirs"] = _largest_dirs(cur)
    out["hardlinks"] = _hardlinks(cur)
    out["unreadable"] = _unreadable(cur)
    out["excluded"] = _excluded(cur, conn)
    return out


def _types(cur: sqlite3.Cursor) -> dict:
    f, d, s, o = (int(t) for t in (EntryType.FILE, EntryType.DIR, EntryType.SYMLINK,
                                   EntryType.OTHER))
    row = cur.execute(
        f"SELECT count(*), total(type = {f}), total(type = {d} OR (type IS NULL AND is_dir)),"
        f" total(type = {s}), total(type = {o}), total(type IS NULL AND NOT is_dir),"
        " total(size), total(blocks), "
        f" total(type = {f} AND blocks * 512 < size),"
        f" total(CASE WHEN type = {f} AND blocks * 512 < size THEN size END),"
        f" total(CASE WHEN type = {f} AND blocks * 512 < size THEN blocks END),"
        " min(mtime), max(mtime), (SELECT count(*) FROM batches) FROM batch_files").fetchone()
    n = [int(x) if isinstance(x, float) else x for x in row]
    return {"entries": n[0], "files": n[1], "dirs": n[2], "symlinks": n[3], "others": n[4],
            "unknown_type": n[5], "bytes": n[6], "allocated_bytes": n[7] * 512,
            "sparse": {"files": n[8], "bytes": n[9], "allocated_bytes": n[10] * 512},
            "oldest_mtime": n[11], "newest_mtime": n[12], "batches": n[13]}


def _names(cur: sqlite3.Cursor) -> dict:
    done: list[_Names] = []

    class Kept(_Names):      # an aggregate hands SQL one value: the instance is kept
        def finalize(self) -> int:
            done.append(self)
            return 0

    cur.connection.create_aggregate("fleetsync_names", 3, Kept)
    cur.execute("SELECT fleetsync_names(path, size, coalesce(type = ?, NOT is_dir)) "
                "FROM batch_files", (int(EntryType.FILE),)).fetchone()
    names = done[0]
    buckets = [{"from": 0 if k == 0 else 1 << (k - 1), "to": (1 << k) - 1,
                "files": c, "bytes": b} for k, (c, b) in sorted(names.buckets.items())]
    # depth: components below SRC ("a/b" is 2; SRC's own "." is 0)
    deepest = (None if names.depth < 0 else {
        **_shown(names.deepest), "depth": 0 if names.deepest == b"." else names.depth + 1})
    return {"size_histogram": buckets, "deepest": deepest,
            "odd_names": {"not_utf8": names.not_utf8, "newline": names.newline,
                          "examples": [_shown(p) for p in names.odd]}}


def _largest_dirs(cur: sqlite3.Cursor) -> list[dict]:
    """By entries kept (one print each); SRC's own count leaves out its own entry."""
    rows = cur.execute(
        "SELECT path, sum(length(prints)) / 8 - (path = x'') AS n FROM walk_prints "
        "WHERE old = 0 GROUP BY path ORDER BY n DESC, path LIMIT ?", (CENSUS_EXAMPLES,))
    return [{**_shown(bytes(p)), "entries": n} for p, n in rows]


def _hardlinks(cur: sqlite3.Cursor) -> dict:
    """Inodes with several names in SRC (`groups`, their `names`), and names whose
    other links are outside SRC or left out by a rule (`alone`)."""
    groups, names, alone = cur.execute(
        "SELECT total(n > 1), total(CASE WHEN n > 1 THEN n END), total(n = 1) "
        "FROM (SELECT count(*) AS n FROM hardlinks GROUP BY dev, ino)").fetchone()
    return {"groups": int(groups), "names": int(names), "alone": int(alone)}


def _unreadable(cur: sqlite3.Cursor) -> dict:
    """Entries the walk could not stat, directories it could not list (open rows)."""
    where = ("FROM entry_outcomes WHERE source IN (?, ?) AND settled_ts IS NULL")
    sources = (EntrySource.WALK.value, EntrySource.WALK_LIST.value)
    by = cur.execute(f"SELECT source, errno, count(*) {where} GROUP BY source, errno "
                     "ORDER BY count(*) DESC", sources).fetchall()
    examples = cur.execute(f"SELECT path, source, errno, reason {where} "
                           "ORDER BY outcome_id LIMIT ?", (*sources, CENSUS_EXAMPLES))
    return {"entries": sum(n for _, _, n in by),
            "by_reason": [{"what": "list" if s == EntrySource.WALK_LIST.value else "stat",
                           "errno": e, "reason": os.strerror(e) if e else None, "entries": n}
                          for s, e, n in by],
            "examples": [{**_shown(bytes(p or b"")),
                          "what": "list" if s == EntrySource.WALK_LIST.value else "stat",
                          "errno": e, "reason": r} for p, s, e, r in examples]}


def _excluded(cur: sqlite3.Cursor, conn: Connection) -> dict:
    """What the filter rules left out (table pruned: a directory once, not its subtree)."""
    if not has_table(conn, "pruned"):
        return {"entries": 0, "dirs": 0, "by_rule": {}, "examples": []}
    by = cur.execute("SELECT rule, count(*), total(is_dir) FROM pruned GROUP BY rule "
                     "ORDER BY count(*) DESC, rule").fetchall()
    examples = cur.execute("SELECT path, is_dir, rule FROM pruned ORDER BY path LIMIT ?",
                           (CENSUS_EXAMPLES,))
    return {"entries": sum(n for _, n, _ in by), "dirs": int(sum(d for _, _, d in by)),
            "by_rule": {r: n for r, n, _ in by},
            "examples": [{**_shown(bytes(p)), "dir": bool(d), "rule": r}
                         for p, d, r in examples]}


def walked(conn: Connection) -> dict:
    """How far a walk has gone (the scan's progress line): entries enqueued, their
    bytes and the directories listed, kept per producer in the same transactions."""
    row = conn.exec_driver_sql(
        "SELECT coalesce(sum(entries), 0), coalesce(sum(bytes), 0), coalesce(sum(dirs), 0), "
        "min(started_ts) FROM producers").one()
    return {"entries": row[0], "bytes": row[1], "dirs": row[2], "started": row[3]}
