"""The rows of `fleetsync report` (issue 23): one per entry of SRC the walk saw, and
one per entry a filter rule left out, each with its outcome.

Every row is merged, path by path, from five streams read in ascending byte order
of the path, so that nothing but the current path is held in memory whatever the
size of the tree:

- batch_files, through its batch_files_path_text index (its order is the bytes'
  order: SQLite compares TEXT with memcmp), with its batch and the batch's last
  attempt; a path queued again by a rescan is in several batches, and its row is
  that of its latest batch (the largest task_id);
- the view missing_entries, the one account of what did not arrive and why
  (ledger/schema.py): a path it names did not arrive, or vanished, whatever its
  batch's state says;
- the table pruned (what the rules left out; a directory once, nothing beneath);
- hard links still waiting in `hardlinks` for the walk's end (a live walk);
- what --delete removed from DEST (table deletions, names as rsync printed them:
  decoded and sorted here, so this stream is held whole; it is as long as what
  was deleted, not as the tree).

The caller holds one read transaction around header, every stream and the summary
(controller/report.py): a report of a ledger being written is one moment of it.

SQL style: plain SQL on the raw sqlite3 cursor of the caller's read connection,
as ledger/queries.py (one statement per stream, rows fetched as they are written).
"""
from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from typing import NamedTuple

from sqlalchemy import Connection

from .logbook import rsync_unescape
from .schema import has_table
from .states import BatchState, EntryClass, EntryType, ReportOutcome

# The outcome of an entry whose batch has not copied it yet, by the batch's state.
_NOT_YET = {BatchState.PENDING.value: "waiting to be copied (its batch is pending)",
            BatchState.RUNNING.value: "being copied (its batch is running)"}
_ARRIVED = ReportOutcome.ARRIVED
_LINK_WAITS = "waiting to be batched (a hard link: batched once the walk ends)"
_FETCH = 2000          # rows a cursor fetches at a time

# The batch's last attempt, by the attempts_task index: a probe per row.
_FILES = """SELECT f.path, f.task_id, f.is_dir, f.type, f.size, f.mtime, f.checksum,
       f.verified, b.state, b.worker_id, a.attempt_id, a.end_ts
FROM batch_files f JOIN batches b ON b.task_id = f.task_id
LEFT JOIN attempts a ON a.attempt_id =
     (SELECT max(x.attempt_id) FROM attempts x WHERE x.task_id = f.task_id)
ORDER BY CAST(f.path AS TEXT), f.task_id"""
_MISSING = ("SELECT path, class, reason FROM missing_entries WHERE path IS NOT NULL "
            "ORDER BY path")
_UNMAPPED = "SELECT count(*) FROM missing_entries WHERE path IS NULL"
_PRUNED_KEPT = ("size", "type", "mtime")     # NULL in a ledger written before they were kept
_WAITING = ("SELECT path, size, type, mtime FROM hardlinks WHERE task_id IS NULL "
            "ORDER BY path")

_DELETED = "SELECT path, max(ts) FROM deletions WHERE dry_run = 0 GROUP BY path"

# Stream tags, in the order a path's rows arrive from heapq.merge.
_FILE, _MISS, _PRUNE, _LINK, _GONE = range(5)


class Entry(NamedTuple):
    """One row of the report. type None: not recorded (an excluded file, an entry the
    walk could not stat, a ledger written before the walk recorded types)."""
    path: bytes
    type: EntryType | None
    size: int | None
    mtime: int | None          # whole seconds since the epoch, as lstat said
    outcome: ReportOutcome
    reason: str                # why it did not arrive, or the rule; "" when it arrived
    checksum: bytes | None     # raw digest of SRC's bytes (custody)
    verified: int | None       # states.FileVerdict; None: not checked
    worker: str | None         # the worker that ran its batch last
    task_id: int | None
    attempt: int | None        # attempts.attempt_id: the batch's last attempt
    copied_ts: float | None    # that attempt's end, when the entry arrived


def _cursor(conn: Connection, sql: str) -> Iterator[tuple]:
    """The rows of sql, fetched a page at a time, in the caller's transaction."""
    if not conn.in_transaction():
        conn.begin()
    cur = conn.connection.driver_connection.execute(sql)
    while page := cur.fetchmany(_FETCH):
        yield from page


def _tagged(conn: Connection, sql: str, tag: int) -> Iterator[tuple]:
    return ((bytes(row[0]), tag, row) for row in _cursor(conn, sql))


def unmapped(conn: Connection) -> int:
    """Rows of missing_entries that name no entry (an rsync line no path of the batch
    matched): counted in the summary, they have no row of their own."""
    return next(_cursor(conn, _UNMAPPED))[0]


