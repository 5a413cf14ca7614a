"""ledger/queries.py on real SQLite ledgers built through the real transitions."""
from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import insert, text
from sqlalchemy.exc import IntegrityError, OperationalError

from fleetsync.ledger import (bandwidth, batches, db, estimate, migration, producers, queries,
                             schema, workers)
from fleetsync.ledger.batches import Report
from fleetsync.ledger.states import RunState


def enqueue(conn, n: int, files: int = 10, dirs: int = 1, size: int = 1000) -> None:
    with conn.begin():
        conn.execute(insert(schema.batches), [
            dict(file_count=files, directory_count=dirs, estimated_bytes=size,
                 created_ts=time.time()) for _ in range(n)])


def truth(conn) -> dict[str, int]:
    """Batches per state by scanning the table: what the triggers must agree with."""
    return dict(conn.execute(text("SELECT state, count(*) FROM batches GROUP BY state")).all())


@pytest.fixture
def ledger(make_ledger):
    """(path, writer Connection) of a new ledger with its migration row."""
    path = make_ledger("/src")
    engine = db.writer(path)
    with engine.connect() as conn:
        yield path, conn
    engine.dispose()


def test_an_empty_ledger_answers_zeros(tmp_path):
    path = str(tmp_path / "ledger.db")
    schema.create(db.writer(path))           # tables, and no migration row yet
    with db.reader(path).connect() as conn:
        assert queries.status(conn) == dict(total_batches=0, completed_batches=0,
                                            failed_batches=0, queue_depth=0, producers_done=0,
                                            entries_not_arrived=0)
        assert queries.progress(conn) == dict(total=0, completed=0, failed=0, pending=0)
        tp = queries.throughput(conn)
        assert tp["elapsed_sec"] == 0.0 and tp["batches_completed"] == 0
        assert all(tp[k] == 0 for k in tp)
        assert queries.heartbeats(conn) == {"heartbeats": {}, "workers": {}}
        assert queries.logs(conn) == {"warnings": [], "errors": [], "lines": []}
        assert queries.results(conn) == {"results": [], "retained_limit": 100_000,
                                         "retained_count": 0}


def test_counts_follow_every_transition(ledger):
    path, conn = ledger
    enqueue(conn, 10)
    claims = batches.claim(conn, "w1", limit=5)
    batches.succeed(conn, Report(claims[0].task_id, claims[0].claim_no, "w1", 0))
    batches.succeed(conn, Report(claims[1].task_id, claims[1].claim_no, "w1", 0))
    batches.retry(conn, Report(claims[2].task_id, claims[2].claim_no, "w1", 23), 1)
    batches.fail(conn, Report(claims[3].task_id, claims[3].claim_no, "w1", 2), 0)
    batches.release(conn, Report(claims[4].task_id, claims[4].claim_no, "w1", None), "lost")
    batches.claim(conn, "w2", limit=2)          # two running now
    assert truth(conn) == {"pending": 5, "running": 2, "succeeded": 2, "failed": 1}
    with db.reader(path).connect() as ro:
        assert queries.status(ro) == dict(total_batches=10, completed_batches=2,
                                          failed_batches=1, queue_depth=5, producers_done=0,
                                          entries_not_arrived=10 + 1)   # the failed batch
        assert queries.progress(ro) == dict(total=10, completed=2, failed=1, pending=7)


def test_counts_match_a_full_scan(ledger):
    path, conn = ledger
    enqueue(conn, 25, files=3, dirs=2, size=7)
    for i, c in enumerate(batches.claim(conn, "w", limit=20)):
        if i % 3 == 0:
            batches.succeed(conn, Report(c.task_id, c.claim_no, "w", 0))
        elif i % 3 == 1:
            batches.fail(conn, Report(c.task_id, c.claim_no, "w", 1), 0)
    real = truth(conn)
    with db.reader(path).connect() as ro:
        s, p = queries.status(ro), queries.progress(ro)
        t = queries.throughput(ro)
    assert s["total_batches"] == p["total"] == sum(real.values()) == 25
    assert s["completed_batches"] == p["completed"] == t["batches_completed"] == real["succeeded"]
    assert s["failed_batches"] == p["failed"] == t["batches_failed"] == real["failed"]
    assert s["queue_depth"] == real["pending"]
    assert p["pending"] == real["pending"] + real["running"]
    assert t["files_processed"] == 3 * real["succeeded"]
    assert t["bytes_processed"] == 7 * real["succeeded"]


