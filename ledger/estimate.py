"""The run at a glance: its state, progress in bytes and batches, the rate now and the
ETA. One function, `estimate`, for every display: the terminal's progress line
(`fleetsync run`, `fleetsync status`), the dashboard and the API's /run.

Why a model, not the counters alone: a batch's result reaches the ledger only when
its item ends, so counting succeeded batches alone shows "0 B/s, ETA ?" for as long
as a slow item runs (minutes at a low --bwlimit), and a percent of batches says
98.5 % when one big file of the last batch is most of the bytes. So:

* The per-rsync rate is what the newest succeeded attempts did (their estimated
  bytes over the summed spans of their rsyncs), never above the --bwlimit share
  each rsync gets (the cap in force now over the slots of the hosts up, as
  controller/slot.py gives it); with no attempt yet, the share alone; with neither, unknown.
* What a running batch has moved is not reported before it ends: the batches a host
  holds are taken as moving at that rate on as many of its slots as they fill,
  since the host's newest claim, up to their estimated bytes ("in flight").
* The rate now is that per-rsync rate times the slots busy now; the ETA is the
  bytes not yet moved over the rate of the slots the work left can fill, and at
  least the time the waiting batches take at the newest attempts' time per batch
  (so a tail of many small batches, or of empty files, is not "done").

Bytes are the sizes the walk scanned (as /throughput's bytes_processed), and only
a live run moves anything: stopped, crashed or finished, nothing is in flight and
there is no rate or ETA.

SQL style: the raw sqlite3 cursor of ledger/queries.py (`_rows`): the API builds this
with its shared snapshot. Each read is O(1) or O(batches running, hosts, SAMPLE).
"""
from __future__ import annotations

import time

from sqlalchemy import Connection

from . import bandwidth, migration
from .queries import _rows, batch_counts, local_time
from .states import AttemptStatus, BatchState, RunState, WorkerState

SAMPLE = 32   # the newest succeeded attempts the per-rsync rate is measured on

_MIGRATION = ("SELECT run_started_ts, run_heartbeat_ts, finished_ts, bwlimit, walk_done "
              "FROM migration")
# The attempts_status index (status, attempt_id) walks the newest successes first.
_RECENT = ("SELECT a.end_ts - a.start_ts, b.estimated_bytes FROM attempts a "
           "JOIN batches b ON b.task_id = a.task_id "
           "WHERE a.status = :success AND a.end_ts > a.start_ts "
           "ORDER BY a.attempt_id DESC LIMIT :n")
# The batches_running partial index: O(batches running).
_RUNNING = ("SELECT worker_id, count(*), sum(estimated_bytes), max(claimed_ts) FROM batches "
            "WHERE state = :running GROUP BY worker_id")
_SLOTS = "SELECT worker_id, state, slots FROM workers"


def _rate_per_rsync(conn: Connection, bwlimit: int | None, slots_up: int
                    ) -> tuple[float | None, float | None]:
    """(bytes/s of one rsync, seconds one batch takes on one rsync); None: unknown."""
    spans = _rows(conn, _RECENT, {"success": AttemptStatus.SUCCESS.value, "n": SAMPLE})
    seconds = sum(s for s, _ in spans)
    rate = sum(b for _, b in spans) / seconds if spans else None
    per_batch = seconds / len(spans) if spans else None
    if bwlimit:
        share = bwlimit / max(1, slots_up)
        rate = share if rate is None else min(rate, share)
    return rate, per_batch


