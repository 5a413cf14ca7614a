"""The migration row: what this ledger is for, and how long it has run.

A ledger belongs to one SRC and one DEST for life; opening it for another pair
is refused. Running time is kept across resumes: each run adds its own span,
and a crashed run's span ends at its last controller heartbeat.

SQL style: SQLAlchemy Core (one row, a few statements per run: no hot path);
a rescan's restart of the walk queue is walkqueue.restart's own (plain SQL).
"""
from __future__ import annotations

import json
import os
import time
from collections import namedtuple
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, case, exists, func, insert, select, update

from . import db, identity, schema, walkqueue
from .db import LedgerError
from .defaults import LIVE_AFTER_HEARTBEAT
from .schema import attempts, batches, deletions, migration, verifications
from .states import BatchState, RunState



# The DEST of a ledger that `fleetsync scan` made: none yet. The first `run` with a
# --dest adopts the scan (a ledger that copied nothing follows a new DEST).
NO_DEST = ""


@dataclass
class Migration:
    migration_id: str
    src: str
    dest: str
    options: dict
    walk_done: bool
    bwlimit: int | None = None
    repointed_from: str | None = None   # the DEST this open moved the ledger away from


def _row_to_migration(row) -> Migration:
    return Migration(row.migration_id, row.src, row.dest, json.loads(row.options),
                     bool(row.walk_done), row.bwlimit)


def created(conn: Connection) -> bool:
    """The ledger holds its migration (an empty SQLite file has no tables yet: one
    being created by a `fleetsync run` that has not committed them)."""
    ok = schema.has_table(conn, "migration") and load(conn) is not None
    conn.rollback()
    return ok


def load(conn: Connection) -> Migration | None:
    row = conn.execute(select(migration)).first()
    return _row_to_migration(row) if row else None


def opening(path: str, src: str | None = None, dest: str | None = None) -> Migration | None:
    """The ledger's migration, read with mode=ro before a command writes anything
    (None: no ledger there yet, or one still empty). A ledger written by a newer
    fleetsync is refused (LedgerError), and so, given src and dest, is one of another
    migration, as open_or_create would refuse it; given src alone (a scan, which has
    no DEST), one of another SRC. A command decides here whether it
    goes on, so a refusal leaves the file byte for byte as it was: the writer's first
    connection would switch it to WAL (ledger/db.py), and a ledger in WAL mode cannot
    be read where its directory is read-only (an auditor's)."""
    if not os.path.exists(path):
        return None
    with db.connect(path, readonly=True) as conn, conn.begin():
        row = (conn.execute(select(migration)).first()
               if schema.has_table(conn, "migration") else None)
        if row is not None:
            _refuse_unfit(conn, row, src, dest)
    return _row_to_migration(row) if row is not None else None


def open_or_create(engine: Engine, src: str, dest: str | None, options: dict,
                   new_id: str | None = None) -> Migration:
    """The ledger's migration, created on first use; another SRC/DEST is refused
    (a run has refused it already with opening(), before it wrote anything: here
    for a ledger another run created in between). dest None: a scan, which walks
    SRC alone; a new ledger's DEST is then NO_DEST until a run adopts the scan.

    A ledger to which nothing was ever copied (no attempt at all: every host
    refused it at its preflight, e.g. a mistyped DEST) may be pointed at another
    DEST: it is not bound to a DEST no host accepted."""
    repointed = None
    with engine.connect() as conn:
        with conn.begin():       # the tables and the migration in one: a reader sees both
            schema.create(conn)
            row = conn.execute(select(migration)).first()
            if row is None:
                conn.execute(insert(migration).values(
                    id=1, migration_id=new_id or identity.new_migration_id(), schema_version=schema.SCHEMA_VERSION,
                    src=src, dest=NO_DEST if dest is None else dest,
                    options=json.dumps(options, sort_keys=True),
                    created_ts=time.time()))
                row = conn.execute(select(migration)).first()
            else:
                _refuse_unfit(conn, row, src, dest)
            if dest is not None and row.dest != dest:
                conn.execute(update(migration).where(migration.c.dest == row.dest)
                             .values(dest=dest))
                repointed = row.dest
                row = conn.execute(select(migration)).first()
        found = _row_to_migration(row)
    found.repointed_from = repointed
    return found


