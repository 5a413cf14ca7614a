"""One producer's walk: list claimed directories, cut entries into batches.

Producers share one queue of directories in the ledger, so a deep branch is
handed out as soon as it is seen and no producer sits idle while another has a
long list of subdirectories. Memory is bounded by a few batches plus the few
directories claimed at a time, whatever the size of the tree.

Listing is where the time goes (one lstat per entry for its size), so the
ledger is written between listings: a closed batch is handed in at once when
the write lock is free, and kept for a moment (with at most MAX_HELD_CUTS-1
others) while another producer writes.

**Slow mounts.** On a local disk an lstat costs a few microseconds of CPU and
the producer does everything in its one thread, as fast as Python goes. On NFS,
Lustre, SMB or sshfs a stat is a round trip (a millisecond or more) and one
thread waits nearly all of the time. So the producer times its stat calls and,
when most of them are slow (SLOW_CALL), starts threads (os.scandir and os.stat
release the GIL): reader threads that open directories and read their listings
ahead, and stat threads that stat the entries; the main thread still takes the
results one by one *in listing order*, so positions, offsets and batches are
exactly those of the one-thread walk, and the ledger stays on one thread.
A directory of a million entries is read in one streaming pass (at most
`window` entries are in flight) whichever thread reads it.

Entries are stat-ed relative to an open directory fd (fstatat): on a network
mount a full path costs one lookup per component.

**Cutover (rescan).** Every walk records, per directory, a fingerprint of each
entry (walkqueue.fingerprint: name, type and mode, inode, size, mtime, ctime). A rescan compares each entry with the fingerprints of the last
walk and queues what differs; see walkqueue.py for what that catches.
"""
from __future__ import annotations

import bisect
import errno
import itertools
import os
import queue
import stat as stat_mod
import sys
import time
import zlib
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Connection

from fleetsync.ledger.logbook import show_path
from fleetsync.ledger.states import EntryType
from fleetsync.ledger.walkqueue import CLAIM_MAX, Cut, Dir, WalkQueue, fingerprint

from . import defaults
from .cutter import Batch, BatchCutter
from .file_outcomes import walk_error
from .filters import Filters

MAX_HELD_CUTS = 4     # closed batches kept in memory while the ledger is busy
PUSH_EVERY = 64       # share newly seen subdirectories at least this often
IDLE_SLEEP_MAX = 0.01  # an idle producer looks for new directories this often
# A stat slower than this is a round trip, not a cache hit: a local warm disk
# answers in 2-10 us, a cold one in ~100 us+, NFS/FUSE in ~1 ms.
SLOW_CALL = 0.0002
SLOW_SAMPLE = 32      # stat calls per look at how slow they are
PROGRESS_EVERY = 4096  # a rescan records its position at least every this many entries

_FS_ENCODING = sys.getfilesystemencoding()  # names from scandir(fd) are str
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(frozen=True)
class Limits:
    """Where a batch is cut: a batch never goes over a limit, except a single
    entry that is over it alone (a huge file gets a batch of its own).
    The defaults and their reasons are in controller/defaults.py."""
    entries: int = defaults.BATCH_FILES
    bytes: int = defaults.BATCH_BYTES
    name_bytes: int = defaults.BATCH_NAME_BYTES


@dataclass
class Listing:
    """One directory being read, from its ledger offset, in listing order.
    Positions count entries in listing order (SRC's own entry b"." first)."""
    d: Dir
    full: bytes
    prefix: bytes
    fd: int = -1
    it: object = None
    pos: int = 0
    old: array | None = None        # a rescan: the last walk's fingerprints, sorted
    fps: array = field(default_factory=lambda: array("q"))  # fingerprints since the last cut
    fps_pos: int = 0                # position of the first of them
    finished: bool = False          # listed to the end
    matched: int = 0                # entries found unchanged (a rescan)
    changed: int = 0                # entries not found so (new or changed)
    queued: bool = False            # a file of it is in a batch (a rescan)
    broke: OSError | None = None    # the listing broke off after it began
    dot: bool = False               # SRC's own entry is still to come

    def open(self) -> None:
        """Open the directory and skip what the ledger says is enqueued: `pos` is then
        the position of the last entry skipped, `it` goes on from the next one."""
        # O_NOFOLLOW: a directory replaced by a symlink since it was seen is not followed
        self.fd = os.open(self.full, _DIR_FLAGS | (os.O_NOFOLLOW if self.d.path else 0))
        self.it = os.scandir(self.fd)
        offset = self.d.offset
        skip = offset
        if not self.d.path:   # SRC itself, so its mode and times arrive too
            self.dot = offset == 0
            skip = max(0, offset - 1)
        self.pos = offset
        try:
            for _ in itertools.islice(self.it, skip):
                pass
        except OSError as e:
            self.broke = e

    def close(self) -> None:
        if self.it is not None:
            self.it.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# EntryType by st_mode >> 12 (the S_IFMT bits), as plain ints: one shift and one
