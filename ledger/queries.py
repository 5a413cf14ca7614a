"""Every read the status API and `fleetsync status` make.

Pure functions of an open Connection. Numbers read through one Connection
come from one snapshot until the caller ends its transaction (the API opens
one read transaction per request). Counts come from `batch_counts` (kept by
triggers), never from scanning `batches`, so every answer here costs O(1) or
O(page size) at any number of batches.

SQL style: plain SQL run on the raw sqlite3 cursor (see `_rows` for the measured
reason), with named parameters; states are bound from ledger/states.py.

Rounding (the same everywhere): `elapsed_sec` to 1 decimal; every rate and
every `gb_*` value to 2 decimals. Rates are computed from the rounded
`elapsed_sec` shown next to them, so a client dividing the numbers it got
finds the same rate; a rate is 0.0 while `elapsed_sec` is 0.
"""
from __future__ import annotations

import json
import sqlite3
import time
from collections import namedtuple
from collections.abc import Iterator

from sqlalchemy import Connection

from . import entry_outcomes as _entry_outcomes
from . import migration as _migration
from . import schema as _schema
from .defaults import CHECKSUM_CHOICE, ENTRIES_PAGE, LOGS_LIMIT, RESULTS_PAGE, RETAINED_LIMIT
from .logbook import show_path
from .states import (AttemptStatus, BatchState, EntryClass, EntrySource, FileVerdict, LogLevel,
                     ProducerState, WorkerState)

GIB = 1024 ** 3
HEARTBEAT_FORMAT = "%Y-%m-%d %H:%M:%S"
# Plain strings: these run on every /status request, and Enum attribute access is not free.
_PENDING, _SUCCEEDED, _FAILED = (BatchState.PENDING.value, BatchState.SUCCEEDED.value,
                                 BatchState.FAILED.value)
_STATES = tuple(s.value for s in BatchState)
_DONE = ProducerState.DONE.value
_LOST = WorkerState.LOST.value

_COUNTS = "SELECT state, batches, files, directories, bytes FROM batch_counts"
_PRODUCERS_DONE = "SELECT count(*) FROM producers WHERE state = :done"
_MIGRATION = "SELECT elapsed_before, run_started_ts, run_heartbeat_ts FROM migration"
_HEARTBEATS = ("SELECT worker_id, heartbeat_ts FROM workers "
               "WHERE heartbeat_ts IS NOT NULL ORDER BY worker_id")
_WORKER_STATES = "SELECT worker_id, host, state, backoff_until FROM workers ORDER BY worker_id"
# The log_level index (level, log_id) makes this a walk of `limit` index entries.
_LOG_TAIL = ("SELECT log_id, ts, message FROM log WHERE level = :level "
             "ORDER BY log_id DESC LIMIT :limit")
# min() and max() of an INTEGER PRIMARY KEY read the two ends of the b-tree: O(1).
# Each needs its own SELECT: side by side in one, SQLite scans the table.
_ATTEMPT_IDS = ("SELECT (SELECT min(attempt_id) FROM attempts), "
                "(SELECT max(attempt_id) FROM attempts)")
_BATCH_COLUMNS = ("task_id", "state", "file_count", "directory_count", "estimated_bytes",
                  "retry_count", "claim", "worker_id", "producer_id", "last_exit_code",
                  "created_ts", "claimed_ts", "finished_ts")
_BATCH = f"SELECT {', '.join(_BATCH_COLUMNS)} FROM batches WHERE task_id = :t"
_ENTRIES = ("SELECT path, is_dir, size FROM batch_files WHERE task_id = :t "
            "ORDER BY path LIMIT :limit OFFSET :offset")
_ENTRY_COUNT = "SELECT count(*) FROM batch_files WHERE task_id = :t"

# attempts first (a LEFT JOIN keeps SQLite from starting at batches), then the
# batch's sizes by primary key: a page costs O(limit), not a scan.
_ResultRow = namedtuple("_ResultRow", "attempt_id worker_id task_id status retry_count "
                        "rsync_exit_code bytes_sent bytes_received start_ts end_ts "
                        "file_count directory_count estimated_bytes errors received_ts")
_RESULTS_FROM = (
    "SELECT a.attempt_id, a.worker_id, a.task_id, a.status, a.retry_count, "
    "a.rsync_exit_code, a.bytes_sent, a.bytes_received, a.start_ts, a.end_ts, "
    "b.file_count, b.directory_count, b.estimated_bytes, a.errors, a.received_ts "
    "FROM attempts a LEFT JOIN batches b ON b.task_id = a.task_id ")

