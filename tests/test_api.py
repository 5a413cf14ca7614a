"""The status API, called as a WSGI app (no sockets) and, in a few tests, through waitress."""
from __future__ import annotations

import hashlib
import http.client
import io
import json
import re
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from wsgiref.headers import Headers

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, text

from fleetsync.api import ServerThread, make_app, start_in_thread
from fleetsync.controller.api_process import ServerProcess
from fleetsync.api.app import OPENAPI, ROUTES
from fleetsync.ledger import batches, db, migration, producers, queries, schema
from fleetsync.ledger.batches import Report
from fleetsync.ledger.queries import local_time

from .support import api_processes, eventually, fleetsync, free_port, popen, running

# The fields of docs/spec api.ko.md, exactly; the API may add keys, never drop these.
SPEC = {
    "/status": {"total_batches": int, "completed_batches": int, "failed_batches": int,
                "queue_depth": int, "producers_done": int},
    "/progress": {"total": int, "completed": int, "failed": int, "pending": int},
    "/throughput": {"batches_per_sec": float, "elapsed_sec": float, "batches_completed": int,
                    "batches_failed": int, "files_processed": int, "bytes_processed": int,
                    "gb_processed": float, "bytes_per_sec": float, "gb_per_sec": float,
                    "files_per_sec": float},
    "/workers": {"heartbeats": dict},
    "/logs": {"warnings": list, "errors": list},
    "/results": {"results": list, "retained_limit": int, "retained_count": int},
}
RESULT = {"worker_id": str, "task_id": int, "status": str, "retry_count": int,
          "rsync_exit_code": int, "stats": dict, "errors": list, "received_ts": float}
STATS = {"bytes_sent": int, "bytes_received": int, "start_ts": float, "end_ts": float,
         "file_count": int, "directory_count": int, "estimated_bytes": int}
TOKEN = "s3cret-token"


@dataclass
class Response:
    status: int
    headers: Headers     # names are case-insensitive, as in HTTP
    body: bytes

    @property
    def json(self):
        assert self.headers["Content-Type"] == "application/json", self.headers
        return json.loads(self.body)


def call(app, path: str, query: str = "", method: str = "GET",
         headers: dict[str, str] | None = None) -> Response:
    """One request straight into the WSGI app, the way a server would make it."""
    environ = {
        "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path,
        "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO(), "wsgi.multithread": True,
        "wsgi.multiprocess": False, "wsgi.run_once": False,
    }
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    got = {}

    def start_response(status, response_headers, exc_info=None):
        got["status"], got["headers"] = int(status.split()[0]), Headers(response_headers)

    body = b"".join(app(environ, start_response))
    return Response(got["status"], got["headers"], body)


def assert_error(resp: Response, status: int) -> str:
    """Every error has the one shape: {"error": {"status": N, "message": "..."}}."""
    assert resp.status == status, resp.body
    body = resp.json
    assert body == {"error": {"status": status, "message": body["error"]["message"]}}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]["message"]


def populate(engine) -> None:
    """A small live migration: 10 batches in every state, attempts, workers, logs."""
    with engine.connect() as conn:
        with conn.begin():
            conn.execute(insert(schema.batches), [
                dict(file_count=100 + i, directory_count=2, estimated_bytes=2**30 + i,
                     created_ts=time.time()) for i in range(10)])
            conn.execute(insert(schema.batch_files), [
                dict(task_id=1, path=b"d/\xff.bin", is_dir=0, size=5),
                dict(task_id=1, path=b"d", is_dir=1, size=0)])
            conn.execute(insert(schema.workers), [
                dict(worker_id="host-a-uuid", host="a", state="up", heartbeat_ts=time.time()),
                dict(worker_id='odd"name\\', host="b", state="up", heartbeat_ts=time.time())])
        producers.start(conn, 2)
        with conn.begin():
            conn.execute(text("UPDATE producers SET state = 'done' WHERE producer_id = 1"))
        migration.start_run(conn)
        c = batches.claim(conn, "host-a-uuid", limit=6)
        for k in c[:3]:
            batches.succeed(conn, Report(k.task_id, k.claim_no, "host-a-uuid", 0, bytes_sent=1,
                                         bytes_received=2, start_ts=1.0, end_ts=2.0))
        batches.retry(conn, Report(c[3].task_id, c[3].claim_no, "host-a-uuid", 23,
                                   errors=["rsync: vanished"]), 1)
        batches.fail(conn, Report(c[4].task_id, c[4].claim_no, "host-a-uuid", 2), 0)
    engine.dispose()


