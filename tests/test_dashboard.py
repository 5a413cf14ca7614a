"""The dashboard at /: as a WSGI app, and rendered by a real headless Chromium whose
DOM and screenshot (read back with tesseract OCR) must show the ledger's numbers."""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
import threading
import time
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sqlalchemy import insert, text

from fleetsync.api import make_app, start_in_thread
from fleetsync.api.app import OPENAPI
from fleetsync.ledger import batches, db, logbook, migration, schema, workers
from fleetsync.ledger.batches import Report
from fleetsync.ledger.queries import local_time

from .test_api import TOKEN, assert_error, call

CHROMIUM = shutil.which("chromium")
TESSERACT = shutil.which("tesseract")
needs_browser = pytest.mark.skipif(
    not (CHROMIUM and TESSERACT),
    reason="needs Debian's chromium and tesseract-ocr (make test installs them)")

# 60 batches of 250 files and 256 MiB: 42 succeed, 3 fail, 5 run, 10 wait; one hour.
FILES, MIB = 250, 1024 * 1024
# node-bravo is lost (tried again 10 minutes after BEAT), node-charlie lags behind,
# node-delta left the inventory.
WORKERS = ("node-alpha", "node-bravo", "node-charlie", "node-delta")
BEAT = 1_790_000_000
WARNING = "slow worker node-bravo"
ERROR = "disk full on node-alpha"


def fill(path: str) -> None:
    engine = db.writer(path)
    with engine.connect() as conn:
        with conn.begin():
            conn.execute(insert(schema.batches), [
                dict(file_count=FILES, directory_count=1, estimated_bytes=256 * MIB,
                     created_ts=time.time()) for _ in range(60)])
            # a finished hour of work: elapsed is exact, not the time the test takes
            conn.execute(text("UPDATE migration SET elapsed_before = 3600, "
                              "run_started_ts = NULL"))
        for name in WORKERS:
            workers.seen(conn, name, name, 4)
        with conn.begin():
            conn.execute(text("UPDATE workers SET heartbeat_ts = :t"), {"t": BEAT})
            conn.execute(text("UPDATE workers SET heartbeat_ts = :t WHERE worker_id = :w"),
                         {"t": BEAT - 754, "w": WORKERS[2]})
        workers.lost(conn, WORKERS[1], BEAT + 600)
        workers.gone(conn, WORKERS[3])
        claims = batches.claim(conn, WORKERS[0], limit=50)
        for k in claims[:42]:
            batches.succeed(conn, Report(k.task_id, k.claim_no, WORKERS[0], 0))
        for k in claims[42:45]:
            batches.fail(conn, Report(k.task_id, k.claim_no, WORKERS[0], 23), 0)
        logbook.add(conn, "warning", WARNING)
        logbook.add(conn, "error", ERROR)
    engine.dispose()


@pytest.fixture(scope="module")
def ledger_path(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("dashboard") / "ledger.db")
    engine = db.writer(path)
    migration.open_or_create(engine, "/src", "/dest", {})
    engine.dispose()
    fill(path)
    return path


def test_the_page_is_html_with_get_and_head(ledger_path):
    app = make_app(ledger_path)
    get = call(app, "/")
    assert get.status == 200 and get.headers["Content-Type"] == "text/html; charset=utf-8"
    assert get.body.startswith(b"<!doctype html>") and b'id="completed"' in get.body
    assert b"http" not in get.body          # nothing from outside: no CDN, no font
    assert "'self'" in get.headers["Content-Security-Policy"]
    head = call(app, "/", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.headers["Content-Type"] == get.headers["Content-Type"]
    resp = call(app, "/", method="POST")
    assert_error(resp, 405)
    assert resp.headers["Allow"] == "GET, HEAD"
    assert_error(call(app, "/", "token=x"), 400)   # a token never rides in the query
    assert OPENAPI["paths"]["/"]["get"]["responses"]["200"]["content"] == {
        "text/html": {"schema": {"type": "string"}}}


def test_with_a_token_the_page_is_served_but_its_data_is_not(ledger_path):
    app = make_app(ledger_path, token=TOKEN)
    assert call(app, "/").status == 200        # the page itself holds no numbers
    assert_error(call(app, "/progress"), 401)


def chromium(url: str, profile: Path, *args: str) -> str:
    """One headless Chromium run; its stdout."""
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
         "--virtual-time-budget=5000", "--window-size=1200,900", *args, url],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class _Texts(HTMLParser):
    """The text inside every element that has an id, its descendants' text included."""

    VOID = {"meta", "link", "br", "img", "input", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str | None] = []
        self.texts: dict[str, list[str]] = {}

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.open.append(dict(attrs).get("id"))

    def handle_endtag(self, tag):
        if tag not in self.VOID:
            self.open.pop()

    def handle_data(self, data):
        for id_ in filter(None, self.open):
            self.texts.setdefault(id_, []).append(data)