_MigrationTimes = namedtuple("_MigrationTimes", "elapsed_before run_started_ts run_heartbeat_ts")


def _rows(conn: Connection, sql: str, params: dict | None = None) -> list[tuple]:
    """Rows of sql, run on the DBAPI connection inside conn's transaction.

    /status and /progress are polled thousands of times a second; SQLAlchemy's
    statement and result layers cost ~35 us per query, the sqlite3 cursor ~4
    (measured; see bench/api.py). Beginning the transaction through conn (as
    SQLAlchemy's autobegin would) keeps one snapshot across the calls.
    """
    if not conn.in_transaction():
        conn.begin()
    return conn.connection.driver_connection.execute(sql, params or {}).fetchall()


def _value(conn: Connection, sql: str, params: dict | None = None):
    return _rows(conn, sql, params)[0][0]


def batch_counts(conn: Connection) -> dict[str, dict[str, int]]:
    """{state: {batches, files, directories, bytes}} for every BatchState (zeros if absent)."""
    counts = {s: dict(batches=0, files=0, directories=0, bytes=0) for s in _STATES}
    for state, n, files, dirs, size in _rows(conn, _COUNTS):
        counts[state] = dict(batches=n, files=files, directories=dirs, bytes=size)
    return counts


def _progress(counts: dict) -> dict[str, int]:
    total = sum(c["batches"] for c in counts.values())
    completed = counts[_SUCCEEDED]["batches"]
    failed = counts[_FAILED]["batches"]
    return dict(total=total, completed=completed, failed=failed,
                pending=total - completed - failed)


def progress(conn: Connection, counts: dict | None = None) -> dict[str, int]:
    """/progress: pending = total - completed - failed (it includes running batches).
    counts: batch_counts(conn) when the caller has it already (the same snapshot)."""
    return _progress(counts or batch_counts(conn))


def status(conn: Connection, counts: dict | None = None) -> dict[str, int]:
    """/status: queue_depth counts waiting batches only, not running ones."""
    counts = counts or batch_counts(conn)
    p = _progress(counts)
    return dict(total_batches=p["total"], completed_batches=p["completed"],
                failed_batches=p["failed"],
                queue_depth=counts[_PENDING]["batches"],
                producers_done=_value(conn, _PRODUCERS_DONE, {"done": _DONE}),
                # Added key (issue 10): entries that could not be read or written (view
                # missing_entries; those that vanished from SRC are not counted).
                entries_not_arrived=not_arrived(conn)[0])


# Entries that did not arrive (not counting those that vanished from SRC): open
# rows that say so entry by entry, plus every entry of a batch that failed as a
# whole. Both parts read partial indexes: O(open rows + failed batches), so the
# states are written into the text (a partial index needs the literal).
_VANISHED, _RSYNC = EntryClass.VANISHED.value, EntrySource.RSYNC.value
_NOT_ARRIVED = f"""SELECT
  (SELECT count(*) FROM entry_outcomes WHERE settled_ts IS NULL AND class != '{_VANISHED}'
     AND (rest_arrived = 1 OR source != '{_RSYNC}'))
  + (SELECT coalesce(sum(b.file_count + b.directory_count), 0) FROM batches b
     WHERE b.state = '{_FAILED}' AND NOT EXISTS (SELECT 1 FROM entry_outcomes o
       WHERE o.task_id = b.task_id AND o.settled_ts IS NULL AND o.rest_arrived = 1)),
  (SELECT count(*) FROM entry_outcomes WHERE settled_ts IS NULL AND class = '{_VANISHED}')"""


def not_arrived(conn: Connection) -> tuple[int, int]:
    """(entries that did not arrive, entries that vanished from SRC); 0, 0 on a
    ledger made before per-file outcomes (no table yet)."""
    try:
        return tuple(_rows(conn, _NOT_ARRIVED)[0])
    except sqlite3.OperationalError as e:
        if not _schema.no_such_table(e):
            raise
        return 0, 0


def elapsed_sec(conn: Connection, now: float | None = None) -> float:
    """Running time across resumes, unrounded; 0.0 before the migration row exists."""
    rows = _rows(conn, _MIGRATION)
    return _migration.elapsed(_MigrationTimes(*rows[0]), now) if rows else 0.0


def _rate(value: float, seconds: float) -> float:
    return round(value / seconds, 2) if seconds > 0 else 0.0


