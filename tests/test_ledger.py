"""The ledger's guarantees, on real SQLite files: counters kept by triggers always
equal a recount, transitions are guarded (a duplicate or late report changes
nothing), attempts and batches are never changed or deleted behind our back."""
from __future__ import annotations

import multiprocessing
import os
import random
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from fleetsync.ledger import batches, db, migration
from fleetsync.ledger.batches import Report
from fleetsync.ledger.walkqueue import Cut, WalkQueue


def new_ledger(path: str, n_batches: int):
    """A ledger at `path` with n batches of different sizes, enqueued as the walk does."""
    engine = db.writer(path)
    migration.open_or_create(engine, "/src", "/dest", {})
    cuts = []
    for i in range(n_batches):
        entries = [(b"b%d/d" % i, 1, 0, 1, 1000, 8)] + [
            (b"b%d/f%d" % (i, j), 0, 10 * j + i, 0, 1000 + j, j) for j in range(i % 4 + 1)]
        files = entries[1:]
        cuts.append(Cut(entries, len(files), 1, sum(e[2] for e in files), [], None))
    with engine.connect() as conn:
        WalkQueue(conn, 1, 1).sync([], cuts, 0)
    return engine


def read(conn, sql: str) -> list[tuple]:
    with conn.begin():
        return conn.execute(text(sql)).all()


def recount(conn) -> list[tuple]:
    return sorted(read(conn, 
        "SELECT state, count(*), sum(file_count), sum(directory_count), sum(estimated_bytes) "
        "FROM batches GROUP BY state"))


def kept(conn) -> list[tuple]:
    return sorted(read(conn, "SELECT state, batches, files, directories, bytes "
                             "FROM batch_counts WHERE batches != 0"))


def snapshot(conn) -> tuple:
    """Everything a report could change."""
    return (read(conn, "SELECT * FROM batches ORDER BY task_id"),
            read(conn, "SELECT count(*) FROM attempts"), read(conn, "SELECT count(*) FROM log"),
            kept(conn))


def report(task_id: int, claim: int, exit_code: int | None = 0) -> Report:
    return Report(task_id, claim, "w", exit_code)


# One step of a random history: (operation, which batch or how many, a random number)
STEPS = st.lists(st.tuples(
    st.sampled_from(["claim", "succeed", "retry", "fail", "release", "duplicate", "stale",
                     "release_all", "requeue"]),
    st.integers(0, 20), st.integers(0, 3)), max_size=60)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS)
def test_counters_equal_a_recount_after_any_history(steps):
    with tempfile.TemporaryDirectory() as tmp:
        engine = new_ledger(os.path.join(tmp, "ledger.db"), 6)
        with engine.connect() as conn:
            run_history(conn, steps)
        engine.dispose()


def run_history(conn, steps) -> None:
    """Apply the steps, checking the counters after each and that a report the ledger
    must refuse (duplicate, stale claim, batch not running) changes nothing."""
    state = {t: ("pending", 0) for t in range(1, 7)}   # task_id -> (state, claim)
    applied: list[tuple[str, Report]] = []
    for op, pick, n in steps:
        running = sorted(t for t, (s, _) in state.items() if s == "running")
        before = snapshot(conn)
        if op == "claim":
            got = batches.claim(conn, "w", n + 1)
            waiting = sorted(t for t, (s, _) in state.items() if s == "pending")
            assert [c.task_id for c in got] == waiting[:n + 1]
            for c in got:
                assert c.claim_no == state[c.task_id][1] + 1
                state[c.task_id] = ("running", c.claim_no)
        elif op in ("succeed", "retry", "fail", "release") and running:
            task_id = running[pick % len(running)]
            rep = report(task_id, state[task_id][1], {"succeed": 0, "retry": 23,
                                                     "fail": 2, "release": None}[op])
            assert transition(conn, op, rep)
            state[task_id] = ({"succeed": "succeeded", "fail": "failed"}.get(op, "pending"),
                              state[task_id][1])
            applied.append((op, rep))
        elif op == "duplicate" and applied:
            assert not transition(conn, *applied[pick % len(applied)])
            assert snapshot(conn) == before
        elif op == "stale":
            task_id = pick % len(state) + 1
            now, claim = state[task_id]
            if now == "running":
                claim -= n + 1              # an earlier claim of the batch
            for what in ("succeed", "retry", "fail", "release"):
                assert not transition(conn, what, report(task_id, claim))
            assert snapshot(conn) == before
        elif op == "release_all":
            assert sorted(batches.release_all(conn, "restart")) == running
            for t in running:
                state[t] = ("pending", state[t][1])
        elif op == "requeue":
            failed = sorted(t for t, (s, _) in state.items() if s == "failed")
            assert sorted(batches.requeue(conn, None, "operator")) == failed
            for t in failed:
                state[t] = ("pending", state[t][1])
        assert kept(conn) == recount(conn)
        assert dict(read(conn, "SELECT task_id, state FROM batches")) == {
            t: s for t, (s, _) in state.items()}


