"""The ledger's log: warnings and errors with their time, batch and worker.

SQL style: SQLAlchemy Core (one INSERT per line, off every hot path).
"""
from __future__ import annotations

import re
import time

from sqlalchemy import Connection, insert

from .schema import log


def add(conn: Connection, level: str, message: str, task_id: int | None = None,
        worker_id: str | None = None) -> None:
    """One log line in its own short transaction."""
    with conn.begin():
        conn.execute(insert(log).values(ts=time.time(), level=level, message=message,
                                        task_id=task_id, worker_id=worker_id))


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
