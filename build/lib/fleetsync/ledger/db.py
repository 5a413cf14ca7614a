"""The one place that opens ledger connections.

Writers run in WAL mode with a busy timeout and begin every transaction with
``BEGIN IMMEDIATE`` so two writers never deadlock on a lock upgrade. Readers
open the file with ``mode=ro`` so the API cannot write even by mistake.
"""
from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Iterator

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.pool import NullPool

BUSY_TIMEOUT_MS = 60_000


class LedgerError(Exception):
    """A ledger that cannot be used: missing, unreadable, or of another migration."""


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


def writer(path: str) -> Engine:
    """An engine that may write. The file is created when missing."""
    engine = create_engine(_sqlite_url(path, readonly=False), poolclass=NullPool)
    _own_transactions(engine, "BEGIN IMMEDIATE")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode = WAL")
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
