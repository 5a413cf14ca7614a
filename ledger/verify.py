"""Verification of succeeded batches: rsync's checksum dry-run on a worker.

One row per batch checked, with the same guarded transitions as batches
(pending -> running -> verified | differs | error; a lost host's checks go back
to pending). Counts per state are kept by triggers, so the API reads them in
O(1).
"""
from __future__ import annotations

import json
import time

from sqlalchemy import Connection, text

from .batches import bounded

PENDING, RUNNING, VERIFIED, DIFFERS, ERROR = "pending", "running", "verified", "differs", "error"
STATES = (PENDING, RUNNING, VERIFIED, DIFFERS, ERROR)


def enqueue(conn: Connection, again: bool) -> int:
    """Queue every succeeded batch not verified yet (or, with again, every one)."""
    with conn.begin():
        conn.execute(text("INSERT OR IGNORE INTO verifications(task_id) "
                          "SELECT task_id FROM batches WHERE state = 'succeeded'"))
        states = "('verified', 'differs', 'error')" if again else "('error')"
        conn.execute(text(f"UPDATE verifications SET state = 'pending' WHERE state IN {states} "
                          "AND task_id IN (SELECT task_id FROM batches WHERE state = 'succeeded')"))
        return conn.execute(text("SELECT count(*) FROM verifications "
                                 "WHERE state = 'pending'")).scalar()


def claim(conn: Connection, worker_id: str) -> tuple[int, int] | None:
    """pending -> running: (task_id, claim) of the next check, for one slot."""
    with conn.begin():
        row = conn.execute(text(
            "UPDATE verifications SET state = 'running', worker_id = :w, claim = claim + 1 "
            "WHERE task_id = (SELECT task_id FROM verifications WHERE state = 'pending' "
            "ORDER BY task_id LIMIT 1) AND state = 'pending' RETURNING task_id, claim"),
            {"w": worker_id}).first()
    return (row.task_id, row.claim) if row else None


def record(conn: Connection, task_id: int, claim_no: int, exit_code: int | None,
           differences: list[str], errors: list[str]) -> bool:
    """differences: rsync's itemized lines, one per entry a copy would change."""
    """running -> verified | differs | error, for this claim only."""
    state = ERROR if exit_code != 0 else (DIFFERS if differences else VERIFIED)
    with conn.begin():
        return conn.execute(text(
            "UPDATE verifications SET state = :s, checked_ts = :t, exit_code = :e, "
            "differences = :d WHERE task_id = :id AND claim = :c AND state = 'running'"),
            {"s": state, "t": time.time(), "e": exit_code,
             "d": bounded(differences + errors), "id": task_id, "c": claim_no}).rowcount == 1


def release_worker(conn: Connection, worker_id: str | None) -> int:
    """A lost host's checks (or all, with None) go back to pending."""
    with conn.begin():
        return conn.execute(text(
            "UPDATE verifications SET state = 'pending' WHERE state = 'running' "
            "AND (:w IS NULL OR worker_id = :w)"), {"w": worker_id}).rowcount


def counts(conn: Connection) -> dict[str, int]:
    """Batches per verification state (O(1)); a read: run it inside the caller's
    transaction (a writer must not leave one open)."""
    rows = dict(conn.execute(text("SELECT state, batches FROM verify_counts")).all())
    return {s: rows.get(s, 0) for s in STATES}


def requeue_differences(conn: Connection) -> list[int]:
    """Batches whose check found differences are copied again (and checked again)."""
    from .batches import requeue
    with conn.begin():
        ids = [r[0] for r in conn.execute(text(
            "SELECT task_id FROM verifications WHERE state = 'differs' ORDER BY task_id"))]
    # Same size and time, other bytes: only --checksum makes the copy see them.
    done = requeue(conn, ids, "verify found differences", checksum=True)
    with conn.begin():
        conn.execute(text("UPDATE verifications SET state = 'pending' WHERE state = 'differs'"))
    return done


def differences(conn: Connection, task_id: int) -> list[str]:
    with conn.begin():
        stored = conn.execute(text("SELECT differences FROM verifications WHERE task_id = :t"),
                              {"t": task_id}).scalar()
    return json.loads(stored) if stored else []