def throughput(conn: Connection, now: float | None = None,
               counts: dict | None = None) -> dict[str, int | float]:
    """/throughput, from succeeded batches; bytes are the sizes the walk scanned.

    elapsed_sec is rounded to 1 decimal, gb_* and rates to 2 decimals; rates
    divide by the rounded elapsed_sec (0.0 while it is 0).
    """
    counts = counts or batch_counts(conn)
    done = counts[_SUCCEEDED]
    seconds = round(elapsed_sec(conn, now), 1)
    return dict(
        batches_per_sec=_rate(done["batches"], seconds),
        elapsed_sec=seconds,
        batches_completed=done["batches"],
        batches_failed=counts[_FAILED]["batches"],
        files_processed=done["files"],
        bytes_processed=done["bytes"],
        gb_processed=round(done["bytes"] / GIB, 2),
        bytes_per_sec=_rate(done["bytes"], seconds),
        gb_per_sec=_rate(done["bytes"] / GIB, seconds),
        files_per_sec=_rate(done["files"], seconds),
    )


def summary(conn: Connection, now: float | None = None,
            counts: dict | None = None) -> dict[str, dict]:
    """What `fleetsync status` prints: /status, /progress and /throughput of one snapshot
    (batch_counts read once for the three, or given)."""
    counts = counts or batch_counts(conn)
    return dict(status=status(conn, counts), progress=progress(conn, counts),
                throughput=throughput(conn, now, counts))


def local_time(ts: float) -> str:
    """A heartbeat as the master's local time, YYYY-MM-DD HH:MM:SS."""
    return time.strftime(HEARTBEAT_FORMAT, time.localtime(ts))


def heartbeat_times(conn: Connection) -> list[tuple[str, float]]:
    """(worker_id, heartbeat_ts) of every worker heard from, by worker_id."""
    return _rows(conn, _HEARTBEATS)


def heartbeats(conn: Connection) -> dict[str, dict]:
    """/workers: {"heartbeats": {worker_id: local time}} (workers never heard from are
    left out), and beside it "workers": each one's host, state and next try."""
    return {"heartbeats": {w: local_time(ts) for w, ts in heartbeat_times(conn)},
            "workers": worker_states(conn)}


def worker_states(conn: Connection) -> dict[str, dict]:
    """{worker_id: {"host", "state": up | lost | gone, "next_try"}}: next_try is when a
    lost worker is tried again (master local time), null otherwise."""
    return {w: {"host": host, "state": state,
                "next_try": local_time(until) if state == _LOST and until else None}
            for w, host, state, until in _rows(conn, _WORKER_STATES)}


def logs(conn: Connection, limit: int = LOGS_LIMIT) -> dict[str, list]:
    """/logs: the newest `limit` warnings and errors, each list newest last; beside
    them (an added key) "lines": the same lines with their level and time (master
    local time), newest `limit` of both, newest last, so a reader can tell an hour-old
    warning from a fresh one."""
    warning, error = LogLevel.WARNING.value, LogLevel.ERROR.value
    tails = {level: _rows(conn, _LOG_TAIL, {"level": level, "limit": limit})
             for level in (warning, error)}
    timed = sorted(((log_id, ts, level, m) for level, rows in tails.items()
                    for log_id, ts, m in rows))[-limit:]
    return {"warnings": [m for _, _, m in reversed(tails[warning])],
            "errors": [m for _, _, m in reversed(tails[error])],
            "lines": [{"time": local_time(ts), "ts": ts, "level": level, "message": m}
                      for _, ts, level, m in timed]}


def _errors(stored: str | None) -> list[str]:
    """attempts.errors as a list; a value that is not a JSON list becomes its one line."""
    if stored == "[]":   # most attempts: skip the parser
        return []
    try:
        value = json.loads(stored) if stored else []
    except ValueError:
        return [stored]
    return value if isinstance(value, list) else [str(value)]


def _result(row: _ResultRow) -> dict:
    """One /results item, built from an attempts row and its batch's sizes."""
    return {
        "worker_id": row.worker_id,
        "task_id": row.task_id,
        "status": row.status,
        "retry_count": row.retry_count,
        "rsync_exit_code": row.rsync_exit_code,
        "stats": {
            "bytes_sent": row.bytes_sent,
            "bytes_received": row.bytes_received,
            "start_ts": row.start_ts,
            "end_ts": row.end_ts,
            "file_count": row.file_count,
            "directory_count": row.directory_count,
            "estimated_bytes": row.estimated_bytes,
        },
        "errors": _errors(row.errors),
        "received_ts": row.received_ts,
        "attempt_id": row.attempt_id,   # the paging cursor (an added key)
    }


