"""What a host is handed: claims, idle, stop, the directory pass, the bandwidth share,
several batches per item at the host's pace."""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time

from fleetsync.controller import hostrun, processes, rsync, slot
from fleetsync.controller.walk import Walk
from fleetsync.controller.producer import Limits
from fleetsync.ledger import bandwidth, batches, db, dirpass, migration, workers

from .support import query


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


def nxt(path, tmp_path, worker="w1", **kw):
    """A first item (no pace known yet): one batch per lane."""
    slot._paces.clear()
    return slot.next_command(path, worker, str(tmp_path / "stop"), "tok", ["-a"], **kw)


def tasks_of(cmd: str) -> list[int]:
    return [int(t) for t in re.findall(r"begin task=(\d+)", cmd)]


def test_claims_in_order_then_directory_pass_then_stop(tmp_path):
    path, engine = ledger_with_batches(tmp_path)
    with engine.connect() as conn, conn.begin():
        total = len(conn.exec_driver_sql("SELECT task_id FROM batches").all())
    seen = []
    for _ in range(total):
        seen += tasks_of(nxt(path, tmp_path))
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


def test_a_waiting_slot_rereads_the_ledger_only_when_it_changed(tmp_path):
    path, engine = ledger_with_batches(tmp_path, files=2, per_batch=10)
    with db.reader(path).connect() as look, engine.connect() as conn:
        before = db.data_version(look)
        batches.work_left(look)            # its own reads change nothing
        assert db.data_version(look) == before
        batches.claim(conn, "w1", 1)
        assert db.data_version(look) != before


def test_a_waiting_slot_takes_a_lost_hosts_batch_at_once(tmp_path):
    """While w2 waits for work (nothing pending, w1 holds the batch), w1 is lost and its
    batch goes back to waiting: w2's wait, which reads the counters again only when the
    ledger changed, takes it, long before its idle item is due (IDLE_WAIT)."""
    path, engine = ledger_with_batches(tmp_path, files=2, per_batch=10)
    assert "task=1" in nxt(path, tmp_path)

    def lose_w1():
        time.sleep(0.5)           # w2 is waiting by then
        with engine.connect() as conn:
            batches.release_worker(conn, "w1", "lost")

    loser = threading.Thread(target=lose_w1)
    loser.start()
    cmd = nxt(path, tmp_path, worker="w2")
    loser.join()
    assert tasks_of(cmd) == [1]


def test_the_fleet_bandwidth_cap_is_shared_and_live(tmp_path):
    path, engine = ledger_with_batches(tmp_path, files=8, per_batch=2)
    with engine.connect() as conn:
        workers.seen(conn, "w1", "h1", 4)
        workers.seen(conn, "w2", "h2", 4)
        assert "--bwlimit" not in nxt(path, tmp_path)
        bandwidth.set_cap(conn, 80 << 20)          # 80 MiB/s over 8 slots
        assert "--bwlimit=10240 " in nxt(path, tmp_path)
        bandwidth.set_cap(conn, 8 << 20)           # changed during the run
        assert "--bwlimit=1024 " in nxt(path, tmp_path)
        workers.lost(conn, "w2", 0)                    # fewer slots up: a bigger share
        assert "--bwlimit=2048 " in nxt(path, tmp_path)


def test_the_command_carries_the_run_marker(tmp_path):
    path, engine = ledger_with_batches(tmp_path)
    with engine.connect() as conn:
        mig = migration.load(conn)
    assert rsync.marker(mig.migration_id, "tok") in nxt(path, tmp_path)
    assert os.path.exists(path)