def test_producers_done_counts_finished_producers(ledger):
    path, conn = ledger
    producers.start(conn, 3)
    with conn.begin():
        conn.execute(text("UPDATE producers SET state = 'done' WHERE producer_id IN (1, 3)"))
    with db.reader(path).connect() as ro:
        assert queries.status(ro)["producers_done"] == 2


def test_throughput_rounds_and_divides_by_the_elapsed_it_shows(ledger):
    path, conn = ledger
    enqueue(conn, 1, files=12034, size=9876543210)
    enqueue(conn, 1, files=5, size=5)
    (c, other) = batches.claim(conn, "w", limit=2)
    batches.succeed(conn, Report(c.task_id, c.claim_no, "w", 0))
    batches.fail(conn, Report(other.task_id, other.claim_no, "w", 2), 0)
    with conn.begin():   # 70.0 s of earlier runs, and a live run started 7.24 s ago
        conn.execute(text("UPDATE migration SET elapsed_before = 70.0, "
                          "run_started_ts = 1000.0, run_heartbeat_ts = 1005.0"))
    with db.reader(path).connect() as ro:
        t = queries.throughput(ro, now=1007.24)
    assert t == {
        "batches_per_sec": 0.01,             # 1 / 77.2
        "elapsed_sec": 77.2,                 # 77.24 to 1 decimal
        "batches_completed": 1,
        "batches_failed": 1,
        "files_processed": 12034,
        "bytes_processed": 9876543210,
        "gb_processed": 9.2,                 # 9.198... GiB
        "bytes_per_sec": round(9876543210 / 77.2, 2),
        "gb_per_sec": 0.12,
        "files_per_sec": 155.88,
    }
    assert all(isinstance(t[k], float) for k in t if k.endswith(("_sec", "gb_processed")))


def test_a_dead_run_stops_the_clock_at_its_last_heartbeat(ledger):
    path, conn = ledger
    with conn.begin():
        conn.execute(text("UPDATE migration SET elapsed_before = 5.0, "
                          "run_started_ts = 1000.0, run_heartbeat_ts = 1010.0"))
    with db.reader(path).connect() as ro:
        assert queries.throughput(ro, now=5000.0)["elapsed_sec"] == 15.0


def test_heartbeats_are_master_local_time(ledger):
    path, conn = ledger
    with conn.begin():
        conn.execute(insert(schema.workers), [
            dict(worker_id="host-b-uuid", host="b", state="up", heartbeat_ts=1714372002.7),
            dict(worker_id="host-a-uuid", host="a", state="lost", heartbeat_ts=1714372000.0),
            dict(worker_id="never-heard", host="c", state="up", heartbeat_ts=None)])
    with db.reader(path).connect() as ro:
        beats = queries.heartbeats(ro)["heartbeats"]
    assert list(beats) == ["host-a-uuid", "host-b-uuid"]
    assert beats["host-b-uuid"] == time.strftime("%Y-%m-%d %H:%M:%S",
                                                 time.localtime(1714372002.7))
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", v) for v in beats.values())


def test_logs_are_bounded_and_newest_last(ledger):
    path, conn = ledger
    with conn.begin():
        for i in range(5):
            conn.execute(insert(schema.log).values(ts=i, level="warning", message=f"w{i}"))
            conn.execute(insert(schema.log).values(ts=i, level="info", message=f"i{i}"))
        for i in range(2):
            conn.execute(insert(schema.log).values(ts=i, level="error", message=f"e{i}"))
    with db.reader(path).connect() as ro:
        logs = queries.logs(ro, limit=3)
        assert {k: logs[k] for k in ("warnings", "errors")} == {
            "warnings": ["w2", "w3", "w4"], "errors": ["e0", "e1"]}
        # the timed lines: the newest 3 of both levels (by log_id), newest last
        assert [(x["level"], x["message"], x["ts"]) for x in logs["lines"]] == [
            ("warning", "w4", 4.0), ("error", "e0", 0.0), ("error", "e1", 1.0)]
        assert queries.logs(ro)["warnings"] == [f"w{i}" for i in range(5)]


