"""A change list: `run --files-from FILE [--from0]` queues the entries it names, and
only them, stat-ing what is listed instead of walking SRC (README: Change lists).

What the list means (the README says why):
- a path is relative to SRC, or absolute under SRC (as `find SRC` prints it);
- a listed directory is its own entry (mode, owner, times), not its subtree: what
  `zfs diff` and `find -newer` list for a directory is that its listing changed,
  and they list what changed beneath it line by line;
- a listed path that no longer exists is nothing to copy; with --delete its parent
  directory, if SRC still holds it, is sent to the directory pass, which removes
  from DEST what that directory no longer holds (dry run first, within
  --max-delete, named in table deletions, excluded names protected);
- the filter rules apply to each listed path and to its ancestors, as the walk
  would have met them: a path under an excluded directory is left out (a row in
  table pruned, with the rule);
- a listed file with several links brings every other name the ledger knows for
  its inode (table hardlinks), so that they ride in one rsync -H batch.

Reading and checking the list happen before anything is created (a bad list is
one line, exit 2, no ledger); stat-ing it happens once the run holds the ledger.
The batches are cut by the walk's own batch cutting (controller/producer.py) and
written by the walk's writer (ledger/walkqueue.py, batches.create), so a change
list's batches are the walk's in every respect but the directories walked.
"""
from __future__ import annotations

import errno
import os
import stat as stat_mod
import sys
import time
from dataclasses import dataclass

from sqlalchemy import Connection

from fleetsync.ledger import hardlinks
from fleetsync.ledger.logbook import show_path
from fleetsync.ledger.states import Compare

from .errors import UsageError
from .file_outcomes import walk_error
from .filters import Filters
from .producer import Limits, Producer, pruned_row, walked_of

# ENOENT: gone; ENOTDIR: an ancestor is no longer a directory. Either way the path
# names nothing in SRC now, which is what a deletion in the list looks like.
_GONE = (errno.ENOENT, errno.ENOTDIR)


def read(path: str, from0: bool, src: str) -> list[bytes]:
    """The listed paths, relative to SRC (b"." for SRC itself), sorted and unique,
    or one UsageError naming the file and the line: the file cannot be read, a
    line holds a NUL (without --from0), a path leads outside SRC or through a
    symlink. Blank entries are skipped; an empty list is fine (nothing changed)."""
    data = _content(path)
    if from0:
        names = data.split(b"\0")
    else:
        if b"\0" in data:
            number = data.count(b"\n", 0, data.index(b"\0")) + 1
            raise UsageError(f"--files-from {path}: line {number} holds a NUL (a list "
                             "of NUL-separated paths goes with --from0)")
        names = [n[:-1] if n.endswith(b"\r") else n for n in data.split(b"\n")]
    root = os.fsencode(src).rstrip(b"/") or b"/"
    inside = _Inside(root)
    listed = set()
    for number, name in enumerate(names, 1):
        if not name:
            continue
        rel = _relative(root, name)
        where = f"--files-from {path}: {'entry' if from0 else 'line'} {number}"
        if rel is None:
            raise UsageError(f"{where}: {show_path(name)} is not under SRC {src}")
        through = inside.symlink_above(rel)
        if through is not None:
            raise UsageError(f"{where}: {show_path(name)} goes through the symlink "
                             f"{show_path(through)} (list SRC's own names)")
        listed.add(rel)
    return sorted(listed)


def _content(path: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"--files-from {path}: {e.strerror or e}") from None


def _relative(root: bytes, name: bytes) -> bytes | None:
    """The path relative to SRC (lexically: a/./b, a//b and a/x/../b are a/b), or None
    when it leads outside SRC."""
    if name.startswith(b"/"):
        if root == b"/":
            name = name.lstrip(b"/")
        elif name == root or name.startswith(root + b"/"):
            name = name[len(root):].lstrip(b"/")
        else:
            return None
    # normpath (~2 us) only where a component may be empty, "." or "..": most lines
    # of a list are plain paths
    odd = not name or b"//" in name or name.endswith(b"/") or b"/." in b"/" + name
    rel = (os.path.normpath(name) if name else b".") if odd else name
    if rel == b".." or rel.startswith(b"../") or rel.startswith(b"/"):
        return None
    return rel


class _Inside:
    """Whether a listed path goes through a symlink of SRC: rsync would then copy the
    link as a link and the path through it at DEST, or leave SRC. Each ancestor
    directory is lstat-ed once, however many listed paths share it."""

    def __init__(self, root: bytes):
        self.root, self.seen = root, {b"": None}

    def symlink_above(self, rel: bytes) -> bytes | None:
        parent = os.path.dirname(rel)
        if parent in self.seen:
            return self.seen[parent]
        found = self.symlink_above(parent)
        if found is None:
            try:
                if stat_mod.S_ISLNK(os.lstat(self.root + b"/" + parent).st_mode):
                    found = parent
            except OSError:       # gone, or not readable: the stat of the entry says so
                pass
        self.seen[parent] = found
        return found


