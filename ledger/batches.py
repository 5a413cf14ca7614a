"""Batch state transitions: one function each, one guarded UPDATE each.

Every transition names the state it expects (and, for reports, the claim it
answers), so a late or duplicate report matches no row and changes nothing:
dispatch is at-least-once, the ledger's accounting is exactly-once. Each
function takes an open Connection and runs its own short transaction.

A batch is created in one place, `create`, for the walk (ledger/walkqueue.py) and
for the hard links (ledger/hardlinks.py), inside the caller's transaction.

SQL style: SQLAlchemy Core (states bound from BatchState), except `create`: plain
SQL (sqlite3 dialect) on the caller's raw sqlite3 cursor, because the walk calls
it once per batch on its hot path, where SQLAlchemy's statement layer would cost
more than the inserts themselves. Log rows go through ledger/logbook.py.
"""
from __future__ import annotations

import itertools
import json
import sqlite3
import time
from dataclasses import dataclass, field

from sqlalchemy import Connection, func, insert, select, update

from . import custody, entry_outcomes, logbook
from .entry_outcomes import EntryOutcome
from .schema import attempts, batch_counts, batch_files, batches, migration
from .states import AttemptStatus, BatchState, Compare, EntryClass, LogLevel

MAX_ERROR_LINES = 20      # rsync can print one line per file; keep the first ones
MAX_ERROR_CHARS = 4_000

# create(): the walk's hottest statements, on the raw sqlite3 cursor (see the module doc).
_INSERT_BATCH = ("INSERT INTO batches(file_count, directory_count, estimated_bytes, sparse, "
                 "checksum, producer_id, created_ts) VALUES (?, ?, ?, ?, ?, ?, ?) "
                 "RETURNING task_id")
ROWS_PER_INSERT = 100
_INSERT_ROW = ("INSERT INTO batch_files(task_id, path, is_dir, size, type, mtime, blocks) "
               "VALUES (?1, ?, ?, ?, ?, ?, ?)")
_INSERT_ROWS = _INSERT_ROW + ", (?1, ?, ?, ?, ?, ?, ?)" * (ROWS_PER_INSERT - 1)
# An entry as the walk hands it in: (path, is_dir, size, type, mtime, blocks), the
# last three as schema._walked says (None where the walk did not see the entry's stat).
Entry = tuple[bytes, int, int, int | None, int | None, int | None]


@dataclass
class Claim:
    task_id: int
    claim_no: int         # the claim it answers (batches.claim when it was claimed)
    retry_count: int
    compare: Compare = Compare.QUICK   # how rsync decides a file is up to date
    sparse: bool = False     # holds a file with holes: copy with --sparse


@dataclass
class Report:
    """What a worker said about one attempt of one batch."""
    task_id: int
    claim_no: int         # the claim it answers (batches.claim when it was claimed)
    worker_id: str | None
    rsync_exit_code: int | None
    bytes_sent: int | None = None
    bytes_received: int | None = None
    start_ts: float | None = None
    end_ts: float | None = None
    errors: list[str] = field(default_factory=list)
    # The entries that did not arrive (controller/file_outcomes.py), and whether the
    # attempt says so entry by entry: then every other entry it sent arrived.
    file_outcomes: list[EntryOutcome] = field(default_factory=list)
    rest_arrived: bool = False
    # SRC's checksums the attempt's rsync printed (ledger/custody.py), by entry: kept
    # only for the entries the outcome says arrived (rsync prints %C before its write
    # can still fail).
    checksums: dict[bytes, bytes] = field(default_factory=dict)


def errors_json(errors: list[str]) -> str:
    """The errors as stored, a JSON list: at most MAX_ERROR_LINES lines, each shortened."""
    kept = [e[:MAX_ERROR_CHARS] for e in errors[:MAX_ERROR_LINES]]
    if len(errors) > MAX_ERROR_LINES:
        kept.append(f"... {len(errors) - MAX_ERROR_LINES} more lines")
    return json.dumps(kept)


def create(where: sqlite3.Cursor | Connection, entries: list[Entry],
           file_count: int, directory_count: int, estimated_bytes: int, compare: int,
           created_ts: float, sparse: bool = False, producer_id: int | None = None) -> int:
    """-> pending: a new batch, its row and its batch_files rows (Entry: path, is_dir,
    size, type, mtime, blocks),
    inside the caller's transaction; returns its task_id. compare: states.Compare
    (column checksum). where: the walk's raw cursor (its hot path: no SQLAlchemy
    layer per batch), or a Connection whose DBAPI connection (the same transaction)
    runs the same statements."""
    cur = where if isinstance(where, sqlite3.Cursor) else (
        where.connection.driver_connection.cursor())
    task_id = cur.execute(_INSERT_BATCH, (file_count, directory_count, estimated_bytes,
                                          int(sparse), compare, producer_id,
                                          created_ts)).fetchone()[0]
    _insert_entries(cur, task_id, entries)
    return task_id


