"""The producers table: one row per walker process of the current walk.

SQL style: SQLAlchemy Core (a few statements per walk).
"""
from __future__ import annotations

import time

from sqlalchemy import Connection, insert, update

from .schema import producers
from .states import ProducerState


def start(conn: Connection, count: int) -> None:
    """Producer rows 1..count, running; the rows of an earlier run are reused."""
    now = time.time()
    with conn.begin():
        conn.execute(producers.delete().where(producers.c.producer_id > count))
        for pid in range(1, count + 1):
            res = conn.execute(update(producers).where(producers.c.producer_id == pid)
                               .values(state=ProducerState.RUNNING.value, started_ts=now,
                                       finished_ts=None))
            if res.rowcount == 0:
                conn.execute(insert(producers).values(producer_id=pid,
                                                      state=ProducerState.RUNNING.value,
                                                      started_ts=now))


def finish(conn: Connection, producer_id: int) -> None:
    """running -> done: the producer listed its last directory."""
    with conn.begin():
        conn.execute(update(producers).where(producers.c.producer_id == producer_id)
                     .values(state=ProducerState.DONE.value, finished_ts=time.time()))
