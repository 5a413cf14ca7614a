"""Verification of succeeded batches, by file: a worker hashes the batch's regular
files at DEST (controller/rsync.py), and each file's digest is compared with SRC's,
recorded while copying (ledger/custody.py). Each file gets its verdict
(batch_files.verified, states.FileVerdict) and the batch's derives from them:
verified when every file is the same, differs when one differs, is missing or has
no recorded checksum (the view custody_problems names them).

One row per batch checked, with the same guarded transitions as batches
(pending -> running -> verified | differs | error; a lost host's checks go back
to pending). Counts per state are kept by triggers, so the API reads them in
O(1).

SQL style: SQLAlchemy text() with every state bound as a parameter.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

from sqlalchemy import Connection, text

from . import custody, logbook
from .batches import errors_json, requeue
from .states import BatchState, Compare, FileVerdict, VerifyState

_SUCCEEDED = BatchState.SUCCEEDED.value
_PENDING, _RUNNING = VerifyState.PENDING.value, VerifyState.RUNNING.value


def enqueue(conn: Connection, resume: bool) -> int:
    """Queue the checks of a verify; returns how many wait. A verify checks DEST as it
    is now: every succeeded batch, whatever an earlier verify found (a DEST file can
    change after its check). resume: go on with a verify that was stopped, keeping
    its verdicts; only what it left unchecked is queued (the checks that waited,
    batches that succeeded since, checks that could not run, verdicts gone stale)."""
    redo = ([VerifyState.ERROR, VerifyState.STALE] if resume else
            [VerifyState.VERIFIED, VerifyState.DIFFERS, VerifyState.ERROR, VerifyState.STALE])
    with conn.begin():
        conn.execute(text("INSERT OR IGNORE INTO verifications(task_id) "
                          "SELECT task_id FROM batches WHERE state = :ok"), {"ok": _SUCCEEDED})
        for state in redo:
            conn.execute(text(
                "UPDATE verifications SET state = :p WHERE state = :s "
                "AND task_id IN (SELECT task_id FROM batches WHERE state = :ok)"),
                {"p": _PENDING, "s": state.value, "ok": _SUCCEEDED})
        return conn.execute(text("SELECT count(*) FROM verifications WHERE state = :p"),
                            {"p": _PENDING}).scalar()


def checked_since(conn: Connection, since: float) -> int:
    """Verdicts recorded since a time (verified, differs or could not be checked):
    what one verify checked itself. A read inside the caller's transaction; one scan
    of verifications, once per verify."""
    return conn.execute(text(
        "SELECT count(*) FROM verifications WHERE checked_ts >= :t AND state IN (:v, :d, :e)"),
        {"t": since, "v": VerifyState.VERIFIED.value, "d": VerifyState.DIFFERS.value,
         "e": VerifyState.ERROR.value}).scalar()


@dataclass
class Claim:
    """One check claimed, as batches.Claim is one copy claimed."""
    task_id: int
    claim_no: int         # the claim it answers (verifications.claim when it was claimed)


def claim(conn: Connection, worker_id: str) -> Claim | None:
    """pending -> running: the next check, for one slot (None: none waits)."""
    with conn.begin():
        row = conn.execute(text(
            "UPDATE verifications SET state = :r, worker_id = :w, claim = claim + 1 "
            "WHERE task_id = (SELECT task_id FROM verifications WHERE state = :p "
            "ORDER BY task_id LIMIT 1) AND state = :p RETURNING task_id, claim"),
            {"r": _RUNNING, "p": _PENDING, "w": worker_id}).first()
    return Claim(row.task_id, row.claim) if row else None


# rsync's exits of a hashing pass that still hashed what it could read: 23 (some
# names could not be read: missing at DEST) and 24 (vanished while it read).
_HASHED = (0, 23, 24)


def record(conn: Connection, task_id: int, claim_no: int, exit_code: int | None,
           found: dict[bytes, bytes], errors: list[str]) -> bool:
    """running -> verified | differs | error, for this claim only, with the verdict
    of each regular file. found: DEST's digests by path; an exit other than
    _HASHED means the check could not run (its errors say why; no file verdict)."""
    with conn.begin():
        row = conn.execute(text("SELECT 1 FROM verifications WHERE task_id = :id "
                                "AND claim = :c AND state = :r"),
                           {"id": task_id, "c": claim_no, "r": _RUNNING}).first()
        if row is None:
            return False
        named: list[str] = []
        if exit_code in _HASHED:
            files = custody.regular_files(conn, task_id)
            verdicts = custody.verdicts({p: c for p, c, _ in files}, found)
            custody.record_verdicts(conn, task_id, verdicts)
            named = [f"{v.name.lower()}: {logbook.show_path(p)}"
                     for p, v in verdicts.items() if v is not FileVerdict.SAME]
            state = VerifyState.DIFFERS if named else VerifyState.VERIFIED
        else:
            state = VerifyState.ERROR
            named = [logbook.show_rsync_line(line) for line in errors]
        conn.execute(text(
            "UPDATE verifications SET state = :s, checked_ts = :t, exit_code = :e, "
            "differences = :d WHERE task_id = :id AND claim = :c AND state = :r"),
            {"s": state.value, "t": time.time(), "e": exit_code,
             "d": errors_json(named),     # its first lines; custody_problems: all
             "id": task_id, "c": claim_no, "r": _RUNNING})
        return True


def release_worker(conn: Connection, worker_id: str | None) -> int:
    """A lost host's checks (or all, with None) go back to pending."""
    with conn.begin():
        return conn.execute(text(
            "UPDATE verifications SET state = :p WHERE state = :r "
            "AND (:w IS NULL OR worker_id = :w)"),
            {"p": _PENDING, "r": _RUNNING, "w": worker_id}).rowcount


def counts(conn: Connection) -> dict[VerifyState, int]:
    """Batches per verification state (O(1)); a read: run it inside the caller's
    transaction (a writer must not leave one open)."""
    rows = dict(conn.execute(text("SELECT state, batches FROM verify_counts")).all())
    return {s: rows.get(s.value, 0) for s in VerifyState}


def requeue_differences(conn: Connection) -> list[int]:
    """Batches whose check found differences are copied again, and checked again once
    the new copy succeeded (the trigger verifications_stale marks their verdicts
    stale; their differences stay for the audit)."""
    with conn.begin():
        ids = [r[0] for r in conn.execute(text(
            "SELECT task_id FROM verifications WHERE state = :d ORDER BY task_id"),
            {"d": VerifyState.DIFFERS.value})]
    # Same size and time, other bytes: only --checksum makes the copy see them.
    return requeue(conn, ids, "verify found differences", Compare.CHECKSUM)


def differences(conn: Connection, task_id: int) -> list[str]:
    with conn.begin():
        stored = conn.execute(text("SELECT differences FROM verifications WHERE task_id = :t"),
                              {"t": task_id}).scalar()
    return json.loads(stored) if stored else []
