"""Audits that answer: what the ledger says after a run, read with plain sqlite3
(real `fleetsync run`, real rsync, real SQLite files)."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3

from .support import fleetsync, query



def run(src, dest, ledger, *more):
    r = fleetsync("run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger),
                  "--no-api", *more)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return r


# -- 12. normal events stay out of /logs.errors ------------------------------------------
def test_a_directory_removed_from_src_is_no_error(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f").write_text("f")
    (src / "c").mkdir()
    (src / "c" / "g").write_text("g")
    run(src, dest, ledger)
    shutil.rmtree(src / "a" / "b")
    run(src, dest, ledger)                              # the directory pass meets a/b
    # (2 of 7 entries go: over the --delete guard's default bound of 10%, so raised)
    run(src, dest, ledger, "--rescan", "--delete", "--max-delete", "100%")
    assert query(ledger, "SELECT message FROM log WHERE level = 'error'") == []
    infos = [m for (m,) in query(ledger, "SELECT message FROM log WHERE level = 'info'")]
    assert any(m.startswith("directory pass (dirs) exit=24") for m in infos), infos
    assert not (dest / "a" / "b").exists() and (dest / "c" / "g").read_text() == "g"


# -- 11. /workers: the state of each worker beside its heartbeat --------------------------
def test_workers_shows_up_lost_with_its_next_try_and_gone(make_ledger):
    import json
    import time
    import urllib.request

    from fleetsync.api.app import make_app
    from fleetsync.api.server import ServerThread
    from fleetsync.ledger import db, workers

    ledger = make_ledger("/src")
    retry_at = time.time() + 300
    with db.connect(ledger) as conn:
        for wid, host in (("a-1", "a"), ("b-1", "b"), ("c-1", "c")):
            workers.seen(conn, wid, host, 2)
        workers.lost(conn, "b-1", retry_at)
        workers.gone(conn, "c")
    with ServerThread(make_app(ledger), port=0) as api:
        with urllib.request.urlopen(f"{api.url}/workers", timeout=10) as r:
            body = json.load(r)
        with urllib.request.urlopen(f"{api.url}/openapi.json", timeout=10) as r:
            schema = json.load(r)["components"]["schemas"]["Workers"]
    assert set(body["heartbeats"]) == {"a-1", "b-1", "c-1"}      # the spec's key stays
    assert body["workers"] == {
        "a-1": {"host": "a", "state": "up", "next_try": None},
        "b-1": {"host": "b", "state": "lost",
                "next_try": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(retry_at))},
        "c-1": {"host": "c", "state": "gone", "next_try": None}}
    assert schema["required"] == ["heartbeats", "workers"]


# -- 9 and 10. which batch carried a path; what each worker did ---------------------------
def test_path_lookups_take_text_use_the_index_and_throughput_counts_succeeded_work(tmp_path):
    from .support import make_odd_tree

    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    make_odd_tree(os.fsencode(src))
    run(src, dest, ledger, "--batch-files", "5")
    by_text = "SELECT task_id, state FROM entries WHERE path_text = ?"
    [(task_id, state)] = query(ledger, by_text, "exec")
    assert state == "succeeded"
    # A name that is not UTF-8, built in SQL with || (or CAST(X'...' AS TEXT)).
    odd = "SELECT task_id FROM entries WHERE path_text = X'fffe' || '-not-utf8'"
    hexed = "SELECT task_id FROM entries WHERE path_text = CAST(X'%s' AS TEXT)" % (
        b"\xff\xfe-not-utf8".hex())
    assert len(query(ledger, odd)) == 1 and query(ledger, odd) == query(ledger, hexed)
    for sql, args in ((by_text, ("exec",)), (odd, ())):
        plan = " ".join(row[-1] for row in query(ledger, "EXPLAIN QUERY PLAN " + sql, *args))
        assert "USING COVERING INDEX batch_files_path_text" in plan, plan
    # worker_throughput: one worker here; its work is exactly the succeeded batches'.
    [row] = query(ledger, "SELECT batches, files, bytes, wall_seconds, mib_per_second, "
                  "slot_seconds, mib_per_slot_second, lost FROM worker_throughput")
    done = query(ledger, "SELECT batches, files, bytes FROM batch_counts "
                 "WHERE state = 'succeeded'")[0]
    assert row[:3] == done and row[7] == 0
    assert 0 < row[3] <= row[5] and row[4] >= row[6]    # wall time <= the slots' sum


def test_worker_throughput_counts_no_lost_batch_and_rates_in_wall_time(make_ledger):
    ledger = make_ledger("/src")
    con = sqlite3.connect(ledger)
    con.executemany("INSERT INTO batches(task_id, state, file_count, directory_count, "
                    "estimated_bytes, created_ts) VALUES (?, 'succeeded', ?, 0, ?, 0)",
                    [(1, 10, 20 << 20), (2, 5, 10 << 20)])
    # Two slots of worker w side by side (0-10 s and 5-15 s), then a retry (20-30 s);
    # batch 1 was lost once by w before it succeeded.
    con.executemany("INSERT INTO attempts(task_id, claim, retry_count, worker_id, status, "
                    "start_ts, end_ts, received_ts) VALUES (?, ?, 0, 'w', ?, ?, ?, 0)",
                    [(1, 1, "lost", None, None), (1, 2, "success", 0, 10),
                     (2, 1, "retry", 20, 30), (2, 2, "success", 5, 15)])
    con.commit()
    con.close()
    [row] = query(ledger, "SELECT worker_id, batches, files, bytes, wall_seconds, "
                  "mib_per_second, slot_seconds, mib_per_slot_second, lost "
                  "FROM worker_throughput")
    assert row == ("w", 2, 15, 30 << 20, 25.0, 1.2, 20.0, 1.5, 1)


# -- 6. the ledger file stands on its own -------------------------------------------------
def test_the_ledger_file_alone_is_whole_after_a_run_whose_api_had_clients(tmp_path):
    import threading
    import urllib.request

    from .support import free_port, popen

    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    src.mkdir()
    for i in range(30):
        (src / f"f{i}").write_text(str(i))
    port = free_port()
    proc = popen("run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger),
                 "--port", str(port), "--batch-files", "3")
    answers = []

    def poll():
        while proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
                    answers.append(r.status)
            except OSError:
                pass
    client = threading.Thread(target=poll)
    client.start()
    out, err = proc.communicate(timeout=300)
    client.join()
    assert proc.returncode == 0, err.decode()
    assert answers, "the API never answered"
    wal = tmp_path / "l.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    shutil.copyfile(ledger, tmp_path / "copy.db")           # the main file alone
    counts = dict(query(tmp_path / "copy.db", "SELECT state, batches FROM batch_counts"))
    assert counts["pending"] == counts["running"] == 0
    assert counts["succeeded"] == query(ledger, "SELECT count(*) FROM batches")[0][0] == 11


def test_backup_has_help():
    r = fleetsync("backup", "--help")
    assert r.returncode == 0 and b"usage: fleetsync backup" in r.stdout and b"OUT" in r.stdout
    assert b"online backup" in fleetsync("--help").stdout


def test_backup_is_one_whole_file_also_during_a_run(tmp_path):
    import time

    from .support import popen

    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    src.mkdir()
    for i in range(60):
        (src / f"f{i}").write_text(str(i))
    proc = popen("run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger),
                 "--no-api", "--batch-files", "2")
    try:
        copy = tmp_path / "copy.db"
        for _ in range(600):     # as soon as the ledger has its tables (mid-run, or after)
            r = fleetsync("backup", "--ledger", str(ledger), str(copy))
            if r.returncode == 0:
                break
            assert not copy.exists()
            time.sleep(0.1)
        assert r.returncode == 0, r.stderr.decode()
        assert b"one file" in r.stdout
    finally:
        proc.communicate(timeout=300)
    assert proc.returncode == 0
    assert query(copy, "PRAGMA journal_mode") == [("delete",)]
    assert query(copy, "PRAGMA integrity_check") == [("ok",)]
    # One snapshot: the counters the triggers keep match the rows they count.
    assert query(copy, "SELECT sum(batches) FROM batch_counts") == query(
        copy, "SELECT count(*) FROM batches")
    again = fleetsync("backup", "--ledger", str(ledger), str(copy))
    lines = again.stderr.decode().strip().splitlines()
    assert again.returncode == 2 and len(lines) == 1 and "exists" in lines[0], lines


# -- 7. verify checks on the workers of the migration's own inventory ---------------------
def test_verify_defaults_to_the_inventory_the_migration_last_ran_with(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    src.mkdir()
    (src / "f").write_text("f")
    inv = tmp_path / "fleet.ini"
    inv.write_text("[movers]\nlocalhost ansible_connection=local fleetsync_slots=3\n")
    run(src, dest, ledger, "--inventory", str(inv))
    assert query(ledger, "SELECT inventory FROM runs") == [(str(inv),)]
    con = sqlite3.connect(ledger)
    con.execute("UPDATE workers SET slots = 0")        # to see which inventory checks
    con.commit()
    con.close()
    r = fleetsync("verify", "--ledger", str(ledger))
    assert r.returncode == 0, r.stderr.decode()
    assert f"checking on the workers of {inv}".encode() in r.stderr
    assert query(ledger, "SELECT slots FROM workers") == [(3,)]       # fleet.ini's, not local.ini's 4
    inv.unlink()
    r = fleetsync("verify", "--ledger", str(ledger))
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "give --inventory" in lines[0], lines


# -- 8. a recopied batch's old verdict does not survive its new copy ----------------------
def test_a_plain_verify_between_requeue_and_recopy_leaves_no_stale_verdict(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    src.mkdir()
    for i in range(12):
        (src / f"f{i}").write_text(f"content {i}")
    run(src, dest, ledger, "--batch-files", "4", "--verify")
    total = query(ledger, "SELECT count(*) FROM batches")[0][0]
    st, top = os.stat(dest / "f5"), os.stat(dest)       # same size and time, other bytes
    (dest / "f5").write_text("CONTENT 5")
    os.utime(dest / "f5", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(dest, ns=(top.st_atime_ns, top.st_mtime_ns))
    r = fleetsync("verify", "--ledger", str(ledger), "--again", "--requeue")
    assert r.returncode == 1 and b"1 differ" in r.stdout, r.stdout
    [(task_id,)] = query(ledger, "SELECT task_id FROM entries WHERE path_text = 'f5'")
    # Before `run` copies it again: the old copy is not checked, its verdict is stale.
    r = fleetsync("verify", "--ledger", str(ledger))
    assert r.returncode == 1 and b"0 differ" in r.stdout and b"1 wait for a new copy" in r.stdout
    assert query(ledger, "SELECT state, differences LIKE '%f5%' FROM verifications "
                 "WHERE task_id = ?", task_id) == [("stale", 1)]
    run(src, dest, ledger)
    r = fleetsync("verify", "--ledger", str(ledger))
    assert r.returncode == 0, r.stdout + r.stderr
    assert query(ledger, "SELECT state, count(*) FROM verifications GROUP BY state") == [
        ("verified", total)]
    assert (dest / "f5").read_text() == "content 5"


# -- issue 20, item 6: a verify checks DEST as it is now ---------------------------------
def _rewrite_keeping_size_and_time(path) -> None:
    """Other bytes, same size and mtime (the directory's too): only a checksum sees it."""
    st, top = os.stat(path), os.stat(os.path.dirname(path))
    with open(path, "r+b") as f:
        data = f.read()
        f.seek(0)
        f.write(bytes(b ^ 0x20 for b in data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(os.path.dirname(path), ns=(top.st_atime_ns, top.st_mtime_ns))


def test_verify_checks_dest_as_it_is_now_not_an_earlier_verdict(tmp_path):
    """Issue 20, item 6: every batch had a verdict from a clean verify; two DEST files
    are then changed keeping size and mtime. A plain `verify` checks every batch again
    and finds both (it said '0 differ' from the old verdicts), and says how many it
    checked; `--again`, documented before, does the same."""
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    src.mkdir()
    for i in range(12):
        (src / f"f{i:02}").write_text(f"content {i}")
    run(src, dest, ledger, "--batch-files", "4")
    [(total,)] = query(ledger, "SELECT count(*) FROM batches WHERE state = 'succeeded'")
    r = fleetsync("verify", "--ledger", str(ledger))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{total} batches verified, 0 differ".encode() in r.stdout, r.stdout
    # One file in each of two batches.
    names = [p for (p,) in query(ledger, "SELECT min(path_text) FROM entries WHERE is_dir = 0 "
                                 "GROUP BY task_id ORDER BY task_id LIMIT 2")]
    assert len(names) == 2, names
    for name in names:
        _rewrite_keeping_size_and_time(dest / name)
    for flags in ([], ["--again"]):
        r = fleetsync("verify", "--ledger", str(ledger), *flags)
        assert f"{total - 2} batches verified, 2 differ".encode() in r.stdout, (flags, r.stdout)
        assert r.returncode == 1, (flags, r.stdout, r.stderr)
        assert f"this verify checked {total}".encode() in r.stdout, (flags, r.stdout)
        differences = " ".join(d for (d,) in query(
            ledger, "SELECT differences FROM verifications WHERE state = 'differs'"))
        assert all(name in differences for name in names), differences
    # --resume after a verify that finished: nothing left to check, the verdicts kept.
    r = fleetsync("verify", "--ledger", str(ledger), "--resume")
    assert r.returncode == 1 and b"2 differ" in r.stdout, r.stdout
    assert f"this verify checked 0, {total} verdicts kept".encode() in r.stdout, r.stdout
    r = fleetsync("verify", "--ledger", str(ledger), "--resume", "--again")
    assert r.returncode == 2 and b"not allowed with argument" in r.stderr, r.stderr


# -- issue 20, 11. verifications.differences shows names as every answer does: \xNN ------
def test_verify_differences_show_odd_names_as_backslash_x(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    src.mkdir()
    name = b"caf\xc3\xa9-\xff-new\nline"
    with open(os.path.join(os.fsencode(src), name), "wb") as f:
        f.write(b"content")
    run(src, dest, ledger)
    at = os.path.join(os.fsencode(dest), name)
    st, top = os.stat(at), os.stat(dest)                # same size and time, other bytes
    with open(at, "wb") as f:
        f.write(b"CONTENT")
    os.utime(at, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(dest, ns=(top.st_atime_ns, top.st_mtime_ns))
    r = fleetsync("verify", "--ledger", str(ledger))
    assert r.returncode == 1 and b"1 differ" in r.stdout, r.stdout + r.stderr
    [(differences,)] = query(ledger, "SELECT differences FROM verifications "
                                     "WHERE state = 'differs'")
    [line] = json.loads(differences)
    assert line.endswith("café-\\xff-new\\x0aline"), line
    assert "\\#" not in line