def _attempts(conn, n: int) -> None:
    """n attempts: success on w1, retry on w2, lost on w3, in turn."""
    enqueue(conn, n, files=4, dirs=2, size=123)
    for i in range(n):
        worker = ("w1", "w2", "w3")[i % 3]
        (c,) = batches.claim(conn, worker)
        report = Report(c.task_id, c.claim_no, worker, 0, bytes_sent=10, bytes_received=20,
                        start_ts=1.5, end_ts=2.5, errors=["x"] if i % 3 else [])
        if i % 3 == 0:
            batches.succeed(conn, report)
        elif i % 3 == 1:
            report.rsync_exit_code = 23
            batches.retry(conn, report, 1)
        else:
            batches.release(conn, report, "host lost")


def ids(page: dict) -> list[int]:
    return [r["attempt_id"] for r in page["results"]]


def test_results_pages_and_filters(ledger):
    path, conn = ledger
    _attempts(conn, 12)
    with db.reader(path).connect() as ro:
        assert ids(queries.results(ro)) == list(range(1, 13))
        assert ids(queries.results(ro, limit=5)) == [8, 9, 10, 11, 12]   # newest, newest last
        assert ids(queries.results(ro, limit=4, after=3)) == [4, 5, 6, 7]
        assert ids(queries.results(ro, limit=3, before=8)) == [5, 6, 7]
        assert ids(queries.results(ro, after=3, before=6)) == [4, 5]
        assert ids(queries.results(ro, after=12)) == []
        assert ids(queries.results(ro, status="retry")) == [2, 5, 8, 11]
        assert ids(queries.results(ro, worker="w3", limit=2)) == [9, 12]
        assert ids(queries.results(ro, worker="w1", status="retry")) == []
        page = queries.results(ro, status="lost")
        assert page["retained_count"] == 12 and page["retained_limit"] == 100_000


def test_results_serve_only_the_retained_window(ledger):
    path, conn = ledger
    _attempts(conn, 12)
    with db.reader(path).connect() as ro:
        page = queries.results(ro, retained_limit=10)
        assert ids(page) == list(range(3, 13))
        assert page["retained_count"] == 10 and page["retained_limit"] == 10
        assert ids(queries.results(ro, after=0, limit=2, retained_limit=10)) == [3, 4]
        assert ids(queries.results(ro, before=5, retained_limit=10)) == [3, 4]


def test_retained_results_are_every_retained_attempt_a_chunk_at_a_time(ledger):
    path, conn = ledger
    _attempts(conn, 25)
    with db.reader(path).connect() as ro, ro.begin():
        count, pages = queries.retained_results(ro, retained_limit=20, chunk=7)
        pages = list(pages)
        assert count == 20 and [len(p) for p in pages] == [7, 7, 6]
        assert [r["attempt_id"] for p in pages for r in p] == list(range(6, 26))
        count, pages = queries.retained_results(ro, status="retry", retained_limit=20, chunk=3)
        assert count == 20
        assert [r["attempt_id"] for p in pages for r in p] == list(range(8, 26, 3))
        count, pages = queries.retained_results(ro, worker="nobody")
        assert count == 25 and list(pages) == []
        count, pages = queries.retained_results(ro, chunk=5)     # a multiple of the chunk
        assert count == 25 and [len(p) for p in pages] == [5] * 5


def test_a_result_is_built_from_its_attempt_and_batch(ledger):
    path, conn = ledger
    _attempts(conn, 3)
    with db.reader(path).connect() as ro:
        success, retry, lost = queries.results(ro)["results"]
    assert success == {
        "worker_id": "w1", "task_id": 1, "status": "success", "retry_count": 0,
        "rsync_exit_code": 0,
        "stats": {"bytes_sent": 10, "bytes_received": 20, "start_ts": 1.5, "end_ts": 2.5,
                  "file_count": 4, "directory_count": 2, "estimated_bytes": 123},
        "errors": [], "received_ts": success["received_ts"], "attempt_id": 1}
    assert isinstance(success["received_ts"], float)
    assert retry["status"] == "retry" and retry["rsync_exit_code"] == 23
    assert retry["errors"] == ["x"]
    assert lost["status"] == "lost" and lost["errors"] == ["host lost", "x"]