def test_an_item_carries_what_the_host_does_in_a_bounded_time(tmp_path, monkeypatch):
    path, engine = ledger_with_batches(tmp_path, files=200, per_batch=2)
    with engine.connect() as conn:
        workers.seen(conn, "w1", "h1", 2)
    first = nxt(path, tmp_path, lanes=2)
    assert tasks_of(first) == [1, 2]           # no pace yet: one batch per lane
    # The host ran those two in 0.1 s: the next item carries ITEM_SECONDS of that.
    now = slot.time.monotonic()
    monkeypatch.setattr(slot.time, "monotonic", lambda: now)
    slot._paces["w1"].since = now - 0.1
    second = slot.next_command(path, "w1", str(tmp_path / "stop"), "tok", ["-a"], lanes=2)
    monkeypatch.undo()
    want = min(slot.ITEM_SECONDS * 2 / 0.1, slot.MAX_ITEM_BATCHES)
    got = tasks_of(second)
    assert got == list(range(3, 3 + len(got))) and abs(len(got) - want) <= 1, (got, want)
    # It runs on the host, two lanes side by side, and reports every batch in order.
    _src, dest = tmp_path / "src", tmp_path / "dest"
    # DEST exists before any batch runs, as the host's preflight makes it, so the two
    # lanes' first rsyncs never both create it.
    dest.mkdir()
    out = subprocess.run(["/bin/sh", "-c", second], capture_output=True, text=True).stdout
    from fleetsync.controller import outcome
    outs = outcome.parse_all(out)
    assert [o.task_id for o in outs] == tasks_of(second)
    assert all(o.rsync_exit_code == 0 and o.end_ts >= o.start_ts for o in outs), out[-3000:]
    assert len(os.listdir(dest / "d")) >= 2 * len(outs) - 1
    assert not [f for f in os.listdir("/tmp") if ".tok." in f]   # its directory is gone