def estimate(conn: Connection, now: float | None = None, held: bool | None = None,
             counts: dict | None = None) -> dict:
    """The run's state, batches and bytes (done, failed, running, waiting, in flight),
    percent done, the rate now and the ETA, at `now`.

    held: whether the ledger's lock is held (lock.held), None when not known: a run
    that died is then known at once, not once its heartbeat is old. The run itself
    passes True. counts: batch_counts(conn) when the caller has it (the same snapshot).
    """
    now = time.time() if now is None else now
    counts = counts or batch_counts(conn)
    rows = _rows(conn, _MIGRATION)
    row = migration.RunRow(*rows[0][:3]) if rows else None
    walk_done = rows[0][4] if rows else False
    bwlimit = bandwidth.cap_at(conn) if rows else None     # the timetable's, in force now
    waiting = counts[BatchState.PENDING.value]
    state = migration.run_state(row, waiting["batches"], now, held)
    done, failed = counts[BatchState.SUCCEEDED.value], counts[BatchState.FAILED.value]
    running = counts[BatchState.RUNNING.value]
    total_batches = sum(c["batches"] for c in counts.values())
    total_bytes = sum(c["bytes"] for c in counts.values())

    slots = {w: (s, n or 1) for w, s, n in _rows(conn, _SLOTS)}
    slots_up = sum(n for s, n in slots.values() if s == WorkerState.UP.value)
    rate, per_batch = _rate_per_rsync(conn, bwlimit, slots_up)
    in_flight, busy = _in_flight(conn, slots, rate, now) if state is RunState.RUNNING else (0, 0)
    moved = done["bytes"] + in_flight
    percent = _percent(moved, total_bytes, done["batches"], total_batches)

    bytes_per_sec = eta = None
    if state is RunState.RUNNING:
        bytes_per_sec = rate * busy if rate is not None else None
        eta = _eta(rate, per_batch, total_bytes - moved - failed["bytes"],
                   waiting["batches"], running["batches"], busy, slots_up, bool(walk_done))
    elif state is RunState.FINISHED:
        eta = 0.0
    return {
        "state": state.value,
        "last_heard": local_time(row.run_heartbeat_ts) if row and row.run_heartbeat_ts
        else None,
        "last_heard_ts": row.run_heartbeat_ts if row else None,
        "now": local_time(now),
        "batches_total": total_batches, "batches_done": done["batches"],
        "batches_failed": failed["batches"], "batches_running": running["batches"],
        "batches_waiting": waiting["batches"],
        "bytes_total": total_bytes, "bytes_done": done["bytes"],
        "bytes_failed": failed["bytes"], "bytes_running": running["bytes"],
        "bytes_in_flight": in_flight,
        "percent": round(percent, 1),
        "bytes_per_sec": None if bytes_per_sec is None else round(bytes_per_sec, 2),
        "eta_sec": None if eta is None else round(eta, 1),
    }


def _in_flight(conn: Connection, slots: dict[str, tuple[str, int]], rate: float | None,
               now: float) -> tuple[int, int]:
    """The bytes the running batches have moved so far, at the rate per rsync since
    each was claimed (at most each batch's size), and the slots they fill."""
    in_flight, busy = 0.0, 0
    for worker, n, size, claimed in _rows(conn, _RUNNING,
                                          {"running": BatchState.RUNNING.value}):
        lanes = min(n, slots.get(worker, (None, 1))[1])
        busy += lanes
        if rate is not None and claimed is not None:
            in_flight += min(size, rate * lanes * max(0.0, now - claimed))
    return int(in_flight), busy


def _percent(moved: int, total_bytes: int, batches_done: int, total_batches: int) -> float:
    """Percent done: of the bytes, or of the batches when they hold no bytes."""
    if total_bytes:
        return 100.0 * moved / total_bytes
    return 100.0 * batches_done / total_batches if total_batches else 0.0


def _eta(rate: float | None, per_batch: float | None, bytes_left: float, waiting: int,
         running: int, busy: int, slots_up: int, walk_done: bool) -> float | None:
    """Seconds until the known batches are done: the larger of the bytes left at the
    rate of the slots the work fills and the waiting batches at their time per batch.
    None when not known (no rate yet; or no batch yet while the walk goes on)."""
    if not waiting and not running:
        return 0.0 if walk_done else None
    lanes = max(busy, min(slots_up, waiting + running), 1)
    known = []
    if rate:
        known.append(max(0.0, bytes_left) / (rate * lanes))
    if per_batch is not None:
        known.append(waiting * per_batch / lanes)
    return max(known) if known else None