def _results(conn: Connection, sql: str, params: dict) -> list[dict]:
    return [_result(_ResultRow(*r)) for r in _rows(conn, _RESULTS_FROM + sql, params)]


def retained_window(conn: Connection, limit: int = RETAINED_LIMIT) -> tuple[int, int]:
    """(floor, retained_count): the retained attempts are those with attempt_id > floor.

    Attempts are never deleted (a trigger refuses it) and SQLite gives a new
    row max(attempt_id) + 1, so the ids have no gaps: the newest `limit`
    attempts are exactly the ids above max - limit, and their number comes
    from the two ends of the primary key without counting rows.
    """
    low, high = _rows(conn, _ATTEMPT_IDS)[0]
    if high is None:
        return 0, 0
    floor = max(high - limit, low - 1)
    return floor, high - floor


def _page(conn: Connection, floor: int, limit: int, after: int | None, before: int | None,
          status: str | None, worker: str | None) -> list[dict]:
    """Up to `limit` attempts above floor matching the filters, read by the primary key:
    the oldest ones after `after` when it is given, else the newest (below `before`);
    in attempt_id order either way."""
    params = {"floor": floor, "limit": limit, "after": after, "before": before,
              "status": status, "worker": worker}
    where = ["a.attempt_id > :floor"] + [
        cond for name, cond in (("after", "a.attempt_id > :after"),
                                ("before", "a.attempt_id < :before"),
                                ("status", "a.status = :status"),
                                ("worker", "a.worker_id = :worker"))
        if params[name] is not None]
    order = "ASC" if after is not None else "DESC"
    page = _results(conn, f"WHERE {' AND '.join(where)} "
                          f"ORDER BY a.attempt_id {order} LIMIT :limit", params)
    if order == "DESC":
        page.reverse()
    return page


def results(conn: Connection, limit: int = RESULTS_PAGE, after: int | None = None,
            before: int | None = None, status: str | None = None,
            worker: str | None = None, retained_limit: int = RETAINED_LIMIT) -> dict:
    """/results with a page named: a page of the retained attempts, oldest first (newest last).

    Without `after`, the page is the newest `limit` matches (below `before`
    if given). With `after`, it is the oldest `limit` matches whose
    attempt_id is greater than `after`: pass the last attempt_id you got to
    read forward, or the first one as `before` to read backward. Attempts
    older than the retained window are never served.
    """
    floor, retained = retained_window(conn, retained_limit)
    page = _page(conn, floor, limit, after, before, status, worker)
    return {"results": page, "retained_limit": retained_limit, "retained_count": retained}


def retained_results(conn: Connection, status: str | None = None, worker: str | None = None,
                     retained_limit: int = RETAINED_LIMIT, chunk: int = 1000
                     ) -> tuple[int, Iterator[list[dict]]]:
    """Bare /results: (retained_count, pages of every retained attempt matching the filters).

    Oldest first, `chunk` results a page, each page read by the primary key from
    the last attempt_id of the one before (O(chunk) each, never an OFFSET scan).
    Iterate the pages inside the caller's transaction: they are then of the
    same snapshot as retained_count, and without filters their total is
    exactly retained_count.
    """
    floor, retained = retained_window(conn, retained_limit)

    def pages() -> Iterator[list[dict]]:
        cursor = floor
        while True:
            page = _page(conn, floor, chunk, cursor, None, status, worker)
            if not page:
                return
            yield page
            if len(page) < chunk:
                return
            cursor = page[-1]["attempt_id"]
    return retained, pages()


def batch(conn: Connection, task_id: int, limit: int = ENTRIES_PAGE,
          offset: int = 0) -> dict | None:
    """/batches/<task_id>: the batch row, a page of its entries, every attempt; None if unknown.

    Each entry's `path` is for reading (not unique: a real backslash looks
    like an escape); `path_hex` is the exact bytes, as in sqlite3's
    `WHERE path = X'...'`.
    """
    found = _rows(conn, _BATCH, {"t": task_id})
    if not found:
        return None
    entries = _entries(conn, task_id, limit, offset)
    return {"batch": dict(zip(_BATCH_COLUMNS, found[0])), "entries": entries,
            "entries_total": _value(conn, _ENTRY_COUNT, {"t": task_id}),
            # Added key (issue 10): its entries that did not arrive, and why ("open":
            # false once a later copy of the entry arrived).
            "failed_entries": _failed_entries(conn, task_id),
            "attempts": _results(conn, "WHERE a.task_id = :t ORDER BY a.attempt_id",
                                 {"t": task_id})}


