"""The Bottle app: `make_app(ledger_path, token=None)`, a LedgerApp.

Every route is a row of ROUTES; the same rows register the routes and write
/openapi.json. Every answer comes from one read transaction (one consistent
snapshot) of the read-only engine, so the API can serve a live, finished or
crashed migration and can never change it. The hot routes (/status,
/progress, /throughput, /run, /healthz) answer with the bytes of a shared snapshot
at most snapshot.MAX_AGE old (api/snapshot.py); the others read the ledger
a page at a time, and keep each URL's answer up to snapshot.REFRESH (Recent).
"""
from __future__ import annotations

import hmac
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import bottle
from sqlalchemy import Connection, exc

from fleetsync.ledger import bandwidth, estimate, queries
from fleetsync.ledger.db import reader
from fleetsync.ledger.schema import AttemptStatus

from . import dashboard, errors, metrics, openapi
from .snapshot import Recent, Snapshots
from .params import INT64_MAX, ChoiceParam, IntParam, Param, TextParam, parse_query

MAX_PAGE = 10_000


@dataclass(frozen=True)
class Route:
    path: str                            # Bottle syntax: /batches/<task_id>
    summary: str
    view: Callable[..., dict | str]      # view(conn, **params) -> body
    params: tuple[Param, ...] = ()
    path_params: tuple[Param, ...] = ()
    response: str = ""                   # schema name in openapi.SCHEMAS
    media_type: str = errors.JSON_TYPE
    public: bool = False                 # answered without the token
    ledger: bool = True                  # False: view(**params), no read transaction
    shared: bool = False                 # True: the body of the shared Snapshot (no view call)
    any_query: bool = False              # takes no parameters and ignores any given: a
                                         # Prometheus scrape config may add `params:`


def _healthz(conn: Connection) -> dict:
    queries.batch_counts(conn)   # fails (503) when the ledger cannot be read
    return {"status": "ok"}


def _results(conn: Connection, limit: int | None, after: int | None, before: int | None,
             status: str | None, worker: str | None) -> dict | Iterator[bytes]:
    """A page when the request names one (limit, after or before); else every retained
    result, streamed (the API document's /results: retained_count == len(results))."""
    if limit is None and after is None and before is None:
        return _every_result(conn, status, worker)
    return queries.results(conn, limit or queries.RESULTS_PAGE, after, before, status, worker)


def _every_result(conn: Connection, status: str | None, worker: str | None
                  ) -> Iterator[bytes]:
    """The JSON of every retained result, a page of rows at a time, in one transaction.

    Up to 100,000 results are ~40 MB of JSON: built whole, that much memory per
    request. Streamed, the server holds one page of rows and waitress's output
    buffer (which spills to a file and blocks this thread when the client
    reads slowly).
    """
    count, pages = queries.retained_results(conn, status=status, worker=worker)
    yield b'{"results": ['
    sep = b""
    for page in pages:
        yield sep + json.dumps(page)[1:-1].encode()
        sep = b", "
    yield (f'], "retained_limit": {queries.RETAINED_LIMIT}, '
           f'"retained_count": {count}}}').encode()


def _batch(conn: Connection, task_id: int, limit: int, offset: int) -> dict:
    found = queries.batch(conn, task_id, limit=limit, offset=offset)
    if found is None:
        raise errors.not_found(f"no batch with task_id {task_id}")
    return found


