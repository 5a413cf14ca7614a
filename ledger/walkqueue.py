"""The walk's shared queue of directories, and enqueueing the batches it cuts.

Crash safety rests on two rules. A directory becomes `done` (or moves its
`offset`) only in the transaction that enqueues the batch holding its entries,
so an entry is enqueued exactly once. Subdirectories may be pushed earlier (so
idle producers can take them) because `path` is UNIQUE: a directory listed again
after a crash pushes nothing twice.

A producer writes one row per entry, so its hot path (`WalkQueue.sync`) runs on
the raw sqlite3 connection with a handful of cached statements, and does all of
its writing (pushes, batches, progress, claims) in one transaction. It can also
*try* a transaction without waiting: while another producer holds the write
lock it goes on listing and enqueues its batches together a moment later,
instead of sleeping in SQLite's busy handler (1, 2, 5, 10 ms...).

SQL style: plain SQL in the sqlite3 dialect (`?` parameters) throughout. The
hot path runs it on the raw cursor (so do the functions it calls in other
modules: batches.create for its batches, entry_outcomes and logbook for its
errors); the few calls outside it run it through
`conn.exec_driver_sql` inside a SQLAlchemy transaction. States are bound as
parameters from WalkDirState.

**Fingerprints and the cutover pass (`run --rescan`).** Every walk records, per
directory and in the same transaction as the batch that completes those
positions, an 8-byte fingerprint of each entry it looked at (table walk_prints):
a hash of its name, type and mode, inode, size, mtime and ctime (nanoseconds).
A rescan lists every directory again, compares each
entry's fingerprint with the last walk's prints of that directory, and queues
the entries whose fingerprint is not there. So it catches, without trusting any
clock: new entries; changed contents (size, mtime or ctime); an mtime set back
(mtime, and ctime); a file replaced by rename (inode); chmod (mode, ctime),
chown, a new hard link, xattrs and ACLs (ctime); new directories, empty ones too; and a
directory whose listing lost an entry (deleted or renamed away) or gained one is
sent itself, so its mode and times are set and `--delete` removes from DEST what
it no longer holds. It cannot see a change that leaves all of these equal
(contents rewritten in place with the same size and mtime restored, the ctime
being equal only if the clock was set back): `fleetsync verify` compares
contents. Once a directory is listed to its end, the prints of the last walk for
it are dropped.
"""
from __future__ import annotations

import itertools
import os
import sqlite3
import time
import zlib
from array import array
from dataclasses import dataclass, field

from sqlalchemy import Connection

from . import batches, entry_outcomes
from .db import BUSY_TIMEOUT_MS
from .states import Compare, WalkDirState

_PENDING, _CLAIMED, _DONE = (WalkDirState.PENDING.value, WalkDirState.CLAIMED.value,
                             WalkDirState.DONE.value)

RETRY_MAX = 0.002         # seconds between tries for the write lock, at most
CLAIM_MAX = 64            # directories one producer holds at most (memory stays small)
_LOOK_AHEAD = 4 * CLAIM_MAX  # pending directories counted to size a claim


@dataclass
class Dir:
    dir_id: int
    path: bytes
    offset: int     # entries of this directory (in listing order) already enqueued


@dataclass
class Cut:
    """One batch as the walk cut it, and the walk progress it completes."""
    entries: list[tuple]                    # batches.Entry: (path, is_dir, size, type,
    #                                         mtime, blocks)
    file_count: int
    directory_count: int
    estimated_bytes: int
    done_dirs: list[int]                    # dir_ids fully listed into this and earlier batches
    partial: tuple[int, int] | None         # (dir_id, offset) of the directory cut in the middle
    errors: list = field(default_factory=list)  # walk errors (entry_outcomes.EntryOutcome)
    sparse: bool = False                    # holds a file with holes
    links: list[tuple] = field(default_factory=list)  # (dev, ino, path, size, type, mtime,
    #                                                   blocks)
    prints: list[tuple[bytes, int, bytes]] = field(default_factory=list)  # (dir path, first
    # position, fingerprints of the entries from there, as array('q') bytes)
    listed: list[bytes] = field(default_factory=list)  # directories listed in full, no error
    pruned: list[tuple[bytes, int, str]] = field(default_factory=list)  # (path, is_dir, rule):
    # entries a filter rule left out (table pruned)


def fingerprint(name: bytes, st: os.stat_result) -> int:
    """A 64-bit signed fingerprint of an entry as lstat sees it (see the module doc).
    Owner, group and link count are not hashed: chown and link set the ctime, which
    is (compared for equality, not against a clock).
    hash() of a tuple of ints is the same in every process (ints are not salted); a
    Python whose tuple hash differs only makes a rescan queue everything once."""
    return hash((zlib.crc32(name), st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns,
                 st.st_ctime_ns))


