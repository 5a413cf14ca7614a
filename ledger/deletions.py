"""The deletions table: what --delete removed from DEST (or would, with --delete-dry-run).

SQL style: SQLAlchemy Core.
"""
from __future__ import annotations

import time

from sqlalchemy import Connection, func, insert, select

from .schema import batch_files, deletions


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


def listed(conn: Connection, dry_run: bool, since: float, limit: int) -> list[str]:
    """The first deletions done (or listed) since a time, as rsync printed them."""
    with conn.begin():
        return [p for (p,) in conn.execute(
            select(deletions.c.path).where(deletions.c.dry_run == int(dry_run),
                                           deletions.c.ts >= since)
            .order_by(deletions.c.deletion_id).limit(limit)).all()]


def top_level_entries(conn: Connection) -> set[bytes]:
    """Every top-level entry of SRC that a walk put in a batch (SRC itself left out):
    what --delete's guard expects to find in SRC again. One scan of batch_files
    (only for --delete)."""
    with conn.begin():
        rows = conn.execute(select(batch_files.c.path).distinct().where(
            func.instr(batch_files.c.path, b"/") == 0, batch_files.c.path != b".")).all()
    return {bytes(p) for (p,) in rows}