def test_attempt_ids_have_no_gaps_so_the_window_needs_no_count(ledger):
    path, conn = ledger
    _attempts(conn, 9)
    stale = Report(1, 1, "w1", 0)                     # a late duplicate report: no row
    assert not batches.succeed(conn, stale)
    with pytest.raises(IntegrityError):               # a rolled-back insert
        with conn.begin():
            conn.execute(insert(schema.attempts).values(task_id=1, claim=9, retry_count=0,
                                                        status="success", received_ts=1.0))
            conn.execute(insert(schema.batches).values(task_id=1, file_count=0,
                                                       directory_count=0, estimated_bytes=0,
                                                       created_ts=0.0))
    _attempts(conn, 3)
    with conn.begin():
        n, low, high = conn.execute(text(
            "SELECT count(*), min(attempt_id), max(attempt_id) FROM attempts")).one()
    assert (n, low, high) == (12, 1, 12)
    with pytest.raises(Exception, match="never deleted"):
        with conn.begin():
            conn.execute(text("DELETE FROM attempts WHERE attempt_id = 3"))
    with db.reader(path).connect() as ro:
        assert queries.retained_window(ro, 5) == (7, 5)
        assert queries.retained_window(ro) == (0, 12)


def test_batch_detail_shows_any_path_bytes(ledger):
    path, conn = ledger
    enqueue(conn, 2)
    names = [b"caf\xc3\xa9", b"dir/\xff\xfename", b"dir", b"back\\slash"]
    with conn.begin():
        conn.execute(insert(schema.batch_files), [
            dict(task_id=1, path=p, is_dir=int(p == b"dir"), size=len(p)) for p in names])
    (c,) = batches.claim(conn, "w1")
    batches.retry(conn, Report(c.task_id, c.claim_no, "w1", 24), 1)
    with db.reader(path).connect() as ro:
        found = queries.batch(ro, 1)
        assert found["batch"]["task_id"] == 1 and found["batch"]["state"] == "pending"
        assert found["batch"]["retry_count"] == 1 and found["batch"]["last_exit_code"] == 24
        assert found["entries_total"] == 4
        by_hex = {e["path_hex"]: e for e in found["entries"]}
        assert {bytes.fromhex(h) for h in by_hex} == set(names)
        assert by_hex[b"caf\xc3\xa9".hex()]["path"] == "café"
        assert by_hex[b"dir/\xff\xfename".hex()]["path"] == "dir/\\xff\\xfename"
        assert by_hex[b"dir".hex()]["is_dir"] is True
        assert [a["status"] for a in found["attempts"]] == ["retry"]
        page = queries.batch(ro, 1, limit=2, offset=1)
        assert [e["path_hex"] for e in page["entries"]] == [e["path_hex"] for e in
                                                           found["entries"][1:3]]
        assert queries.batch(ro, 2)["entries"] == []
        assert queries.batch(ro, 99) is None