@pytest.fixture(scope="module")
def ledger_path(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("api") / "ledger.db")
    engine = db.writer(path)
    migration.open_or_create(engine, "/src", "/dest", {})
    populate(engine)
    return path


@pytest.fixture(scope="module")
def app(ledger_path):
    return make_app(ledger_path)


@pytest.mark.parametrize("path", sorted(SPEC))
def test_every_spec_field_with_its_type(app, path):
    resp = call(app, path)
    assert resp.status == 200
    body = resp.json
    assert set(SPEC[path]) <= set(body)
    for field, kind in SPEC[path].items():
        assert type(body[field]) is kind, (field, body[field])


def test_the_numbers_of_this_ledger(app):
    assert call(app, "/status").json == {"total_batches": 10, "completed_batches": 3,
                                         "failed_batches": 1, "queue_depth": 5,
                                         "producers_done": 1,
                                         "entries_not_arrived": 104 + 2}   # the failed batch
    assert call(app, "/progress").json == {"total": 10, "completed": 3, "failed": 1,
                                           "pending": 6}
    t = call(app, "/throughput").json
    assert t["files_processed"] == 100 + 101 + 102
    assert t["bytes_processed"] == 3 * 2**30 + 3 and t["gb_processed"] == 3.0
    logs = call(app, "/logs").json
    assert {k: logs[k] for k in ("warnings", "errors")} == {
        "warnings": ["task 4 retry 1 exit=23"], "errors": ["task 5 retry 0 exit=2"]}
    # the added key: the same lines with their level and time, newest last
    assert [(x["level"], x["message"]) for x in logs["lines"]] == [
        ("warning", "task 4 retry 1 exit=23"), ("error", "task 5 retry 0 exit=2")]
    assert all(x["time"] == local_time(x["ts"]) for x in logs["lines"])


def test_same_numbers_everywhere(app):
    status, progress = call(app, "/status").json, call(app, "/progress").json
    tp, metrics = call(app, "/throughput").json, call(app, "/metrics")
    assert progress["total"] == status["total_batches"]
    assert progress["completed"] == status["completed_batches"] == tp["batches_completed"]
    assert progress["failed"] == status["failed_batches"] == tp["batches_failed"]
    assert progress["pending"] == progress["total"] - progress["completed"] - progress["failed"]
    assert status["queue_depth"] <= progress["pending"]       # running batches are not queued
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = dict(line.rsplit(" ", 1) for line in metrics.body.decode().splitlines()
                   if not line.startswith("#"))
    for key, value in status.items():
        assert int(samples[f"fleetsync_{key}"]) == value
    assert int(samples["fleetsync_pending_batches"]) == progress["pending"]
    assert int(samples['fleetsync_state_batches{state="running"}']) == 1
    assert 'fleetsync_worker_heartbeat_timestamp_seconds{worker_id="odd\\"name\\\\"}' in samples


def test_workers_and_results_items(app):
    beats = call(app, "/workers").json["heartbeats"]
    assert set(beats) == {"host-a-uuid", 'odd"name\\'}
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", v) for v in beats.values())
    body = call(app, "/results").json
    assert body["retained_limit"] == 100_000 and body["retained_count"] == 5
    assert [r["status"] for r in body["results"]] == ["success"] * 3 + ["retry", "failed"]
    for item in body["results"]:
        assert set(RESULT) <= set(item) and set(STATS) <= set(item["stats"])
        for field, kind in RESULT.items():
            assert type(item[field]) is kind, (field, item)
    first = body["results"][0]
    assert first["stats"] == {"bytes_sent": 1, "bytes_received": 2, "start_ts": 1.0,
                              "end_ts": 2.0, "file_count": 100, "directory_count": 2,
                              "estimated_bytes": 2**30}
    for field, kind in STATS.items():
        assert type(first["stats"][field]) is kind
    assert body["results"][3]["errors"] == ["rsync: vanished"]