def seed(conn: Connection) -> None:
    """Queue SRC itself (path b'') when the walk has never started."""
    with conn.begin():
        conn.exec_driver_sql("INSERT OR IGNORE INTO walk_dirs(path) VALUES (x'')")


def reset_claimed(conn: Connection) -> int:
    """At start-up: directories claimed by a dead run are listed again from their offset."""
    with conn.begin():
        return conn.exec_driver_sql(
            "UPDATE walk_dirs SET state = ?, producer_id = NULL WHERE state = ?",
            (_PENDING, _CLAIMED)).rowcount


def release_claims(conn: Connection, producer_id: int) -> int:
    """A producer that failed hands its directories back, to be listed from their offsets."""
    with conn.begin():
        return conn.exec_driver_sql(
            "UPDATE walk_dirs SET state = ?, producer_id = NULL "
            "WHERE state = ? AND producer_id = ?", (_PENDING, _CLAIMED, producer_id)).rowcount


def restart(conn: Connection) -> None:
    """A new walk of the whole tree (a --rescan): the queue starts again from SRC alone
    (directories deleted since are not listed), and the prints of the walk that ended
    become the ones to compare with. Runs inside the caller's transaction."""
    conn.exec_driver_sql("DELETE FROM walk_dirs")
    conn.exec_driver_sql("DELETE FROM pruned")   # the new walk prunes with the rules now
    conn.exec_driver_sql("DELETE FROM walk_prints WHERE old = 1")  # directories gone since
    conn.exec_driver_sql("UPDATE walk_prints SET old = 1")


def drop_old_prints(conn: Connection) -> None:
    """After a complete walk: the prints left of the walk before are of directories
    that no longer exist (each directory listed to its end dropped its own)."""
    with conn.begin():
        conn.exec_driver_sql("DELETE FROM walk_prints WHERE old = 1")


def entries_seen(conn: Connection) -> int:
    """How many entries the last complete walk found in SRC (one 8-byte print each):
    read from one row per directory, inside the caller's transaction."""
    return conn.exec_driver_sql(
        "SELECT coalesce(sum(length(prints)), 0) / 8 FROM walk_prints WHERE old = 0").scalar()


def walk_finished(conn: Connection) -> bool:
    """No directory waits and none is being listed."""
    with conn.begin():
        row = conn.exec_driver_sql(
            "SELECT EXISTS (SELECT 1 FROM walk_dirs WHERE state IN (?, ?))",
            (_PENDING, _CLAIMED)).one()
    return not row[0]