def _insert_entries(cur: sqlite3.Cursor, task_id: int, entries: list[Entry]) -> None:
    """The batch's rows in batch_files, the walk's hottest statement.

    Sent ROWS_PER_INSERT at a time in one multi-row INSERT, they cost
    a third of executemany's one statement per row; a bytearray is bound as
    is where bytes goes through sqlite3's adapter lookup first, so the walk
    builds the paths of plain files as bytearray (directories' stay bytes:
    a few, and sets hold them).
    """
    rows = entries     # paths of files come as bytearray already (controller/producer.py)
    full = len(rows) - len(rows) % ROWS_PER_INSERT
    for i in range(0, full, ROWS_PER_INSERT):
        cur.execute(_INSERT_ROWS, (task_id, *itertools.chain.from_iterable(
            rows[i:i + ROWS_PER_INSERT])))
    if full < len(rows):
        cur.executemany(_INSERT_ROW, [(task_id, *r) for r in rows[full:]])


def claim(conn: Connection, worker_id: str, limit: int = 1) -> list[Claim]:
    """pending -> running: the oldest waiting batches, for one worker slot."""
    waiting = (select(batches.c.task_id)
               .where(batches.c.state == BatchState.PENDING.value)
               .order_by(batches.c.task_id).limit(limit))
    stmt = (update(batches)
            .where(batches.c.task_id.in_(waiting.scalar_subquery()),
                   batches.c.state == BatchState.PENDING.value)
            .values(state=BatchState.RUNNING.value, worker_id=worker_id,
                    claim=batches.c.claim + 1, claimed_ts=time.time())
            .returning(batches.c.task_id, batches.c.claim, batches.c.retry_count,
                       batches.c.checksum, batches.c.sparse))
    with conn.begin():
        rows = conn.execute(stmt).all()
    return sorted((Claim(r[0], r[1], r[2], Compare(r[3]), bool(r[4])) for r in rows),
                  key=lambda c: c.task_id)


def _finish(conn: Connection, report: Report, new_state: BatchState,
            status: AttemptStatus, bump_retry: bool,
            message: tuple[str, str] | None) -> bool:
    """running -> new_state for this claim, with its attempt row and log line."""
    now = time.time()
    values = dict(state=new_state.value, last_exit_code=report.rsync_exit_code)
    if new_state in (BatchState.SUCCEEDED, BatchState.FAILED):
        values["finished_ts"] = now
    if bump_retry:
        values["retry_count"] = batches.c.retry_count + 1
    stmt = (update(batches)
            .where(batches.c.task_id == report.task_id,
                   batches.c.state == BatchState.RUNNING.value,
                   batches.c.claim == report.claim_no)
            .values(**values)
            .returning(batches.c.retry_count))
    with conn.begin():
        row = conn.execute(stmt).first()
        if row is None:
            return False
        retry_count = row.retry_count - 1 if bump_retry else row.retry_count
        # What this attempt sent, read before its own rows exist (None: every entry).
        copied = (_copied(conn, report.task_id)
                  if status is not AttemptStatus.LOST else None)
        attempt_id = conn.execute(insert(attempts).values(
            task_id=report.task_id, claim=report.claim_no, retry_count=retry_count,
            worker_id=report.worker_id, status=status.value,
            rsync_exit_code=report.rsync_exit_code, bytes_sent=report.bytes_sent,
            bytes_received=report.bytes_received, start_ts=report.start_ts,
            end_ts=report.end_ts, received_ts=now, errors=errors_json(report.errors))
            .returning(attempts.c.attempt_id)).scalar()
        if status is not AttemptStatus.LOST:
            known = report.rest_arrived or new_state is BatchState.SUCCEEDED
            entry_outcomes.record_attempt(conn, report.task_id, attempt_id, copied,
                                          report.file_outcomes, report.rest_arrived, known, now)
            if known and status is not AttemptStatus.STOPPED:
                failed = {o.path for o in report.file_outcomes}
                custody.record(conn, report.task_id, {p: c for p, c in report.checksums.items()
                                                      if p not in failed})
        lines = [message] if message else []
        if report.file_outcomes:
            vanished = all(o.cls is EntryClass.VANISHED for o in report.file_outcomes)
            lines.append((LogLevel.WARNING if vanished or new_state is BatchState.PENDING else LogLevel.ERROR,
                          entry_outcomes.log_line(report.task_id, report.file_outcomes)))
        logbook.write(conn, [(now, level, report.task_id, report.worker_id, msg)
                             for level, msg in lines])
    return True


