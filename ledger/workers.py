"""Workers: one per host (host name plus a UUID kept on the host), and their heartbeats.

SQL style: SQLAlchemy Core (states bound from WorkerState).
"""
from __future__ import annotations

import time

from sqlalchemy import Connection, func, insert, select, update

from .schema import workers
from .states import WorkerState


def seen(conn: Connection, worker_id: str, host: str, slots: int) -> None:
    """A host answered its preflight: it is up (again)."""
    now = time.time()
    with conn.begin():
        res = conn.execute(update(workers).where(workers.c.worker_id == worker_id).values(
            host=host, state=WorkerState.UP.value, slots=slots, heartbeat_ts=now, backoff_until=None))
        if res.rowcount == 0:
            conn.execute(insert(workers).values(worker_id=worker_id, host=host, state=WorkerState.UP.value,
                                                slots=slots, heartbeat_ts=now,
                                                first_seen_ts=now))


def heartbeat(conn: Connection, beats: dict[str, float]) -> None:
    """The newest time each worker was heard from (one transaction for many)."""
    if not beats:
        return
    with conn.begin():
        for worker_id, ts in beats.items():
            conn.execute(update(workers).where(
                workers.c.worker_id == worker_id,
                (workers.c.heartbeat_ts < ts) | workers.c.heartbeat_ts.is_(None),
            ).values(heartbeat_ts=ts))


def lost(conn: Connection, worker_id: str, backoff_until: float) -> None:
    with conn.begin():
        conn.execute(update(workers).where(workers.c.worker_id == worker_id).values(
            state=WorkerState.LOST.value, lost_count=workers.c.lost_count + 1, backoff_until=backoff_until))


def gone(conn: Connection, host: str) -> None:
    with conn.begin():
        conn.execute(update(workers).where(workers.c.host == host).values(state=WorkerState.GONE.value))


def total_slots(conn: Connection) -> int:
    """Slots of the hosts that are up: how many rsyncs may run at once."""
    with conn.begin():
        return conn.execute(select(func.sum(workers.c.slots))
                            .where(workers.c.state == WorkerState.UP.value)).scalar() or 0


def forget_all(conn: Connection) -> None:
    """At the start of a dispatch: workers of earlier runs are no longer up; each is
    up again once it passes this run's preflight (seen)."""
    with conn.begin():
        conn.execute(update(workers).where(workers.c.state == WorkerState.UP.value)
                     .values(state=WorkerState.GONE.value))
