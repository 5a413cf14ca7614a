"""/metrics as a Prometheus user meets it: counters to alert on, workers by state,
the shipped alert rules and dashboard, checked with the real promtool.

The ledger is a real SQLite file moved through the real transitions
(ledger/batches.py, ledger/workers.py); /metrics is read from a real waitress
server where the HTTP side matters.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import yaml

from fleetsync.api import make_app, metrics, start_in_thread
from fleetsync.ledger import batches, db, migration, schema, workers
from fleetsync.ledger.batches import Report
from fleetsync.ledger.entry_outcomes import EntryOutcome
from fleetsync.ledger.states import EntryClass

from .support import REPO

MONITORING = os.path.join(REPO, "monitoring")
ALERTS = os.path.join(MONITORING, "alerts.yml")
DASHBOARD = os.path.join(MONITORING, "grafana-dashboard.json")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package `prometheus`, "
    "which `make test` installs as root)")


def samples(text: str) -> dict[str, float]:
    """{'name{labels}': value} of a text-format answer."""
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines()
                                     if line and not line.startswith("#"))}


def types(text: str) -> dict[str, str]:
    """{metric name: counter|gauge} from the # TYPE lines."""
    return dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE "))


def render(path: str, now: float | None = None) -> str:
    with db.connect(path, readonly=True) as conn, conn.begin():
        return metrics.render(conn, now)


def outcome_scan(path: str) -> dict[str, int]:
    with sqlite3.connect(path) as c:
        return dict(c.execute("SELECT class, count(*) FROM entry_outcomes GROUP BY class"))


def attempt_scan(path: str) -> dict[str, tuple[int, int, int]]:
    """The truth the counters must match, counted the slow way."""
    with sqlite3.connect(path) as c:
        return {s: (n, sent, rec) for s, n, sent, rec in c.execute(
            "SELECT status, count(*), coalesce(sum(bytes_sent), 0), "
            "coalesce(sum(bytes_received), 0) FROM attempts GROUP BY status")}


def moved_ledger(path: str) -> None:
    """A migration that met every outcome: success, retry, failure, a lost host, a requeue;
    and three workers, one up, one lost, one gone."""
    engine = db.writer(path)
    migration.open_or_create(engine, "/src", "/dest", {})
    with engine.connect() as conn:
        with conn.begin():
            conn.execute(schema.batches.insert(), [
                dict(file_count=10, directory_count=1, estimated_bytes=1000, created_ts=time.time())
                for _ in range(8)])
        migration.start_run(conn)
        for wid, host in (("a-1", "a"), ("b-2", "b"), ('c"3\\', "c")):
            workers.seen(conn, wid, host, 2)
        c = batches.claim(conn, "a-1", limit=5)
        for k in c[:3]:
            batches.succeed(conn, Report(k.task_id, k.claim_no, "a-1", 0, bytes_sent=100,
                                         bytes_received=7, start_ts=1.0, end_ts=2.0))
        batches.retry(conn, Report(c[3].task_id, c[3].claim_no, "a-1", 23, bytes_sent=5,
                                   bytes_received=1, file_outcomes=[
                                       EntryOutcome(b"d/x", EntryClass.MAY_HEAL, "EIO"),
                                       EntryOutcome(b"d/y", EntryClass.VANISHED, "gone")],
                                   rest_arrived=True), 1)
        batches.fail(conn, Report(c[4].task_id, c[4].claim_no, "a-1", 23, file_outcomes=[
            EntryOutcome(b"d/z", EntryClass.PERMANENT, "EACCES")], rest_arrived=True), 0)
        lost = batches.claim(conn, "b-2", limit=1)
        assert batches.release_worker(conn, "b-2", "host b lost: test") == [lost[0].task_id]
        workers.lost(conn, "b-2", time.time() + 60)
        workers.gone(conn, "c")
        assert batches.requeue(conn, [c[4].task_id], "requeued by a test") == [c[4].task_id]
    engine.dispose()


@pytest.fixture
def ledger(tmp_path) -> str:
    path = str(tmp_path / "ledger.db")
    moved_ledger(path)
    return path


def test_counters_match_the_attempts(ledger):
    text = render(ledger)
    got, truth = samples(text), attempt_scan(ledger)
    assert truth["success"] == (3, 300, 21) and truth["lost"][0] == 1   # the fixture did that
    for status in ("success", "retry", "failed", "lost", "requeued"):
        assert got[f'fleetsync_attempts_total{{status="{status}"}}'] == truth[status][0]
    assert got["fleetsync_retries_total"] == truth["retry"][0] == 1
    assert got["fleetsync_bytes_sent_total"] == sum(v[1] for v in truth.values()) == 305
    assert got["fleetsync_bytes_received_total"] == sum(v[2] for v in truth.values()) == 22
    assert outcome_scan(ledger) == {"may_heal": 1, "vanished": 1, "permanent": 1}
    for cls, n in outcome_scan(ledger).items():
        assert got[f'fleetsync_entry_errors_total{{class="{cls}"}}'] == n
    kinds = types(text)
    assert {n for n, k in kinds.items() if k == "counter"} == {
        "fleetsync_attempts_total", "fleetsync_retries_total", "fleetsync_bytes_sent_total",
        "fleetsync_bytes_received_total", "fleetsync_entry_errors_total"}
    assert all(n.endswith("_total") == (k == "counter") for n, k in kinds.items())


