"""The Bottle app: `make_app(ledger_path, token=None)`.

Every route is a row of ROUTES; the same rows register the routes and write
/openapi.json. A request reads the ledger in one read transaction (one
consistent snapshot) through the read-only engine, so the API can serve a
live, finished or crashed migration and can never change it.
"""
from __future__ import annotations

import hmac
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass

import bottle
from sqlalchemy import Connection, exc

from fleetsync.ledger import queries
from fleetsync.ledger.db import reader
from fleetsync.ledger.schema import AttemptStatus

from . import dashboard, errors, metrics, openapi
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
    ledger: bool = True                  # False: view(**params), no snapshot opened
    any_query: bool = False              # takes no parameters and ignores any given: a
                                         # Prometheus scrape config may add `params:`


def _healthz(conn: Connection) -> dict:
    queries.batch_counts(conn)   # fails (503) when the ledger cannot be read
    return {"status": "ok"}


def _batch(conn: Connection, task_id: int, limit: int, offset: int) -> dict:
    found = queries.batch(conn, task_id, limit=limit, offset=offset)
    if found is None:
        raise errors.not_found(f"no batch with task_id {task_id}")
    return found


ROUTES: tuple[Route, ...] = (
    Route("/status", "Batch counts, queue depth and finished producers",
          queries.status, response="Status"),
    Route("/progress", "Completed, failed and pending batches",
          queries.progress, response="Progress"),
    Route("/throughput", "Rates of succeeded batches since the migration started",
          queries.throughput, response="Throughput"),
    Route("/workers", "Last heartbeat of every worker (master local time)",
          queries.heartbeats, response="Workers"),
    Route("/logs", "The newest warnings and errors, newest last",
          queries.logs,
          params=(IntParam("limit", "Lines of each level", 1, MAX_PAGE, queries.LOGS_LIMIT),),
          response="Logs"),
    Route("/results", "A page of the retained attempt results, newest last",
          queries.results,
          params=(
              IntParam("limit", "Results in the page", 1, MAX_PAGE, queries.RESULTS_PAGE),
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
          response="Health", public=True, any_query=True),
    Route("/openapi.json", "This description", lambda: OPENAPI, ledger=False),
    Route("/", "Dashboard: an HTML page that polls the routes above (the page needs no token, "
          "its calls do: open it as /#token=T)", dashboard.page,
          media_type=dashboard.CONTENT_TYPE, public=True, ledger=False),
)

OPENAPI = openapi.describe(ROUTES)


def make_app(ledger_path: str, token: str | None = None) -> bottle.Bottle:
    """The API over the ledger at ledger_path (which must exist: LedgerError otherwise).

    With a token, every route but /healthz and / (a page without data) wants
    `Authorization: Bearer <token>`.
    """
    reader(ledger_path).dispose()   # a missing ledger fails here, not at the first request
    app = bottle.Bottle()
    app.default_error_handler = errors.handle
    local = threading.local()

    def read(view: Callable, kwargs: dict) -> dict | str:
        """view(conn, **kwargs) in one read transaction: one consistent snapshot.

        Each server thread keeps its own read-only engine and connection between
        requests: checking a connection out of a shared pool and back for every
        request cost a quarter of the server's time in bench/api.py, and one
        engine per thread can never run out of pooled connections.
        """
        conn = getattr(local, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            conn = local.conn = reader(ledger_path).connect()
        try:
            with conn.begin():
                return view(conn, **kwargs)
        except (exc.DatabaseError, sqlite3.DatabaseError) as e:
            # e.g. a ledger whose tables are not created yet, or a file that is not
            # (or no longer) a ledger: the client may retry.
            # (queries read through the sqlite3 cursor, whose errors SQLAlchemy never sees.)
            detail = getattr(e, "orig", e)
            raise errors.unavailable(f"the ledger cannot be read now: {detail}") from None

    def endpoint(route: Route) -> Callable:
        def handle(**url_args: str) -> dict | str:
            kwargs = {} if route.any_query else parse_query(route.params)
            for p in route.path_params:
                kwargs[p.name] = p.parse(url_args[p.name])
            body = read(route.view, kwargs) if route.ledger else route.view(**kwargs)
            if route.media_type != errors.JSON_TYPE:
                bottle.response.content_type = route.media_type
            return body
        return handle

    for route in ROUTES:
        app.route(route.path, "GET", endpoint(route), name=route.path)

    if token:
        app.add_hook("before_request", _bearer_check(token))
    app.add_hook("after_request", _no_store)
    return app


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
