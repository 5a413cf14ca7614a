"""Issue 10: nothing lost, nothing destroyed by mistake. Real `fleetsync run`, real
rsync, real SQLite files: the ledger lock, the --delete guard, a mistyped DEST, a
ledger that is not fleetsync's, per-file outcomes and an honest exit status."""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import time

import pytest

from .support import fleetsync, popen


def query(ledger, sql, *args):
    con = sqlite3.connect(ledger)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def tree(root, names=("a/f1", "a/f2", "b/g", "top")):
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(n)


def run_args(src, dest, ledger, *more):
    return ("run", "--no-api", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger),
            *more)


def wait_for(predicate, what: str, timeout: float = 120):
    """Poll a condition that a blocked process will reach (no timing assumed: the
    other process cannot get past the point it waits at)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.05)


# -- (1) one run per ledger -------------------------------------------------------

def test_second_run_on_a_ledger_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    tree(src)
    args = run_args(src, dest, ledger)
    assert fleetsync(*args).returncode == 0
    lockfile = str(ledger) + ".lock"
    assert open(lockfile).read() == ""              # a clean end names no holder
    # Hold SQLite's write lock: the resuming run takes the ledger lock, then waits.
    blocker = sqlite3.connect(ledger, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    first = popen(*args)
    try:
        wait_for(lambda: f"pid {first.pid} " in open(lockfile).read(), "the first run locks")
        second = fleetsync(*args)
        assert second.returncode == 2
        err = second.stderr.decode().strip().splitlines()
        assert len(err) == 1, err
        assert f"ledger in use by pid {first.pid} on host {socket.gethostname()}" in err[0]
        blocker.execute("ROLLBACK")
        assert first.wait(300) == 0, first.stderr.read().decode()
        # Now a run killed with -9 while it holds the lock.
        blocker.execute("BEGIN IMMEDIATE")
        third = popen(*args)
        wait_for(lambda: f"pid {third.pid} " in open(lockfile).read(), "the third run locks")
        third.kill()
        third.wait(60)
        blocker.execute("ROLLBACK")
        fourth = fleetsync(*args)
        assert fourth.returncode == 0, fourth.stderr.decode()
        assert f"took over the stale lock of pid {third.pid} on host" in fourth.stderr.decode()
    finally:
        blocker.close()
        for p in (first,):
            if p.poll() is None:
                p.kill()
                p.wait()


# -- (2) --delete cannot empty DEST ----------------------------------------------

def test_delete_against_a_near_empty_src_is_refused_and_deletes_nothing(tmp_path):
    """An unmounted mount point holding one marker file: every top-level entry the
    ledger copied before is missing; refused at start, DEST untouched."""
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    tree(src, [f"d{i}/f{j}" for i in range(4) for j in range(5)] + ["top"])
    assert fleetsync(*run_args(src, dest, ledger)).returncode == 0
    before = sorted(p for p, _, _ in os.walk(dest))
    attempts = query(ledger, "SELECT count(*) FROM attempts")
    for d in list(src.iterdir()):
        if d.is_dir():
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
        else:
            d.unlink()
    (src / ".mounted-marker").write_text("")
    r = fleetsync(*run_args(src, dest, ledger, "--delete"))
    assert r.returncode == 2
    err = r.stderr.decode().strip().splitlines()
    assert len(err) == 1, err
    assert "5 top-level entries" in err[0] and "d0, d1, d2, d3, top" in err[0]
    assert "--allow-delete" in err[0] and "--max-delete" in err[0]
    assert sorted(p for p, _, _ in os.walk(dest)) == before
    assert query(ledger, "SELECT count(*) FROM attempts") == attempts   # nothing ran
    assert query(ledger, "SELECT count(*) FROM deletions") == [(0,)]


def test_delete_over_the_bound_is_refused_after_a_dry_run_then_allowed(tmp_path):
    """A real cutover removing a top-level directory: named, it passes the first
    check; the dry run finds 6 of ~26 entries (over 10%): refused, nothing deleted;
    a raised --max-delete deletes exactly those."""
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    tree(src, [f"d{i}/f{j}" for i in range(4) for j in range(5)] + ["top"])
    assert fleetsync(*run_args(src, dest, ledger)).returncode == 0
    for f in (src / "d2").iterdir():
        f.unlink()
    (src / "d2").rmdir()
    r = fleetsync(*run_args(src, dest, ledger, "--delete", "--allow-delete", "d2"))
    assert r.returncode == 2, r.stderr.decode()
    err = r.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "would delete 6 entries" in err[0] and "--max-delete 6" in err[0]
    assert "d2/" in err[0]
    assert (dest / "d2" / "f0").exists()                     # nothing deleted
    assert query(ledger, "SELECT count(*) FROM deletions WHERE dry_run = 0") == [(0,)]
    r = fleetsync(*run_args(src, dest, ledger, "--delete", "--allow-delete", "d2",
                            "--max-delete", "6"))
    assert r.returncode == 0, r.stderr.decode()
    assert b"within --max-delete 6" in r.stderr
    assert not (dest / "d2").exists() and (dest / "d1" / "f4").exists()
    assert query(ledger, "SELECT count(*) FROM deletions WHERE dry_run = 0") == [(6,)]


def test_max_delete_must_be_a_count_or_a_percentage(tmp_path):
    src = tmp_path / "src"
    tree(src)
    r = fleetsync(*run_args(src, tmp_path / "dest", tmp_path / "l.db", "--delete",
                            "--max-delete", "lots"))
    assert r.returncode == 2 and b"--max-delete lots" in r.stderr
    assert not (tmp_path / "l.db").exists() and not (tmp_path / "dest").exists()


# -- (3) a mistyped DEST -----------------------------------------------------------

def test_a_dest_with_a_mistyped_parent_creates_nothing_and_the_ledger_is_not_bound(tmp_path):
    src, ledger = tmp_path / "src", tmp_path / "l.db"
    tree(src)
    typo = tmp_path / "tpyo1" / "tpyo2" / "new"
    r = fleetsync(*run_args(src, typo, ledger))
    assert r.returncode == 2
    err = r.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "parent directory does not exist" in err[0], err
    assert not (tmp_path / "tpyo1").exists()
    # The corrected command works on the same ledger (nothing was copied to the typo).
    dest = tmp_path / "new"
    r = fleetsync(*run_args(src, dest, ledger))
    assert r.returncode == 0, r.stderr.decode()
    assert f"now copies to {dest}, not {typo}" in r.stderr.decode()
    assert (dest / "a" / "f1").read_text() == "a/f1"
    assert query(ledger, "SELECT dest FROM migration") == [(str(dest),)]
    # Once something was copied, the ledger is bound to its DEST.
    r = fleetsync(*run_args(src, tmp_path / "other", ledger))
    assert r.returncode == 2 and b"another migration" in r.stderr


# -- (4) a ledger that is not fleetsync's ------------------------------------------

def foreign_files(tmp_path) -> dict[str, str]:
    """A non-SQLite file, an empty file, another application's SQLite database."""
    made = {}
    text = tmp_path / "notes.txt"
    text.write_text("my notes, not a database\n")
    made["text"] = str(text)
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    made["empty"] = str(empty)
    other = tmp_path / "app.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO customers(name) VALUES ('ada')")
    con.commit()
    con.close()
    made["sqlite"] = str(other)
    return made