def test_counters_only_go_up(ledger):
    before = samples(render(ledger))
    engine = db.writer(ledger)
    with engine.connect() as conn:
        # A requeue moves a batch back (its gauges fall); no counter may.
        assert batches.requeue(conn, [1], "again") == [1]
        for k in batches.claim(conn, "a-1", limit=10):
            batches.succeed(conn, Report(k.task_id, k.claim_no, "a-1", 0, bytes_sent=1))
    engine.dispose()
    after = samples(render(ledger))
    counters = [k for k in before if k.split("{")[0].endswith("_total")]
    assert counters and all(after[k] >= before[k] for k in counters)
    assert after['fleetsync_attempts_total{status="success"}'] > \
        before['fleetsync_attempts_total{status="success"}']


def test_a_scrape_never_scans_the_attempts(ledger):
    """The counters come from attempt_counts; a scan would cost O(attempts) per scrape."""
    seen: list[str] = []
    with db.connect(ledger, readonly=True) as conn, conn.begin():
        conn.connection.driver_connection.set_trace_callback(seen.append)
        metrics.render(conn)
    assert seen and not [s for s in seen if re.search(r"\bFROM attempts\b", s)
                         or re.search(r"\bFROM entry_outcomes GROUP BY\b", s)], seen


def test_an_older_ledger_gets_its_counts_once(tmp_path, ledger):
    """A ledger written before attempt_counts: served read-only, the counts come from a
    scan; the next writer counts what is there, exactly once, then the trigger goes on."""
    with sqlite3.connect(ledger) as c:
        for counts in ("attempt_counts", "outcome_counts"):
            c.execute(f"DROP TRIGGER {counts}_insert")
            c.execute(f"DROP TABLE {counts}")
    truth, outcomes = attempt_scan(ledger), outcome_scan(ledger)
    got = samples(render(ledger))
    assert got['fleetsync_attempts_total{status="success"}'] == truth["success"][0]
    assert got['fleetsync_entry_errors_total{class="permanent"}'] == outcomes["permanent"] == 1
    for _ in range(2):                      # two openings must not count twice
        engine = db.writer(ledger)
        schema.create(engine)
        engine.dispose()
    got = samples(render(ledger))
    for status, (n, _, _) in truth.items():
        assert got[f'fleetsync_attempts_total{{status="{status}"}}'] == n
    assert got["fleetsync_bytes_sent_total"] == sum(v[1] for v in truth.values())
    for cls, n in outcomes.items():
        assert got[f'fleetsync_entry_errors_total{{class="{cls}"}}'] == n


def test_workers_by_state_and_heartbeat_age(ledger):
    now = time.time() + 30
    got = samples(render(ledger, now))
    assert {s: got[f'fleetsync_workers{{state="{s}"}}'] for s in ("up", "lost", "gone")} == \
        {"up": 1, "lost": 1, "gone": 1}
    ages = {k: v for k, v in got.items() if k.startswith("fleetsync_worker_heartbeat_age")}
    assert set(ages) == {
        'fleetsync_worker_heartbeat_age_seconds{worker_id="a-1",host="a",state="up"}',
        'fleetsync_worker_heartbeat_age_seconds{worker_id="b-2",host="b",state="lost"}',
        'fleetsync_worker_heartbeat_age_seconds{worker_id="c\\"3\\\\",host="c",state="gone"}'}
    assert all(30 <= v < 300 for v in ages.values())


def test_build_info_names_the_installed_version(ledger):
    version = importlib.metadata.version("fleetsync")
    assert samples(render(ledger))[f'fleetsync_build_info{{version="{version}"}}'] == 1


@pytest.fixture
def server(ledger):
    srv = start_in_thread(make_app(ledger, token="s3cret"), "127.0.0.1", 0, threads=2)
    yield srv
    srv.stop()


def get(srv, path: str, token: str | None = "s3cret") -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{srv.port}{path}",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_scrape_params_are_ignored_on_metrics_and_healthz(server):
    """A scrape config with `params:` adds a query string; other routes stay strict."""
    assert get(server, "/metrics?module=fleetsync&x=1&x=2")[0] == 200
    assert get(server, "/healthz?probe=1", token=None) == (200, b'{"status": "ok"}')
    assert get(server, "/status?x=1")[0] == 400
    assert get(server, "/metrics?x=1", token=None)[0] == 401   # still behind the token


