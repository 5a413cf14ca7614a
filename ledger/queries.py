"""Every read the status API and `fleetsync status` make.

Pure functions of an open Connection: the caller opens one read transaction
per request, so all the numbers of one answer come from one snapshot. Counts
come from `batch_counts` (kept by triggers), never from scanning `batches`, so
every answer here costs O(1) or O(page size) at any number of batches.

Rounding (the same everywhere): `elapsed_sec` to 1 decimal; every rate and
every `gb_*` value to 2 decimals. Rates are computed from the rounded
`elapsed_sec` shown next to them, so a client dividing the numbers it got
finds the same rate; a rate is 0.0 while `elapsed_sec` is 0.
"""
from __future__ import annotations

import json
import time

from sqlalchemy import Connection, text

from . import migration as _migration
from .schema import BatchState

GIB = 1024 ** 3
RETAINED_LIMIT = 100_000   # /results serves the newest this many attempts
RESULTS_PAGE = 100         # default page size of /results
LOGS_LIMIT = 100           # default number of warnings (and of errors) in /logs
HEARTBEAT_FORMAT = "%Y-%m-%d %H:%M:%S"

_COUNTS = text("SELECT state, batches, files, directories, bytes FROM batch_counts")
_PRODUCERS_DONE = text("SELECT count(*) FROM producers WHERE state = 'done'")
_MIGRATION = text("SELECT elapsed_before, run_started_ts, run_heartbeat_ts FROM migration")
_HEARTBEATS = text("SELECT worker_id, heartbeat_ts FROM workers "
                   "WHERE heartbeat_ts IS NOT NULL ORDER BY worker_id")
# The log_level index (level, log_id) makes this a walk of `limit` index entries.
_LOG_TAIL = text("SELECT message FROM log WHERE level = :level "
                 "ORDER BY log_id DESC LIMIT :limit")
# min() and max() of an INTEGER PRIMARY KEY read the two ends of the b-tree: O(1).
_ATTEMPT_IDS = text("SELECT min(attempt_id), max(attempt_id) FROM attempts")
_BATCH = text("SELECT task_id, state, file_count, directory_count, estimated_bytes, "
              "retry_count, claim, worker_id, producer_id, last_exit_code, created_ts, "
              "claimed_ts, finished_ts FROM batches WHERE task_id = :t")
_ENTRIES = text("SELECT path, is_dir, size FROM batch_files WHERE task_id = :t "
                "ORDER BY path LIMIT :limit OFFSET :offset")
_ENTRY_COUNT = text("SELECT count(*) FROM batch_files WHERE task_id = :t")

# attempts first (LEFT JOIN keeps SQLite from starting at batches), then the
# batch's sizes by primary key: a page costs O(limit), not a scan.
_RESULT_COLUMNS = (
    "SELECT a.attempt_id, a.worker_id, a.task_id, a.status, a.retry_count, "
    "a.rsync_exit_code, a.bytes_sent, a.bytes_received, a.start_ts, a.end_ts, "
    "b.file_count, b.directory_count, b.estimated_bytes, a.errors, a.received_ts "
    "FROM attempts a LEFT JOIN batches b ON b.task_id = a.task_id ")


def batch_counts(conn: Connection) -> dict[str, dict[str, int]]:
    """{state: {batches, files, directories, bytes}} for every BatchState (zeros if absent)."""
    counts = {s.value: dict(batches=0, files=0, directories=0, bytes=0) for s in BatchState}
    for state, n, files, dirs, size in conn.execute(_COUNTS):
        counts[state] = dict(batches=n, files=files, directories=dirs, bytes=size)
    return counts


def _progress(counts: dict) -> dict[str, int]:
    total = sum(c["batches"] for c in counts.values())
    completed = counts[BatchState.SUCCEEDED.value]["batches"]
    failed = counts[BatchState.FAILED.value]["batches"]
    return dict(total=total, completed=completed, failed=failed,
                pending=total - completed - failed)


def progress(conn: Connection) -> dict[str, int]:
    """/progress: pending = total - completed - failed (it includes running batches)."""
    return _progress(batch_counts(conn))


def status(conn: Connection) -> dict[str, int]:
    """/status: queue_depth counts waiting batches only, not running ones."""
    counts = batch_counts(conn)
    p = _progress(counts)
    return dict(total_batches=p["total"], completed_batches=p["completed"],
                failed_batches=p["failed"],
                queue_depth=counts[BatchState.PENDING.value]["batches"],
                producers_done=conn.execute(_PRODUCERS_DONE).scalar_one())


def elapsed_sec(conn: Connection, now: float | None = None) -> float:
    """Running time across resumes, unrounded; 0.0 before the migration row exists."""
    row = conn.execute(_MIGRATION).first()
    return _migration.elapsed(row, now) if row is not None else 0.0


def _rate(value: float, seconds: float) -> float:
    return round(value / seconds, 2) if seconds > 0 else 0.0


def throughput(conn: Connection, now: float | None = None) -> dict[str, int | float]:
    """/throughput, from succeeded batches; bytes are the sizes the walk scanned.

    elapsed_sec is rounded to 1 decimal, gb_* and rates to 2 decimals; rates
    divide by the rounded elapsed_sec (0.0 while it is 0).
    """
    counts = batch_counts(conn)
    done = counts[BatchState.SUCCEEDED.value]
    seconds = round(elapsed_sec(conn, now), 1)
    return dict(
        batches_per_sec=_rate(done["batches"], seconds),
        elapsed_sec=seconds,
        batches_completed=done["batches"],
        batches_failed=counts[BatchState.FAILED.value]["batches"],
        files_processed=done["files"],
        bytes_processed=done["bytes"],
        gb_processed=round(done["bytes"] / GIB, 2),
        bytes_per_sec=_rate(done["bytes"], seconds),
        gb_per_sec=_rate(done["bytes"] / GIB, seconds),
        files_per_sec=_rate(done["files"], seconds),
    )


