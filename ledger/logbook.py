"""The ledger's log: warnings and errors with their time, batch and worker.

Every row of table log is written here (`add`, `write`).

SQL style: one plain INSERT (sqlite3 dialect), run through the caller's Connection
(exec_driver_sql) or, for the walk's errors on its hot path (ledger/entry_outcomes.py
from ledger/walkqueue.py), on the walk's raw sqlite3 cursor.
"""
from __future__ import annotations

import re
import sqlite3
import time

from sqlalchemy import Connection

from .states import LogLevel

_INSERT = "INSERT INTO log(ts, level, task_id, worker_id, message) VALUES (?, ?, ?, ?, ?)"

# One log row: (ts, level, task_id, worker_id, message); level a LogLevel.
Line = tuple[float, LogLevel, "int | None", "str | None", str]


def add(conn: Connection, level: LogLevel, message: str, task_id: int | None = None,
        worker_id: str | None = None) -> None:
    """One log line in its own short transaction."""
    with conn.begin():
        write(conn, [(time.time(), level, task_id, worker_id, message)])


def write(where: Connection | sqlite3.Cursor, lines: list[Line]) -> None:
    """Log lines inside the caller's transaction: on its Connection, or on the raw
    cursor of the walk's hot path."""
    if not lines:
        return
    lines = [(ts, LogLevel(level).value, *rest) for ts, level, *rest in lines]
    if isinstance(where, sqlite3.Cursor):
        where.executemany(_INSERT, lines)
    else:
        where.exec_driver_sql(_INSERT, lines)


_CONTROL = {i: f"\\x{i:02x}" for i in [*range(32), 127]}


def show_path(path: bytes) -> str:
    """A path for a one-line message: UTF-8 where it is, backslash escapes elsewhere
    (bytes that are not UTF-8, and control characters such as a newline)."""
    return path.decode("utf-8", "backslashreplace").translate(_CONTROL)


_RSYNC_ESCAPE = re.compile(rb"\\#([0-7]{3})")


def rsync_unescape(text: str) -> bytes:
    """A name as rsync printed it, back to its bytes: rsync prints a name's
    unprintable bytes (newlines, bytes that are not UTF-8 in its locale) as \\#ooo."""
    raw = text.encode("utf-8", "surrogateescape")
    return _RSYNC_ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), raw)


def show_rsync_line(line: str) -> str:
    """One of rsync's lines (an itemized line, an error) as show_path shows names:
    `\\xNN`, not rsync's own `\\#ooo`."""
    return show_path(rsync_unescape(line))
