"""Helpers for tests that run the real `fleetsync` command on real trees."""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import time

import pytest

from fleetsync.controller import processes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fleetsync(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run `fleetsync ARGS` as an operator would, from a fresh process."""
    return subprocess.run([sys.executable, "-m", "fleetsync.controller.cli", *args], cwd=REPO,
                          capture_output=True, timeout=timeout, **kw)


def eventually(cond, what: str = "the condition", timeout: float = 120,
               proc: subprocess.Popen | None = None, every: float = 0.05):
    """cond()'s first truthy value, polled: every test's one way to wait, on a state of
    the ledger, a process or a server, never on a rate. The timeout is generous (a
    loaded machine is slow, not failed); past it, or when `proc` ends first, the test
    fails saying what it waited for."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended (rc {proc.returncode}) before {what}: "
                        f"{out.decode()[-500:]} {err.decode()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def run_tree(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    """`fleetsync run` of tmp_path/src to tmp_path/dest, ledger tmp_path/l.db, no API."""
    return fleetsync("run", "--src", str(tmp_path / "src"), "--dest", str(tmp_path / "dest"),
                     "--ledger", str(tmp_path / "l.db"), "--no-api", *extra)


def ok(r: subprocess.CompletedProcess) -> str:
    """What a command said, once it is known to have exited 0 (else the test fails)."""
    out = r.stderr.decode() + r.stdout.decode()
    assert r.returncode == 0, out
    return out


def error_line(r: subprocess.CompletedProcess) -> str:
    """The one error line of a refused command, which is its last line: a refusal found
    once a run has begun (by the hosts' preflight, by the --delete bound) comes after
    the run's opening lines (its filter rules), never as more than one error line."""
    lines = r.stderr.decode().strip().splitlines()
    errors = [line for line in lines if line.startswith("fleetsync: error:")]
    assert r.returncode == 2 and len(errors) == 1 and lines[-1] == errors[0], (r.returncode,
                                                                            lines)
    return errors[0]


def popen(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fleetsync.controller.cli", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def private_mounts(script: str, *mount_points: str) -> list[str]:
    """The command line of `sh -c script` in a mount namespace of its own (args follow
    it as $1...), where mount_points are made private first, so that what the script
    mounts on them stays in it. Skips the test where that cannot be: not root, no
    unshare. `unshare -m` alone would make / private, which a chroot refuses (its /
    is no mount point): a fresh Debian chroot runs these tests too."""
    if os.geteuid() != 0 or not shutil.which("unshare") or subprocess.run(
            ["unshare", "-m", "--propagation", "unchanged", "true"],
            capture_output=True).returncode != 0:
        pytest.skip("needs root and a mount namespace of its own (unshare -m)")
    private = "".join(f"mount --make-rprivate {shlex.quote(m)} && " for m in mount_points)
    return ["unshare", "-m", "--propagation", "unchanged", "sh", "-c", private + script, "sh"]


def query(ledger, sql: str, *args) -> list[tuple]:
    """The rows of one query on a ledger file, as an auditor's sqlite3 would read them."""
    con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def ledger_query(ledger, sql: str, *args) -> list[tuple]:
    """A short read-only query of a ledger a running controller writes ([] before it
    exists, or before its tables do)."""
    if not os.path.exists(ledger):
        return []
    try:
        con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return []
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e) or "unable to open" in str(e):
            return []
        raise
    finally:
        con.close()


def api_processes(parent_pid: int) -> list[int]:
    """The API processes (alive, not zombies) of the `fleetsync run` whose pid is
    parent_pid: controller/api_process.py's ServerProcess puts that pid on their command line."""
    found = []
    for pid in processes.pids():
        args = processes.argv(pid) or []
        if (b"--parent-pid" in args[:-1]
                and args[args.index(b"--parent-pid") + 1] == str(parent_pid).encode()
                and running(pid)):
            found.append(pid)
    return found


def running(pid: int) -> bool:
    """pid runs (a zombie waiting for its parent to reap it has stopped running)."""
    fields = processes.stat(pid)
    return fields is not None and fields[0] != "Z"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ODD_NAMES = [b"new\nline", b"tab\there", b"\xff\xfe-not-utf8", b"-leading-dash", b"--rsync-opt",
             b"with space", b" leading space", b"x" * 255, b"quote'\"$(touch pwned)`id`"]


def make_odd_tree(root: bytes) -> None:
    """Every kind of entry and name a migration meets, with set modes and times."""
    os.makedirs(root)
    for i, name in enumerate(ODD_NAMES):
        with open(os.path.join(root, name), "wb") as f:
            f.write(name * 3 + bytes([i]))
    deep = root
    for i in range(40):
        deep = os.path.join(deep, b"d%02d" % i)
    os.makedirs(deep)
    with open(os.path.join(deep, b"bottom"), "wb") as f:
        f.write(b"deep")
    os.makedirs(os.path.join(root, b"empty", b"nested-empty"))
    os.makedirs(os.path.join(root, b"dir\nwith\xffodd name"))
    with open(os.path.join(root, b"dir\nwith\xffodd name", b"inner"), "wb") as f:
        f.write(b"inner")
    os.symlink(b"d00", os.path.join(root, b"link-to-dir"))
    os.symlink(b"does/not/exist", os.path.join(root, b"dangling"))
    os.mkfifo(os.path.join(root, b"fifo"))
    with open(os.path.join(root, b"sparse"), "wb") as f:
        f.seek(32 << 20)
        f.write(b"end")
    with open(os.path.join(root, b"exec"), "wb") as f:
        f.write(b"#!/bin/sh\n")
    os.chmod(os.path.join(root, b"exec"), 0o750)
    os.chmod(os.path.join(root, b"empty"), 0o700)
    # Old, distinct times everywhere, directories last (children change them).
    for n, (d, dirs, files) in enumerate(sorted(os.walk(root), key=lambda t: -len(t[0]))):
        for name in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
            p = os.path.join(d, name)
            os.utime(p, ns=(1_500_000_000_123_456_789 + n, 1_500_000_000_123_456_789 + n),
                     follow_symlinks=False)
        os.utime(d, ns=(1_400_000_000_987_654_321 + n, 1_400_000_000_987_654_321 + n))


def snapshot(root: bytes) -> dict[bytes, tuple]:
    """Every entry under root (root included as b'.'): type, mode, mtime, content."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            out[os.path.relpath(p, root)] = _entry(p)
    out[b"."] = _entry(root)
    return out


def _entry(p: bytes) -> tuple:
    st = os.lstat(p)
    kind = stat.S_IFMT(st.st_mode)
    if stat.S_ISREG(st.st_mode):
        with open(p, "rb") as f:
            content = hashlib.sha256(f.read()).hexdigest()
    elif stat.S_ISLNK(st.st_mode):
        content = os.readlink(p)
    else:
        content = None
    return (kind, stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_size if kind != stat.S_IFDIR
            else None, content)
