"""The hot answers (/status, /progress, /throughput, /run, /healthz) of one read
transaction, encoded once and served as bytes by every request until the next.

One thread (the refresher) keeps the snapshot fresh: every POLL seconds it asks
the ledger `PRAGMA data_version` (which changes when another connection
commits) and rebuilds when the ledger changed or the snapshot is REFRESH old
(`elapsed_sec` moves with the clock, not only with commits). A request never
touches SQLite: it takes the current snapshot, whose age it checks against
MAX_AGE; only a snapshot older than that (no refresher yet, or a refresher
starved of CPU) is rebuilt by the request itself. So every answer is at most
MAX_AGE old, and usually POLL plus one build.

Why: with 4 server threads each running its own SQLite reads, the threads
convoyed on the GIL around every sqlite3 call (issue 12: 160-180 req/s where a
bare Bottle route gave 2,200). A snapshot costs ~0.1 ms to build (~0.4 ms with
/run's estimate at 16 hosts of 8 running batches each: it reads the running batches
and the newest attempts) and is built at most 1/POLL times a second, whatever the
number of clients.

The refresher stops after IDLE seconds without a request (a server nobody
polls reads nothing) and starts again with the next request.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import exc

from fleetsync.ledger import estimate, lock, queries
from fleetsync.ledger.db import reader

MAX_AGE = 0.25     # seconds: the documented bound on how old an answer may be
REFRESH = 0.1      # seconds: rebuilt at least this often while polled (elapsed_sec)
POLL = 0.02        # seconds between two data_version checks
IDLE = 5.0         # seconds without a request before the refresher stops

log = logging.getLogger("fleetsync.api")


@dataclass(frozen=True)
class Snapshot:
    """Bodies of one read transaction, or the error every hot route answers with."""
    serial: int                       # 1, 2, 3...: sent as X-Fleetsync-Snapshot
    taken: float                      # time.monotonic() when its transaction began
    bodies: dict[str, bytes] = field(default_factory=dict)   # route path -> JSON bytes
    error: tuple[int, str] | None = None                     # (status, message)


def _encode(value: dict) -> bytes:
    # The separators and key order of Bottle's own JSON plugin (json.dumps defaults).
    return json.dumps(value).encode()


class Snapshots:
    """The current Snapshot of one ledger, refreshed by one thread."""

    def __init__(self, ledger_path: str, max_age: float = MAX_AGE, poll: float = POLL,
                 refresh: float = REFRESH, idle: float = IDLE) -> None:
        self._path = ledger_path
        self.max_age, self._poll, self._refresh, self._idle = max_age, poll, refresh, idle
        self._current: Snapshot | None = None
        self._serial = 0
        self._build_lock = threading.Lock()     # one build at a time
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._last_request = 0.0
        self._engine = None
        self._conn = None

    # -- requests ---------------------------------------------------------------------
    def current(self) -> Snapshot:
        """The snapshot to answer with: never older than max_age."""
        now = time.monotonic()
        self._last_request = now
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._start()
        snap = self._current
        if snap is None or now - snap.taken > self.max_age:
            snap = self._rebuild(stale_before=now - self.max_age)
        return snap

    def close(self) -> None:
        """Stop the refresher and close its connection (a later request reopens them)."""
        self._closed.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        with self._build_lock:
            self._disconnect()
        self._closed.clear()

    # -- the refresher ----------------------------------------------------------------
    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._loop, name="fleetsync-snapshot",
                                            daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        seen, failing = None, False
        while not self._closed.wait(self._poll):
            now = time.monotonic()
            if now - self._last_request > self._idle:
                break
            try:
                version = self._data_version()
                snap = self._current
                if (version != seen or snap is None
                        or now - snap.taken >= self._refresh):
                    self._rebuild(stale_before=now)
                    seen = version
                failing = False
            except Exception:  # noqa: BLE001 - logged; the requests then rebuild themselves
                if not failing:   # once per failure, not 1/POLL lines a second
                    log.exception("fleetsync: the API snapshot could not be refreshed")
                failing = True
                with self._build_lock:
                    self._disconnect()
                seen = None
        self._thread = None if self._thread is threading.current_thread() else self._thread

    def _data_version(self) -> int | None:
        with self._build_lock:
            conn = self._connection()
            # Outside a transaction: the number moves when another connection commits.
            return conn.connection.driver_connection.execute(
                "PRAGMA data_version").fetchone()[0]

    # -- building -----------------------------------------------------------------------
    def _connection(self):
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            if self._engine is None:
                self._engine = reader(self._path)
            self._conn = self._engine.connect()
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _rebuild(self, stale_before: float) -> Snapshot:
        """A new snapshot, unless another thread built one begun after stale_before."""
        with self._build_lock:
            snap = self._current
            if snap is not None and snap.taken > stale_before:
                return snap
            taken = time.monotonic()
            self._serial += 1
            try:
                bodies = self._bodies(self._connection())
                snap = Snapshot(self._serial, taken, bodies)
            except (exc.DatabaseError, sqlite3.DatabaseError) as e:   # not (yet) a ledger
                # e.g. a ledger whose tables are not created yet: the client may retry.
                detail = getattr(e, "orig", e)
                snap = Snapshot(self._serial, taken,
                                error=(503, f"the ledger cannot be read now: {detail}"))
                self._disconnect()
            self._current = snap
            return snap

    def _bodies(self, conn) -> dict[str, bytes]:
        held = lock.held(self._path)   # before the snapshot: a run that died is seen at once
        with conn.begin():       # one read transaction: one consistent snapshot
            counts = queries.batch_counts(conn)
            both = queries.summary(conn, counts=counts)
            run = estimate.estimate(conn, held=held, counts=counts)
        return {"/status": _encode(both["status"]), "/progress": _encode(both["progress"]),
                "/throughput": _encode(both["throughput"]), "/run": _encode(run),
                "/healthz": _encode({"status": "ok"})}


class Recent:
    """The answers of the other ledger routes (/workers, /logs, /results pages,
    /batches/<id>, /metrics), each kept up to `ttl` seconds after its read
    transaction began, so many clients asking for the same URL cost one read per
    ttl. One build at a time: clients that ask while it runs wait for it rather
    than each reading the same rows (a convoy on the GIL). Bounded: only bodies
    up to max_body bytes are kept, max_bytes in all (then the oldest go first).
    """

    def __init__(self, ttl: float = REFRESH, max_body: int = 1 << 20,
                 max_bytes: int = 16 << 20) -> None:
        self.ttl, self._max_body, self._max_bytes = ttl, max_body, max_bytes
        self._items: dict[object, tuple[float, bytes]] = {}  # key -> (taken, body), oldest first
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key, build):
        """The body kept for key if young enough, else build(): bytes are kept (if small),
        anything else (a stream) is returned as it is."""
        hit = self._items.get(key)
        if hit is not None and time.monotonic() - hit[0] <= self.ttl:
            return hit[1]
        with self._lock:
            hit = self._items.get(key)       # built while this thread waited?
            if hit is not None and time.monotonic() - hit[0] <= self.ttl:
                return hit[1]
            taken = time.monotonic()
            body = build()
            if isinstance(body, bytes):
                self._keep(key, taken, body)
            return body

    def _keep(self, key, taken: float, body: bytes) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= len(old[1])
        if len(body) > self._max_body:
            return
        now = time.monotonic()
        for k in [k for k, (t, _) in self._items.items() if now - t > self.ttl]:
            self._bytes -= len(self._items.pop(k)[1])
        while self._items and self._bytes + len(body) > self._max_bytes:
            self._bytes -= len(self._items.pop(next(iter(self._items)))[1])
        self._items[key] = (taken, body)
        self._bytes += len(body)