@pytest.mark.parametrize("query, expected", [
    ("limit=2", [4, 5]),
    ("limit=2&after=1", [2, 3]),
    ("before=3", [1, 2]),
    ("status=success&limit=1", [3]),
    ("worker=host-a-uuid&status=failed", [5]),
    ("worker=nobody", []),
    ("status=lost", []),
])
def test_results_paging_and_filters(app, query, expected):
    resp = call(app, "/results", query)
    assert [r["attempt_id"] for r in resp.json["results"]] == expected


def test_batch_detail(app):
    body = call(app, "/batches/1").json
    assert body["batch"]["task_id"] == 1 and body["batch"]["state"] == "succeeded"
    assert body["entries_total"] == 2
    assert {e["path_hex"]: e["path"] for e in body["entries"]} == {
        "64": "d", "642fff2e62696e": "d/\\xff.bin"}
    assert [a["status"] for a in body["attempts"]] == ["success"]
    assert [e["path"] for e in call(app, "/batches/1", "limit=1&offset=1").json["entries"]] \
        == ["d/\\xff.bin"]


@pytest.mark.parametrize("path, query, status", [
    ("/nowhere", "", 404),
    ("/batches/999", "", 404),
    ("/batches/", "", 404),
    ("/batches/0", "", 400),
    ("/batches/-1", "", 400),
    ("/batches/abc", "", 400),
    ("/batches/99999999999999999999", "", 400),
    ("/results", "limit=0", 400),
    ("/results", "limit=-5", 400),
    ("/results", "limit=10001", 400),
    ("/results", "limit=ten", 400),
    ("/results", "limit=", 400),
    ("/results", "limit=1&limit=2", 400),
    ("/results", "after=1e3", 400),
    ("/results", "status=bogus", 400),
    ("/results", "worker=" + "w" * 300, 400),
    ("/results", "worker=%FF", 400),
    ("/results", "colour=red", 400),
    ("/status", "x=1", 400),
    ("/logs", "limit=99999999999999999999999", 400),
])
def test_bad_requests_are_json_errors(app, path, query, status):
    assert_error(call(app, path, query), status)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_only_get_and_head(app, method):
    resp = call(app, "/status", method=method)
    assert_error(resp, 405)
    assert resp.headers["Allow"] == "GET, HEAD"


