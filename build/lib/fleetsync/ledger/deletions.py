"""The deletions table: what --delete removed from DEST (or would, with --delete-dry-run).

SQL style: SQLAlchemy Core.
"""
from __future__ import annotations

import time

from sqlalchemy import Connection, func, insert, select

from .schema import deletions


def record(conn: Connection, paths: list[str], dry_run: bool,
                     worker_id: str | None) -> None:
    if not paths:
        return
    now = time.time()
    with conn.begin():
        conn.execute(insert(deletions), [dict(ts=now, path=p, dry_run=int(dry_run),
                                              worker_id=worker_id) for p in paths])


def count(conn: Connection, dry_run: bool, since: float) -> int:
    """Deletions done (or listed, dry_run) since a time; a read inside the caller's
    transaction."""
    return conn.execute(select(func.count()).select_from(deletions).where(
        deletions.c.dry_run == int(dry_run), deletions.c.ts >= since)).scalar()