def _refuse_unfit(conn: Connection, row, src: str | None, dest: str | None) -> None:
    """LedgerError for a migration row this fleetsync, or this run (src, dest; None:
    any), cannot use; a DEST of a ledger that copied nothing may change."""
    if row.schema_version > schema.SCHEMA_VERSION:
        raise LedgerError(
            f"this ledger was written by a newer fleetsync (schema {row.schema_version}; "
            f"this one knows schema {schema.SCHEMA_VERSION}): nothing was changed; "
            "use that fleetsync")
    if src is None or (row.src, row.dest) == (src, dest):
        return
    if dest is None:                 # a scan: SRC alone
        if row.src != src:
            raise LedgerError(f"this ledger belongs to another SRC ({row.src}); use "
                              f"another --ledger to scan {src}")
        return
    if row.src == src and _nothing_copied(conn):
        return
    held = f"a scan of {row.src}" if row.dest == NO_DEST else f"{row.src} -> {row.dest}"
    raise LedgerError(f"this ledger belongs to another migration ({held}); "
                      f"use another --ledger for {src} -> {dest}")


def _nothing_copied(conn: Connection) -> bool:
    """No rsync ever ran for this ledger (no attempt of any kind, no deletion, no
    check); a table an older ledger does not have yet holds none."""
    return not any(schema.has_table(conn, t.name)
                   and conn.execute(select(exists().select_from(t))).scalar()
                   for t in (attempts, deletions, verifications))


def start_run(conn: Connection) -> None:
    """Close the span of a crashed run (up to its last heartbeat) and open a new one."""
    now = time.time()
    with conn.begin():
        row = conn.execute(select(migration.c.run_started_ts, migration.c.run_heartbeat_ts,
                                  migration.c.finished_ts)).one()
        extra = 0.0
        if row.run_started_ts is not None and row.finished_ts is None:
            extra = max(0.0, (row.run_heartbeat_ts or row.run_started_ts) - row.run_started_ts)
        conn.execute(update(migration).values(
            elapsed_before=migration.c.elapsed_before + extra,
            run_started_ts=now, run_heartbeat_ts=now, finished_ts=None,
            dirs_pass_cursor=None, dirs_pass_done_ts=None,
            # a change list's narrower pass was that run's alone (pass_after_copied)
            options=func.json_remove(migration.c.options, f"$.{PASS_AFTER}")))


def heartbeat(conn: Connection) -> None:
    with conn.begin():
        conn.execute(update(migration).values(run_heartbeat_ts=time.time()))


def _close_run(conn: Connection, finished: bool) -> None:
    """Fold this run's span into elapsed_before; no run goes on (finished: nothing
    was left to do)."""
    now = time.time()
    with conn.begin():
        row = conn.execute(select(migration.c.run_started_ts)).one()
        span = max(0.0, now - row.run_started_ts) if row.run_started_ts else 0.0
        conn.execute(update(migration).values(
            elapsed_before=migration.c.elapsed_before + span,
            run_started_ts=None, run_heartbeat_ts=now,
            **({"finished_ts": now} if finished else {})))


def end_run(conn: Connection) -> None:
    """The run is over with nothing left to do."""
    _close_run(conn, finished=True)


def stop_run(conn: Connection) -> None:
    """The run stopped (a signal) with work left: no run goes on, so `fleetsync status`
    and the API do not wait for its heartbeat to age; finished_ts stays unset."""
    _close_run(conn, finished=False)


def elapsed(row, now: float | None = None) -> float:
    """Seconds the migration has been running, across resumes (from a migration row)."""
    now = time.time() if now is None else now
    total = row.elapsed_before
    if row.run_started_ts is not None:
        beat = row.run_heartbeat_ts or row.run_started_ts
        live = now - beat < LIVE_AFTER_HEARTBEAT
        total += (now if live else beat) - row.run_started_ts
    return max(0.0, total)


# What run_state reads of the migration row.
RunRow = namedtuple("RunRow", "run_started_ts run_heartbeat_ts finished_ts")


