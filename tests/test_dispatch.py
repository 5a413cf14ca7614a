"""End to end on this machine: real `fleetsync run`, real ansible-runner, real rsync."""
from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from fleetsync.controller import processes
from fleetsync.controller.walk import Walk
from fleetsync.controller.producer import Limits
from fleetsync.ledger import bandwidth, db, migration

from .support import error_line, eventually, fleetsync, make_odd_tree, popen, query, REPO, snapshot

LOCAL = os.path.join(REPO, "inventory", "local.ini")


def counts(ledger) -> dict[str, int]:
    # Read-only: a read-write connect would create an empty file where the ledger is
    # to be, which fleetsync then refuses as "not a fleetsync ledger".
    return dict(query(ledger, "SELECT state, batches FROM batch_counts"))


def test_odd_tree_arrives_exactly(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    make_odd_tree(os.fsencode(src))
    r = fleetsync("run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger),
                  "--no-api", "--batch-files", "7")
    assert r.returncode == 0, r.stderr.decode()
    want, got = snapshot(os.fsencode(src)), snapshot(os.fsencode(dest))
    assert set(got) == set(want)
    for path in want:
        assert got[path] == want[path], path
    sparse = os.lstat(dest / "sparse")
    assert sparse.st_blocks * 512 < sparse.st_size // 4          # holes stay holes
    assert stat.S_ISFIFO(os.lstat(dest / "fifo").st_mode)
    assert not (tmp_path / "pwned").exists() and not (dest / "pwned").exists()
    c = counts(ledger)
    assert c["succeeded"] > 3 and c["failed"] == c["pending"] == c["running"] == 0
    # Exactly-once accounting: one successful attempt per batch.
    assert query(ledger, "SELECT count(*) FROM attempts WHERE status='success'")[0][0] == c["succeeded"]


def test_second_run_resumes_and_copies_nothing_again(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    (src / "a").mkdir(parents=True)
    (src / "a" / "f").write_text("x")
    args = ("run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger), "--no-api")
    assert fleetsync(*args).returncode == 0
    attempts = query(ledger, "SELECT count(*) FROM attempts")[0][0]
    again = fleetsync(*args)
    assert again.returncode == 0, again.stderr.decode()
    assert query(ledger, "SELECT count(*) FROM attempts")[0][0] == attempts


def walk_only(src, dest, ledger, **limits):
    """Fill a ledger as `run` would, without dispatching (to change SRC after the walk)."""
    engine = db.writer(str(ledger))
    migration.open_or_create(engine, os.path.realpath(src), os.path.realpath(dest),
                             {"batch_files": limits.get("entries", 500),
                              "batch_bytes": 100 << 20})
    walk = Walk(str(ledger), os.path.realpath(src), 1, Limits(**limits))
    walk.start()
    assert walk.join()


def test_file_deleted_after_the_walk_is_vanished_and_its_batch_succeeds(tmp_path):
    """Issue 10: rsync's exit 24 (here its 23 with link_stat ENOENT) for a file gone
    from SRC is an outcome, not a failure: no retry, the batch succeeds, the file is
    named as vanished, the run exits 0."""
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_text(str(i))
    walk_only(src, dest, ledger, entries=5)
    (src / "f7").unlink()
    r = fleetsync("run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger),
                  "--no-api", "--max-retries", "1")
    assert r.returncode == 0, r.stderr.decode()
    assert b"0 entries did not arrive, 1 vanished from SRC" in r.stdout
    [(task_id,)] = query(ledger, "SELECT task_id FROM batch_files WHERE path = CAST('f7' AS BLOB)")
    rows = query(ledger, "SELECT retry_count, status, rsync_exit_code, errors FROM attempts "
                 "WHERE task_id = ? ORDER BY attempt_id", task_id)
    assert [(r[0], r[1], r[2]) for r in rows] == [(0, "success", 24)]
    assert "f7" in rows[-1][3]
    logs = query(ledger, "SELECT level, message FROM log WHERE task_id = ? ORDER BY log_id", task_id)
    assert logs[0] == ("warning", f"task {task_id} retry 0 exit=24")
    assert query(ledger, "SELECT path, class, task_id FROM missing_entries") == [
        (b"f7", "vanished", task_id)]
    c = counts(ledger)
    assert c["failed"] == 0 and c["succeeded"] == 5 and c["pending"] == 0   # SRC and 20 files, 5 a batch
    # Everything else arrived.
    assert sorted(os.listdir(dest)) == sorted(os.listdir(src))


def test_unwritable_dest_is_one_clear_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    (tmp_path / "plainfile").write_text("not a directory")
    dest = tmp_path / "plainfile" / "dest"
    r = fleetsync("run", "--src", str(src), "--dest", str(dest), "--ledger",
                  str(tmp_path / "l.db"), "--no-api")
    assert r.returncode == 2
    err = error_line(r)         # found by the hosts' preflight, once the run has begun
    assert "DEST" in err and "not a writable directory" in err, err


def test_unreachable_host_does_not_stop_the_others(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    src.mkdir()
    for i in range(30):
        (src / f"f{i}").write_text(str(i))
    inv = tmp_path / "inv.ini"
    # Port 9 on loopback: nothing listens, the connection is refused at once.
    inv.write_text("[movers]\nlocalhost ansible_connection=local fleetsync_slots=2\n"
                   "deadhost ansible_host=127.0.0.1 ansible_port=9 ansible_user=nobody\n")
    r = fleetsync("run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger),
                  "--no-api", "--inventory", str(inv), "--batch-files", "5")
    assert r.returncode == 0, r.stderr.decode()
    assert sorted(os.listdir(dest)) == sorted(os.listdir(src))
    assert query(ledger, "SELECT DISTINCT host FROM workers") == [("localhost",)]
    msgs = [m for (m,) in query(ledger, "SELECT message FROM log WHERE level != 'info'")]
    assert any("deadhost" in m for m in msgs), msgs


def test_kill_9_at_three_states_of_the_run_then_resume(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    for d in range(30):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(60):
            (src / f"d{d}" / f"f{i}").write_bytes(os.urandom(2048))
    args = ("run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger),
            "--no-api", "--batch-files", "40")
    # Each kill lands at a state of the run read in the ledger, never at a time:
    # once the walk has enqueued batches, once a batch runs, once one more succeeded.
    def count(state: str | None = None) -> int:
        try:
            c = counts(ledger)
        except sqlite3.Error:      # not made yet, or being made
            return 0
        return c.get(state, 0) if state else sum(c.values())

    def succeeded() -> int:
        return count("succeeded")

    for stage in ("enqueued", "running", "one more succeeded"):
        done = succeeded()
        p = popen(*args, start_new_session=False)
        eventually({"enqueued": lambda: count() > 0,
                    "running": lambda: count("running") > 0,
                    "one more succeeded": lambda: succeeded() > done}[stage], stage, proc=p)
        p.send_signal(signal.SIGKILL)
        p.wait()
        c = counts(ledger)
        assert c.get("pending", 0) + c.get("running", 0) > 0 or query(
            ledger, "SELECT walk_done FROM migration") == [(0,)], f"killed after the end ({stage})"
    r = fleetsync(*args)
    assert r.returncode == 0, r.stderr.decode()
    assert snapshot(os.fsencode(src)) == snapshot(os.fsencode(dest))
    c = counts(ledger)
    total = query(ledger, "SELECT count(*) FROM batches")[0][0]
    assert c["succeeded"] == total and c["pending"] == c["running"] == c["failed"] == 0
    entries = query(ledger, "SELECT count(*), count(DISTINCT path) FROM batch_files")[0]
    assert entries[0] == entries[1] == len(snapshot(os.fsencode(src)))
    # Each batch succeeded exactly once in the books, whatever ran twice.
    assert query(ledger, "SELECT count(*) FROM attempts WHERE status='success'")[0][0] == total
    # Nothing of the killed runs is left running.
    [(mid,)] = query(ledger, "SELECT migration_id FROM migration")
    leftovers = processes.matching(f"fleetsync:{mid}:".encode())
    assert leftovers == []


@pytest.mark.parametrize("args, words", [
    (["--src", "/nonexistent/src"], "does not exist"),
    (["--batch-bytes", "lots"], "bad size"),
    (["--batch-files", "0"], "--batch-files"),
])
def test_bad_input_is_exit_2_and_one_line(tmp_path, args, words):
    src = tmp_path / "src"
    src.mkdir()
    base = {"--src": str(src), "--dest": str(tmp_path / "dest"), "--ledger": str(tmp_path / "l.db")}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    r = fleetsync("run", "--no-api", *[x for kv in base.items() for x in kv])
    assert r.returncode == 2
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
    assert not (tmp_path / "dest").exists()


def test_src_inside_dest_and_the_reverse_are_refused(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for src, dest in ((tmp_path / "a" / "b", tmp_path / "a"), (tmp_path / "a", tmp_path / "a" / "b"),
                      (tmp_path / "a", tmp_path / "a")):
        r = fleetsync("run", "--no-api", "--src", str(src), "--dest", str(dest),
                      "--ledger", str(tmp_path / "l.db"))
        assert r.returncode == 2 and "inside" in r.stderr.decode(), r.stderr.decode()
        assert len(r.stderr.decode().strip().splitlines()) == 1
    assert not (tmp_path / "l.db").exists()


def test_ledger_of_another_migration_is_refused(tmp_path):
    for d in ("s1", "s2"):
        (tmp_path / d).mkdir()
    ledger = str(tmp_path / "l.db")
    assert fleetsync("run", "--no-api", "--src", str(tmp_path / "s1"), "--dest",
                     str(tmp_path / "d1"), "--ledger", ledger).returncode == 0
    r = fleetsync("run", "--no-api", "--src", str(tmp_path / "s2"), "--dest",
                  str(tmp_path / "d1"), "--ledger", ledger)
    assert r.returncode == 2
    assert "another migration" in r.stderr.decode()
    assert len(r.stderr.decode().strip().splitlines()) == 1


def test_broken_inventory_is_one_clear_error(tmp_path):
    (tmp_path / "s").mkdir()
    inv = tmp_path / "inv.yml"
    inv.write_text("all: [this is: not, an inventory\n")
    r = fleetsync("run", "--no-api", "--src", str(tmp_path / "s"), "--dest", str(tmp_path / "d"),
                  "--ledger", str(tmp_path / "l.db"), "--inventory", str(inv))
    assert r.returncode == 2
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "inventory" in lines[0], lines


def test_operators_playbook_migrates_with_the_local_inventory(tmp_path):
    import subprocess
    import sys
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    (src / "a").mkdir(parents=True)
    (src / "a" / "f").write_text("x")
    playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    r = subprocess.run([playbook, "-i", LOCAL, os.path.join(REPO, "playbooks", "migrate.yml"),
                        "-e", f"src={src}", "-e", f"dest={dest}", "-e", f"ledger={ledger}",
                        "-e", "batch_files=10", "-e", "port=0"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:]
    assert "1 of 1 batches succeeded" in r.stdout
    assert (dest / "a" / "f").read_text() == "x"
    assert query(ledger, "SELECT count(*) FROM workers")[0][0] == 1


def test_retry_failed_batches_after_the_cause_is_fixed(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    src.mkdir()
    for i in range(9):
        (src / f"f{i}").write_text(str(i))
    walk_only(src, dest, ledger, entries=3)
    (dest / "f4" / "sub").mkdir(parents=True)             # in the way at DEST: that batch fails
    args = ("run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger), "--no-api",
            "--max-retries", "0")
    assert fleetsync(*args).returncode == 1
    (dest / "f4" / "sub").rmdir()                        # the operator clears the way
    (dest / "f4").rmdir()
    r = fleetsync("retry", "--ledger", str(ledger), "--failed")
    assert r.returncode == 0 and b"1 batches back in the queue" in r.stdout
    assert counts(ledger)["pending"] == 1
    untouched = query(ledger, "SELECT count(*) FROM attempts WHERE status = 'success'")[0][0]
    assert fleetsync(*args).returncode == 0
    assert (dest / "f4").read_text() == "4"
    statuses = [s for (s,) in query(ledger, "SELECT a.status FROM attempts a JOIN batch_files f "
                                    "USING (task_id) WHERE f.path = CAST('f4' AS BLOB) "
                                    "ORDER BY attempt_id")]
    assert statuses == ["failed", "requeued", "success"]
    # Only the requeued batch ran again.
    assert query(ledger, "SELECT count(*) FROM attempts WHERE status = 'success'")[0][0] == untouched + 1


def test_verify_finds_what_changed_and_requeues_it(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    src.mkdir()
    for i in range(12):
        (src / f"f{i}").write_text(f"content {i}")
    r = fleetsync("run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger),
                  "--no-api", "--batch-files", "4", "--verify")
    assert r.returncode == 0, r.stderr.decode()
    assert b"verified, 0 differ" in r.stdout
    total = counts(ledger)["succeeded"]
    assert query(ledger, "SELECT count(*) FROM verifications WHERE state='verified'")[0][0] == total
    # Same size and time, other bytes: only a checksum sees it.
    st, top = os.stat(dest / "f5"), os.stat(dest)
    (dest / "f5").write_text("CONTENT 5")
    os.utime(dest / "f5", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(dest, ns=(top.st_atime_ns, top.st_mtime_ns))
    r = fleetsync("verify", "--ledger", str(ledger), "--again", "--requeue")
    assert r.returncode == 1
    assert b"1 differ" in r.stdout and b"1 batches that differ are back" in r.stdout
    [(diffs,)] = query(ledger, "SELECT differences FROM verifications v JOIN batch_files f "
                       "USING (task_id) WHERE f.path = CAST('f5' AS BLOB)")
    assert "f5" in diffs
    r = fleetsync("run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger),
                  "--no-api", "--verify")
    assert r.returncode == 0, r.stderr.decode()
    assert (dest / "f5").read_text() == "content 5"
    assert query(ledger, "SELECT count(*) FROM verifications WHERE state='verified'")[0][0] == total


def test_delete_pass_removes_only_what_left_src_and_dry_run_lists_it(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    for d in ("a/b", "c", "keep"):
        (src / d).mkdir(parents=True)
    for f in ("a/f", "a/b/g", "c/h", "top"):
        (src / f).write_text(f)
    args = ["run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger), "--no-api",
            "--batch-files", "3"]
    assert fleetsync(*args).returncode == 0
    # SRC changes after the copy: these are gone from SRC, still in DEST.
    (src / "a" / "f").unlink()
    (src / "c" / "h").unlink()
    (src / "c").rmdir()
    (src / "top").unlink()
    outside = tmp_path / "outside"
    outside.write_text("never touched")
    (dest / "a" / "b" / "only-in-dest").write_text("x")
    # c and top are top-level entries: a cutover removing them says so (the guard of
    # tests/test_safety.py refuses it otherwise), and 5 of ~9 entries is over 10%.
    guard = ["--allow-delete", "c", "--allow-delete", "top", "--max-delete", "5"]
    r = fleetsync(*args, "--delete-dry-run")
    assert r.returncode == 0, r.stderr.decode()
    assert (dest / "a" / "f").exists() and (dest / "c" / "h").exists()
    listed = {p for (p,) in query(ledger, "SELECT path FROM deletions WHERE dry_run = 1")}
    assert listed == {"a/f", "a/b/only-in-dest", "c/h", "c/", "top"}, listed
    r = fleetsync(*args, "--delete", *guard)
    assert r.returncode == 0, r.stderr.decode()
    assert b"5 entries deleted" in r.stdout
    assert snapshot(os.fsencode(src)) == snapshot(os.fsencode(dest))   # times included
    assert outside.read_text() == "never touched"


def test_delete_is_refused_when_src_looks_empty(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    (dest / "precious").write_text("x")
    r = fleetsync("run", "--src", str(src), "--dest", str(dest), "--ledger",
                  str(tmp_path / "l.db"), "--no-api", "--delete")
    assert r.returncode == 2
    assert b"refusing to delete" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (dest / "precious").exists()



def test_hard_links_across_directories_stay_linked(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    for d in ("a", "b", "c"):
        (src / d).mkdir(parents=True)
        for i in range(6):
            (src / d / f"plain{i}").write_text(f"{d}{i}")
    (src / "a" / "one").write_text("linked file")
    os.link(src / "a" / "one", src / "b" / "one-again")
    os.link(src / "a" / "one", src / "c" / "one-more")
    (src / "b" / "two").write_text("another")
    os.link(src / "b" / "two", src / "c" / "two-again")
    r = fleetsync("run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger),
                  "--no-api", "--batch-files", "4")
    assert r.returncode == 0, r.stderr.decode()
    one = {os.stat(dest / p).st_ino for p in ("a/one", "b/one-again", "c/one-more")}
    two = {os.stat(dest / p).st_ino for p in ("b/two", "c/two-again")}
    assert len(one) == 1 and len(two) == 1 and one != two
    assert os.stat(dest / "a" / "one").st_nlink == 3
    assert snapshot(os.fsencode(src)) == snapshot(os.fsencode(dest))
    # Each inode's links rode in one batch; every entry is listed once.
    rows = query(ledger, "SELECT ino, count(DISTINCT task_id) FROM hardlinks GROUP BY ino")
    assert len(rows) == 2 and all(n == 1 for _, n in rows)
    n = query(ledger, "SELECT count(*), count(DISTINCT path) FROM batch_files")[0]
    assert n[0] == n[1] == len(snapshot(os.fsencode(src)))


def test_unreadable_batch_output_releases_the_hosts_batches(tmp_path):
    """A batch item that prints no batch markers (a broken worker shell, say) must
    not leave the batch running for ever while the host keeps sending heartbeats."""
    from fleetsync.controller import inventory
    from fleetsync.controller.dispatch import Dispatcher, Settings
    from fleetsync.controller.hostrun import BATCHES_TASK, Event, HostRun
    from fleetsync.ledger import batches as B
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    src.mkdir()
    (src / "f").write_text("x")
    walk_only(src, dest, ledger)
    d = Dispatcher(Settings(str(ledger), LOCAL), None,
                   {"h": inventory.Host("h", {}, 1)})
    run = HostRun(inventory.Host("h", {}, 1))
    run.worker_id = "w"
    [claim] = B.claim(d.conn, "w", 1)
    for quiet in ("@@fleetsync idle\r\n", "@@fleetsync stop\r\nShared connection closed.\r\n"):
        d._handle(Event(run, "runner_item_on_ok", BATCHES_TASK, {"stdout": quiet},
                        time.time()))
    assert counts(ledger)["running"] == 1                     # idle and stop are not batches
    d._handle(Event(run, "runner_item_on_ok", BATCHES_TASK, {"stdout": "garbage\n"},
                    time.time()))
    assert counts(ledger)["running"] == 0 and counts(ledger)["pending"] == 1
    [(msg,)] = query(ledger, "SELECT message FROM log WHERE level = 'error'")
    assert "unreadable batch output" in msg and "garbage" in msg
    d.close()


def test_rescan_queues_only_what_changed_since_the_last_walk(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    for d in ("a", "b", "c"):
        (src / d).mkdir(parents=True)
        for i in range(10):
            (src / d / f"f{i}").write_text(f"{d}{i}")
    args = ["run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger), "--no-api",
            "--batch-files", "5"]
    assert fleetsync(*args).returncode == 0
    before = query(ledger, "SELECT max(task_id) FROM batches")[0][0]
    # No pause: a rescan compares fingerprints (size, mtime, ctime...), not clocks.
    (src / "b" / "f3").write_text("changed")         # modified
    (src / "c" / "new").write_text("new")            # created
    r = fleetsync(*args, "--rescan")
    assert r.returncode == 0, r.stderr.decode()
    assert snapshot(os.fsencode(src)) == snapshot(os.fsencode(dest))
    queued = {p for (p,) in query(ledger, "SELECT path FROM batch_files WHERE task_id > ?",
                                  before)}
    # The two files and the directories they are written into (rsync's temporary
    # file changes b's time at DEST; c got a new entry).
    assert queued == {b"b/f3", b"b", b"c/new", b"c"}, queued


def test_the_dispatch_playbook_names_its_tasks_as_the_dispatcher_matches_them():
    import yaml
    from fleetsync.controller.hostrun import BATCHES_TASK, PREFLIGHT_TASK
    from fleetsync.controller.resources import DISPATCH_PLAYBOOK
    with open(DISPATCH_PLAYBOOK) as f:
        [play] = yaml.safe_load(f)
    # The wait for the run's parameters and the hosts they leave out come first.
    assert [t["name"] for t in play["tasks"]] == ["Parameters", "Hosts of this dispatch alone",
                                                 PREFLIGHT_TASK, BATCHES_TASK]
    assert all("ansible.builtin.raw" in t for t in play["tasks"][2:])


def _marked(mid: str) -> list[tuple[int, bytes | None]]:
    """The processes that carry the migration's mark, with their command lines (what
    a failure needs to say which one was left)."""
    return [(pid, processes.command_line(pid))
            for pid in processes.matching(f"fleetsync:{mid}:".encode())]


def _slow_tree(src):
    for d in range(20):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(40):
            (src / f"d{d}" / f"f{i}").write_bytes(os.urandom(8192))


def _running(ledger) -> int:
    try:
        return counts(ledger).get("running", 0)
    except sqlite3.Error:      # not created yet
        return 0


def test_kill_9_of_the_controller_stops_its_slots_claiming_and_its_processes(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    _slow_tree(src)
    p = popen("run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger),
              "--no-api", "--batch-files", "10", "--rsync-option=--bwlimit=200")
    eventually(lambda: _running(ledger) > 0, "batches running")
    p.kill()
    p.wait()
    killed = time.time()
    [(mid,)] = query(ledger, "SELECT migration_id FROM migration")
    # Its hosts finish the item in hand and claim nothing more; every process ends.
    # The one host's lookups run one after another and each checks the controller
    # before it claims, so at most the claim in flight when it died comes after
    # (one claim, one claimed_ts) however slow the machine is.
    eventually(lambda: not _marked(mid), "the run's processes ending")
    late = query(ledger, "SELECT count(DISTINCT claimed_ts) FROM batches WHERE claimed_ts > ?",
                 killed)
    assert late[0][0] <= 1, late
    assert counts(ledger).get("pending", 0) > 0


def test_two_ctrl_c_leave_no_process_and_no_temporary_file(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    _slow_tree(src)
    p = popen("run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger),
              "--no-api", "--batch-files", "10", "--rsync-option=--bwlimit=50")
    # An rsync inside a file: its temporary file is in DEST (at 50 KB/s, most of the time).
    eventually(lambda: any(f.startswith(".") for _, _, fs in os.walk(dest) for f in fs),
               "an rsync inside a file")
    p.send_signal(signal.SIGINT)
    # The second one comes once the first one's stop has begun (its line says so).
    line = p.stderr.readline()
    while line and b"stopping" not in line:
        line = p.stderr.readline()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err.decode()[-2000:]
    [(mid,)] = query(ledger, "SELECT migration_id FROM migration")
    eventually(lambda: not _marked(mid), "the run's processes ending", 30)
    temps = [f for d, _, fs in os.walk(dest) for f in fs if f.startswith(".")]
    assert temps == []
    assert not [f for f in os.listdir("/tmp") if f.startswith(f"fleetsync:{mid}:")
                or f.startswith(f"fleetsync.{mid}.")]


def test_hosts_of_an_earlier_run_do_not_count_as_up(tmp_path):
    """They would shrink every rsync's share of --bwlimit until seen again."""
    from fleetsync.controller import inventory
    from fleetsync.controller.dispatch import Dispatcher, Settings
    from fleetsync.ledger import workers
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    src.mkdir()
    (src / "f").write_text("x")
    walk_only(src, dest, ledger)
    with db.connect(str(ledger)) as conn:
        workers.seen(conn, "old-1", "old", 4)
        workers.seen(conn, "old-2", "other", 4)
        assert workers.total_slots(conn) == 8
    d = Dispatcher(Settings(str(ledger), LOCAL), None, {"h": inventory.Host("h", {}, 1)})
    with db.connect(str(ledger)) as conn:
        assert workers.total_slots(conn) == 0
        workers.seen(conn, "old-1", "old", 4)         # back: its preflight passed
        assert workers.total_slots(conn) == 4
    d.close()


def test_a_slow_copy_on_localhost_is_not_a_lost_host(tmp_path):
    """Issue 20's case: under a low --bwlimit an item lasts many heartbeat timeouts.
    Its beats keep its host and move its heartbeat; its batch runs once."""
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(2 << 20))       # ~20 s at 100 KiB/s
    proc = popen("run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger),
                 "--no-api", "--bwlimit", "100KiB", "--heartbeat-timeout", "6", "--slots", "1")
    try:
        def running():
            try:
                rows = query(ledger, "SELECT b.claimed_ts, w.heartbeat_ts FROM batches b JOIN "
                             "workers w ON w.worker_id = b.worker_id WHERE b.state='running'")
            except sqlite3.OperationalError as e:    # the ledger is being made
                if "unable to open" in str(e) or "no such table" in str(e):
                    return None
                raise
            return rows[0] if rows else None

        def moved_after(ts: float) -> float | None:
            """Its heartbeat, once newer than ts while the batch still runs."""
            row = running()
            return row[1] if row and row[1] > max(row[0], ts) else None

        # A heartbeat after the claim, then another, both while the batch runs.
        first = eventually(lambda: moved_after(0.0), "a heartbeat during the item", 120, proc)
        eventually(lambda: moved_after(first), "the heartbeat moving again", 120, proc)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert (dest / "big").read_bytes() == (src / "big").read_bytes()
    assert query(ledger, "SELECT status FROM attempts") == [("success",)]
    assert query(ledger, "SELECT count(*) FROM log WHERE message LIKE '%lost%'") == [(0,)]


def test_a_host_whose_beats_cannot_be_heard_is_given_its_batch_at_its_cap(tmp_path):
    """Beats are counted where the Ansible worker reads a pipe (ssh, local); paramiko
    reads a socket with recv, which /proc does not count: such a host is heard only
    when its item ends, so its batch's bytes at its rsync's pace are added to the
    timeout (at 10 MiB/s, or at the fleet's cap when lower)."""
    from fleetsync.controller import inventory
    from fleetsync.controller.dispatch import Dispatcher, Settings
    from fleetsync.controller.hostrun import HostRun
    from fleetsync.ledger import batches as B
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    src.mkdir()
    (src / "f").write_bytes(b"x" * (1 << 20))
    walk_only(src, dest, ledger)
    hosts = {"ssh": inventory.Host("ssh", {}, 1),
             "pk": inventory.Host("pk", {"ansible_connection": "paramiko"}, 1)}
    d = Dispatcher(Settings(str(ledger), LOCAL, heartbeat_timeout=6), None, hosts)

    def silent_for(name: str, seconds: float) -> str | None:
        """Whether a host holding the batch and silent this long is lost."""
        run = HostRun(hosts[name])
        run.worker_id = name
        assert B.claim(d.conn, name, 1)
        run.last_event = time.time() - seconds
        d.runs = {name: run}
        d._check_silent(time.time())
        B.release_worker(d.conn, name, "test")     # the batch waits again for the next
        return run.lost

    assert silent_for("ssh", 10)                   # past the timeout: lost
    assert not silent_for("ssh", 3)
    assert silent_for("pk", 10)                    # 1 MiB at 10 MiB/s: 0.1 s more
    bandwidth.set_cap(d.conn, 10 << 10)        # 10 KiB/s: 1 MiB takes 100 s
    assert not silent_for("pk", 10)
    assert not silent_for("pk", 100)
    assert silent_for("pk", 120)
    assert silent_for("ssh", 10)                   # the cap changes nothing for beats
    d.close()


# -- issue 25: the dispatch's Ansible starts at launch, ahead of the ledger ----------------
def test_a_run_started_ahead_fits_only_its_migration_and_ends_whole_when_dropped(tmp_path):
    """It bet on a migration id and a run token: a dispatcher of another does not
    adopt it; dropped, it leaves no process and no directory (it never got its
    parameters, so nothing ran on a host)."""
    from fleetsync.controller.hostrun import FleetRun, HostsRead
    from fleetsync.ledger import identity
    mid = identity.new_migration_id()
    ahead = FleetRun.ahead(LOCAL, None, mid)
    HostsRead(ahead, LOCAL).result()           # its ansible-playbook is up and waiting
    assert _marked(mid)
    assert ahead.fits(mid, ahead.run_token)
    assert not ahead.fits(identity.new_migration_id(), ahead.run_token)
    assert not ahead.fits(mid, "another")
    ahead.drop()
    assert _marked(mid) == [] and not os.path.exists(ahead.dir)
    assert not ahead.fits(mid, ahead.run_token)


def test_leftovers_of_a_migration_spare_this_runs_own(tmp_path):
    """kill_leftovers kills the processes of the migration's earlier run tokens, not
    those of the run token it is told to spare (this run's, started ahead)."""
    from fleetsync.controller.hostrun import kill_leftovers
    mid = "0000spare-test"
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    own = subprocess.Popen([*sleep, f"fleetsync:{mid}:mine"])
    old = subprocess.Popen([*sleep, f"fleetsync:{mid}:old"])
    try:
        eventually(lambda: len(_marked(mid)) == 2)
        assert kill_leftovers(mid, spare="mine") == 1
        assert old.wait(5) == -signal.SIGKILL
        assert own.poll() is None
    finally:
        own.kill()
        old.kill()
        own.wait()


def test_a_refused_run_leaves_nothing_of_its_ansible(tmp_path):
    """A run refused after its Ansible started (a ledger of another migration) ends
    that Ansible: no process and no run directory of the migration remain, the
    ledger is as it was."""
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    (src / "a").mkdir(parents=True)
    (src / "a" / "f").write_text("x")
    assert fleetsync("run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger),
                     "--no-api").returncode == 0
    mid = query(ledger, "SELECT migration_id FROM migration")[0][0]
    before = ledger.read_bytes()
    other = tmp_path / "other"
    other.mkdir()
    r = fleetsync("run", "--src", str(other), "--dest", str(dest), "--ledger", str(ledger),
                  "--no-api")
    assert r.returncode == 2, r.stderr.decode()
    assert ledger.read_bytes() == before
    assert _marked(mid) == []
    assert [n for n in os.listdir(tempfile.gettempdir())
            if n.startswith(f"fleetsync:{mid}:")] == []