@needs_promtool
def test_promtool_accepts_a_real_metrics_answer(server):
    status, body = get(server, "/metrics")
    assert status == 200
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stdout.strip(), (r.stdout + r.stderr).decode()


@needs_promtool
def test_promtool_accepts_the_alert_rules():
    r = subprocess.run([PROMTOOL, "check", "rules", ALERTS], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 5 rules found" in r.stdout


def _exprs() -> list[str]:
    with open(ALERTS) as f:
        rules = [r for g in yaml.safe_load(f)["groups"] for r in g["rules"]]
    with open(DASHBOARD) as f:
        dash = json.load(f)
    return [r["expr"] for r in rules] + [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_the_dashboard_loads_and_every_metric_it_names_exists(ledger):
    with open(DASHBOARD) as f:
        dash = json.load(f)
    assert dash["title"] and dash["panels"]
    assert all(p["targets"] and p["datasource"]["uid"] == "${datasource}" for p in dash["panels"])
    exported = set(types(render(ledger)))
    named = {m for e in _exprs() for m in re.findall(r"\bfleetsync_\w+", e)}
    assert named and named <= exported, named - exported


def _annotations(alert: str, value: str, instance: str) -> dict[str, str]:
    """An alert's annotations as Prometheus renders them, for the values given."""
    with open(ALERTS) as f:
        rule = next(r for g in yaml.safe_load(f)["groups"] for r in g["rules"]
                    if r["alert"] == alert)
    return {k: v.replace("{{ $value }}", value).replace("{{ $labels.instance }}", instance)
            for k, v in rule["annotations"].items()}


def _expect(alert: str, at: str, value: str | None, severity: str = "warning", **labels) -> dict:
    base = {"job": "fleetsync", "instance": "c:8000"}
    exp = [] if value is None else [{
        "exp_labels": {**base, **labels, "severity": severity},
        "exp_annotations": _annotations(alert, value, base["instance"])}]
    return {"eval_time": at, "alertname": alert, "exp_alerts": exp}


def _series(name: str, values: str, **labels) -> dict:
    inner = ",".join(f'{k}="{v}"' for k, v in {"job": "fleetsync", "instance": "c:8000",
                                                **labels}.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


@needs_promtool
def test_each_alert_fires_when_it_should_and_not_before(tmp_path):
    """promtool's rule unit tests: made-up series over an hour, minute by minute."""
    stalled = {"interval": "1m", "input_series": [
        _series("fleetsync_pending_batches", "5x60"),
        # progress for 5 minutes, then no attempt at all
        _series("fleetsync_attempts_total", "0+1x5 5x55", status="success"),
        _series("fleetsync_attempts_total", "0x60", status="retry"),
    ], "alert_rule_test": [
        _expect("FleetsyncMigrationStalled", "10m", None),
        _expect("FleetsyncMigrationStalled", "40m", "5"),
        _expect("FleetsyncRetriesHigh", "40m", None),
    ]}
    trouble = {"interval": "1m", "input_series": [
        _series("fleetsync_workers", "0x10 1x50", state="lost"),
        _series("fleetsync_failed_batches", "0x20 2x40"),
        _series("fleetsync_entries_not_arrived", "0x20 21x40"),
        # work left until minute 45, then none
        _series("fleetsync_pending_batches", "3x45 0x15"),
        # every try retried from minute 10 on
        _series("fleetsync_attempts_total", "0+10x60", status="success"),
        _series("fleetsync_attempts_total", "0x10 0+10x50", status="retry"),
    ], "alert_rule_test": [
        _expect("FleetsyncWorkersLost", "12m", None),
        _expect("FleetsyncWorkersLost", "20m", "1", state="lost"),
        _expect("FleetsyncBatchesFailed", "19m", None),
        _expect("FleetsyncBatchesFailed", "21m", "2"),
        _expect("FleetsyncEntriesNotArrived", "40m", None),
        _expect("FleetsyncEntriesNotArrived", "50m", "21", severity="critical"),
        _expect("FleetsyncRetriesHigh", "9m", None),
        _expect("FleetsyncRetriesHigh", "45m", "0.5", severity="info"),
        _expect("FleetsyncMigrationStalled", "50m", None),
    ]}
    spec = {"rule_files": [ALERTS], "evaluation_interval": "1m", "tests": [stalled, trouble]}
    path = tmp_path / "alerts.test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    r = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_metric_is_in_the_readme(ledger):
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme[readme.index("### GET /metrics"):readme.index("### Token")]
    named = set(re.findall(r"\bfleetsync_\w+", section))
    for stem, names in re.findall(r"\b(fleetsync_\w+)\{([\w,]+)\}", section):   # a_{b,c}
        named |= {stem + n for n in names.split(",")}
    assert set(types(render(ledger))) - named == set()
