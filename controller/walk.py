"""One producer's walk: list claimed directories, cut entries into batches.

Producers share one queue of directories in the ledger, so a deep branch is
handed out as soon as it is seen and no producer sits idle while another has a
long list of subdirectories. Memory is bounded by one batch plus the few
directories claimed at a time, whatever the size of the tree.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from sqlalchemy import Connection

from ledger import logbook, walkqueue
from ledger.walkqueue import Cut, Dir

KiB, MiB = 1024, 1024 * 1024
CLAIM_DIRS = 8        # directories claimed per transaction: fewer transactions, fair sharing
PUSH_EVERY = 64       # share newly seen subdirectories at least this often


@dataclass(frozen=True)
class Limits:
    """Where a batch is cut: whichever limit is reached first.

    500 entries and 100 MiB keep one rsync to about a second on a local disk,
    long next to the ~15 ms Ansible spends per batch, short enough that a lost
    batch costs little to copy again. 64 KiB of names keeps a batch's file
    list, compressed and encoded, well under the 128 KiB a single command
    argument may take on Linux.
    """
    entries: int = 500
    bytes: int = 100 * MiB
    name_bytes: int = 64 * KiB


class Producer:
    def __init__(self, conn: Connection, src: bytes, producer_id: int, limits: Limits):
        self.conn, self.src, self.producer_id, self.limits = conn, src, producer_id, limits
        self.push: list[bytes] = []
        self.done_dirs: list[int] = []
        self._new_batch()

    def _new_batch(self) -> None:
        self.entries: list[tuple[bytes, int, int]] = []
        self.files = self.dirs = self.bytes = self.name_bytes = 0

    def run(self) -> None:
        idle = 0
        while True:
            claimed = walkqueue.push_and_claim(self.conn, self.producer_id, self.push, CLAIM_DIRS)
            self.push = []
            if claimed:
                idle = 0
                for d in claimed:
                    self.list_dir(d)
                continue
            if self.entries or self.done_dirs:
                self.flush(None)
            elif walkqueue.walk_finished(self.conn):
                return
            else:
                # Another producer is still listing: its subdirectories may come.
                time.sleep(min(0.05, 0.001 * 2 ** idle))
                idle += 1

    def list_dir(self, d: Dir) -> None:
        full = os.path.join(self.src, d.path) if d.path else self.src
        try:
            it = os.scandir(full)
        except OSError as e:
            logbook.add(self.conn, "error",
                        f"cannot list {logbook.show_path(full)}: {e.strerror}")
            self.done_dirs.append(d.dir_id)
            return
        with it:
            if not d.path and d.offset == 0:
                self.add(b".", True, 0)    # SRC itself, so its mode and times arrive too
            for i, entry in enumerate(it):
                if i < d.offset:
                    continue               # enqueued before a crash
                rel = d.path + b"/" + entry.name if d.path else entry.name
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                    size = 0 if is_dir else entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue               # vanished since it was listed
                if is_dir:
                    self.push.append(rel)
                self.add(rel, is_dir, size)
                if self.full():
                    self.flush((d.dir_id, i + 1))
                if len(self.push) >= PUSH_EVERY:
                    walkqueue.push_and_claim(self.conn, self.producer_id, self.push, 0)
                    self.push = []
        self.done_dirs.append(d.dir_id)

    def add(self, rel: bytes, is_dir: bool, size: int) -> None:
        self.entries.append((rel, int(is_dir), size))
        self.name_bytes += len(rel) + 1
        if is_dir:
            self.dirs += 1
        else:
            self.files += 1
            self.bytes += size

    def full(self) -> bool:
        lim = self.limits
        return (len(self.entries) >= lim.entries or self.bytes >= lim.bytes
                or self.name_bytes >= lim.name_bytes)

    def flush(self, partial: tuple[int, int] | None) -> None:
        """Enqueue the batch with the directories it completes, in one transaction."""
        if self.push:   # subdirectories must be queued before their parent is done
            walkqueue.push_and_claim(self.conn, self.producer_id, self.push, 0)
            self.push = []
        walkqueue.enqueue(self.conn, self.producer_id, Cut(
            self.entries, self.files, self.dirs, self.bytes, self.done_dirs, partial))
        self.done_dirs = []
        self._new_batch()