def entries(conn: Connection) -> Iterator[Entry]:
    """Every row of the report, in ascending byte order of the path."""
    streams = [_tagged(conn, _FILES, _FILE), _tagged(conn, _MISSING, _MISS)]
    if has_table(conn, "pruned"):
        streams.append(_tagged(conn, _pruned_sql(conn), _PRUNE))
    streams.append(_tagged(conn, _WAITING, _LINK))
    streams.append(_deleted(conn))
    merged = heapq.merge(*streams, key=lambda t: (t[0], t[1]))
    for path, group in itertools.groupby(merged, key=lambda t: t[0]):
        rows = [(tag, row) for _, tag, row in group]
        if any(tag != _GONE for tag, _ in rows):   # a deletion alone: DEST's, not SRC's
            yield _entry(path, rows)


def _deleted(conn: Connection) -> list[tuple]:
    """(path, _GONE, (path, when)) of what --delete removed from DEST, by path: a
    directory as rsync printed it (`d/`) is the path `d`."""
    gone: dict[bytes, float] = {}
    for printed, ts in _cursor(conn, _DELETED):
        path = rsync_unescape(printed.rstrip("/"))
        gone[path] = max(ts, gone.get(path, ts))
    return [(p, _GONE, (p, ts)) for p, ts in sorted(gone.items())]


def _pruned_sql(conn: Connection) -> str:
    have = {r[1] for r in conn.exec_driver_sql("PRAGMA table_info(pruned)")}
    kept = ", ".join(c if c in have else f"NULL AS {c}" for c in _PRUNED_KEPT)
    return f"SELECT path, is_dir, rule, {kept} FROM pruned ORDER BY path"


def _entry(path: bytes, rows: list[tuple[int, tuple]]) -> Entry:
    """The one row of a path from what each stream holds of it."""
    if len(rows) == 1 and rows[0][0] == _FILE:     # most paths: one batch, nothing else
        return _from_batch(path, rows[0][1], *_outcome(rows[0][1], (), None, None))
    files = [r for t, r in rows if t == _FILE]
    missing = [r for t, r in rows if t == _MISS]
    pruned = next((r for t, r in rows if t == _PRUNE), None)
    link = next((r for t, r in rows if t == _LINK), None)
    last = files[-1] if files else None          # ordered by task_id: the latest batch
    outcome, reason = _outcome(last, missing, pruned, link)
    gone = next((r for t, r in rows if t == _GONE), None)
    if outcome is _ARRIVED and gone is not None and gone[1] > (last[11] or 0):
        outcome = ReportOutcome.DELETED       # removed after its latest copy
    if last is not None:
        return _from_batch(path, last, outcome, reason)
    if link is not None:
        _, size, kind, mtime = link
        return Entry(path, _type(kind, 0), size, mtime, outcome, reason,
                     None, None, None, None, None, None)
    if pruned is not None:
        _, is_dir, _, size, kind, mtime = pruned
        return Entry(path, _type(kind, is_dir), size, mtime, outcome, reason,
                     None, None, None, None, None, None)
    return Entry(path, None, None, None, outcome, reason, None, None, None, None, None, None)


_TYPES = tuple(EntryType)     # by value: EntryType(kind) costs a microsecond a row


def _from_batch(path: bytes, last: tuple, outcome: ReportOutcome, reason: str) -> Entry:
    """A row from the path's latest batch (a row of _FILES)."""
    _, task_id, is_dir, kind, size, mtime, checksum, verified, _, worker, attempt, end = last
    copied = end if outcome is _ARRIVED else None
    return Entry(path, _type(kind, is_dir), size, mtime, outcome, reason,
                 checksum and bytes(checksum), verified, worker, task_id, attempt, copied)


def _type(kind: int | None, is_dir: int) -> EntryType | None:
    if kind is not None:
        return _TYPES[kind]
    return EntryType.DIR if is_dir else None


def _outcome(last, missing, pruned, link) -> tuple[ReportOutcome, str]:
    """The rule, in the order it is checked: excluded by the last walk's rules; named
    by missing_entries (vanished only when every row of it says so); else the state
    of its latest batch (succeeded, or failed with only other entries named: it
    arrived); a hard link the walk has not batched yet."""
    if pruned is not None:
        return ReportOutcome.EXCLUDED, pruned[2]
    if missing:
        if all(cls == EntryClass.VANISHED.value for _, cls, _ in missing):
            return ReportOutcome.VANISHED, missing[-1][2]
        return ReportOutcome.NOT_ARRIVED, "; ".join(
            reason for _, cls, reason in missing if cls != EntryClass.VANISHED.value)
    if last is not None:
        state = last[8]
        if state in _NOT_YET:
            return ReportOutcome.NOT_ARRIVED, _NOT_YET[state]
        return _ARRIVED, ""
    return ReportOutcome.NOT_ARRIVED, _LINK_WAITS    # only `hardlinks` holds it