def texts(dom: str) -> dict[str, str]:
    """{id: its text, whitespace collapsed} of a dumped DOM."""
    parser = _Texts()
    parser.feed(dom)
    return {k: " ".join(" ".join(v).split()) for k, v in parser.texts.items()}


def png_pixels(path: Path) -> tuple[int, int, bytes]:
    """(width, height, filtered pixel rows) of a PNG, with the standard library only.

    Rows stay filtered (no unfiltering in pure Python): the filtered rows of a picture
    of one colour are almost all zero bytes, which is all the blank check needs.
    """
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat.append(chunk)
        pos += 12 + length
    return *size, zlib.decompress(b"".join(idat))


def ocr(path: Path) -> str:
    done = subprocess.run([TESSERACT, str(path), "-", "--psm", "3"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def capture(ledger_path: str, tmp_path: Path) -> tuple[str, Path]:
    """(the DOM, a screenshot) of the page over this ledger, served by a real server."""
    server = start_in_thread(make_app(ledger_path), "127.0.0.1", 0, threads=4)
    shot = tmp_path / "dashboard.png"
    try:
        dom = chromium(server.url + "/", tmp_path / "profile", "--dump-dom")
        chromium(server.url + "/", tmp_path / "profile", f"--screenshot={shot}")
    finally:
        server.stop()
    return dom, shot


@needs_browser
def test_chromium_shows_the_numbers(ledger_path, tmp_path):
    dom, shot = capture(ledger_path, tmp_path)

    # the script ran and filled every number in
    shown = texts(dom)
    assert shown["state"].startswith("updated"), shown["state"]
    assert re.fullmatch(r"updated \d\d:\d\d:\d\d", shown["state"]), shown["state"]  # 24-hour
    numbers = ("completed", "total", "failed", "pending", "files", "gib", "gib-flight",
               "elapsed", "files-rate", "mib-rate", "batch-rate", "mib-now-rate", "eta",
               "percent", "run")
    # No run goes on (none has started on this ledger): no rate now, no ETA, nothing
    # in flight; the bar is bytes: 42 of 60 batches of 256 MiB.
    assert {i: shown[i] for i in numbers} == {
        "completed": "42", "total": "60", "failed": "3", "pending": "15", "files": "10,500",
        "gib": "10.50", "gib-flight": "0.00", "elapsed": "1h 00m", "files-rate": "2.92",
        "mib-rate": "2.99", "batch-rate": "0.01", "mib-now-rate": "-", "eta": "not running",
        "percent": "70.0 %", "run": "not running (10 batches waiting)"}
    assert shown["mib-now"] == "0.00"                       # nothing moves in this ledger
    for name in WORKERS:
        assert name in shown["workers"]
    # with no run going on, an up worker is idle, and a silent one is not flagged
    beat, late = local_time(BEAT), local_time(BEAT - 754)
    next_try = local_time(BEAT + 600)[11:]
    assert shown["workers"] == (
        f"node-alpha {beat} idle node-bravo {beat} lost, next try {next_try} "
        f"node-charlie {late} idle node-delta {beat} gone")
    logs = shown["logs"]
    assert ERROR in logs and WARNING in logs and logs.index(ERROR) < logs.index(WARNING)
    # each line with its time (master local, 24-hour)
    assert re.search(r"error \d{4}-\d\d-\d\d \d\d:\d\d:\d\d " + ERROR, logs), logs

    # what a person sees: a full picture with the same numbers in it
    width, height, pixels = png_pixels(shot)
    assert (width, height) == (1200, 900)
    assert len(set(pixels)) > 64 and pixels.count(0) < 0.99 * len(pixels)   # not blank
    seen = ocr(shot)
    assert re.search(r"42\s+of\s+60\s+batches done,\s+3\s+failed", seen), seen
    for words in ["10,500", "10.50", "1h 00m", "not running", *WORKERS, ERROR, WARNING,
                  f"lost, next try {next_try}", "gone", "idle"]:
        assert words in seen, (words, seen)


@needs_browser
def test_chromium_with_a_token(ledger_path, tmp_path):
    server = start_in_thread(make_app(ledger_path, token=TOKEN), "127.0.0.1", 0, threads=4)
    try:
        without = chromium(server.url + "/", tmp_path / "a", "--dump-dom")
        with_ = chromium(server.url + f"/#token={TOKEN}", tmp_path / "b", "--dump-dom")
    finally:
        server.stop()
    without, with_ = texts(without), texts(with_)
    assert "/#token=" in without["state"] and without["completed"] == "-"
    assert with_["completed"] == "42" and with_["state"].startswith("updated")


def render(ledger_path: str, tmp_path: Path) -> tuple[str, dict[str, str], str]:
    """(the DOM, {id: text}, the OCR of a screenshot) of the page over this ledger."""
    dom, shot = capture(ledger_path, tmp_path)
    return dom, texts(dom), ocr(shot)


def chart_ticks(dom: str) -> list[str]:
    found = re.search(r'data-ticks="([^"]*)"', dom)
    assert found, "the chart has no labels"
    return found.group(1).split()


@pytest.fixture
def finished_path(make_ledger) -> str:
    """A migration whose run ended with every batch copied (empty files: no bytes, so
    no rate either), its one worker still marked up in the workers table."""
    path = make_ledger("/src")
    engine = db.writer(path)
    with engine.connect() as conn:
        with conn.begin():
            conn.execute(insert(schema.batches), [
                dict(file_count=5, directory_count=1, estimated_bytes=0,
                     created_ts=time.time()) for _ in range(3)])
        migration.start_run(conn)
        workers.seen(conn, "node-alpha", "node-alpha", 2)
        for k in batches.claim(conn, "node-alpha", limit=3):
            batches.succeed(conn, Report(k.task_id, k.claim_no, "node-alpha", 0))
        migration.end_run(conn)
    engine.dispose()
    return path


@needs_browser
def test_chromium_a_finished_migration(finished_path, tmp_path):
    """Finished: 100.0 % readable (a light label, not dark on green), the worker idle
    (not "up"), no ETA but done, an idle chart whose labels differ, a 24-hour clock."""
    dom, shown, seen = render(finished_path, tmp_path)
    assert re.fullmatch(r"updated \d\d:\d\d:\d\d", shown["state"]), shown["state"]
    assert re.fullmatch(r"node-alpha \S+ \S+ idle", shown["workers"]), shown["workers"]
    assert "100.0 %" in seen or "100.0%" in seen, seen
    ticks = chart_ticks(dom)
    assert len(set(ticks)) == 5 and ticks[0].strip("0.") == "", ticks   # 0, then 4 others
    assert shown["run"] == "finished" and shown["eta"] == "done"
    assert shown["percent"] == "100.0 %" and shown["mib-now-rate"] == "-"
    for words in ["finished", "done"]:
        assert words in seen, (words, seen)
    assert not re.search(r"\b[AP]M\b", seen), seen


@pytest.fixture
def live_path(make_ledger):
    """A run going on (a thread beats its heartbeat, as the controller does) whose only
    worker fell silent ten minutes ago, holding 2 of 64 MiB batches claimed a minute
    ago, one batch done at 1 MiB/s, one waiting: (path, the time the worker went quiet)."""
    path = make_ledger("/src")
    engine = db.writer(path)
    quiet = time.time() - 600
    with engine.connect() as conn:
        with conn.begin():
            conn.execute(insert(schema.batches), [
                dict(file_count=5, directory_count=1, estimated_bytes=64 * MIB,
                     created_ts=time.time()) for _ in range(4)])
        migration.start_run(conn)
        workers.seen(conn, "node-solo", "node-solo", 2)
        k = batches.claim(conn, "node-solo")[0]
        batches.succeed(conn, Report(k.task_id, k.claim_no, "node-solo", 0,
                                     start_ts=1000.0, end_ts=1064.0))
        batches.claim(conn, "node-solo", limit=2)
        with conn.begin():
            conn.execute(text("UPDATE workers SET heartbeat_ts = :t"), {"t": quiet})
            conn.execute(text("UPDATE batches SET claimed_ts = :t WHERE state = 'running'"),
                         {"t": time.time() - 60})
    stop = threading.Event()

    def beat() -> None:
        with engine.connect() as conn:
            while not stop.wait(1.0):
                migration.heartbeat(conn)
    beating = threading.Thread(target=beat, daemon=True)
    beating.start()
    yield path, quiet
    stop.set()
    beating.join()
    engine.dispose()


@needs_browser
def test_chromium_a_live_run_flags_its_only_silent_worker(live_path, tmp_path):
    """The README promises a flag for an up worker silent for a minute: measured against
    the master's clock, so a lone worker is flagged too; the ETA and the bar count the
    bytes in flight, not only the batches whose result landed."""
    path, quiet = live_path
    dom, shown, seen = render(path, tmp_path)
    assert re.fullmatch(rf"node-solo {local_time(quiet)} up silent \d+m \d\ds",
                        shown["workers"]), shown["workers"]
    assert shown["run"] == "running"
    assert re.fullmatch(r"\d+m \d\ds", shown["eta"]), shown["eta"]
    assert shown["gib-flight"] != "0.00" and shown["mib-now-rate"] == "2.00"  # 2 slots, 1 MiB/s
    assert float(shown["percent"].rstrip(" %")) > 25.0       # 1 of 4 done, and some in flight
    assert "running" in seen and "silent" in seen, seen