def test_head_has_the_headers_and_no_body(app):
    get, head = call(app, "/status"), call(app, "/status", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.headers["Content-Type"] == get.headers["Content-Type"] == "application/json"
    assert get.headers["Cache-Control"] == "no-store"


def test_an_unexpected_failure_is_a_json_500_without_internals(ledger_path, monkeypatch):
    def broken(conn, *args, **kwargs):
        raise RuntimeError("secret internals")
    monkeypatch.setattr(queries, "_rows", broken)      # every read of the ledger
    app = make_app(ledger_path)        # a new app: its shared snapshot is not built yet
    try:
        for path in ("/status", "/logs"):   # a shared snapshot, a per-request read
            message = assert_error(call(app, path), 500)
            assert "secret" not in message
    finally:
        app.snapshots.close()


def test_a_ledger_without_tables_is_503_not_500(tmp_path):
    path = tmp_path / "new.db"
    path.write_bytes(b"")            # the controller has only just created the file
    app = make_app(str(path))
    assert "no such table" in assert_error(call(app, "/status"), 503)
    assert_error(call(app, "/healthz"), 503)
    # The document says which routes can answer 503: those that read the ledger.
    doc = call(app, "/openapi.json").json
    for route in ROUTES:
        says_503 = "503" in doc["paths"][re.sub(r"<(\w+)>", r"{\1}", route.path)]["get"][
            "responses"]
        assert says_503 == route.ledger, route.path
        if not route.ledger:
            assert call(app, route.path).status == 200, route.path


def test_a_just_created_ledger_answers_zeros(tmp_path):
    path = str(tmp_path / "ledger.db")
    schema.create(db.writer(path))                 # tables, no migration row yet
    app = make_app(path)
    for route in SPEC:
        body = call(app, route).json
        assert all(v in (0, {}, []) for k, v in body.items() if k != "retained_limit"), body


def test_the_token(ledger_path):
    app = make_app(ledger_path, token=TOKEN)
    for path in ["/status", "/results", "/metrics", "/openapi.json", "/batches/1", "/nowhere"]:
        resp = call(app, path)
        assert_error(resp, 401)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert_error(call(app, path, headers={"Authorization": "Bearer wrong"}), 401)
        assert_error(call(app, path, headers={"Authorization": TOKEN}), 401)
    assert_error(call(app, "/status", method="POST"), 401)   # before anything else
    ok = call(app, "/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status == 200 and ok.json["total_batches"] == 10
    assert call(app, "/status", headers={"Authorization": f"bearer {TOKEN}"}).status == 200
    assert call(app, "/healthz").json == {"status": "ok"}


def test_openapi_describes_every_route_and_parameter(app):
    doc = call(app, "/openapi.json").json
    assert doc["openapi"].startswith("3.")
    routes = {re.sub(r"<(\w+)>", r"{\1}", r.rule) for r in app.routes}
    assert set(doc["paths"]) == routes
    for route in ROUTES:
        op = doc["paths"][re.sub(r"<(\w+)>", r"{\1}", route.path)]["get"]
        assert [p["name"] for p in op["parameters"]] == \
            [p.name for p in route.path_params + route.params]
        assert "200" in op["responses"]
    for name, fields in SPEC.items():
        schema_name = next(r.response for r in ROUTES if r.path == name)
        assert set(fields) <= set(doc["components"]["schemas"][schema_name]["properties"])
    assert set(RESULT) <= set(doc["components"]["schemas"]["Result"]["properties"])


def _query_value(param: dict):
    """Values for one parameter: mostly valid, sometimes out of range or not a number."""
    schema_ = param["schema"]
    junk = st.one_of(st.text(max_size=30), st.integers(-2**70, 2**70).map(str))
    if schema_["type"] == "integer":
        valid = st.integers(schema_["minimum"], min(schema_["maximum"], 10**6)).map(str)
    elif "enum" in schema_:
        valid = st.sampled_from(schema_["enum"])
    else:
        valid = st.text(min_size=1, max_size=schema_["maxLength"])
    return st.one_of(valid, valid, junk)


OPERATIONS = [(path, op["get"]) for path, op in OPENAPI["paths"].items()]


@st.composite
def requests(draw):
    path, op = draw(st.sampled_from(OPERATIONS))
    query = []
    for param in op["parameters"]:
        value = draw(_query_value(param))
        if param["in"] == "path":
            path = path.replace("{" + param["name"] + "}", value)
        elif draw(st.booleans()):
            query.append((param["name"], value))
    if draw(st.integers(0, 9)) == 0:
        query.append((draw(st.text(min_size=1, max_size=10)), draw(st.text(max_size=10))))
    method = draw(st.sampled_from(["GET", "GET", "GET", "HEAD", "POST"]))
    # PATH_INFO as a server gives it: the request's bytes, as latin-1 text.
    return method, path.encode("utf-8").decode("latin-1"), urllib.parse.urlencode(query)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_no_request_from_the_openapi_document_gets_a_5xx(ledger_path, request_):
    method, path, query = request_
    app = _hypothesis_app(ledger_path)
    resp = call(app, path, query, method)
    assert resp.status < 500, (method, path, query, resp.body)
    if method != "HEAD" and resp.status >= 400:
        assert_error(resp, resp.status)


_APPS: dict[str, object] = {}


def _hypothesis_app(path: str):
    # given() cannot take function-scoped fixtures; one app per ledger is enough.
    return _APPS.setdefault(path, make_app(path))


def _digest(path: str) -> dict[str, str]:
    files = {}
    for suffix in ("", "-wal"):
        try:
            with open(path + suffix, "rb") as f:
                files[suffix] = hashlib.sha256(f.read()).hexdigest()
        except FileNotFoundError:
            pass
    return files


def test_the_api_never_writes(ledger_path, app):
    before = _digest(ledger_path)
    for route in ROUTES:
        call(app, route.path.replace("<task_id>", "1"))
    call(app, "/results", "limit=10000")
    assert _digest(ledger_path) == before
    # and it could not even if it tried: its engine is read-only
    with db.reader(ledger_path).connect() as conn:
        with pytest.raises(Exception, match="readonly"):
            with conn.begin():
                conn.execute(text("DELETE FROM log"))


def test_a_real_waitress_server(ledger_path):
    server = start_in_thread(make_app(ledger_path), "127.0.0.1", 0, threads=2)
    try:
        assert server.host == "127.0.0.1" and server.port > 0
        conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
        for path in ["/status", "/progress", "/status"]:        # one keep-alive connection
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("Content-Type") == "application/json"
            body = json.loads(resp.read())
        assert body["total_batches"] == 10
        conn.request("HEAD", "/progress")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b""
        conn.request("DELETE", "/status")
        resp = conn.getresponse()
        assert resp.status == 405 and json.loads(resp.read())["error"]["status"] == 405
        assert resp.getheader("Server") == "fleetsync"
        conn.close()
    finally:
        server.stop()
    with pytest.raises(OSError):
        socket.create_connection((server.host, server.port), timeout=1).close()


def test_the_server_thread_is_a_context_manager(ledger_path):
    with ServerThread(make_app(ledger_path, token=TOKEN), port=0) as server:
        assert server.url.startswith("http://127.0.0.1:")
        conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
        conn.request("GET", "/status")
        assert conn.getresponse().status == 401
        conn.close()


def test_a_commit_shows_in_every_route(tmp_path):
    path = str(tmp_path / "ledger.db")
    engine = db.writer(path)
    migration.open_or_create(engine, "/src", "/dest", {})
    app = make_app(path)
    try:
        for route in ("/progress", "/results", "/workers"):
            call(app, route)                 # every cache and kept connection in use
        assert call(app, "/progress").json["total"] == 0
        populate(engine)
        assert eventually(lambda: call(app, "/progress").json["total"] == 10)
        assert eventually(lambda: call(app, "/status").json["completed_batches"] == 3)
        assert eventually(lambda: call(app, "/throughput").json["batches_completed"] == 3)
        assert eventually(lambda: len(call(app, "/results").json["results"]) == 5)
        assert eventually(lambda: len(call(app, "/results", "limit=2").json["results"]) == 2)
        assert eventually(lambda: len(call(app, "/workers").json["heartbeats"]) == 2)
    finally:
        app.snapshots.close()


def test_a_succeeded_batch_shows_in_status_of_a_live_server(tmp_path):
    path = str(tmp_path / "ledger.db")
    engine = db.writer(path)
    migration.open_or_create(engine, "/src", "/dest", {})
    populate(engine)
    with ServerThread(make_app(path), port=0) as server:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=10)

        def completed() -> int:
            conn.request("GET", "/status")
            return json.loads(conn.getresponse().read())["completed_batches"]
        assert completed() == 3
        with engine.connect() as wconn:
            (k,) = batches.claim(wconn, "host-a-uuid", limit=1)
            batches.succeed(wconn, Report(k.task_id, k.claim_no, "host-a-uuid", 0))
        assert eventually(lambda: completed() == 4)
        conn.close()
    engine.dispose()


def _agree(status: dict, progress: dict, tp: dict) -> None:
    assert progress == {"total": status["total_batches"],
                        "completed": status["completed_batches"],
                        "failed": status["failed_batches"],
                        "pending": status["total_batches"] - status["completed_batches"]
                        - status["failed_batches"]}
    assert tp["batches_completed"] == status["completed_batches"]
    assert tp["batches_failed"] == status["failed_batches"]
    assert status["queue_depth"] <= progress["pending"]


def test_answers_of_one_snapshot_agree_under_a_concurrent_writer(tmp_path):
    """/status, /progress and /throughput name the snapshot they come from; those of
    one snapshot agree exactly, while a writer moves batches the whole time."""
    path = str(tmp_path / "ledger.db")
    engine = db.writer(path)
    migration.open_or_create(engine, "/src", "/dest", {})
    with engine.connect() as wconn, wconn.begin():
        wconn.execute(insert(schema.batches), [
            dict(file_count=1 + i % 5, directory_count=1, estimated_bytes=1000 + i,
                 created_ts=time.time()) for i in range(400)])
    done = threading.Event()

    def write() -> None:
        with engine.connect() as wconn:
            migration.start_run(wconn)
            for i in range(100):
                for k in batches.claim(wconn, "w", limit=4):
                    report = Report(k.task_id, k.claim_no, "w", 0)
                    if i % 7 == 0:
                        batches.fail(wconn, report, 0)
                    else:
                        batches.succeed(wconn, report)
                with wconn.begin():     # more batches arrive while others finish
                    wconn.execute(insert(schema.batches), [dict(
                        file_count=1, directory_count=0, estimated_bytes=1,
                        created_ts=time.time())])
        done.set()

    by_serial: dict[str, dict[str, dict]] = {}
    with ServerThread(make_app(path), port=0, threads=4) as server:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
        writer = threading.Thread(target=write)
        writer.start()
        try:
            while not done.is_set() or len(by_serial) < 2:
                for route in ("/status", "/progress", "/throughput"):
                    conn.request("GET", route)
                    resp = conn.getresponse()
                    body = json.loads(resp.read())
                    serial = resp.getheader("X-Fleetsync-Snapshot")
                    seen = by_serial.setdefault(serial, {})
                    assert seen.setdefault(route, body) == body, (serial, route)
        finally:
            writer.join()

        def total() -> int:
            conn.request("GET", "/status")
            return json.loads(conn.getresponse().read())["total_batches"]
        assert eventually(lambda: total() == 500)       # the writer's last commit shows
        conn.close()
    engine.dispose()
    complete = [s for s in by_serial.values() if len(s) == 3]
    assert len(by_serial) >= 2 and complete
    for seen in complete:
        _agree(seen["/status"], seen["/progress"], seen["/throughput"])


def test_a_bare_results_request_returns_every_retained_result(tmp_path):
    path = str(tmp_path / "ledger.db")
    engine = db.writer(path)
    migration.open_or_create(engine, "/src", "/dest", {})
    n = 2_345                         # more than the page of 100 and than a chunk of 1000
    with engine.connect() as wconn:
        with wconn.begin():
            wconn.execute(insert(schema.batches), [
                dict(file_count=1, directory_count=0, estimated_bytes=i, created_ts=1.0)
                for i in range(n)])
        claims = batches.claim(wconn, "w", limit=n)
        for k in claims:
            report = Report(k.task_id, k.claim_no, "w", 0 if k.task_id % 10 else 2)
            (batches.fail(wconn, report, 0) if k.task_id % 10 == 0
             else batches.succeed(wconn, report))
    engine.dispose()
    with ServerThread(make_app(path), port=0) as server:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
        conn.request("GET", "/results")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type") == "application/json"
        assert resp.getheader("Transfer-Encoding") == "chunked"      # streamed
        body = json.loads(resp.read())
        assert body["retained_count"] == len(body["results"]) == n
        assert body["retained_limit"] == queries.RETAINED_LIMIT
        assert [r["attempt_id"] for r in body["results"]] == list(range(1, n + 1))
        assert all(set(RESULT) <= set(r) for r in body["results"])
        conn.request("GET", "/results?status=failed")                # filters: still all
        failed = json.loads(conn.getresponse().read())["results"]
        assert [r["task_id"] for r in failed] == list(range(10, n + 1, 10))
        conn.request("GET", "/results?limit=5")                      # a page: newest 5
        page = json.loads(conn.getresponse().read())
        assert [r["attempt_id"] for r in page["results"]] == list(range(n - 4, n + 1))
        assert page["retained_count"] == n
        conn.request("HEAD", "/results")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b""
        conn.request("GET", "/status")                               # the connection lives on
        assert json.loads(conn.getresponse().read())["total_batches"] == n
        conn.close()


def test_a_server_thread_never_started_can_still_be_stopped(ledger_path):
    server = ServerThread(make_app(ledger_path), port=0)
    server.stop()
    with pytest.raises(OSError):
        socket.create_connection((server.host, server.port), timeout=1).close()


# -- the API in a process of its own (fleetsync run) -----------------------------------

def _get(port: int, path: str) -> tuple[int, bytes] | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError:
        return None
    finally:
        conn.close()


def test_the_api_process_serves_and_stops(ledger_path):
    api = ServerProcess(ledger_path, "127.0.0.1", 0, token=TOKEN)
    try:
        assert api.pid != os.getpid() and running(api.pid)
        assert _get(api.port, "/status")[0] == 401                   # the token went along
        assert _get(api.port, "/healthz") == (200, b'{"status": "ok"}')
        assert api_processes(os.getpid()) == [api.pid]
    finally:
        assert api.stop() == 0                                       # a clean exit
    assert not running(api.pid) and _get(api.port, "/healthz") is None


def test_a_busy_port_fails_at_once_in_the_parent(ledger_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(OSError):
            ServerProcess(ledger_path, "127.0.0.1", s.getsockname()[1])


def test_the_api_process_dies_with_a_parent_killed_by_sigkill(ledger_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from fleetsync.controller.api_process import ServerProcess\n"
         "api = ServerProcess(sys.argv[1], '127.0.0.1', 0)\n"
         "print(api.pid, api.port, flush=True)\n"
         "time.sleep(600)\n", ledger_path], stdout=subprocess.PIPE, text=True)
    try:
        pid, port = map(int, parent.stdout.readline().split())
        assert _get(port, "/healthz")[0] == 200
        assert api_processes(parent.pid) == [pid]
        parent.kill()
        parent.wait()
        assert eventually(lambda: not running(pid)), "the API process outlived its parent"
        assert _get(port, "/healthz") is None
    finally:
        parent.kill()
        parent.wait()


def _run_with_api(tmp_path, port: int) -> subprocess.Popen:
    src = tmp_path / "src"
    for d in range(20):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(30):
            (src / f"d{d}" / f"f{i}").write_bytes(os.urandom(4096))
    return popen("run", "--src", str(src), "--dest", str(tmp_path / "dest"), "--ledger",
                 str(tmp_path / "l.db"), "--port", str(port), "--batch-files", "60")


def _held_with_its_api(run: subprocess.Popen, port: int) -> int:
    """The run's API process, once it answers, with the run itself stopped (SIGSTOP):
    a state held, so what the test looks at cannot end under it, however fast the
    copy. The API serves on from its own process. Returns its pid."""
    (child,) = eventually(lambda: api_processes(run.pid), "the run's API process", proc=run)
    os.kill(run.pid, signal.SIGSTOP)
    assert eventually(lambda: (_get(port, "/status") or (0,))[0] == 200, "the API answering")
    assert api_processes(run.pid) == [child] and run.poll() is None
    return child


def test_run_serves_the_api_from_its_own_process_and_stops_it(tmp_path):
    port = free_port()
    run = _run_with_api(tmp_path, port)
    try:
        children = [_held_with_its_api(run, port)]
        os.kill(run.pid, signal.SIGCONT)
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err.decode()
        assert api_processes(run.pid) == [] and not any(running(p) for p in children)
        assert _get(port, "/status") is None
    finally:
        run.kill()
        run.wait()


def test_kill_9_of_run_leaves_no_api_process(tmp_path):
    port = free_port()
    run = _run_with_api(tmp_path, port)
    try:
        child = _held_with_its_api(run, port)
        run.kill()
        run.wait()
        assert eventually(lambda: not running(child)), "the API process outlived fleetsync run"
        assert _get(port, "/status") is None
    finally:
        run.kill()
        run.wait()
    # The next run stops what the killed one left (ansible, rsync) and finishes.
    r = fleetsync("run", "--src", str(tmp_path / "src"), "--dest", str(tmp_path / "dest"),
                  "--ledger", str(tmp_path / "l.db"), "--no-api", "--batch-files", "60")
    assert r.returncode == 0, r.stderr.decode()
