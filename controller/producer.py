"""One producer's walk: list claimed directories, cut entries into batches.

Producers share one queue of directories in the ledger, so a deep branch is
handed out as soon as it is seen and no producer sits idle while another has a
long list of subdirectories. Memory is bounded by a few batches plus the few
directories claimed at a time, whatever the size of the tree.

Listing is where the time goes (one lstat per entry for its size), so the
ledger is written between listings: a closed batch is handed in at once when
the write lock is free, and kept for a moment (with at most MAX_HELD_CUTS-1
others) while another producer writes.
"""
from __future__ import annotations

import errno
import itertools
import os
import time
from dataclasses import dataclass

from sqlalchemy import Connection

from fleetsync.ledger.entry_outcomes import EntryOutcome
from fleetsync.ledger.logbook import show_path
from fleetsync.ledger.walkqueue import CLAIM_MAX, Cut, Dir, WalkQueue

from . import defaults
from .file_outcomes import walk_error

MAX_HELD_CUTS = 4     # closed batches kept in memory while the ledger is busy
PUSH_EVERY = 64       # share newly seen subdirectories at least this often
IDLE_SLEEP_MAX = 0.01  # an idle producer looks for new directories this often


@dataclass(frozen=True)
class Limits:
    """Where a batch is cut: a batch never goes over a limit, except a single
    entry that is over it alone (a huge file gets a batch of its own).
    The defaults and their reasons are in controller/defaults.py."""
    entries: int = defaults.BATCH_FILES
    bytes: int = defaults.BATCH_BYTES
    name_bytes: int = defaults.BATCH_NAME_BYTES