@pytest.mark.parametrize("sql", [
    queries._RESULTS_FROM + "WHERE a.attempt_id > 5 ORDER BY a.attempt_id DESC LIMIT 100",
    # a chunk of the bare /results stream
    queries._RESULTS_FROM + "WHERE a.attempt_id > 5 AND a.attempt_id > 70 "
                            "ORDER BY a.attempt_id ASC LIMIT 1000",
    queries._RESULTS_FROM + "WHERE a.attempt_id > 5 AND a.attempt_id > 70 AND a.status = 'failed' "
                            "ORDER BY a.attempt_id ASC LIMIT 1000",
    queries._RESULTS_FROM + "WHERE a.attempt_id > 5 AND a.worker_id = 'w' "
                            "ORDER BY a.attempt_id DESC LIMIT 100",
    queries._RESULTS_FROM + "WHERE a.task_id = 7 ORDER BY a.attempt_id",
    queries._ATTEMPT_IDS,
    queries._LOG_TAIL.replace(":level", "'error'").replace(":limit", "100"),
    queries._BATCH.replace(":t", "7"),
])
def test_reads_never_scan_a_big_table(ledger, sql):
    _, conn = ledger
    plan = " | ".join(r[3] for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
    assert "SCAN" not in plan.replace("SCAN CONSTANT ROW", ""), plan
    assert "TEMP B-TREE" not in plan, plan      # no sort of the whole match either


def test_one_connection_reads_one_snapshot(ledger):
    path, conn = ledger
    enqueue(conn, 3)
    with db.reader(path).connect() as ro:
        assert queries.progress(ro)["total"] == 3      # begins the read transaction
        enqueue(conn, 2)
        assert queries.status(ro)["total_batches"] == 3
        ro.commit()
        assert queries.summary(ro)["progress"]["total"] == 5


def test_the_reader_cannot_write(ledger):
    path, _ = ledger
    with db.reader(path).connect() as ro:
        with pytest.raises(OperationalError, match="readonly"):
            with ro.begin():
                ro.execute(text("UPDATE batch_counts SET batches = 7"))


def test_a_requeue_is_a_result_too(ledger):
    path, conn = ledger
    enqueue(conn, 1)
    (c,) = batches.claim(conn, "w1")
    batches.fail(conn, Report(c.task_id, c.claim_no, "w1", 23), 0)
    assert batches.requeue(conn, None, "operator says so") == [1]
    with db.reader(path).connect() as ro:
        page = queries.results(ro, status="requeued")
        assert [(r["task_id"], r["errors"]) for r in page["results"]] == \
            [(1, ["operator says so"])]
        # No rsync ran: null, as the README says, not the failed try's 23.
        [requeued] = page["results"]
        assert requeued["rsync_exit_code"] is None
        assert queries.results(ro, status="failed")["results"][0]["rsync_exit_code"] == 23
        assert queries.status(ro)["queue_depth"] == 1


def _run_with_batches_in_flight(conn, now: float) -> None:
    """10 batches of 1000 bytes on a host with 2 slots: 4 succeeded (each rsync took
    10 s), 3 running since now - 4, 3 waiting; a run heard from at now."""
    enqueue(conn, 10, size=1000)
    workers.seen(conn, "w1", "host1", 2)
    migration.start_run(conn)
    for c in batches.claim(conn, "w1", limit=4):
        batches.succeed(conn, Report(c.task_id, c.claim_no, "w1", 0, start_ts=100.0,
                                     end_ts=110.0))
    batches.claim(conn, "w1", limit=3)
    with conn.begin():
        conn.execute(text("UPDATE batches SET claimed_ts = :t WHERE state = 'running'"),
                     {"t": now - 4})
        conn.execute(text("UPDATE migration SET run_heartbeat_ts = :t"), {"t": now})


def test_the_estimate_counts_bytes_in_flight(ledger):
    """One function for every display: what the running batches moved is estimated at
    the newest attempts' rate on the slots they fill, so neither rate nor ETA waits
    for a result to land."""
    path, conn = ledger
    now = time.time()
    _run_with_batches_in_flight(conn, now)
    with db.reader(path).connect() as ro:
        est = estimate.estimate(ro, now=now)
    # per rsync 4000 B / 40 s = 100 B/s; 3 batches on 2 slots for 4 s: 800 B in flight
    assert {k: est[k] for k in ("state", "batches_total", "batches_done", "batches_running",
                                "batches_waiting", "bytes_total", "bytes_done",
                                "bytes_running", "bytes_in_flight", "percent",
                                "bytes_per_sec", "eta_sec")} == {
        "state": "running", "batches_total": 10, "batches_done": 4, "batches_running": 3,
        "batches_waiting": 3, "bytes_total": 10000, "bytes_done": 4000,
        "bytes_running": 3000, "bytes_in_flight": 800, "percent": 48.0,
        "bytes_per_sec": 200.0,
        "eta_sec": 26.0}                     # (10000 - 4800) B at 200 B/s
    assert est["last_heard"] == queries.local_time(now) == est["now"]

    # a fleet cap of 120 B/s: 60 B/s for each of the 2 slots
    with conn.begin():
        conn.execute(text("UPDATE migration SET bwlimit = 120"))
    with db.reader(path).connect() as ro:
        est = estimate.estimate(ro, now=now)
    assert (est["bytes_in_flight"], est["bytes_per_sec"], est["eta_sec"]) == (480, 120.0, 46.0)

    # the run's process is gone (its lock free): nothing moves, no rate, no ETA
    with db.reader(path).connect() as ro:
        est = estimate.estimate(ro, now=now, held=False)
    assert (est["state"], est["bytes_in_flight"], est["bytes_per_sec"], est["eta_sec"],
            est["percent"]) == ("crashed", 0, None, None, 40.0)
    # and so once its heartbeat is old, when the lock cannot be asked
    with db.reader(path).connect() as ro:
        est = estimate.estimate(ro, now=now + migration.LIVE_AFTER_HEARTBEAT)
    assert est["state"] == "crashed" and est["eta_sec"] is None


def test_a_capped_first_batch_has_a_rate_and_an_eta_before_it_ends(ledger):
    """--bwlimit 1MiB and one 48 MiB batch: no attempt has ended yet, so the rate is
    the cap's share (the display once said "0 B/s ETA ?" for minutes)."""
    path, conn = ledger
    enqueue(conn, 1, size=48 * 2**20)
    workers.seen(conn, "w1", "host1", 1)
    migration.start_run(conn)
    bandwidth.set_cap(conn, 2**20)
    batches.claim(conn, "w1")
    now = time.time()
    with conn.begin():
        conn.execute(text("UPDATE batches SET claimed_ts = :t"), {"t": now - 10})
        conn.execute(text("UPDATE migration SET run_heartbeat_ts = :t"), {"t": now})
    with db.reader(path).connect() as ro:
        est = estimate.estimate(ro, now=now)
    assert (est["bytes_in_flight"], est["bytes_per_sec"], est["eta_sec"]) == (
        10 * 2**20, float(2**20), 38.0)
    assert est["percent"] == round(100 * 10 / 48, 1)


def test_many_small_batches_left_are_not_done_because_their_bytes_are_few(ledger):
    """The ETA counts batches as well as bytes: 20 waiting batches of empty files take
    their time per batch (10 s each, 2 slots), though they hold no byte."""
    path, conn = ledger
    enqueue(conn, 2, size=1000)
    enqueue(conn, 20, size=0)
    workers.seen(conn, "w1", "host1", 2)
    migration.start_run(conn)
    for c in batches.claim(conn, "w1", limit=2):
        batches.succeed(conn, Report(c.task_id, c.claim_no, "w1", 0, start_ts=0.0, end_ts=10.0))
    now = time.time()
    with conn.begin():
        conn.execute(text("UPDATE migration SET run_heartbeat_ts = :t"), {"t": now})
    with db.reader(path).connect() as ro:
        est = estimate.estimate(ro, now=now)
    assert est["percent"] == 100.0 and est["eta_sec"] == 20 * 10 / 2


@pytest.mark.parametrize("row, waiting, held, state", [
    (None, 0, None, RunState.WAITING),
    ((100.0, 995.0, None), 5, None, RunState.RUNNING),
    ((100.0, 995.0, None), 5, True, RunState.RUNNING),
    ((100.0, 995.0, None), 5, False, RunState.CRASHED),   # its process is gone
    ((100.0, 900.0, None), 5, None, RunState.CRASHED),    # silent for 100 s
    ((None, 900.0, None), 5, None, RunState.STOPPED),     # stop_run
    ((None, 900.0, 900.0), 0, None, RunState.FINISHED),   # end_run
    ((None, 900.0, 900.0), 2, None, RunState.WAITING),    # requeued after it finished
    ((None, None, None), 5, None, RunState.WAITING),      # no run yet
])
def test_the_run_state(row, waiting, held, state):
    row = migration.RunRow(*row) if row else None
    assert migration.run_state(row, waiting, now=1000.0, held=held) is state