_CUSTODY_ENTRIES = ("SELECT path, is_dir, size, checksum, verified FROM batch_files "
                    "WHERE task_id = :t ORDER BY path LIMIT :limit OFFSET :offset")
_CHECKSUM_CHOICE = "SELECT json_extract(options, '$.checksum_choice') FROM migration"
# Added keys of each entry (issue 23): SRC's checksum recorded while copying, as
# `ALGO:HEX` with rsync's name of the algorithm (null: none recorded), and what the
# last verify found at DEST (null: not checked).
_VERDICTS = {v.value: v.name.lower() for v in FileVerdict}


def _entries(conn: Connection, task_id: int, limit: int, offset: int) -> list[dict]:
    args = {"t": task_id, "limit": limit, "offset": offset}
    try:
        rows = _rows(conn, _CUSTODY_ENTRIES, args)
        algorithm = _value(conn, _CHECKSUM_CHOICE, {}) or CHECKSUM_CHOICE
    except sqlite3.OperationalError as e:
        if "no such column" not in str(e):
            raise
        # A ledger older than custody, served read-only (no one added its columns).
        rows = [(*r, None, None) for r in _rows(conn, _ENTRIES, args)]
        algorithm = CHECKSUM_CHOICE
    return [{"path": show_path(bytes(p)), "path_hex": bytes(p).hex(), "is_dir": bool(d),
             "size": s, "checksum": None if c is None else f"{algorithm}:{bytes(c).hex()}",
             "verified": _VERDICTS.get(v)} for p, d, s, c, v in rows]


_FAILED_ENTRIES = ("SELECT path, class, reason, errno, source, attempt_id, settled_ts "
                   "FROM entry_outcomes WHERE task_id = :t ORDER BY outcome_id")


def _failed_entries(conn: Connection, task_id: int) -> list[dict]:
    try:
        rows = _rows(conn, _FAILED_ENTRIES, {"t": task_id})
    except sqlite3.OperationalError as e:
        if not _schema.no_such_table(e):
            raise
        return []
    return _entry_outcomes.for_batch(rows)


# /metrics' counters (api/metrics.py): not a hot route, so SQLAlchemy's driver SQL.
_ATTEMPT_COUNTS = "SELECT status, attempts, bytes_sent, bytes_received FROM attempt_counts"
# A ledger last opened by a fleetsync older than attempt_counts (served read-only,
# so it cannot be added here): the same numbers by a scan, until `run` adds the table.
_ATTEMPT_SCAN = ("SELECT status, count(*), coalesce(sum(bytes_sent), 0), "
                 "coalesce(sum(bytes_received), 0) FROM attempts GROUP BY status")
_OUTCOME_COUNTS = "SELECT class, entries FROM outcome_counts"
_OUTCOME_SCAN = "SELECT class, count(*) FROM entry_outcomes GROUP BY class"
_WORKER_ROWS = "SELECT worker_id, host, state, heartbeat_ts FROM workers ORDER BY worker_id"


def attempt_counts(conn: Connection) -> dict[str, tuple[int, int, int]]:
    """{status: (attempts, bytes_sent, bytes_received)} for every AttemptStatus."""
    sql = _ATTEMPT_COUNTS if _schema.has_table(conn, "attempt_counts") else _ATTEMPT_SCAN
    counts = {s.value: (0, 0, 0) for s in AttemptStatus}
    for status, n, sent, received in conn.exec_driver_sql(sql).all():
        counts[status] = (n, sent, received)
    return counts


def outcome_counts(conn: Connection) -> dict[str, int]:
    """{class: entries recorded as not arrived} for every EntryClass (a ledger older
    than outcome_counts: a scan; older than entry_outcomes: none)."""
    counts = {c.value: 0 for c in EntryClass}
    if _schema.has_table(conn, "outcome_counts"):
        counts.update(conn.exec_driver_sql(_OUTCOME_COUNTS).all())
    elif _schema.has_table(conn, "entry_outcomes"):
        counts.update(conn.exec_driver_sql(_OUTCOME_SCAN).all())
    return counts


def worker_rows(conn: Connection) -> list[tuple]:
    """(worker_id, host, state, heartbeat_ts) of every worker."""
    return conn.exec_driver_sql(_WORKER_ROWS).all()