@pytest.mark.parametrize("command", ["run", "status", "verify", "serve", "retry"])
def test_a_ledger_that_is_not_fleetsyncs_is_refused_in_one_line_changing_nothing(
        tmp_path, command):
    src = tmp_path / "src"
    tree(src)
    for kind, path in foreign_files(tmp_path).items():
        before = open(path, "rb").read()
        args = {"run": run_args(src, tmp_path / "dest", path),
                "status": ("status", "--ledger", path),
                "verify": ("verify", "--ledger", path),
                "serve": ("serve", "--ledger", path, "--port", "0"),
                "retry": ("retry", "--ledger", path, "--failed")}[command]
        r = fleetsync(*args, timeout=120)
        assert r.returncode == 2, (kind, r.stderr.decode())
        err = r.stderr.decode().strip().splitlines()
        assert len(err) == 1 and "not a fleetsync ledger" in err[0], (kind, err)
        assert open(path, "rb").read() == before, kind
        assert not os.path.exists(path + "-wal") and not os.path.exists(path + "-shm"), kind
        assert not (tmp_path / "dest").exists()


def test_serve_answers_503_when_the_ledger_is_not_one_any_more(tmp_path):
    import json
    import urllib.error
    import urllib.request

    from .support import free_port
    src, ledger = tmp_path / "src", tmp_path / "l.db"
    tree(src)
    assert fleetsync(*run_args(src, tmp_path / "dest", ledger)).returncode == 0
    port = free_port()
    p = popen("serve", "--ledger", str(ledger), "--port", str(port))
    try:
        def up():
            try:      # /openapi.json opens no ledger connection
                urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=5)
                return True
            except OSError:
                return False
        wait_for(up, "serve answers")
        garbage = tmp_path / "garbage"
        garbage.write_bytes(b"x" * 8192)
        os.replace(garbage, ledger)
        for name in ("-wal", "-shm"):
            if os.path.exists(str(ledger) + name):
                os.unlink(str(ledger) + name)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10)
        assert e.value.code == 503
        assert json.load(e.value)["error"]["status"] == 503
    finally:
        p.terminate()
        p.wait(10)