def test_a_host_takes_no_more_than_its_share_of_the_tail(tmp_path):
    path, engine = ledger_with_batches(tmp_path, files=16, per_batch=2)
    with engine.connect() as conn:
        workers.seen(conn, "w1", "h1", 2)
        workers.seen(conn, "w2", "h2", 6)
        waiting = batches.work_left(conn).pending
    slot._paces.clear()
    slot._paces["w1"] = slot._Pace(since=slot.time.monotonic() - 0.01, batches=50)
    cmd = slot.next_command(path, "w1", str(tmp_path / "stop"), "tok", ["-a"], lanes=2)
    # A fast pace would take them all; 2 of the fleet's 8 slots take a quarter.
    assert waiting >= 8 and tasks_of(cmd) == list(range(1, 1 + -(-waiting * 2 // 8)))


def test_a_dead_controller_stops_its_hosts_claiming(tmp_path):
    path, engine = ledger_with_batches(tmp_path)
    me = f"{os.getpid()}:{processes.start_time(os.getpid())}"
    assert processes.controller_alive(me)
    assert tasks_of(nxt(path, tmp_path, controller=me)) == [1]
    dead = subprocess.Popen(["true"])
    key = f"{dead.pid}:{processes.start_time(dead.pid)}"
    dead.wait()
    assert not processes.controller_alive(key)
    assert not processes.controller_alive(f"{os.getpid()}:1")       # a reused pid
    assert nxt(path, tmp_path, controller=key) == slot.STOP


def test_batches_that_do_not_fit_one_item_ride_in_the_next(tmp_path, monkeypatch):
    path, engine = ledger_with_batches(tmp_path, files=12, per_batch=2)
    monkeypatch.setattr(slot, "ITEM_COMMAND_BYTES", 1)     # every job is "too long"
    slot._paces.clear()
    slot._paces["w1"] = slot._Pace(since=slot.time.monotonic() - 0.01, batches=50)
    got = []
    for _ in range(6):
        got.append(tasks_of(slot.next_command(path, "w1", str(tmp_path / "stop"), "tok",
                                              ["-a"], lanes=2)))
    assert got == [[1], [2], [3], [4], [5], [6]]


def test_the_lookup_names_its_worker_and_paces_the_items_beats(tmp_path):
    """The dispatcher hears a host during an item by what the process that runs the
    lookup (the host's Ansible worker, which then reads the item's output) reads."""
    path, engine = ledger_with_batches(tmp_path)
    slot._noted.clear()
    cmd = nxt(path, tmp_path, beat=0.3)
    assert tasks_of(cmd) == [1] and "while sleep 0.3 " in cmd
    with open(hostrun.worker_file(str(tmp_path / "stop"))) as f:
        assert f.read() == f"{os.getpid()}:{processes.start_time(os.getpid())}"


def test_batches_claimed_under_the_old_cap_wait_again_when_it_changes(tmp_path, monkeypatch):
    """Work a host claimed that did not fit its item is not started under an old cap:
    it waits again (no attempt, no retry) and is claimed with the new share; and the
    run's window closed, the host claims nothing."""
    # A host whose lists looked small claims 4 batches; only one fits its item.
    monkeypatch.setattr(slot, "ITEM_COMMAND_BYTES", 40)
    slot._paces.clear()
    slot._paces["w1"] = slot._Pace(job_bytes=10)
    path, engine = ledger_with_batches(tmp_path, files=8, per_batch=2)
    with engine.connect() as conn:
        workers.seen(conn, "w1", "h1", 4)
        bandwidth.set_cap(conn, 40 << 10)                # 40 KiB/s over 4 slots
    first = slot.next_command(path, "w1", str(tmp_path / "stop"), "tok", ["-a"], lanes=4)
    assert tasks_of(first) == [1] and "--bwlimit=10 " in first
    with engine.connect() as conn:
        assert len(batches.running_claims(conn, "w1")) == 4
        bandwidth.set_cap(conn, 4 << 20)                 # `fleetsync bwlimit 4MiB`
    second = slot.next_command(path, "w1", str(tmp_path / "stop"), "tok", ["-a"], lanes=4)
    assert "--bwlimit=1024 " in second and "--bwlimit=10 " not in second
    assert tasks_of(second) == [2]
    assert query(path, "SELECT count(*) FROM attempts") == [(0,)]      # nothing ran
    assert query(path, "SELECT task_id, state, claim FROM batches WHERE task_id IN (2, 3, 4) "
                       "ORDER BY task_id") == [(2, "running", 2),     # claimed again
                                               (3, "pending", 1), (4, "pending", 1)]
    assert query(path, "SELECT count(*) FROM log WHERE message LIKE "
                       "'3 batches claimed by w1 wait again before they started: the "
                       "bandwidth cap changed (40 KiB/s -> 4 MiB/s)'") == [(1,)]
    # The run's window has closed: what it carries waits again, nothing is claimed.
    monkeypatch.setattr(slot, "IDLE_WAIT", 0.1)
    assert slot.next_command(path, "w1", str(tmp_path / "stop"), "tok", ["-a"], lanes=4,
                             stop_at=0.0) == slot.IDLE
    with engine.connect() as conn:
        assert [c.task_id for c in batches.running_claims(conn, "w1")] == [1, 2]


def test_an_item_of_many_one_file_batches_stays_one_argument_that_runs(tmp_path):
    """A host that takes many batches of one file each: its item's command (one
    argument of `sh -c`, at most 128 KiB on Linux) is bounded by the jobs' whole
    commands, not by their lists alone (64 such batches made 'Argument list too
    long' and the run waited forever). The command runs with real rsync."""
    deep = tmp_path / ("a-long-directory-name-" * 8)     # an operator's paths are long
    deep.mkdir()
    path, engine = ledger_with_batches(deep, files=300, per_batch=1)
    slot._paces.clear()
    slot._paces["w1"] = slot._Pace(since=slot.time.monotonic() - 0.01, batches=500)
    cmd = slot.next_command(path, "w1", str(tmp_path / "stop"), "tok",
                            ["-a", "--partial-dir=.fleetsync-partial"], lanes=4)
    tasks = tasks_of(cmd)
    assert len(tasks) > 4 and len(cmd.encode()) < 128 * 1024
    r = subprocess.run(["sh", "-c", cmd], capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-500:]
    assert r.stdout.decode().count("@@fleetsync end ") == len(tasks)
