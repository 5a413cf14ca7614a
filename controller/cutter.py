"""The batch cutter: where a producer's entries become batches.

The open Batch takes entries in listing order; it is cut before an entry that
would take it over a limit (Limits: entries, bytes, name bytes) and after one that
fills it. Each cut is a Cut (ledger/walkqueue.py) for the ledger, with the
fingerprints of the positions it completes in the listings it touched.
"""
from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fleetsync.ledger.entry_outcomes import EntryOutcome
from fleetsync.ledger.walkqueue import Cut

if TYPE_CHECKING:     # annotations only: producer.py imports this module
    from .producer import Limits, Listing


@dataclass
class Batch:
    """The open batch: what the next Cut holds."""
    entries: list[tuple] = field(default_factory=list)  # batches.Entry: path, is_dir, size, walked
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    name_bytes: int = 0
    done_dirs: list[int] = field(default_factory=list)  # listed to the end into this or earlier batches
    listed: list[bytes] = field(default_factory=list)   # of those, the ones listed without an error
    errors: list[EntryOutcome] = field(default_factory=list)  # per-file rows (ledger/entry_outcomes.py)
    sparse: bool = False                                # holds a file with holes
    links: list[tuple] = field(default_factory=list)  # (dev, ino, path, size, *walked)
    pruned: list[tuple] = field(default_factory=list)  # left out by a rule (producer.pruned_row)
    dirs_in: set[bytes] = field(default_factory=set)   # directories in this batch (a rescan)

    def holds_anything(self) -> bool:
        """Whether a cut now would tell the ledger anything."""
        return bool(self.entries or self.done_dirs or self.errors or self.pruned)


class BatchCutter:
    """A producer's open Batch and the listings whose fingerprints go with the next
    cut. full(partial) is called when an entry fills the batch or the next one would
    not fit: it cuts (cut()) and hands the Cut in."""

    def __init__(self, limits: Limits, rescan: bool,
                 full: Callable[[tuple[int, int] | None], None]) -> None:
        self.limits, self.rescan, self.full = limits, rescan, full
        self.batch = Batch()
        self.touched: list[Listing] = []   # listings with fingerprints to enqueue with the next cut

    def holds_anything(self) -> bool:
        return self.batch.holds_anything() or any(x.fps for x in self.touched)

    def add(self, rel: bytes, is_dir: int, size: int, dir_id: int, pos: int,
            holes: bool = False, listing: Listing | None = None, fp: int = 0,
            force: bool = False, walked: tuple = (None, None, None)) -> None:
        """Add the entry at position `pos` of directory `dir_id`, cutting the batch
        before it when it would go over a limit, and after it when it is full.
        holes: a sparse file; only batches with one pay for rsync --sparse (2x CPU).
        listing, fp: its listing and fingerprint, noted after a cut before it, so that
        a cut's fingerprints are those of the positions it completes.
        force: no cut before (a rescan's directory entry after its last position).
        walked: its type, mtime and blocks (producer.walked_of(); None: not stat-ed here)."""
        lim, name_bytes, b = self.limits, len(rel) + 1, self.batch   # +1: NUL, rsync --from0
        if b.entries and not force and (b.bytes + size > lim.bytes
                                        or b.name_bytes + name_bytes > lim.name_bytes):
            self.full((dir_id, pos - 1))
            b = self.batch
        b.entries.append((rel, is_dir, size, *walked))
        if listing is not None:
            fps = listing.fps             # Producer._note, inline: this runs once per entry
            if not fps:
                listing.fps_pos = pos
            fps.append(fp)
        b.sparse = b.sparse or holes
        b.name_bytes += name_bytes
        if is_dir:
            b.dirs += 1
            if self.rescan:
                b.dirs_in.add(rel)
        else:
            b.files += 1
            b.bytes += size
        if len(b.entries) >= lim.entries:
            self.full((dir_id, pos))

    def cut(self, partial: tuple[int, int] | None) -> Cut:
        """The open batch as a Cut (`partial`: how far its last directory is listed);
        a new batch opens, and the listings listed to the end are no longer touched."""
        b = self.batch
        cut = Cut(entries=b.entries, file_count=b.files, directory_count=b.dirs,
                  estimated_bytes=b.bytes, done_dirs=b.done_dirs, partial=partial,
                  errors=b.errors, sparse=b.sparse, links=b.links,
                  prints=[(x.d.path, x.fps_pos, x.fps.tobytes()) for x in self.touched if x.fps],
                  listed=b.listed, pruned=b.pruned)
        for x in self.touched:
            x.fps = array("q")
        self.touched = [x for x in self.touched if not x.finished]
        self.batch = Batch()
        return cut
