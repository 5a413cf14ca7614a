"""Each `fleetsync run` of the migration: when it started and with which inventory,
so that `fleetsync verify` checks on the workers the migration last ran on.

SQL style: SQLAlchemy Core (a row per run: no hot path).
"""
from __future__ import annotations

import time

from sqlalchemy import Connection, insert, select

from .schema import has_table, runs


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