def _copied(conn: Connection, task_id: int) -> list[bytes] | None:
    """The entries the batch's current attempt was sent (batches.entries), None: all."""
    again, never = entry_outcomes.to_copy_again(conn, task_id)
    if not again and not never:
        return None
    return [p for p, _, _ in _select_entries(conn, task_id, again, never)]


def succeed(conn: Connection, report: Report, retries_used: int = 0) -> bool:
    """running -> succeeded; with entries that vanished from SRC, the warning of
    rsync's exit 24 (`task N retry R exit=24`) says so (R: retries used)."""
    vanished = any(o.cls is EntryClass.VANISHED for o in report.file_outcomes)
    return _finish(conn, report, BatchState.SUCCEEDED, AttemptStatus.SUCCESS, False,
                   (LogLevel.WARNING, f"task {report.task_id} retry {retries_used} exit=24")
                   if vanished else None)


def retry(conn: Connection, report: Report, retry_number: int) -> bool:
    """running -> pending, one retry used (the warning names the retry to come)."""
    msg = f"task {report.task_id} retry {retry_number} exit={report.rsync_exit_code}"
    return _finish(conn, report, BatchState.PENDING, AttemptStatus.RETRY, True,
                   (LogLevel.WARNING, msg))


def fail(conn: Connection, report: Report, retries_used: int) -> bool:
    """running -> failed, for good."""
    msg = f"task {report.task_id} retry {retries_used} exit={report.rsync_exit_code}"
    return _finish(conn, report, BatchState.FAILED, AttemptStatus.FAILED, False,
                   (LogLevel.ERROR, msg))


def release(conn: Connection, report: Report, why: str) -> bool:
    """running -> pending, no retry used: the host was lost, not the batch."""
    report.errors = [why, *report.errors]
    return _finish(conn, report, BatchState.PENDING, AttemptStatus.LOST, False,
                   (LogLevel.WARNING, f"task {report.task_id} released from "
                               f"{report.worker_id}: {why}"))


def unclaim(conn: Connection, worker_id: str, claims: list[tuple[int, int]],
            why: str) -> list[int]:
    """running -> pending, for claims (task_id, claim_no) whose rsync never started
    (a host's claimed work held back when the cap or the run's window changed): no
    attempt row, since nothing ran, and no retry used; one log line for them all."""
    back = []
    with conn.begin():
        for task_id, claim_no in claims:
            row = conn.execute(update(batches).where(
                batches.c.task_id == task_id, batches.c.claim == claim_no,
                batches.c.state == BatchState.RUNNING.value,
                batches.c.worker_id == worker_id)
                .values(state=BatchState.PENDING.value).returning(batches.c.task_id)).first()
            if row is not None:
                back.append(task_id)
        if back:
            logbook.write(conn, [(time.time(), LogLevel.INFO, None, worker_id,
                                  f"{len(back)} batches claimed by {worker_id} wait again "
                                  f"before they started: {why}")])
    return back


def stop(conn: Connection, report: Report, why: str) -> bool:
    """running -> pending, no retry used: its run's window closed (--cutoff hard) and
    its rsync was stopped; an attempt of its own (status stopped) says so."""
    report.errors = [why, *report.errors]
    return _finish(conn, report, BatchState.PENDING, AttemptStatus.STOPPED, False,
                   (LogLevel.INFO, f"task {report.task_id} stopped on {report.worker_id}: {why}"))


def running_claims(conn: Connection, worker_id: str | None = None) -> list[Claim]:
    """Batches now running (on one worker, or anywhere)."""
    q = select(batches.c.task_id, batches.c.claim, batches.c.retry_count).where(
        batches.c.state == BatchState.RUNNING.value)
    if worker_id is not None:
        q = q.where(batches.c.worker_id == worker_id)
    with conn.begin():
        return [Claim(*r) for r in conn.execute(q).all()]


def release_worker(conn: Connection, worker_id: str, why: str) -> list[int]:
    """Every batch a lost worker holds goes back to pending."""
    released = []
    for c in running_claims(conn, worker_id):
        if release(conn, Report(c.task_id, c.claim_no, worker_id, None), why):
            released.append(c.task_id)
    return released


def release_all(conn: Connection, why: str) -> list[int]:
    """At start-up: whatever a crashed controller had running goes back to pending."""
    return _every_running(conn, release, why)


def stop_all(conn: Connection, why: str) -> list[int]:
    """Every batch running goes back to pending, stopped by the run's window (stop)."""
    return _every_running(conn, stop, why)


def _every_running(conn: Connection, transition, why: str) -> list[int]:
    done = []
    with conn.begin():
        rows = conn.execute(select(batches.c.task_id, batches.c.claim, batches.c.worker_id)
                            .where(batches.c.state == BatchState.RUNNING.value)).all()
    for task_id, claim_no, worker_id in rows:
        if transition(conn, Report(task_id, claim_no, worker_id, None), why):
            done.append(task_id)
    return done


