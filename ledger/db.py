"""The one place that opens ledger connections.

Writers run in WAL mode with a busy timeout and begin every transaction with
``BEGIN IMMEDIATE`` so two writers never deadlock on a lock upgrade. Readers
open the file with ``mode=ro`` so the API cannot write even by mistake.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from .errors import FleetsyncError

BUSY_TIMEOUT_MS = 60_000


class LedgerError(FleetsyncError):
    """A ledger that cannot be used: missing, unreadable, or of another migration."""


class LedgerDamaged(LedgerError):
    """A ledger whose file is damaged (pages overwritten): its copies are the way back."""


# What a damaged file answers: a page that is not what it should be, or a header that
# is not SQLite's.
_DAMAGED = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
# quick_check's problems named in the one line (it lists up to 100).
_PROBLEMS_SHOWN = 1
_SHOWN_CHARS = 300


# PRAGMA application_id of a fleetsync ledger ("FLSY"), set when its tables are made.
APPLICATION_ID = 0x464C5359
_SQLITE_HEADER = b"SQLite format 3\x00"
# Ledgers made before the application_id are known by these columns of `migration`.
_LEDGER_COLUMNS = {"migration_id", "schema_version", "src", "dest"}


def _check_sides(path: str) -> None:
    """A reader running as another user (root's sqlite3, say) can leave the -wal and
    -shm files owned by it: the next writer could not use the ledger at all."""
    for side in ("-wal", "-shm"):
        if os.path.lexists(path + side) and not os.access(path + side, os.W_OK):
            owner = os.stat(path + side).st_uid
            raise LedgerError(f"cannot write {path}{side} (owned by uid {owner}: a reader "
                              "running as another user made it; with no reader left, "
                              "remove it or give it to this user)")


def check(path: str, write: bool) -> None:
    """Refuse, in one line (LedgerError), a file that is not a fleetsync ledger or
    that this command cannot use, before anything opens it for writing: a writer
    would add fleetsync's tables to another application's database and switch it
    to WAL. write: the command writes (the file, or its directory for a new one,
    -wal and -shm must be writable). A missing file is fine for a writer (made).
    Only reads, with mode=ro: nothing is changed."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.lexists(path):
        if not write:
            raise LedgerError(f"no ledger at {path}")
        if not os.path.isdir(folder):
            raise LedgerError(f"cannot create the ledger {path}: its directory does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise LedgerError(f"cannot create the ledger {path}: its directory is not writable")
        return
    if os.path.isdir(path):
        raise LedgerError(f"{path} is a directory, not a fleetsync ledger")
    try:
        with open(path, "rb") as f:
            header = f.read(len(_SQLITE_HEADER))
    except OSError as e:
        raise LedgerError(f"cannot read the ledger {path}: {e.strerror}") from None
    if not header:
        raise LedgerError(f"{path} is an empty file, not a fleetsync ledger "
                          "(remove it to start a new ledger there)")
    if header != _SQLITE_HEADER:
        raise LedgerError(f"{path} is not an SQLite database, so not a fleetsync ledger")
    if write and not (os.access(path, os.W_OK) and os.access(folder, os.W_OK | os.X_OK)):
        raise LedgerError(f"cannot write the ledger {path} (the file and its directory, "
                          "for its -wal and -shm files, must be writable)")
    if write:
        _check_sides(path)
    try:
        con = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro",
                              uri=True)
        try:
            app_id = con.execute("PRAGMA application_id").fetchone()[0]
            tables = [n for (n,) in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            columns = {r[1] for r in con.execute("PRAGMA table_info(migration)")}
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        if damaged(e):
            raise damaged_error(path, [str(e)]) from None
        raise LedgerError(f"cannot read the ledger {path}: {e}") from None
    if app_id == APPLICATION_ID or (app_id == 0 and _LEDGER_COLUMNS <= columns):
        return
    if app_id == 0 and not tables:
        return        # an empty SQLite database: fleetsync's tables are made in it
    shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
    raise LedgerError(f"{path} is another application's SQLite database "
                      f"(application_id {app_id}, tables: {shown or 'none'}), not a "
                      "fleetsync ledger: nothing was changed; give another --ledger")


def _sqlite_url(path: str, readonly: bool) -> str:
    quoted = urllib.parse.quote(os.path.abspath(path))
    mode = "ro" if readonly else "rwc"
    return f"sqlite:///file:{quoted}?mode={mode}&uri=true"


def _own_transactions(engine: Engine, begin: str) -> None:
    """Let SQLAlchemy, not pysqlite, decide when transactions begin (the SQLAlchemy recipe)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql(begin)


def _wal(cur: sqlite3.Cursor) -> None:
    """WAL mode (a finished run leaves the file in rollback-journal mode: see
    ledger/backup.py). Switching takes an exclusive lock, and SQLite answers BUSY at
    once rather than wait while another connection holds the write lock (no busy
    handler, to avoid a deadlock): try again until the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def writer(path: str) -> Engine:
    """An engine that may write. The file is created when missing."""
    engine = create_engine(_sqlite_url(path, readonly=False), poolclass=NullPool)
    _own_transactions(engine, "BEGIN IMMEDIATE")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        _wal(cur)
        # NORMAL is durable across a process crash in WAL mode; only a power cut
        # can lose the last transactions, and rsync is idempotent anyway.
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    return engine


@contextlib.contextmanager
def connect(path: str, readonly: bool = False) -> Iterator[Connection]:
    """One connection to the ledger, for a few statements; the engine goes with it."""
    engine = reader(path) if readonly else writer(path)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def reader(path: str) -> Engine:
    """A read-only engine: every transaction is one consistent snapshot."""
    if not os.path.exists(path):
        raise LedgerError(f"no ledger at {path}")
    engine = create_engine(_sqlite_url(path, readonly=True))
    _own_transactions(engine, "BEGIN")
    return engine


def check_integrity(path: str) -> None:
    """Refuse a damaged ledger in one line (LedgerDamaged), read-only: SQLite's
    `PRAGMA quick_check` reads every page of the file (about 1.3 GiB at 10M entries;
    ~2.4 s per GiB on a warm cache: bench/integrity.py) and checks each b-tree's
    pages, not that the indexes match their tables (integrity_check's part: ~14x
    slower there). A reader: it never blocks a run's writer in WAL mode (the run
    starts it once its writer holds the ledger in WAL), and it changes nothing."""
    uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True)
        try:
            problems = [r for (r,) in con.execute("PRAGMA quick_check")]
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        if not damaged(e):
            raise LedgerError(f"cannot read the ledger {path}: {e}") from None
        problems = [str(e)]
    if problems != ["ok"]:
        raise damaged_error(path, problems)


def sqlite_code(exc: BaseException) -> int | None:
    """The SQLite (extended) result code of exc, or of the sqlite3 error SQLAlchemy
    wrapped in it; None for any other error."""
    if isinstance(exc, DBAPIError):
        exc = exc.orig
    return getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.Error) else None