class WalkQueue:
    """One producer's side of the queue, on the raw DBAPI connection of `conn`.

    `conn` (a writer from ledger.db: autocommit, WAL, busy timeout) must not be
    inside a SQLAlchemy transaction while this is used.
    """

    def __init__(self, conn: Connection, producer_id: int, producers: int,
                 rescan: bool = False):
        self.raw: sqlite3.Connection = conn.connection.driver_connection
        self.cur = self.raw.cursor()
        self.producer_id, self.producers = producer_id, producers
        self.rescan = rescan    # the last walk's prints are there to drop
        # A rescan queues only what changed, and the change may not show in size and
        # mtime: its batches copy whatever rsync's quick check says (Compare.ALWAYS).
        self.compare = int(Compare.ALWAYS if rescan else Compare.QUICK)
        # An earlier walk could not list some directory: one listed in full now
        # settles that row (a first walk has none, and pays nothing).
        self.unlisted_before = entry_outcomes.any_unlisted(self.cur)

    def state(self) -> tuple[bool, bool]:
        """(some directory waits, some directory is being listed), without the write lock."""
        pending, claimed = self.cur.execute(
            "SELECT EXISTS (SELECT 1 FROM walk_dirs WHERE state = ?), "
            "EXISTS (SELECT 1 FROM walk_dirs WHERE state = ?)", (_PENDING, _CLAIMED)).fetchone()
        return bool(pending), bool(claimed)

    def sync(self, push: list[bytes], cuts: list[Cut], claim: int,
             wait: bool = True) -> list[Dir] | None:
        """Push subdirectories, enqueue the cuts in order, claim up to `claim`
        directories: one transaction. Returns the claimed directories, or None
        (nothing written) when `wait` is false and another writer holds the lock."""
        if not self._begin(wait):
            return None
        try:
            cur, now = self.cur, time.time()
            if push:
                cur.executemany("INSERT OR IGNORE INTO walk_dirs(path) VALUES (?)",
                                [(p,) for p in push])
            for cut in cuts:
                self._enqueue(cut, now)
            if cuts:
                cur.execute(
                    "UPDATE producers SET entries = entries + ?, bytes = bytes + ?, "
                    "dirs = dirs + ? WHERE producer_id = ?",
                    (sum(len(c.entries) for c in cuts), sum(c.estimated_bytes for c in cuts),
                     sum(len(c.done_dirs) for c in cuts), self.producer_id))
            claimed = self._claim(claim) if claim > 0 else []
            cur.execute("COMMIT")
        except BaseException:
            if self.raw.in_transaction:
                self.cur.execute("ROLLBACK")
            raise
        return claimed

    def old_prints(self, path: bytes) -> array:
        """The last walk's fingerprints of a directory, sorted (for bisect): 8 bytes
        an entry, so a directory of a million entries costs 8 MB while it is listed."""
        out = array("q")
        for (blob,) in self.cur.execute("SELECT prints FROM walk_prints WHERE path = ? "
                                        "AND old = 1", (path,)):
            out.frombytes(blob)
        if len(out) > 1:
            out = array("q", sorted(out))
        return out

    def _begin(self, wait: bool) -> bool:
        """BEGIN IMMEDIATE. When another writer holds the lock: give up at once
        (wait false), or try again after 0.2, 0.4, 0.8... ms, never more than
        RETRY_MAX apart. SQLite's own busy handler sleeps 1, 2, 5, 10... up to
        100 ms: on a busy machine, where the holder of ~1 ms transactions gets
        descheduled, its waiters slept far longer than the lock was held."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        self.cur.execute("PRAGMA busy_timeout = 0")
        try:
            for attempt in itertools.count():
                try:
                    self.cur.execute("BEGIN IMMEDIATE")
                    return True
                except sqlite3.OperationalError as e:
                    if e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                        raise
                    if not wait:
                        return False
                    if time.monotonic() > deadline:
                        raise
                time.sleep(min(RETRY_MAX, 0.0002 * 2 ** attempt))
        finally:
            self.cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def _enqueue(self, cut: Cut, now: float) -> None:
        cur = self.cur
        if cut.entries:
            # The one creator of batches, on this raw cursor: the same statements the
            # walk always ran here, with no SQLAlchemy layer per batch (its hot path).
            task_id = batches.create(cur, cut.entries, cut.file_count, cut.directory_count,
                                     cut.estimated_bytes, self.compare, now, cut.sparse,
                                     self.producer_id)
        if cut.prints:
            cur.executemany("INSERT OR REPLACE INTO walk_prints(path, old, seq, prints) "
                            "VALUES (?, 0, ?, ?)", cut.prints)
        if cut.done_dirs:
            cur.executemany("UPDATE walk_dirs SET state = ? WHERE dir_id = ?",
                            [(_DONE, d) for d in cut.done_dirs])
            if self.rescan:
                cur.executemany("DELETE FROM walk_prints WHERE old = 1 AND path = "
                                "(SELECT path FROM walk_dirs WHERE dir_id = ?)",
                                [(d,) for d in cut.done_dirs])
        if cut.partial:
            cur.execute("UPDATE walk_dirs SET offset = ? WHERE dir_id = ?",
                        (cut.partial[1], cut.partial[0]))
        if cut.links:
            # Seen again by a --rescan (the inode changed): batched again.
            cur.executemany("INSERT INTO hardlinks(dev, ino, path, size, type, mtime, blocks) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                            "size = excluded.size, type = excluded.type, "
                            "mtime = excluded.mtime, blocks = excluded.blocks, task_id = NULL",
                            cut.links)
        if cut.pruned:      # seen again after a crash: the same row
            cur.executemany("INSERT OR REPLACE INTO pruned(path, is_dir, rule, size, type, "
                            "mtime, ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [(*p, now) for p in cut.pruned])
        if cut.listed and self.unlisted_before:
            entry_outcomes.settle_listed(cur, cut.listed, now)
        if cut.errors:      # per-file rows and their log lines (ledger/entry_outcomes.py)
            entry_outcomes.record_walk(cur, task_id if cut.entries else None, cut.errors, now)

    def _claim(self, limit: int) -> list[Dir]:
        """Up to `limit` waiting directories, newest first (depth first keeps the
        queue short), but no more than this producer's share of what waits."""
        waiting = self.cur.execute(
            "SELECT count(*) FROM (SELECT 1 FROM walk_dirs WHERE state = ? LIMIT ?)",
            (_PENDING, _LOOK_AHEAD)).fetchone()[0]
        n = min(limit, max(1, waiting // self.producers))
        rows = self.cur.execute(
            "UPDATE walk_dirs SET state = ?, producer_id = ? "
            "WHERE dir_id IN (SELECT dir_id FROM walk_dirs WHERE state = ? "
            "                 ORDER BY dir_id DESC LIMIT ?) "
            "RETURNING dir_id, path, offset", (_CLAIMED, self.producer_id, _PENDING, n)).fetchall()
        return [Dir(dir_id, bytes(path), offset) for dir_id, path, offset in sorted(rows)]