def transition(conn, op: str, rep: Report) -> bool:
    if op == "succeed":
        return batches.succeed(conn, rep)
    if op == "retry":
        return batches.retry(conn, rep, 1)
    if op == "fail":
        return batches.fail(conn, rep, 3)
    return batches.release(conn, Report(rep.task_id, rep.claim_no, rep.worker_id, None), "lost")


def _hammer(path: str, worker: str, seed: int, rounds: int) -> None:
    """One writer process: claim, report (sometimes twice, sometimes late), at random."""
    rnd = random.Random(seed)
    engine = db.writer(path)
    ok = True
    with engine.connect() as conn:
        for _ in range(rounds):
            for c in batches.claim(conn, worker, rnd.randint(1, 3)):
                op = rnd.choice(["succeed", "retry", "retry", "fail", "release"])
                rep = Report(c.task_id, c.claim_no, worker, {"succeed": 0, "retry": 23,
                                                          "fail": 2, "release": None}[op])
                ok &= transition(conn, op, rep)
                ok &= not transition(conn, op, rep)                        # duplicate
                ok &= not transition(conn, rnd.choice(["succeed", "fail"]),
                                     Report(c.task_id, c.claim_no - 1, worker, 0))  # late
    engine.dispose()
    os._exit(0 if ok else 1)


def test_counters_hold_under_concurrent_writers(tmp_path):
    path = str(tmp_path / "ledger.db")
    engine = new_ledger(path, 200)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(path, f"w{i}", i, 60)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 4, "a duplicate or late report was accepted"
    with engine.connect() as conn:
        assert kept(conn) == recount(conn)
        assert conn.execute(text("SELECT count(*) FROM attempts")).scalar() > 100
        # Every claim ended in exactly one attempt; nothing ran after a batch ended.
        assert conn.execute(text("""
            SELECT count(*) FROM batches b WHERE claim - (state = 'running') !=
                (SELECT count(*) FROM attempts a WHERE a.task_id = b.task_id)""")).scalar() == 0
        assert conn.execute(text("""
            SELECT count(*) FROM attempts a JOIN attempts later
              ON later.task_id = a.task_id AND later.attempt_id > a.attempt_id
            WHERE a.status IN ('success', 'failed')""")).scalar() == 0
        assert conn.execute(text("""
            SELECT count(*) FROM batches b WHERE retry_count !=
                (SELECT count(*) FROM attempts a WHERE a.task_id = b.task_id
                 AND a.status = 'retry')""")).scalar() == 0
    engine.dispose()


