"""Per-file outcomes: every entry that did not arrive, and why (table entry_outcomes).

Rows come from two places: the walk (an entry it could not stat, a directory it
could not list or enter) and an attempt's rsync (its per-file error lines, mapped
to the batch's entries by controller/file_outcomes.py). A row is never deleted:
it is *settled* when a later copy of its entry arrived, so the open rows, with
the entries of batches that failed as a whole, are exactly what is not at DEST
(view missing_entries; `not_arrived` counts them).

A batch whose attempt ended with per-file errors only (`rest_arrived`) has every
other entry at DEST: its next copy (a retry, or `fleetsync retry --failed`) sends
the entries of its open rows alone (batches.entries). An entry that vanished from
SRC is never sent again by its batch; a later walk that sees it again queues it
in a new batch, whose success settles the row.

SQL style: plain SQL (sqlite3 dialect, `?` parameters), inside the caller's
transaction: rows are written in the same transaction as the batch transition
(ledger/batches.py) or the walk's enqueue (ledger/walkqueue.py). Two carriers
for the one style: the walk's functions (record_walk, any_unlisted,
settle_listed) run on the walk's raw sqlite3 cursor, because they are on its hot
path; every other function takes a Connection and runs through exec_driver_sql.
The API's reads of this table live in ledger/queries.py.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from . import logbook
from .logbook import show_path
from .states import BatchState, EntryClass, EntrySource, LogLevel

_VANISHED, _PERMANENT, _MAY_HEAL = (EntryClass.VANISHED.value, EntryClass.PERMANENT.value,
                                    EntryClass.MAY_HEAL.value)
_RSYNC, _WALK_LIST = EntrySource.RSYNC.value, EntrySource.WALK_LIST.value
_FAILED = BatchState.FAILED.value
LOG_NAMES = 5          # entries one log line names


@dataclass
class EntryOutcome:
    """One entry that did not arrive (path None: a line that names no entry we know)."""
    path: bytes | None
    cls: EntryClass
    reason: str
    errno: int | None = None
    source: EntrySource = EntrySource.RSYNC


_INSERT = ("INSERT INTO entry_outcomes(task_id, attempt_id, source, path, class, errno, "
           "reason, rest_arrived, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


def _rows(task_id, attempt_id, outcomes, rest_arrived, now):
    return [(task_id, attempt_id, o.source.value, o.path, o.cls.value, o.errno, o.reason,
             int(rest_arrived), now) for o in outcomes]


def record_walk(cur, task_id: int | None, outcomes: list[EntryOutcome], now: float) -> None:
    """The walk's errors, with their log lines, on the walk's raw cursor (inside its
    transaction). task_id: the batch they were cut with, if it has entries."""
    cur.executemany(_INSERT, _rows(task_id, None, outcomes, False, now))
    logbook.write(cur, [(now, LogLevel.WARNING if o.cls is EntryClass.VANISHED else LogLevel.ERROR, None,
                         None, o.reason) for o in outcomes])


def any_unlisted(cur) -> bool:
    """Some directory that a walk could not list is still open (raw cursor)."""
    return bool(cur.execute("SELECT EXISTS (SELECT 1 FROM entry_outcomes WHERE settled_ts "
                            "IS NULL AND source = ?)", (_WALK_LIST,)).fetchone()[0])


def settle_listed(cur, dirs: list[bytes], now: float) -> None:
    """Directories an earlier walk could not list, listed in full now (a --rescan
    once their owner fixed them): their contents are known and queued, each entry
    now settled by its own copy, so the directory's row settles (raw cursor, inside
    the walk's transaction; its arrival alone never settles it, see _settle_paths)."""
    cur.executemany("UPDATE entry_outcomes SET settled_ts = ? WHERE settled_ts IS NULL "
                    "AND source = ? AND path = ?", [(now, _WALK_LIST, d) for d in dirs])


def record_attempt(conn: Connection, task_id: int, attempt_id: int, copied: list[bytes] | None,
                   outcomes: list[EntryOutcome], rest_arrived: bool, known: bool,
                   now: float) -> None:
    """One attempt's per-file rows, inside the caller's transaction; and what it
    settled. copied: the entries the attempt sent (None: every entry of the batch).
    known: the attempt says, entry by entry, what did not arrive (it succeeded, or
    failed with per-file errors only), so every other entry it sent arrived."""
    if outcomes:
        conn.exec_driver_sql(_INSERT, _rows(task_id, attempt_id, outcomes, rest_arrived, now))
    if not known:
        return
    failed = {o.path for o in outcomes if o.path is not None}
    _settle_batch(conn, task_id, attempt_id, copied, now)
    if _any_open_elsewhere(conn, task_id):
        arrived = _arrived(conn, task_id, copied, failed)
        _settle_paths(conn, task_id, attempt_id, arrived, now)