class Producer:
    """One producer process's loop: claim directories, list them into the open
    batch, hand closed batches in; `producers` (P) sizes its share of a claim."""

    def __init__(self, conn: Connection, src: bytes, producer_id: int, limits: Limits,
                 producers: int = 1, newer_than: float | None = None):
        self.queue = WalkQueue(conn, producer_id, producers)
        self.src, self.limits = src, limits
        self.newer_than = newer_than  # a delta pass: only entries whose ctime is newer
        self.push: list[bytes] = []   # subdirectories seen, not yet in the queue
        self.cuts: list[Cut] = []     # closed batches, not yet in the ledger
        self._new_batch()

    def _new_batch(self) -> None:
        self.entries: list[tuple[bytes, int, int]] = []
        self.files = self.dirs = self.bytes = self.name_bytes = 0
        self.done_dirs: list[int] = []   # listed to the end into this or earlier batches
        self.errors: list[EntryOutcome] = []   # per-file rows (ledger/entry_outcomes.py)
        self.sparse = False
        self.links: list[tuple[int, int, bytes, int]] = []

    def run(self) -> None:
        while True:
            claimed = self.queue.sync(self.push, self.cuts, CLAIM_MAX)
            self.push, self.cuts = [], []
            if claimed:
                for d in claimed:
                    self.list_dir(d)
            elif self.entries or self.done_dirs or self.errors:
                self.cuts.append(self._cut(None))   # nothing left to add: enqueue it now
            elif not self.wait_for_work():
                return

    def wait_for_work(self) -> bool:
        """Sleep until a directory waits (True) or the walk is over (False).
        Polling reads only, so it never takes the write lock from the others."""
        for idle in itertools.count():
            pending, claimed = self.queue.state()
            if pending:
                return True
            if not claimed:
                return False
            time.sleep(min(IDLE_SLEEP_MAX, 0.0002 * 2 ** idle))

    def list_dir(self, d: Dir) -> None:
        """List one directory from its offset. Positions count entries in listing
        order (SRC's own entry b"." first); `offset` positions are in the ledger."""
        full = self.src + b"/" + d.path if d.path else self.src
        prefix = d.path + b"/" if d.path else b""
        try:
            it = os.scandir(full)
        except OSError as e:
            # ENOENT below SRC: removed since it was queued (a --rescan queues every
            # directory seen before): nothing to copy, not an error.
            if not (e.errno == errno.ENOENT and d.path):
                self.errors.append(walk_error(d.path, e, f"cannot list {show_path(full)}", True))
            self.done_dirs.append(d.dir_id)
            return
        with it:
            pos, skip = d.offset, d.offset
            if not d.path:   # SRC itself, so its mode and times arrive too
                skip = max(0, d.offset - 1)
                if d.offset == 0:
                    pos = 1
                    if self._changed(os.lstat(full)):
                        self.add(b".", 1, 0, d.dir_id, pos)
            try:
                for entry in itertools.islice(it, skip, None):
                    pos += 1
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            is_dir, size, holes = 1, 0, False
                            if self.newer_than is not None and not self._changed(
                                    entry.stat(follow_symlinks=False)):
                                self.push.append(prefix + entry.name)   # still walked
                                continue
                        else:
                            st = entry.stat(follow_symlinks=False)
                            if not self._changed(st):
                                continue
                            is_dir, size = 0, st.st_size
                            holes = st.st_blocks * 512 < size
                            if st.st_nlink > 1:    # batched by inode when the walk ends
                                self.links.append((st.st_dev, st.st_ino, prefix + entry.name,
                                                   size))
                                continue
                    except OSError as e:
                        # Only ENOENT means it vanished since it was listed; any other
                        # error (EACCES in a 0444 directory, EIO, ESTALE) is recorded.
                        if e.errno != errno.ENOENT:
                            self.errors.append(walk_error(
                                prefix + entry.name, e,
                                f"cannot stat {show_path(full + b'/' + entry.name)}", False))
                        continue
                    rel = prefix + entry.name
                    if is_dir:
                        self.push.append(rel)
                    self.add(rel, is_dir, size, d.dir_id, pos, holes)
            except OSError as e:               # the listing itself broke off
                self.errors.append(walk_error(d.path, e, f"cannot list all of {show_path(full)}",
                                              True))
        self.done_dirs.append(d.dir_id)
        if len(self.push) >= PUSH_EVERY:
            self.hand_in(wait=False)

    def _changed(self, st: os.stat_result) -> bool:
        return self.newer_than is None or st.st_ctime >= self.newer_than

    def add(self, rel: bytes, is_dir: int, size: int, dir_id: int, pos: int,
            holes: bool = False) -> None:
        """Add the entry at position `pos` of directory `dir_id`, cutting the batch
        before it when it would go over a limit, and after it when it is full.
        holes: a sparse file; only batches with one pay for rsync --sparse (2x CPU)."""
        lim, name_bytes = self.limits, len(rel) + 1   # +1: NUL, rsync --from0
        if self.entries and (self.bytes + size > lim.bytes
                             or self.name_bytes + name_bytes > lim.name_bytes):
            self.close_batch((dir_id, pos - 1))
        self.entries.append((rel, is_dir, size))
        self.sparse = self.sparse or holes
        self.name_bytes += name_bytes
        if is_dir:
            self.dirs += 1
        else:
            self.files += 1
            self.bytes += size
        if len(self.entries) >= lim.entries:
            self.close_batch((dir_id, pos))

    def _cut(self, partial: tuple[int, int] | None) -> Cut:
        cut = Cut(self.entries, self.files, self.dirs, self.bytes, self.done_dirs, partial,
                  self.errors, self.sparse, self.links)
        self._new_batch()
        return cut

    def close_batch(self, partial: tuple[int, int] | None) -> None:
        """Close the batch (`partial`: how far its last directory is listed) and
        hand it in, waiting for the ledger only when enough batches are held."""
        self.cuts.append(self._cut(partial))
        self.hand_in(wait=len(self.cuts) >= MAX_HELD_CUTS)

    def hand_in(self, wait: bool) -> None:
        """Subdirectories seen and batches closed go to the ledger (no claim)."""
        if self.queue.sync(self.push, self.cuts, 0, wait=wait) is not None:
            self.push, self.cuts = [], []
