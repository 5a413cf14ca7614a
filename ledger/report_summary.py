"""What `fleetsync report` says around its rows (issue 23): the migration (SRC, DEST,
options, rules, duration, whether a run still writes the ledger), its hosts, and
the throughput to plot over time and per worker.

Read in the caller's one read transaction, before and after ledger/report_rows.py's
streams (controller/report.py holds it): every number here is of the same moment as
the rows. Each read is an aggregate of bounded size (a row per worker, a row per
bucket of time), never a list of entries.

SQL style: plain SQL on the raw sqlite3 cursor, as ledger/queries.py (_rows).
"""
from __future__ import annotations

import json
from collections import namedtuple

from sqlalchemy import Connection

from . import estimate, migration
from .defaults import CHECKSUM_CHOICE, REPORT_BUCKETS
from .queries import _rows
from .states import AttemptStatus, RunState

_MIGRATION = ("SELECT migration_id, src, dest, options, created_ts, elapsed_before, "
              "run_started_ts, run_heartbeat_ts, finished_ts FROM migration")
_HOSTS = """SELECT w.worker_id, w.host, w.state, t.batches, t.files, t.bytes, t.wall_seconds
FROM workers w LEFT JOIN worker_throughput t USING (worker_id) ORDER BY w.host, w.worker_id"""
_SPAN = ("SELECT min(start_ts), max(end_ts) FROM attempts WHERE status = :ok "
         "AND start_ts IS NOT NULL AND end_ts >= start_ts")
# Bytes of succeeded batches (what the walk measured, as worker_throughput counts
# them), each in the bucket of time its attempt ended in.
_BUCKETS = """SELECT min(:n - 1, CAST((a.end_ts - :t0) / :width AS INTEGER)) AS k,
       sum(b.estimated_bytes), count(*)
FROM attempts a JOIN batches b USING (task_id)
WHERE a.status = :ok AND a.end_ts IS NOT NULL AND a.end_ts >= :t0 GROUP BY k ORDER BY k"""


def migration_header(conn: Connection, held: bool | None) -> dict:
    """The migration's row as the report's header says it; `live`: a run (or a scan)
    holds the ledger, or its heartbeat is fresh: the report is of one moment of a
    ledger still being written. held: ledger/lock.held of the ledger."""
    rows = _rows(conn, _MIGRATION)
    if not rows:
        return {}
    (mid, src, dest, options, created, before, started, beat, finished) = rows[0]
    options = json.loads(options)
    state = RunState(estimate.estimate(conn, held=held)["state"])
    elapsed = migration.elapsed(_Elapsed(before, started, beat))
    return {
        "migration_id": mid, "src": src, "dest": dest, "options": options,
        "rules": options.get("filters", []),
        "checksum_choice": options.get("checksum_choice", CHECKSUM_CHOICE),
        "created_ts": created, "finished_ts": finished, "elapsed_sec": round(elapsed, 1),
        "run_state": state.value, "live": bool(held) or state is RunState.RUNNING,
    }


# The three columns migration.elapsed reads.
_Elapsed = namedtuple("_Elapsed", "elapsed_before run_started_ts run_heartbeat_ts")


def hosts(conn: Connection) -> list[dict]:
    """Every worker the migration used, with its succeeded work (worker_throughput)."""
    keys = ("worker_id", "host", "state", "batches", "files", "bytes", "wall_seconds")
    return [dict(zip(keys, row)) for row in _rows(conn, _HOSTS)]


def throughput(conn: Connection, buckets: int = REPORT_BUCKETS) -> dict:
    """Bytes of succeeded batches over the migration's span, in `buckets` equal spans
    of time: {start_ts, width_sec, bytes: [per bucket]} (empty when nothing succeeded)."""
    t0, t1 = _rows(conn, _SPAN, {"ok": AttemptStatus.SUCCESS.value})[0]
    if t0 is None:
        return {"start_ts": None, "width_sec": 0.0, "bytes": []}
    width = max(t1 - t0, 1e-3) / buckets
    got = [0] * buckets
    for k, size, _ in _rows(conn, _BUCKETS, {"n": buckets, "t0": t0, "width": width,
                                             "ok": AttemptStatus.SUCCESS.value}):
        got[k] += size or 0
    return {"start_ts": t0, "width_sec": width, "bytes": got}