def test_attempts_and_batches_cannot_be_rewritten(tmp_path):
    engine = new_ledger(str(tmp_path / "ledger.db"), 2)
    with engine.connect() as conn:
        [c] = batches.claim(conn, "w")
        assert batches.fail(conn, report(c.task_id, c.claim_no, 2), 0)
        for sql, why in [("UPDATE attempts SET rsync_exit_code = 0", "never changed"),
                         ("DELETE FROM attempts", "never deleted"),
                         ("DELETE FROM batches WHERE task_id = 1", "never deleted")]:
            with pytest.raises(Exception, match=why):
                with conn.begin():
                    conn.execute(text(sql))
        assert conn.execute(text("SELECT count(*), min(rsync_exit_code) FROM attempts")
                            ).one() == (1, 2)
        assert conn.execute(text("SELECT count(*) FROM batches")).scalar() == 2
    engine.dispose()


def test_a_finished_batch_never_goes_back(tmp_path):
    engine = new_ledger(str(tmp_path / "ledger.db"), 1)
    with engine.connect() as conn:
        [c] = batches.claim(conn, "w")
        rep = report(c.task_id, c.claim_no)
        assert batches.succeed(conn, rep)
        before = snapshot(conn)
        assert not batches.retry(conn, report(c.task_id, c.claim_no, 23), 1)
        assert not batches.release(conn, report(c.task_id, c.claim_no, None), "lost")
        assert not batches.fail(conn, report(c.task_id, c.claim_no, 2), 1)
        assert not batches.succeed(conn, rep)
        assert batches.claim(conn, "w") == []
        assert batches.release_all(conn, "restart") == []
        assert snapshot(conn) == before
    engine.dispose()


# -- per-file outcomes (issue 10) ---------------------------------------------------

def worker_output(task_id: int, claim: int, rc: int, lines: list[str]) -> str:
    """A worker's output for one batch, as controller/rsync.py frames it."""
    return "\n".join([f"@@fleetsync begin task={task_id} claim={claim} kind=copy start=1.0",
                      *lines, f"@@fleetsync end task={task_id} claim={claim} rc={rc} end=2.0"])


def test_entries_that_may_heal_are_retried_alone_and_settled_when_they_arrive(tmp_path):
    from fleetsync.controller import outcome
    from fleetsync.controller.file_outcomes import record_batch
    from fleetsync.controller.policy import Policy
    engine = new_ledger(str(tmp_path / "l.db"), 4)     # batch 4: b3/d, b3/f0..f3
    policy = Policy(max_retries=3)
    eio = 'rsync: [sender] read errors mapping "/src/b3/f1": Input/output error (5)'
    stale = 'rsync: [sender] send_files failed to open "/src/b3/f2": Stale file handle (116)'
    with engine.connect() as conn:
        for _ in range(3):
            batches.claim(conn, "w", 1)
        [c] = batches.claim(conn, "w", 1)
        assert c.task_id == 4 and len(batches.entries(conn, 4)) == 5
        out = outcome.parse(worker_output(4, c.claim_no, 23, [eio, stale]))
        record_batch(conn, out, "w", policy, "/src", "/dest")
        assert read(conn, "SELECT state, retry_count FROM batches WHERE task_id = 4") == [
            ("pending", 1)]
        # The retry sends the two entries alone: the others arrived.
        [c] = batches.claim(conn, "w", 1)
        assert [p for p, _, _ in batches.entries(conn, 4)] == [b"b3/f1", b"b3/f2"]
        out = outcome.parse(worker_output(4, c.claim_no, 23, [stale]))   # f1 healed
        record_batch(conn, out, "w", policy, "/src", "/dest")
        assert read(conn, "SELECT path, class, settled_ts IS NULL FROM entry_outcomes "
                          "ORDER BY outcome_id") == [
            (b"b3/f1", "may_heal", 0), (b"b3/f2", "may_heal", 0), (b"b3/f2", "may_heal", 1)]
        [c] = batches.claim(conn, "w", 1)
        assert [p for p, _, _ in batches.entries(conn, 4)] == [b"b3/f2"]
        record_batch(conn, outcome.parse(worker_output(4, c.claim_no, 0, [])), "w", policy,
                     "/src", "/dest")
        assert read(conn, "SELECT state FROM batches WHERE task_id = 4") == [("succeeded",)]
        assert read(conn, "SELECT count(*) FROM entry_outcomes WHERE settled_ts IS NULL") == [(0,)]
        assert read(conn, "SELECT count(*) FROM missing_entries") == [(0,)]
        assert len(batches.entries(conn, 4)) == 5     # a later copy (verify) sends them all
    engine.dispose()