def _settle_batch(conn, task_id, attempt_id, copied, now) -> None:
    """Earlier rows of this batch whose entry this attempt sent: it arrived, or this
    attempt's own row for it now speaks for it (one open row per entry)."""
    open_rows = conn.exec_driver_sql(
        "SELECT outcome_id, path FROM entry_outcomes WHERE task_id = ? AND settled_ts IS NULL "
        "AND source = ? AND attempt_id < ?", (task_id, _RSYNC, attempt_id)).all()
    sent = None if copied is None else set(copied)
    done = [oid for oid, path in open_rows
            if (path is None and sent is None)
            or (path is not None and (sent is None or bytes(path) in sent))]
    if done:
        conn.exec_driver_sql("UPDATE entry_outcomes SET settled_ts = ?, settled_by = ? "
                             "WHERE outcome_id = ?", [(now, attempt_id, oid) for oid in done])


def _any_open_elsewhere(conn, task_id) -> bool:
    return bool(conn.exec_driver_sql(
        "SELECT EXISTS (SELECT 1 FROM entry_outcomes WHERE settled_ts IS NULL "
        "AND (task_id IS NULL OR task_id != ?))", (task_id,)).scalar())


def _arrived(conn, task_id, copied, failed) -> list[bytes]:
    if copied is None:
        copied = [bytes(p) for (p,) in conn.exec_driver_sql(
            "SELECT path FROM batch_files WHERE task_id = ?", (task_id,)).all()]
    return [p for p in copied if p not in failed]


def _settle_paths(conn, task_id, attempt_id, arrived, now) -> None:
    """Rows of other batches (and of the walk) for an entry that has arrived now: a
    --rescan copied it again, a vanished entry came back. A directory the walk could
    not list is not settled by the directory's own arrival: its contents are unknown."""
    if not arrived:
        return
    conn.exec_driver_sql(
        "UPDATE entry_outcomes SET settled_ts = ?, settled_by = ? WHERE settled_ts IS NULL "
        "AND path = ? AND (task_id IS NULL OR task_id != ?) AND source != ?",
        [(now, attempt_id, p, task_id, _WALK_LIST) for p in arrived])


def to_copy_again(conn: Connection, task_id: int) -> tuple[set[bytes], set[bytes]]:
    """(entries to send alone, entries never to send) for the batch's next copy:
    the open rows of an attempt whose other entries arrived, and the entries that
    vanished from SRC. Empty sets: the whole batch. A read inside the caller's
    transaction (one index probe when the batch has no open rows)."""
    rows = conn.exec_driver_sql(
        "SELECT path, class, rest_arrived FROM entry_outcomes WHERE task_id = ? "
        "AND settled_ts IS NULL AND source = ? AND path IS NOT NULL",
        (task_id, _RSYNC)).all()
    again = {bytes(p) for p, cls, rest in rows if rest and cls != _VANISHED}
    never = {bytes(p) for p, cls, _ in rows if cls == _VANISHED}
    return again - never, never


# Why rsync could not put an entry at DEST: an entry of another type holds its name
# there (a directory that became a file in SRC). controller/outcome.py gives it.
IN_THE_WAY = "a DEST entry of another type is in the way"


def in_the_way(conn: Connection) -> list[int]:
    """Failed batches with an entry still blocked by a DEST entry of another type
    (only --delete may remove that entry's subtree; see controller/commands.py)."""
    with conn.begin():
        return [t for (t,) in conn.exec_driver_sql(
            "SELECT DISTINCT o.task_id FROM entry_outcomes o JOIN batches b USING (task_id) "
            "WHERE o.settled_ts IS NULL AND o.source = ? AND o.reason LIKE ? "
            "AND b.state = ? ORDER BY o.task_id",
            (_RSYNC, "%: " + IN_THE_WAY, _FAILED)).all()]


def for_batch(rows: list[tuple]) -> list[dict]:
    """/batches/<task_id>'s failed_entries from rows of
    (path, class, reason, errno, source, attempt_id, settled_ts)."""
    return [{"path": None if p is None else show_path(bytes(p)),
             "path_hex": None if p is None else bytes(p).hex(),
             "class": cls, "reason": reason, "errno": errno, "source": source,
             "attempt_id": attempt_id, "open": settled is None}
            for p, cls, reason, errno, source, attempt_id, settled in rows]


def log_line(task_id: int, outcomes: list[EntryOutcome]) -> str:
    """One log line naming an attempt's entries that did not arrive (paths through
    the one formatter, ledger/logbook.show_path)."""
    named = [f"{'(unmapped)' if o.path is None else show_path(o.path)}: {o.reason}"
             for o in outcomes[:LOG_NAMES]]
    more = f"; ... {len(outcomes) - LOG_NAMES} more" if len(outcomes) > LOG_NAMES else ""
    return (f"task {task_id}: {len(outcomes)} entries did not arrive: " + "; ".join(named)
            + more + " (view missing_entries)")
