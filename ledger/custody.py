"""Custody of each file (issue 23): SRC's checksum, recorded while copying, and what
`fleetsync verify` found at DEST, in batch_files.checksum and batch_files.verified.

The algorithm is the migration's, fixed when its ledger is created (the options'
`checksum_choice`, rsync's name for it): one ledger never mixes two kinds of digest.
A digest is stored raw (16 bytes for xxh128 and md5, 20 for sha1), half the bytes
of its hex.

SQL style: SQLAlchemy text(), but the per-file writes go to the driver's executemany
with plain tuples (exec_driver_sql): one UPDATE per file, keyed by the table's own
primary key (task_id, path), in the caller's transaction; SQLAlchemy's parameter
building cost more than SQLite's own work there (bench/custody.py).
"""
from __future__ import annotations

from sqlalchemy import Connection, text

from .defaults import CHECKSUM_CHOICE
from .errors import FleetsyncError
from .states import AttemptStatus, BatchState, FileVerdict

# rsync's names (--checksum-choice) of the algorithms fleetsync records, and the
# length of their digests in bytes. md5 and sha1 for auditors who want the standard
# tools (md5sum, sha1sum); xxh128 (`xxhsum -H2`) is rsync's own transfer checksum.
ALGORITHMS = {"xxh128": 16, "md5": 16, "sha1": 20}
OPTION = "checksum_choice"     # the key of migration.options


class ChecksumChoiceError(FleetsyncError):
    """An algorithm fleetsync does not record, or not the one the ledger records."""


def check(name: str) -> str:
    """The algorithm's name as rsync spells it; one line for an unknown one."""
    if name not in ALGORITHMS:
        raise ChecksumChoiceError(
            f"--checksum-choice {name!r}: not one fleetsync records "
            f"(choose {', '.join(ALGORITHMS)})")
    return name


def choice(options: dict) -> str:
    """The ledger's algorithm (a ledger older than custody: the default, which its
    first run with custody writes down)."""
    return options.get(OPTION, CHECKSUM_CHOICE)


def hex_width(name: str) -> int:
    return 2 * ALGORITHMS[name]


def record(conn: Connection, task_id: int, sums: dict[bytes, bytes]) -> None:
    """SRC's checksums of entries of one batch that arrived (inside the caller's
    transaction, the batch's transition). A new copy of the batch drops the verdicts
    of the old one (a later verify checks it again). Then the hard links of the
    batch that got none (rsync sends an inode once, under one of its names) take
    their group's."""
    if sums:
        # The driver's executemany with plain tuples, and only the checksum set:
        # SQLAlchemy's parameter dicts, or setting `verified` in the same UPDATE
        # (its partial index), cost more than SQLite's 500 updates (bench/custody.py).
        conn.exec_driver_sql("UPDATE batch_files SET checksum = ? WHERE task_id = ? AND path = ?",
                             [(c, task_id, p) for p, c in sums.items()])
    conn.execute(text("UPDATE batch_files SET verified = NULL WHERE task_id = :t "
                      "AND verified IS NOT NULL"), {"t": task_id})
    conn.execute(text(
        "UPDATE batch_files SET checksum = ("
        "  SELECT f.checksum FROM hardlinks h JOIN hardlinks g ON g.dev = h.dev "
        "  AND g.ino = h.ino AND g.task_id = h.task_id JOIN batch_files f "
        "  ON f.task_id = g.task_id AND f.path = g.path "
        "  WHERE h.task_id = batch_files.task_id AND h.path = batch_files.path "
        "  AND f.checksum IS NOT NULL LIMIT 1) "
        "WHERE task_id = :t AND checksum IS NULL "
        "AND path IN (SELECT path FROM hardlinks WHERE task_id = :t)"), {"t": task_id})


_REGULAR = ("FROM batch_files WHERE task_id = :t AND is_dir = 0 AND coalesce(type, 0) = 0 "
            "AND path NOT IN (SELECT path FROM entry_outcomes WHERE task_id = :t "
            "AND settled_ts IS NULL AND path IS NOT NULL)")