def test_a_line_that_names_no_entry_fails_the_batch_as_a_whole(tmp_path):
    from fleetsync.controller import outcome
    from fleetsync.controller.file_outcomes import record_batch
    from fleetsync.controller.policy import Policy
    from fleetsync.ledger import queries
    engine = new_ledger(str(tmp_path / "l.db"), 1)     # batch 1: b0/d, b0/f0
    with engine.connect() as conn:
        [c] = batches.claim(conn, "w", 1)
        line = 'rsync: [sender] send_files failed to open "/src/b0/zz": Permission denied (13)'
        record_batch(conn, outcome.parse(worker_output(1, c.claim_no, 23, [line])), "w",
                     Policy(max_retries=0), "/src", "/dest")
        assert read(conn, "SELECT path, reason LIKE 'not mapped%' FROM entry_outcomes") == [
            (None, 1)]
        # What arrived is not known: both entries of the failed batch are counted.
        with conn.begin():
            assert queries.not_arrived(conn) == (2, 0)
        assert len(batches.entries(conn, 1)) == 2    # a retry sends the whole batch
    engine.dispose()


def _batch_rows(engine) -> tuple[list[tuple], list[tuple]]:
    with engine.connect() as conn:
        return (read(conn, "SELECT task_id, state, file_count, directory_count, "
                           "estimated_bytes, retry_count, claim, checksum, sparse, worker_id, "
                           "producer_id, created_ts FROM batches ORDER BY task_id"),
                [(t, bytes(p), *rest) for t, p, *rest in read(
                    conn, "SELECT task_id, path, is_dir, size, type, mtime, blocks "
                          "FROM batch_files "
                          "ORDER BY task_id, path")])


def test_one_creator_of_batches_gives_the_same_rows_on_a_cursor_and_a_connection(tmp_path):
    """batches.create is the walk's (its raw cursor) and the hard links' (a Connection):
    both write the same batch row, checksum and sparse included, and the same
    batch_files rows (more than one multi-row INSERT's worth, and a remainder)."""
    from fleetsync.ledger import logbook
    from fleetsync.ledger.states import Compare
    entries = [(b"d", 1, 0, 1, 5, 8)] + [(bytearray(b"d/f%03d" % j), 0, j, j % 4, 10 + j, j)
                                         for j in range(batches.ROWS_PER_INSERT * 2 + 7)]
    args = (entries, len(entries) - 1, 1, sum(e[2] for e in entries), int(Compare.ALWAYS),
            1234.5, True, 7)
    engines = []
    for name, raw in (("cursor", True), ("connection", False)):
        engine = db.writer(str(tmp_path / f"{name}.db"))
        migration.open_or_create(engine, "/src", "/dest", {})
        with engine.connect() as conn:
            with conn.begin():
                where = conn.connection.driver_connection.cursor() if raw else conn
                assert batches.create(where, *args) == 1
                logbook.write(where, [(1.0, "warning", 1, None, "a line")])
        engines.append(engine)
    (rows, files), (rows2, files2) = map(_batch_rows, engines)
    assert rows == rows2 == [(1, "pending", len(entries) - 1, 1, args[3], 0, 0,
                              int(Compare.ALWAYS), 1, None, 7, 1234.5)]
    assert files == files2 and len(files) == len(entries)
    assert files[0] == (1, b"d", 1, 0, 1, 5, 8)
    logs = []
    for e in engines:
        with e.connect() as conn:
            logs.append(read(conn, "SELECT ts, level, task_id, worker_id, message FROM log"))
        e.dispose()
    assert logs[0] == logs[1] == [(1.0, "warning", 1, None, "a line")]
