"""What a slot is handed: claims, idle, stop, the directory pass, the bandwidth share."""
from __future__ import annotations

import os

from fleetsync.controller import rsync, slot
from fleetsync.controller.walk import Walk
from fleetsync.controller.producer import Limits
from fleetsync.ledger import batches, db, dirpass, migration, workers


def ledger_with_batches(tmp_path, files=6, per_batch=2):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(files):
        (src / "d" / f"f{i}").write_text("x")
    path = str(tmp_path / "l.db")
    engine = db.writer(path)
    migration.open_or_create(engine, str(src), str(tmp_path / "dest"), {})
    walk = Walk(path, str(src), 1, Limits(entries=per_batch))
    walk.start()
    assert walk.join()
    return path, engine


def nxt(path, tmp_path, worker="w1"):
    return slot.next_command(path, worker, str(tmp_path / "stop"), "tok", ["-a"])


def test_claims_in_order_then_directory_pass_then_stop(tmp_path):
    path, engine = ledger_with_batches(tmp_path)
    with engine.connect() as conn, conn.begin():
        total = len(conn.exec_driver_sql("SELECT task_id FROM batches").all())
    seen = []
    for _ in range(total):
        cmd = nxt(path, tmp_path)
        seen.append(int(cmd.split("task=")[1].split()[0]))
    assert seen == list(range(1, total + 1))
    with engine.connect() as conn:
        for c in batches.running_claims(conn):
            batches.succeed(conn, batches.Report(c.task_id, c.claim_no, "w1", 0))
    # Every batch done: the slots share the directory pass, then stop.
    dirs = nxt(path, tmp_path)
    assert "task=0" in dirs and "kind=dirs" in dirs and "--files-from" in dirs
    assert "--exclude=*" in dirs       # SRC itself, alone, its entries excluded
    assert "--delete" not in dirs
    assert nxt(path, tmp_path, worker="w2") == slot.STOP   # one part only: handed out
    with engine.connect() as conn:
        assert dirpass.done(conn)


def test_idle_while_others_hold_batches_and_stop_file(tmp_path, monkeypatch):
    monkeypatch.setattr(slot, "IDLE_WAIT", 0.1)
    path, engine = ledger_with_batches(tmp_path, files=2, per_batch=10)
    assert "task=1" in nxt(path, tmp_path)
    assert nxt(path, tmp_path, worker="w2") == slot.IDLE   # running elsewhere: wait
    (tmp_path / "stop").touch()
    assert nxt(path, tmp_path, worker="w2") == slot.STOP


def test_the_fleet_bandwidth_cap_is_shared_and_live(tmp_path):
    path, engine = ledger_with_batches(tmp_path, files=8, per_batch=2)
    with engine.connect() as conn:
        workers.seen(conn, "w1", "h1", 4)
        workers.seen(conn, "w2", "h2", 4)
        assert "--bwlimit" not in nxt(path, tmp_path)
        migration.set_bwlimit(conn, 80 << 20)          # 80 MiB/s over 8 slots
        assert "--bwlimit=10240 " in nxt(path, tmp_path)
        migration.set_bwlimit(conn, 8 << 20)           # changed during the run
        assert "--bwlimit=1024 " in nxt(path, tmp_path)
        workers.lost(conn, "w2", 0)                    # fewer slots up: a bigger share
        assert "--bwlimit=2048 " in nxt(path, tmp_path)


def test_the_command_carries_the_run_marker(tmp_path):
    path, engine = ledger_with_batches(tmp_path)
    with engine.connect() as conn:
        mig = migration.load(conn)
    assert rsync.marker(mig.migration_id, "tok") in nxt(path, tmp_path)
    assert os.path.exists(path)
