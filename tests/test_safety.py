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