def run_state(row: RunRow | None, waiting: int, now: float | None = None,
              held: bool | None = None) -> RunState:
    """The one rule for whether a run goes on, for every display (ledger/estimate.py).

    A run opened (start_run) and not closed (end_run, stop_run) runs while its
    heartbeat is younger than LIVE_AFTER_HEARTBEAT, unless the ledger's lock is known
    to be free (held False: its process is gone, so it crashed; a run stopped at
    once by a second signal closes its span first); held None (cannot be told: a copied
    ledger, a lock file this user cannot open) leaves the heartbeat to decide. A closed
    run is finished, stopped, or, when batches wait (requeued after it finished), not.
    waiting: batches waiting (pending).
    """
    now = time.time() if now is None else now
    if row is None:
        return RunState.WAITING
    if row.run_started_ts is not None:
        beat = row.run_heartbeat_ts or row.run_started_ts
        live = now - beat < LIVE_AFTER_HEARTBEAT and held is not False
        return RunState.RUNNING if live else RunState.CRASHED
    if row.finished_ts is not None:
        return RunState.WAITING if waiting else RunState.FINISHED
    if row.run_heartbeat_ts is None:     # no run has started yet
        return RunState.WAITING
    return RunState.STOPPED


def set_walk_done(conn: Connection) -> None:
    with conn.begin():
        conn.execute(update(migration).values(walk_done=1))


# The options key of a change list's directory pass (ledger/dirpass.py reads it).
PASS_AFTER = "dirs_pass_after"


def _copied_through():
    """The last task_id before which every batch succeeded (0: none): the batches
    after it are those a cutover pass (a rescan, a change list) queues or resumes."""
    last = func.max(batches.c.task_id)
    first_unfinished = func.min(case(
        (batches.c.state != BatchState.SUCCEEDED.value, batches.c.task_id)))
    return select(func.min(func.coalesce(last, 0),
                           func.coalesce(first_unfinished - 1, last, 0))).scalar_subquery()


def pass_after_copied(conn: Connection) -> None:
    """A change list's run (controller/changelist.py): its directory pass, with
    --delete too, covers only the directories of the batches after those already
    copied, not every directory of SRC (which would cost the walk the list spares).
    Kept in the options until the next run starts, so a lost host's restart of the
    pass starts from there again."""
    with conn.begin():
        floor = conn.execute(select(_copied_through())).scalar_one()
        conn.execute(update(migration).values(
            dirs_pass_cursor=floor,
            options=func.json_set(migration.c.options, f"$.{PASS_AFTER}", floor)))


def keep_option(conn: Connection, key: str, value) -> None:
    """An option fixed once written (the checksum algorithm, ledger/custody.py): a
    ledger created before the option existed gets it here, at its first run that
    knows it; a ledger that has it keeps its own."""
    with conn.begin():
        conn.execute(update(migration).where(
            func.json_extract(migration.c.options, f"$.{key}").is_(None))
            .values(options=func.json_set(migration.c.options, f"$.{key}", value)))


# ctime of an entry changed just as the previous walk started may be a tick older.
RESCAN_MARGIN = 1.0


def begin_walk(conn: Connection, rescan: bool) -> bool:
    """Start (or resume) the walk of SRC; True when it is a rescan, begun now or
    resumed: it compares each entry with the last walk's fingerprints and queues
    what differs (ledger/walkqueue.py). A rescan begun now lists every directory
    again from SRC; scan_newer_than, set then, marks the walk as a rescan until it
    ends (its value, a time from the first design, is no longer read)."""
    now = time.time()
    with conn.begin():
        row = conn.execute(select(migration.c.walk_done, migration.c.scan_started_ts,
                                  migration.c.scan_newer_than)).one()
        if rescan and row.walk_done:
            newer = (row.scan_started_ts or 0.0) - RESCAN_MARGIN
            conn.execute(update(migration).values(walk_done=0, scan_started_ts=now,
                                                  scan_newer_than=newer))
            # The directory pass of a cutover starts after the batches already copied:
            # the rescan queues every directory it must set again (the directory of a
            # queued file, a directory that changed or lost an entry).
            conn.execute(update(migration).values(dirs_pass_cursor=_copied_through()))
            walkqueue.restart(conn)
            return True
        if row.scan_started_ts is None:
            conn.execute(update(migration).values(scan_started_ts=now))
        return row.scan_newer_than is not None