def damaged(exc: BaseException) -> bool:
    """exc (or the sqlite3 error it wraps) says the ledger's file is damaged."""
    code = sqlite_code(exc)
    return code is not None and code & 0xFF in _DAMAGED


def damaged_error(path: str, problems: list[str]) -> LedgerDamaged:
    """The one line of a damaged ledger: what SQLite found, and the way back."""
    shown = "; ".join(" ".join(p.split()) for p in problems[:_PROBLEMS_SHOWN])
    if len(shown) > _SHOWN_CHARS:      # one row may list a hundred pages
        shown = shown[:_SHOWN_CHARS] + "..."
    more = len(problems) - _PROBLEMS_SHOWN
    return LedgerDamaged(
        f"the ledger {path} is damaged (SQLite: {shown}"
        + (f"; {more} more problems" if more > 0 else "") + "): put back a copy made by "
        "`fleetsync backup` (with no -wal or -shm file of the damaged one beside it; a run "
        "resumes from that copy, and copies again what it had not recorded), or start a "
        "new ledger")


def data_version(conn: Connection) -> int:
    """A number that changes whenever another connection commits to the ledger
    (PRAGMA data_version, outside any transaction): a poll that finds it unchanged
    knows its last read still holds, for ~2 us, where a read transaction through
    SQLAlchemy costs 0.1-0.9 ms (bench/fleet_cost.py: an idle host's slot polls)."""
    return conn.connection.driver_connection.execute("PRAGMA data_version").fetchone()[0]
