"""Each `fleetsync run` of the migration: when it started and with which inventory,
so that `fleetsync verify` checks on the workers the migration last ran on; what
a run has sent so far (its --max-transfer).

SQL style: SQLAlchemy Core (a row per run: no hot path).
"""
from __future__ import annotations

import time

from sqlalchemy import Connection, func, insert, select

from .schema import attempts, has_table, runs


def record(conn: Connection, inventory: str) -> None:
    """A run starts with this inventory (an absolute path)."""
    with conn.begin():
        conn.execute(insert(runs).values(started_ts=time.time(), inventory=inventory))


def last_inventory(conn: Connection) -> str | None:
    """The inventory of the newest run; None before the first (or in a ledger made
    before runs were recorded: its next `fleetsync run` adds the table)."""
    with conn.begin():
        if not has_table(conn, runs.name):
            return None
        return conn.execute(select(runs.c.inventory)
                            .order_by(runs.c.run_id.desc()).limit(1)).scalar()


def last_attempt(conn: Connection) -> int:
    """The newest attempt_id (0: none): what a run sends is counted after it."""
    with conn.begin():
        return conn.execute(select(func.max(attempts.c.attempt_id))).scalar() or 0


def sent_after(conn: Connection, attempt_id: int) -> tuple[int, int]:
    """(bytes rsync sent in the attempts after attempt_id, the newest attempt_id): a
    run's --max-transfer adds these up as they come, a range of the primary key each
    time, never the whole table."""
    with conn.begin():
        sent, newest = conn.execute(select(func.sum(attempts.c.bytes_sent),
                                           func.max(attempts.c.attempt_id))
                                    .where(attempts.c.attempt_id > attempt_id)).one()
    return sent or 0, newest or attempt_id
