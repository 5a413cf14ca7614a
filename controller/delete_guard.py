"""The guard of `run --delete`: a mistake of the operator's cannot empty DEST.

Two checks, both against what the ledger knows of SRC from the walks before:

1. At start, before anything runs: every top-level entry of SRC that the ledger
   copied before must still be in SRC. An unmounted mount point (its empty
   directory, or one marker file in it), a wrong SRC, a snapshot not yet
   restored: each misses top-level entries, and would have the pass delete
   their whole copy. A cutover that really removes a top-level entry names it
   (`--allow-delete NAME`) or states its own bound (`--max-delete`).
2. Before a single entry is deleted: the pass runs first as a dry run (its list
   goes to the table `deletions`, dry_run = 1); only when the count stays within
   `--max-delete` does the real pass run.

`--max-delete` is a count (`500`) or a percentage (`10%`) of DEST's entries,
taken as SRC's entries as the last walk found them plus those the pass would
delete. The dry run and the real pass cover the same directories, every one of
SRC's (ledger/dirpass.py), so the count checked is the count deleted.

Why 10% by default: a delta pass on a live tree deletes what its users deleted
since the last pass, well under a tenth of the tree; more than that is far more
often a mistake (the wrong SRC, a half-restored snapshot, a reorganisation the
operator should look at before it happens) than routine, and a refusal costs only
a second command with a higher bound, while a wrong deletion costs a restore.
"""
from __future__ import annotations

import os
import re

from fleetsync.ledger import deletions
from fleetsync.ledger.logbook import show_path

from . import defaults
from .errors import UsageError

NAMES_SHOWN = 5      # entries a refusal names before "..."


def bound(text: str | None, dest_entries: int) -> int:
    """--max-delete as a number of entries (a percentage of dest_entries, rounded down).
    0 (or 0%) is a bound too: the pass is refused if it would delete anything."""
    text = (text or defaults.MAX_DELETE).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)%|(\d+)", text)
    if not m:
        raise UsageError(f"--max-delete {text}: give a count (500) or a percentage (10%)")
    if m[2] is not None:
        return int(m[2])
    if float(m[1]) > 100:
        # 150% bounds nothing: the operator meant another number, or a count.
        raise UsageError(f"--max-delete {text}: a percentage of DEST's entries is at most "
                         "100%; give a count (500) for a number of entries")
    return int(float(m[1]) * dest_entries / 100)


def check_bound_syntax(text: str | None) -> None:
    """Bad operator input is refused before anything runs."""
    bound(text, 0)


def missing_top_level(conn, src: str, allowed: list[str]) -> list[bytes]:
    """Top-level entries the ledger copied before that SRC no longer has (and that
    the operator did not name), sorted."""
    known = deletions.top_level_entries(conn)
    present = set(os.listdir(os.fsencode(src)))
    return sorted(known - present - {os.fsencode(a).rstrip(b"/") for a in allowed})


def refuse_missing(missing: list[bytes], src: str) -> UsageError:
    names = ", ".join(show_path(m) for m in missing[:NAMES_SHOWN])
    more = f" and {len(missing) - NAMES_SHOWN} more" if len(missing) > NAMES_SHOWN else ""
    allow = " ".join(f"--allow-delete {show_path(m)!r}" for m in missing[:NAMES_SHOWN])
    return UsageError(
        f"--delete refused: {len(missing)} top-level entries that the ledger copied before "
        f"are missing from SRC {src} ({names}{more}): not mounted, or the wrong SRC? "
        f"If they were removed on purpose, name them ({allow}{' ...' if more else ''}) "
        f"or give --max-delete; nothing was changed")


class DeleteRefused(UsageError):
    """The dry-run pass counted more than --max-delete: the real pass does not run."""


def refuse_count(would: int, limit: int, text: str | None, dest_entries: int,
                 examples: list[str]) -> DeleteRefused:
    shown = ", ".join(examples[:NAMES_SHOWN]) + (", ..." if would > NAMES_SHOWN else "")
    return DeleteRefused(
        f"--delete refused: the pass would delete {would} entries from DEST, over "
        f"--max-delete {text or defaults.MAX_DELETE} ({limit} of {dest_entries} entries): "
        f"{shown} (every one in table deletions, dry_run = 1); nothing was deleted. "
        f"If that is right, run again with --max-delete {would}")