# index per entry on the walk's hot path.
_TYPE_OF = tuple(int({stat_mod.S_IFREG: EntryType.FILE, stat_mod.S_IFDIR: EntryType.DIR,
                      stat_mod.S_IFLNK: EntryType.SYMLINK}.get(i << 12, EntryType.OTHER))
                 for i in range(16))


def walked_of(st: os.stat_result) -> tuple[int, int, int]:
    """What the ledger keeps of an entry beside its size (schema._walked): its type
    (EntryType, as plain ints), mtime in whole seconds (st[8]) and st_blocks."""
    return _TYPE_OF[st.st_mode >> 12], st[8], st.st_blocks


def pruned_row(path: bytes, is_dir: bool, rule, st: os.stat_result | None) -> tuple:
    """A row of table pruned: what a filter rule left out, with its size, type and
    mtime for the report (None where the entry was not looked at: beneath an
    excluded directory of a change list)."""
    if st is None:
        return bytes(path), int(is_dir), str(rule), None, None, None
    size = 0 if is_dir else st.st_size         # as a batch keeps a directory's
    return bytes(path), int(is_dir), str(rule), size, _TYPE_OF[st.st_mode >> 12], st[8]


def examine(listing: Listing, entry) -> tuple[os.stat_result | None, OSError | None]:
    """lstat of one entry relative to its directory's fd (any thread)."""
    try:
        if entry is None:
            return os.fstat(listing.fd), None
        return os.stat(entry.name, dir_fd=listing.fd, follow_symlinks=False), None
    except OSError as e:
        return None, e


_ENTRY, _END, _OPEN_FAILED = 0, 1, 2