ROUTES: tuple[Route, ...] = (
    Route("/status", "Batch counts, queue depth and finished producers",
          queries.status, response="Status", shared=True),
    Route("/progress", "Completed, failed and pending batches",
          queries.progress, response="Progress", shared=True),
    Route("/throughput", "Rates of succeeded batches since the migration started",
          queries.throughput, response="Throughput", shared=True),
    Route("/run", "The run's state, progress in bytes and batches (with what is in flight), "
          "the rate now and the ETA (ledger/estimate.py)",
          estimate.estimate, response="Run", shared=True),
    Route("/status/window", "The fleet's bandwidth cap in force now and its next change "
          "(the timetable of --bwlimit)", bandwidth.window, response="Window"),
    Route("/workers", "Last heartbeat of every worker (master local time)",
          queries.heartbeats, response="Workers"),
    Route("/logs", "The newest warnings and errors, newest last",
          queries.logs,
          params=(IntParam("limit", "Lines of each level", 1, MAX_PAGE, queries.LOGS_LIMIT),),
          response="Logs"),
    Route("/results", "Every retained attempt result, oldest first (streamed); with limit, "
          "after or before, a page of them, newest last",
          _results,
          params=(
              IntParam("limit", f"Results in the page (default {queries.RESULTS_PAGE} when "
                                "after or before is given; without limit, after and "
                                "before: every retained result)", 1, MAX_PAGE),
              IntParam("after", "Only attempts with a greater attempt_id; the page is then "
                                "the oldest matches (read forward)", 0, INT64_MAX),
              IntParam("before", "Only attempts with a smaller attempt_id", 0, INT64_MAX),
              ChoiceParam("status", "Only this attempt status",
                          tuple(s.value for s in AttemptStatus)),
              TextParam("worker", "Only attempts by this worker_id"),
          ),
          response="Results"),
    Route("/batches/<task_id>", "One batch: its row, a page of its entries, every attempt",
          _batch,
          params=(IntParam("limit", "Entries in the page", 1, MAX_PAGE, queries.ENTRIES_PAGE),
                  IntParam("offset", "Entries to skip (ordered by path bytes)",
                           0, INT64_MAX, 0)),
          path_params=(IntParam("task_id", "The batch", 1, INT64_MAX),),
          response="Batch"),
    Route("/metrics", "The same numbers in Prometheus text format", metrics.render,
          media_type=metrics.CONTENT_TYPE, any_query=True),
    Route("/healthz", "Liveness: the ledger can be read (no token needed)", _healthz,
          response="Health", public=True, shared=True, any_query=True),
    Route("/openapi.json", "This description", lambda: OPENAPI, ledger=False),
    Route("/", "Dashboard: an HTML page that polls the routes above (the page needs no token, "
          "its calls do: open it as /#token=T)", dashboard.page,
          media_type=dashboard.CONTENT_TYPE, public=True, ledger=False),
)

OPENAPI = openapi.describe(ROUTES)


class LedgerApp(bottle.Bottle):
    """The Bottle app of one ledger, with what a server needs of it besides WSGI
    (api/server.py reads both): snapshots, the shared Snapshot's refresher (close() it
    to stop its thread at once; it also stops when nobody asks), and inline_paths, the
    routes a server may answer on the thread that read the request."""

    def __init__(self, snapshots: Snapshots, inline_paths: frozenset[str]) -> None:
        super().__init__()
        self.snapshots = snapshots
        self.inline_paths = inline_paths


def make_app(ledger_path: str, token: str | None = None) -> LedgerApp:
    """The API over the ledger at ledger_path (which must exist: LedgerError otherwise).

    With a token, every route but /healthz and / (a page without data) wants
    `Authorization: Bearer <token>`. app.snapshots: see LedgerApp.
    """
    reader(ledger_path).dispose()   # a missing ledger fails here, not at the first request
    app = LedgerApp(Snapshots(ledger_path), frozenset(r.path for r in ROUTES if r.shared))
    app.default_error_handler = errors.handle
    answers = _Answers(ledger_path, app.snapshots)
    for route in ROUTES:
        app.route(route.path, "GET", answers.endpoint(route), name=route.path)
    if token:
        app.add_hook("before_request", _bearer_check(token))
    app.add_hook("after_request", _no_store)
    return app


