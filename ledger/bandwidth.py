"""The fleet's bandwidth cap as the ledger keeps it: a constant (migration.bwlimit)
or a timetable (table bandwidth), so a resumed run follows it; `fleetsync bwlimit`
replaces either, also during a run. The cap in force at a time is the timetable's
(ledger/timetable.py: rate_at); /status/window and `fleetsync status` show it and
its next change (window).

SQL style: SQLAlchemy Core (a row, read once per claim of a host: no hot path). A
ledger made before timetables has no table bandwidth: its constant alone counts,
and the first timetable stored creates the table.
"""
from __future__ import annotations

import time

from sqlalchemy import Connection, delete, insert, select, update

from . import clock, sizes, timetable
from .queries import local_time
from .schema import bandwidth, has_table, migration
from .timetable import Timetable


def store(conn: Connection, table: Timetable) -> None:
    """The fleet's cap from now on: a constant in migration.bwlimit, a timetable in
    table bandwidth (the other one emptied), in one transaction."""
    with conn.begin():
        if not table.constant or has_table(conn, bandwidth.name):
            bandwidth.create(conn, checkfirst=True)
            conn.execute(delete(bandwidth))
        if table.constant:
            conn.execute(update(migration).values(bwlimit=table.entries[0].rate))
        else:
            conn.execute(update(migration).values(bwlimit=None))
            conn.execute(insert(bandwidth).values(id=1, timetable=table.text,
                                                  set_ts=time.time()))


def set_cap(conn: Connection, bytes_per_sec: int | None) -> None:
    """A constant cap (None: none); rsyncs started from now on share it."""
    store(conn, timetable.constant(bytes_per_sec))


def load(conn: Connection) -> Timetable:
    """The stored cap (a read inside the caller's transaction, or its own)."""
    if has_table(conn, bandwidth.name):
        text = conn.execute(select(bandwidth.c.timetable)).scalar()
        if text is not None:
            return timetable.parse(text)
    return timetable.constant(conn.execute(select(migration.c.bwlimit)).scalar())


def cap_at(conn: Connection, when: float | None = None) -> int | None:
    """The fleet's cap in force at `when` (the windows' clock by default), bytes/s."""
    return timetable.rate_at(load(conn), clock.now() if when is None else when)[0]


def window(conn: Connection, now: float | None = None) -> dict:
    """/status/window: the cap in force, when it next changes and to what, and the
    timetable it comes from (as given)."""
    now = clock.now() if now is None else now
    table = load(conn)
    cap, change = timetable.rate_at(table, now)
    following = timetable.rate_at(table, change)[0] if change is not None else None
    return {"bwlimit": table.text,
            "cap_bytes_per_sec": cap, "cap": timetable.shown(cap),
            "next_change_ts": change,
            "next_change": local_time(change) if change is not None else None,
            "next_cap_bytes_per_sec": following,
            "next_cap": timetable.shown(following) if change is not None else None,
            "now": local_time(now)}


def _per_second(cap: int | None) -> str:
    # Not "/s": the status line shows a rate ("/s") only while a run goes on.
    return "off" if cap is None else sizes.show(cap) + " per second"


def line(conn: Connection, now: float | None = None) -> str:
    """The cap for `fleetsync status`: 'bandwidth cap 10 MiB per second until ...
    (then off)'."""
    w = window(conn, now)
    said = f"bandwidth cap {_per_second(w['cap_bytes_per_sec'])}"
    if w["next_change"]:
        said += (f" until {w['next_change']} "
                 f"(then {_per_second(w['next_cap_bytes_per_sec'])})")
    return said + (f"; timetable {w['bwlimit']}" if w["next_change"] else "")