@dataclass
class Selection:
    """What a change list queued, for the run's line about it."""
    listed: int = 0
    queued: int = 0       # entries in batches, the other names of hard links included
    pruned: int = 0       # left out by a rule (table pruned)
    vanished: int = 0     # no longer in SRC
    errors: int = 0       # could not be stat-ed (table entry_outcomes)
    seconds: float = 0.0

    def line(self, path: str, delete: bool) -> str:
        return (f"fleetsync: change list {path}: {self.listed} paths, {self.queued} entries "
                f"queued, {self.pruned} left out by the filter rules (table pruned), "
                f"{self.vanished} no longer in SRC"
                + (" (their directories' pass removes them from DEST)"
                   if delete and self.vanished else "")
                + (f", {self.errors} could not be read (table entry_outcomes)"
                   if self.errors else "")
                + f"; selected in {self.seconds:.2f}s, SRC not walked")


class _Selector:
    """Stats the listed paths into the walk's batches (one Producer's batch cutting
    and writer, no directory of it claimed or listed)."""

    def __init__(self, conn: Connection, src: str, limits: Limits, filters: Filters,
                 delete: bool):
        self.root = os.fsencode(src).rstrip(b"/") or b"/"
        # producer_id 0 is no walker's (they count from 1): no producers row, no claim.
        # rescan=True: the batches copy whatever rsync's quick check says (Compare.ALWAYS),
        # since a listed file changed in a way size and mtime need not show.
        self.batcher = Producer(conn, self.root, 0, limits, 1, rescan=True, threads=0)
        self.filters = filters if filters else None
        self.delete = delete
        self.dirs_added: set[bytes] = set()
        self.excluded_dirs: dict[bytes, object] = {b"": None}
        self.inodes: list[tuple[int, int]] = []   # of the listed names with other links
        self.sel = Selection()

    def _excluded_dir(self, d: bytes):
        """The rule that excludes directory `d` (relative to SRC; b"": SRC) or one
        above it, as the walk meets them from SRC down (the first excluded one is
        not entered), or None."""
        if d not in self.excluded_dirs:
            rule = self._excluded_dir(os.path.dirname(d))
            if rule is None and self.filters is not None:
                rule = self.filters.excluded(d, True)
            self.excluded_dirs[d] = rule
        return self.excluded_dirs[d]

    def take(self, pos: int, rel: bytes) -> None:
        """One listed path: left out, staged as a hard link, queued, or gone."""
        b = self.batcher.batch       # the open batch (it changes at each cut)
        rule = self._excluded_dir(os.path.dirname(rel)) if rel != b"." else None
        if rule is not None:
            b.pruned.append(pruned_row(rel, False, rule, None))
            self.sel.pruned += 1
            return
        full = self.root + b"/" + rel if rel != b"." else self.root
        try:
            st = os.lstat(full)
        except OSError as e:
            if e.errno in _GONE:
                self._gone(pos, rel)
            else:
                b.errors.append(walk_error(rel, e, f"cannot stat {show_path(full)}", False))
                self.sel.errors += 1
            return
        is_dir = stat_mod.S_ISDIR(st.st_mode)
        rule = self.filters.excluded(rel, is_dir) if self.filters and rel != b"." else None
        if rule is not None:
            b.pruned.append(pruned_row(rel, is_dir, rule, st))
            self.sel.pruned += 1
        elif is_dir:
            self._dir(pos, rel, walked_of(st))
        elif st.st_nlink > 1:                 # batched with its other names (cut_batches)
            b.links.append((st.st_dev, st.st_ino, rel, st.st_size, *walked_of(st)))
            self.inodes.append((st.st_dev, st.st_ino))
        else:
            self.batcher.add(rel, 0, st.st_size, 0, pos, st.st_blocks * 512 < st.st_size,
                             walked=walked_of(st))
            self.sel.queued += 1

    def _dir(self, pos: int, rel: bytes, walked: tuple) -> None:
        if rel not in self.dirs_added:
            self.dirs_added.add(rel)
            self.batcher.add(rel, 1, 0, 0, pos, walked=walked)
            self.sel.queued += 1

    def _gone(self, pos: int, rel: bytes) -> None:
        """A listed path SRC no longer holds: with --delete, its parent (when SRC
        still holds it as a directory) goes to the directory pass, which deletes."""
        self.sel.vanished += 1
        if not self.delete:
            return
        parent = os.path.dirname(rel) or b"."
        try:
            st = os.lstat(self.root + b"/" + parent if parent != b"." else self.root)
        except OSError:
            return                 # gone too: the list names it, or its own parent
        if stat_mod.S_ISDIR(st.st_mode) and (parent == b"." or
                                            self._excluded_dir(parent) is None):
            self._dir(pos, parent, walked_of(st))


def queue(conn: Connection, src: str, listed: list[bytes], limits: Limits,
          filters: Filters, delete: bool) -> Selection:
    """Stat the listed paths and queue them (see the module doc); the hard links'
    batches last, every name of an inode in one."""
    started = time.monotonic()
    selector = _Selector(conn, src, limits, filters, delete)
    for pos, rel in enumerate(listed, 1):
        selector.take(pos, rel)
    b, sel = selector.batcher, selector.sel
    sel.listed = len(listed)
    staged = len(selector.inodes)
    b.close_batch(None)            # its partial position names no directory (dir_id 0)
    b.hand_in(wait=True)
    linked = hardlinks.bring_names(conn, selector.inodes)
    sel.queued += max(staged, linked)
    hardlinks.cut_batches(conn, limits, Compare.ALWAYS)
    sel.seconds = time.monotonic() - started
    return sel