class _Answers:
    """How one app answers its routes: a view read in one read transaction on the
    server thread's own connection (kept a while per URL by Recent), or the bytes
    of the shared Snapshot."""

    def __init__(self, ledger_path: str, snapshots: Snapshots) -> None:
        self.ledger_path = ledger_path
        self.snapshots = snapshots
        self.local = threading.local()
        self.recent = Recent()

    def endpoint(self, route: Route) -> Callable:
        """The Bottle callback of route."""
        if route.shared:
            def handle_shared() -> bytes:
                if bottle.request.query_string and not route.any_query:
                    parse_query(route.params)    # a 400 for any parameter
                return self.shared(route.path)
            return handle_shared

        def handle(**url_args: str) -> dict | str | bytes | Iterator[bytes]:
            kwargs = {} if route.any_query else parse_query(route.params)
            for p in route.path_params:
                kwargs[p.name] = p.parse(url_args[p.name])
            bottle.response.content_type = route.media_type
            if not route.ledger:
                return route.view(**kwargs)
            return self.recent.get((route.path, *sorted(kwargs.items())),
                                   lambda: self.build(route, kwargs))
        return handle

    def build(self, route: Route, kwargs: dict) -> bytes | Iterator[bytes]:
        """route's body as bytes (or a stream of them)."""
        body = self.read(route.view, kwargs)
        if isinstance(body, dict):
            return json.dumps(body).encode()   # as Bottle's JSON plugin would
        return body.encode() if isinstance(body, str) else body

    def read(self, view: Callable, kwargs: dict) -> dict | str | Iterator[bytes]:
        """view(conn, **kwargs) in one read transaction: one consistent snapshot.

        Each server thread keeps its own read-only engine and connection between
        requests: checking a connection out of a shared pool and back for every
        request cost a quarter of the server's time in bench/api.py, and one
        engine per thread can never run out of pooled connections.
        """
        conn = getattr(self.local, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            conn = self.local.conn = reader(self.ledger_path).connect()
        if conn.in_transaction():   # a stream that was never read to its end
            conn.rollback()
        try:
            conn.begin()
            body = view(conn, **kwargs)
            if isinstance(body, Iterator):
                # A stream: its transaction lasts until the last chunk is sent.
                return _until_done(conn, body)
            conn.rollback()   # read-only: nothing to commit
            return body
        except (exc.DatabaseError, sqlite3.DatabaseError) as e:
            # e.g. a ledger whose tables are not created yet, or a file that is not
            # (or no longer) a ledger: the client may retry.
            conn.rollback()
            raise _unavailable(e) from None
        except BaseException:
            conn.rollback()
            raise

    def shared(self, path: str) -> bytes:
        """path's body in the shared Snapshot, which says which snapshot it is."""
        snap = self.snapshots.current()
        if snap.error is not None:
            raise bottle.HTTPError(*snap.error)
        # Which snapshot answered: two answers with the same number agree with each other.
        bottle.response.set_header("X-Fleetsync-Snapshot", str(snap.serial))
        bottle.response.content_type = errors.JSON_TYPE
        return snap.bodies[path]


def _unavailable(e: Exception) -> bottle.HTTPError:
    # e.g. a ledger whose tables are not created yet: the client may retry.
    # (queries read through the sqlite3 cursor, whose errors SQLAlchemy never sees.)
    detail = getattr(e, "orig", e)
    return errors.unavailable(f"the ledger cannot be read now: {detail}")


def _until_done(conn: Connection, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """chunks, then the end of conn's read transaction (also when the client leaves early).

    An error before the first chunk is still an HTTP error (Bottle reads the first
    chunk before it sends the headers); a later one cuts the answer short, which
    the client sees as truncated JSON.
    """
    try:
        yield from chunks
    except (exc.OperationalError, sqlite3.OperationalError) as e:
        raise _unavailable(e) from None
    finally:
        conn.rollback()


def _bearer_check(token: str) -> Callable[[], None]:
    expected = token.encode()
    public = {r.path for r in ROUTES if r.public}

    def check() -> None:
        if bottle.request.path in public:
            return
        # WSGI headers are latin-1 strings: back to the bytes the client sent.
        header = bottle.request.get_header("Authorization", "").encode("latin-1")
        scheme, _, given = header.strip().partition(b" ")
        # compare_digest: the time taken says nothing about how much of the token matched.
        if not (scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), expected)):
            raise errors.unauthorized()
    return check


def _no_store() -> None:
    # Live numbers: a proxy or browser cache would show stale progress.
    bottle.response.set_header("Cache-Control", "no-store")