@dataclass
class Threads:
    """A producer's threads for slow mounts: readers read listings ahead, stat
    threads stat entries; the main thread takes results in order from `feed`s."""
    stats: int
    window: int = 0
    readers: int = 0
    pool: ThreadPoolExecutor = field(init=False)
    reader_pool: ThreadPoolExecutor = field(init=False)

    def __post_init__(self):
        self.window = self.window or 4 * self.stats
        self.readers = self.readers or max(2, self.stats // 4)
        self.pool = ThreadPoolExecutor(self.stats, thread_name_prefix="fleetsync-stat")
        self.reader_pool = ThreadPoolExecutor(self.readers, thread_name_prefix="fleetsync-read")

    def feed(self, listing: Listing, opened: bool) -> queue.Queue:
        """Start reading `listing` (FIFO among readers, so the directory the main
        thread takes next is always being read: no deadlock on a full feed)."""
        q: queue.Queue = queue.Queue(self.window)
        self.reader_pool.submit(self._read, listing, opened, q)
        return q

    def _read(self, listing: Listing, opened: bool, q: queue.Queue) -> None:
        try:
            if not opened:
                try:
                    listing.open()
                except OSError as e:
                    q.put((_OPEN_FAILED, e, None))
                    return
            if listing.dot:
                listing.dot, listing.pos = False, 1
                q.put((_ENTRY, (1, None), self.pool.submit(examine, listing, None)))
            if listing.broke is None:
                try:
                    for entry in listing.it:
                        listing.pos += 1
                        q.put((_ENTRY, (listing.pos, entry),
                               self.pool.submit(examine, listing, entry)))
                except OSError as e:
                    listing.broke = e
            q.put((_END, None, None))
        except BaseException as e:       # a bug: the main thread raises it
            q.put((_END, e, None))

    def shutdown(self) -> None:
        self.reader_pool.shutdown(wait=False, cancel_futures=True)
        self.pool.shutdown(wait=False, cancel_futures=True)


class SlowMount:
    """Slow-mount detection: the mount is slow when most of the last SLOW_SAMPLE
    timed stat calls took longer than SLOW_CALL (round trips, not cache hits)."""

    def __init__(self) -> None:
        self.calls = self.slow_calls = 0

    def slow_after(self, seconds: float) -> bool:
        """Count one timed stat call; True when a full sample says the mount is slow."""
        self.calls += 1
        self.slow_calls += seconds > SLOW_CALL
        if self.calls < SLOW_SAMPLE:
            return False
        slow = self.slow_calls * 2 > self.calls
        self.calls = self.slow_calls = 0
        return slow


class Producer:
    """One producer process's loop: claim directories, list them into the open
    batch, hand closed batches in; `producers` (P) sizes its share of a claim.

    threads: stat threads when the mount turns out slow (None: defaults.WALK_THREADS;
    0: never, the one-thread walk); rescan: compare with the last walk's fingerprints;
    filters: the rules that leave entries out (an excluded directory is not entered)."""

    def __init__(self, conn: Connection, src: bytes, producer_id: int, limits: Limits,
                 producers: int = 1, rescan: bool = False, threads: int | None = None,
                 filters: Filters | None = None):
        self.queue = WalkQueue(conn, producer_id, producers, rescan)
        self.src, self.limits = src, limits
        self.filters = filters or None   # no rules: the walk pays one test per entry
        self.rescan = rescan
        self.max_threads = defaults.WALK_THREADS if threads is None else threads
        self.threads: Threads | None = None
        self.slow_mount = SlowMount()
        self.timed = 0                # stat calls timed (the first SLOW_SAMPLE all are)
        self.push: list[bytes] = []   # subdirectories seen, not yet in the queue
        self.cuts: list[Cut] = []     # closed batches, not yet in the ledger
        self.since_cut = 0            # entries looked at since the last cut (a rescan)
        self.cutter = BatchCutter(limits, rescan, full=self.close_batch)
        self.add = self.cutter.add    # bound once: the hot loop calls it for every entry

    @property
    def batch(self) -> Batch:
        """The open batch (the cutter's)."""
        return self.cutter.batch

    @property
    def pruned(self) -> list[tuple[bytes, int, str]]:
        """The open batch's entries left out by a rule (read by _list_here)."""
        return self.cutter.batch.pruned

    def run(self) -> None:
        try:
            while True:
                claimed = self.queue.sync(self.push, self.cuts, CLAIM_MAX)
                self.push, self.cuts = [], []
                if claimed:
                    self.list_dirs(claimed)
                elif self.cutter.holds_anything():
                    self.cuts.append(self._cut(None))   # nothing left to add: enqueue it now
                elif not self.wait_for_work():
                    return
        finally:
            if self.threads is not None:
                self.threads.shutdown()

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

    def list_dirs(self, claimed: list[Dir]) -> None:
        """The claimed directories, in order: in this thread while stats are fast,
        through the threads once they are slow (from the entry where that is seen)."""
        for i, d in enumerate(claimed):
            if self.threads is not None:
                self._list_threaded([self._listing(x) for x in claimed[i:]], opened=False)
                return
            listing = self._listing(d)
            if self.list_dir(listing) and self.threads is not None:
                # turned slow mid-directory: the readers go on from where it is
                rest = [self._listing(x) for x in claimed[i + 1:]]
                self._list_threaded([listing, *rest], opened=True)
                return

    def _listing(self, d: Dir) -> Listing:
        return Listing(d, self.src + b"/" + d.path if d.path else self.src,
                       d.path + b"/" if d.path else b"")

    def _begin(self, listing: Listing) -> None:
        """A listing starts being taken here: its fingerprints go with the next cuts."""
        self.cutter.touched.append(listing)
        if self.rescan:
            listing.old = self.queue.old_prints(listing.d.path)

    def list_dir(self, listing: Listing) -> bool:
        """List one directory from its offset in this thread. Returns True when
        it stopped in the middle because the mount turned out slow (threads now
        exist and take the rest)."""
        try:
            listing.open()
        except OSError as e:
            # ENOENT below SRC: removed since it was queued (a --rescan queues every
            # directory seen before): nothing to copy, not an error.
            if not (e.errno == errno.ENOENT and listing.d.path):
                self.batch.errors.append(walk_error(listing.d.path, e,
                                                    f"cannot list {show_path(listing.full)}",
                                                    True))
            self.batch.done_dirs.append(listing.d.dir_id)
            return False
        self._begin(listing)
        if listing.dot:
            listing.dot, listing.pos = False, 1
            st, err = examine(listing, None)
            self.take(listing, 1, None, st, err)
        if listing.broke is None and self._list_here(listing):
            return True
        self._listed(listing)
        return False

    def _list_here(self, listing: Listing) -> bool:
        """The hot loop of a local walk (about 5 us an entry): a non-directory with one
        link, in a full walk, is stat-ed, fingerprinted and added here; anything else
        goes to take().
        The first SLOW_SAMPLE stats are timed, then every 8th, to see a slow mount.
        True: handed to the threads."""
        stat, timer, crc32, isdir = os.stat, time.perf_counter, zlib.crc32, stat_mod.S_ISDIR
        type_of = _TYPE_OF
        fd, dir_id, full = listing.fd, listing.d.dir_id, listing.old is None
        prefix = bytearray(listing.prefix)   # the path as bytearray: sqlite3 binds it as is
        sample, handover, pos = self.max_threads > 0, False, listing.pos
        # the filter rules' regex for files, over the name or the path (filters.py)
        match = self.filters.match_file if self.filters is not None else None
        by_name = match is not None and self.filters.by_name
        try:
            for entry in listing.it:
                pos += 1
                try:
                    if sample and (not pos & 7 or self.timed < SLOW_SAMPLE):
                        t0 = timer()
                        st = stat(entry.name, dir_fd=fd, follow_symlinks=False)
                        self._time_call(timer() - t0)
                        handover = self.threads is not None
                    else:
                        st = stat(entry.name, dir_fd=fd, follow_symlinks=False)
                except OSError as e:
                    listing.pos = pos
                    self.take(listing, pos, entry, None, e)
                    continue
                if full and st.st_nlink == 1 and not isdir(st.st_mode):
                    name = entry.name.encode(_FS_ENCODING, "surrogateescape")
                    path = prefix + name
                    if match is not None:
                        m = match(name if by_name else path)
                        if m is not None and (rule := self.filters.decide(m, False)):
                            self.pruned.append(pruned_row(path, False, rule, st))
                            continue
                    size, blocks = st.st_size, st.st_blocks
                    self.add(path, 0, size, dir_id, pos, blocks * 512 < size,
                             # walkqueue.fingerprint, inline (once per entry; a test
                             # checks that they agree)
                             listing, hash((crc32(name), st.st_mode, st.st_ino, size,
                                            st.st_mtime_ns, st.st_ctime_ns)),
                             # walked_of(st), inline (a file, symlink or other)
                             walked=(type_of[st.st_mode >> 12], st[8], blocks))
                else:
                    listing.pos = pos
                    self.take(listing, pos, entry, st, None)
                if handover:
                    listing.pos = pos
                    return True
            listing.pos = pos
        except OSError as e:               # the listing itself broke off
            listing.broke = e
        return False

    def _time_call(self, seconds: float) -> None:
        """Start the threads when the mount turns out slow (SlowMount)."""
        self.timed += 1
        if self.slow_mount.slow_after(seconds):
            self.threads = Threads(self.max_threads)

    def _list_threaded(self, listings: list[Listing], opened: bool) -> None:
        """The listings, read and stat-ed ahead by the threads, taken in order here."""
        feeds = [self.threads.feed(lst, opened and i == 0) for i, lst in enumerate(listings)]
        for listing, feed in zip(listings, feeds):
            if not (opened and listing is listings[0]):
                self._begin(listing)
            while True:
                kind, item, fut = feed.get()
                if kind == _ENTRY:
                    st, err = fut.result()
                    self.take(listing, item[0], item[1], st, err)
                    continue
                if kind == _OPEN_FAILED:
                    listing.finished = True
                    if not (item.errno == errno.ENOENT and listing.d.path):   # as list_dir
                        self.batch.errors.append(walk_error(
                            listing.d.path, item, f"cannot list {show_path(listing.full)}",
                            True))
                    self.batch.done_dirs.append(listing.d.dir_id)
                    break
                if item is not None:
                    raise item
                self._listed(listing)
                break

    def take(self, listing: Listing, pos: int, entry, st: os.stat_result | None,
             err: OSError | None) -> None:
        """One entry, in listing order: queued, staged as a hard link, or (a rescan,
        unchanged) only fingerprinted."""
        name = b"." if entry is None else entry.name.encode(_FS_ENCODING, "surrogateescape")
        if err is not None:
            # Only ENOENT means it vanished since it was listed; any other
            # error (EACCES in a 0444 directory, EIO, ESTALE) is recorded, unless
            # the rules leave the name out whatever its type.
            if err.errno != errno.ENOENT and not (
                    self.filters is not None and entry is not None
                    and self.filters.excluded(listing.prefix + name, False)
                    and self.filters.excluded(listing.prefix + name, True)):
                self.batch.errors.append(walk_error(
                    listing.prefix + name if entry is not None else b".", err,
                    f"cannot stat {show_path(listing.full + b'/' + name)}", False))
            return
        rel = listing.prefix + name if entry is not None else b"."
        if self.filters is not None and entry is not None:   # SRC itself is never left out
            is_dir = stat_mod.S_ISDIR(st.st_mode)
            rule = self.filters.excluded(rel, is_dir)
            if rule is not None:     # not batched, not fingerprinted, a directory not entered
                self.pruned.append(pruned_row(rel, is_dir, rule, st))
                return
        fp = fingerprint(name, st)
        changed = True
        if listing.old is not None:
            i = bisect.bisect_left(listing.old, fp)
            changed = i == len(listing.old) or listing.old[i] != fp
            listing.matched += not changed
            listing.changed += changed
        dir_id = listing.d.dir_id
        if stat_mod.S_ISDIR(st.st_mode):
            if entry is not None:
                self.push.append(rel)            # walked again whether or not it changed
            if changed:
                self.add(rel, 1, 0, dir_id, pos, False, listing, fp, walked=walked_of(st))
            else:
                self._note(listing, pos, fp)
        elif not changed:
            self._note(listing, pos, fp)
        elif st.st_nlink > 1:                    # batched by inode when the walk ends
            self.batch.links.append((st.st_dev, st.st_ino, rel, st.st_size, *walked_of(st)))
            self._note(listing, pos, fp)
            listing.queued = True
        else:
            self.add(rel, 0, st.st_size, dir_id, pos, st.st_blocks * 512 < st.st_size,
                     listing, fp, walked=walked_of(st))
            # rsync writes a file through a temporary name in its directory, which
            # changes the directory's time at DEST (a subdirectory's mode does not)
            listing.queued = True
        if self.rescan:
            self.since_cut += 1
            if self.since_cut >= PROGRESS_EVERY:   # record the position, even of a batch
                self.close_batch((dir_id, pos))    # that is small or empty

    def _note(self, listing: Listing, pos: int, fp: int) -> None:
        """The fingerprint of the entry at `pos`, enqueued with the next cut."""
        if not listing.fps:
            listing.fps_pos = pos
        listing.fps.append(fp)

    def _listed(self, listing: Listing) -> None:
        """A directory listed to the end. A rescan also sends the directory itself
        (its time, mode, and with --delete what it no longer holds) when a file of
        it was queued or one of the last walk's entries is no longer there as it was."""
        listing.close()
        listing.finished = True
        if listing.broke is not None:
            self.batch.errors.append(walk_error(listing.d.path, listing.broke,
                                                f"cannot list all of {show_path(listing.full)}",
                                                True))
        else:
            self.batch.listed.append(listing.d.path or b".")
        if listing.old is not None:
            rel = listing.d.path or b"."
            # more of the last walk's entries missing than entries new or changed:
            # some were deleted (its own fingerprint in its parent says so as well,
            # unless its times were forged and the clock set back)
            gone = len(listing.old) - listing.matched > listing.changed
            if (listing.queued or gone) and rel not in self.batch.dirs_in:
                self.add(rel, 1, 0, listing.d.dir_id, listing.pos, force=True)
        self.batch.done_dirs.append(listing.d.dir_id)
        if len(self.push) >= PUSH_EVERY:
            self.hand_in(wait=False)

    def _cut(self, partial: tuple[int, int] | None) -> Cut:
        """The open batch as a Cut (BatchCutter.cut); a rescan's count starts again."""
        self.since_cut = 0
        return self.cutter.cut(partial)

    def close_batch(self, partial: tuple[int, int] | None) -> None:
        """Close the batch (`partial`: how far its last directory is listed) and
        hand it in, waiting for the ledger only when enough batches are held."""
        self.cuts.append(self._cut(partial))
        self.hand_in(wait=len(self.cuts) >= MAX_HELD_CUTS)

    def hand_in(self, wait: bool) -> None:
        """Subdirectories seen and batches closed go to the ledger (no claim)."""
        if self.queue.sync(self.push, self.cuts, 0, wait=wait) is not None:
            self.push, self.cuts = [], []