def requeue(conn: Connection, task_ids: list[int] | None, why: str,
            compare: Compare = Compare.QUICK) -> list[int]:
    """failed (or, named by task_id, succeeded) -> pending with fresh retries.

    `fleetsync retry`: each requeued batch gets an attempt row saying so, so the
    history of the batch stays whole. None means every failed batch.
    compare: how its next copy compares; a batch that already had a stricter
    comparison keeps it (a failed rescan batch retried still ignores times).
    """
    now = time.time()
    done = []
    with conn.begin():
        if task_ids is None:
            task_ids = [r[0] for r in conn.execute(select(batches.c.task_id).where(
                batches.c.state == BatchState.FAILED.value)).all()]
        for task_id in task_ids:
            row = conn.execute(update(batches).where(
                batches.c.task_id == task_id,
                batches.c.state.in_([BatchState.FAILED.value, BatchState.SUCCEEDED.value]))
                .values(state=BatchState.PENDING.value, retry_count=0, finished_ts=None,
                        checksum=func.max(batches.c.checksum, int(compare)))
                .returning(batches.c.claim, batches.c.worker_id)).first()
            if row is None:
                continue
            # No rsync ran for a requeue: its exit code is null (the API document's
            # rsync_exit_code is an rsync's), the last one stays on the batch and its
            # own attempt.
            conn.execute(insert(attempts).values(
                task_id=task_id, claim=row.claim, retry_count=0, worker_id=row.worker_id,
                status=AttemptStatus.REQUEUED.value, rsync_exit_code=None,
                received_ts=now, errors=json.dumps([why])))
            logbook.write(conn, [(now, LogLevel.INFO, task_id, None,
                                  f"task {task_id} requeued: {why}")])
            done.append(task_id)
    return done


def unknown(conn: Connection, task_ids: list[int]) -> list[int]:
    """The task_ids the ledger has no batch for, sorted: `fleetsync retry` refuses
    them before it writes anything (a read)."""
    with conn.begin():
        known = {r[0] for r in conn.execute(
            select(batches.c.task_id).where(batches.c.task_id.in_(task_ids))).all()}
    return sorted(set(task_ids) - known)


def entries(conn: Connection, task_id: int) -> list[tuple[bytes, bool, int]]:
    """The entries one copy of the batch sends: (path relative to SRC, is a directory,
    size). After an attempt that failed entry by entry, only its failed entries (the
    others arrived); never an entry that vanished from SRC."""
    with conn.begin():
        again, never = entry_outcomes.to_copy_again(conn, task_id)
        return _select_entries(conn, task_id, again, never)


def entries_in(conn: Connection, task_id: int) -> list[tuple[bytes, bool, int]]:
    """Every entry of the batch (a read inside the caller's transaction)."""
    return _select_entries(conn, task_id, set(), set())


def _select_entries(conn: Connection, task_id: int, only: set[bytes],
                    never: set[bytes]) -> list[tuple[bytes, bool, int]]:
    rows = conn.execute(select(batch_files.c.path, batch_files.c.is_dir, batch_files.c.size)
                        .where(batch_files.c.task_id == task_id)
                        .order_by(batch_files.c.path)).all()
    found = [(bytes(p), bool(d), s) for p, d, s in rows]
    return [e for e in found if (not only or e[0] in only) and e[0] not in never]


@dataclass
class WorkLeft:
    walk_done: bool
    pending: int
    running: int

    @property
    def finished(self) -> bool:
        return self.walk_done and self.pending == 0 and self.running == 0


def work_left(conn: Connection) -> WorkLeft:
    """What is still to do, from the counters (O(1))."""
    with conn.begin():
        counts = dict(conn.execute(select(batch_counts.c.state, batch_counts.c.batches)).all())
        walk_done = conn.execute(select(migration.c.walk_done)).scalar()
    return WorkLeft(bool(walk_done), counts.get(BatchState.PENDING.value, 0),
                    counts.get(BatchState.RUNNING.value, 0))


def retry_count_of(conn: Connection, task_id: int) -> int:
    with conn.begin():
        return conn.execute(select(batches.c.retry_count)
                            .where(batches.c.task_id == task_id)).scalar() or 0


def held_bytes(conn: Connection, worker_id: str) -> int | None:
    """The largest batch a worker holds now (its estimated bytes), None when it holds none."""
    with conn.begin():
        return conn.execute(select(func.max(batches.c.estimated_bytes)).where(
            batches.c.state == BatchState.RUNNING.value,
            batches.c.worker_id == worker_id)).scalar()


def directory_total(conn: Connection) -> int:
    with conn.begin():
        return conn.execute(select(func.sum(batch_counts.c.directories))).scalar() or 0