def summary(conn: Connection, now: float | None = None) -> dict[str, dict]:
    """What `fleetsync status` prints: /status, /progress and /throughput of one snapshot."""
    return dict(status=status(conn), progress=progress(conn), throughput=throughput(conn, now))


def local_time(ts: float) -> str:
    """A heartbeat as the master's local time, YYYY-MM-DD HH:MM:SS."""
    return time.strftime(HEARTBEAT_FORMAT, time.localtime(ts))


def heartbeat_times(conn: Connection) -> list[tuple[str, float]]:
    """(worker_id, heartbeat_ts) of every worker heard from, by worker_id."""
    return [(w, ts) for w, ts in conn.execute(_HEARTBEATS)]


def heartbeats(conn: Connection) -> dict[str, dict[str, str]]:
    """/workers: {"heartbeats": {worker_id: local time}}; workers never heard from are left out."""
    return {"heartbeats": {w: local_time(ts) for w, ts in heartbeat_times(conn)}}


def logs(conn: Connection, limit: int = LOGS_LIMIT) -> dict[str, list[str]]:
    """/logs: the newest `limit` warnings and errors, each list newest last."""
    def tail(level: str) -> list[str]:
        rows = conn.execute(_LOG_TAIL, {"level": level, "limit": limit}).scalars().all()
        return rows[::-1]
    return {"warnings": tail("warning"), "errors": tail("error")}


def _errors(stored: str | None) -> list[str]:
    """attempts.errors as a list; a value that is not a JSON list becomes its one line."""
    try:
        value = json.loads(stored) if stored else []
    except ValueError:
        return [stored]
    return value if isinstance(value, list) else [str(value)]


def _result(row) -> dict:
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


def retained_window(conn: Connection, limit: int = RETAINED_LIMIT) -> tuple[int, int]:
    """(floor, retained_count): the retained attempts are those with attempt_id > floor.

    Attempts are never deleted (a trigger refuses it) and SQLite gives a new
    row max(attempt_id) + 1, so the ids are dense: the newest `limit`
    attempts are exactly the ids above max - limit, and their number comes
    from the two ends of the primary key without counting rows.
    """
    low, high = conn.execute(_ATTEMPT_IDS).one()
    if high is None:
        return 0, 0
    floor = max(high - limit, low - 1)
    return floor, high - floor


def results(conn: Connection, limit: int = RESULTS_PAGE, after: int | None = None,
            before: int | None = None, status: str | None = None,
            worker: str | None = None, retained_limit: int = RETAINED_LIMIT) -> dict:
    """/results: a page of the retained attempts, always oldest first (newest last).

    Without `after`, the page is the newest `limit` matches (below `before`
    if given). With `after`, it is the oldest `limit` matches whose
    attempt_id is greater than `after`: pass the last attempt_id you got to
    read forward, or the first one as `before` to read backward. Attempts
    older than the retained window are never served.
    """
    floor, retained = retained_window(conn, retained_limit)
    where = ["a.attempt_id > :floor"]
    params: dict = {"floor": floor, "limit": limit}
    if after is not None:
        where.append("a.attempt_id > :after")
        params["after"] = after
    if before is not None:
        where.append("a.attempt_id < :before")
        params["before"] = before
    if status is not None:
        where.append("a.status = :status")
        params["status"] = status
    if worker is not None:
        where.append("a.worker_id = :worker")
        params["worker"] = worker
    order = "ASC" if after is not None else "DESC"
    sql = (_RESULT_COLUMNS + "WHERE " + " AND ".join(where)
           + f" ORDER BY a.attempt_id {order} LIMIT :limit")
    rows = conn.execute(text(sql), params).all()
    if order == "DESC":
        rows.reverse()
    return {"results": [_result(r) for r in rows], "retained_limit": retained_limit,
            "retained_count": retained}


def display_path(raw: bytes) -> str:
    """A path for people: UTF-8 where it is, backslash escapes (\\xff) where it is not."""
    return raw.decode("utf-8", "backslashreplace")


def batch(conn: Connection, task_id: int, limit: int = 1000, offset: int = 0) -> dict | None:
    """/batches/<task_id>: the batch row, a page of its entries, and every attempt; None if unknown.

    Each entry's `path` is for reading (not unique: a real backslash looks
    like an escape); `path_hex` is the exact bytes, as in sqlite3's
    `WHERE path = X'...'`.
    """
    row = conn.execute(_BATCH, {"t": task_id}).first()
    if row is None:
        return None
    entries = [{"path": display_path(bytes(p)), "path_hex": bytes(p).hex(),
                "is_dir": bool(d), "size": s}
               for p, d, s in conn.execute(_ENTRIES, {"t": task_id, "limit": limit,
                                                      "offset": offset})]
    attempt_rows = conn.execute(text(_RESULT_COLUMNS + "WHERE a.task_id = :t "
                                     "ORDER BY a.attempt_id"), {"t": task_id}).all()
    return {"batch": dict(row._mapping), "entries": entries,
            "entries_total": conn.execute(_ENTRY_COUNT, {"t": task_id}).scalar_one(),
            "attempts": [_result(r) for r in attempt_rows]}