def regular_paths(conn: Connection, task_id: int) -> set[bytes]:
    """The batch's regular files that are to arrive (not those the ledger says did
    not): what owes a checksum. A ledger walked before types were recorded: every
    entry that is not a directory. A read inside the caller's transaction."""
    return {bytes(p) for p, in conn.execute(text("SELECT path " + _REGULAR), {"t": task_id})}


# A later batch that succeeded copied the path again (a rescan queued it: SRC changed
# after this batch's copy): its checksum, not this batch's, is what DEST must hold.
# Found through the index on CAST(path AS TEXT) (the text of a name is its bytes).
_COPIED_AGAIN = (" AND NOT EXISTS (SELECT 1 FROM batch_files l JOIN batches b "
                 f"ON b.task_id = l.task_id AND b.state = '{BatchState.SUCCEEDED.value}' "
                 "WHERE CAST(l.path AS TEXT) = CAST(batch_files.path AS TEXT) "
                 "AND l.path = batch_files.path AND l.task_id > batch_files.task_id)")


# --delete removed the path from DEST after this batch's copy: it left SRC (a rescan
# found it gone), and DEST without it is exact. rsync prints the names it deletes, so
# a name it escapes (\#ooo) does not match and is still checked: named missing,
# never passed over.
_DELETED_SINCE = (" AND NOT EXISTS (SELECT 1 FROM deletions d WHERE d.dry_run = 0 "
                  "AND d.path = CAST(batch_files.path AS TEXT) AND d.ts > (SELECT "
                  "max(a.received_ts) FROM attempts a WHERE a.task_id = :t "
                  f"AND a.status = '{AttemptStatus.SUCCESS.value}'))")


def regular_files(conn: Connection, task_id: int) -> list[tuple[bytes, bytes | None, int]]:
    """What a verify of the batch hashes at DEST: regular_paths but those a later
    batch copied again or --delete removed since, as (path, SRC's recorded checksum
    or None, size), by path."""
    return [(bytes(p), None if c is None else bytes(c), s) for p, c, s in conn.execute(
        text("SELECT path, checksum, size " + _REGULAR + _COPIED_AGAIN + _DELETED_SINCE
             + " ORDER BY path"), {"t": task_id})]


def verdicts(recorded: dict[bytes, bytes | None], found: dict[bytes, bytes]
             ) -> dict[bytes, FileVerdict]:
    """Each regular file's verdict: its recorded checksum against DEST's (found:
    the digests of DEST's regular files by path)."""
    out = {}
    for path, mine in recorded.items():
        theirs = found.get(path)
        out[path] = (FileVerdict.MISSING if theirs is None
                     else FileVerdict.UNRECORDED if mine is None
                     else FileVerdict.SAME if theirs == mine else FileVerdict.DIFFERS)
    return out


def record_verdicts(conn: Connection, task_id: int, found: dict[bytes, FileVerdict]) -> None:
    """What a verify found of each file (inside the caller's transaction)."""
    if found:     # a batch of directories alone has no file to judge
        conn.exec_driver_sql("UPDATE batch_files SET verified = ? WHERE task_id = ? AND path = ?",
                             [(int(v), task_id, p) for p, v in found.items()])


def problems(conn: Connection, limit: int) -> tuple[dict[str, int], list[tuple[str, bytes]]]:
    """(files per problem, the first `limit` of them as (problem, path)): what a
    verify's summary names. A read inside the caller's transaction."""
    counts = dict(conn.execute(text(
        "SELECT problem, count(*) FROM custody_problems GROUP BY problem")).all())
    named = [(p, bytes(path)) for p, path in conn.execute(text(
        "SELECT problem, path FROM custody_problems ORDER BY task_id, path LIMIT :n"),
        {"n": limit})]
    return counts, named
