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

from fleetsync.controller import processes

from .support import error_line, eventually, fleetsync, popen, query



def tree(root, names=("a/f1", "a/f2", "b/g", "top")):
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(n)


def run_args(src, dest, ledger, *more):
    return ("run", "--no-api", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger),
            *more)


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
        eventually(lambda: f"pid {first.pid} " in open(lockfile).read(), "the first run locks")
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
        eventually(lambda: f"pid {third.pid} " in open(lockfile).read(), "the third run locks")
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
    err = error_line(r)
    assert "would delete 6 entries" in err and "--max-delete 6" in err and "d2/" in err, err
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
    assert "parent directory does not exist" in error_line(r)
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
        eventually(up, "serve answers")
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


# -- (5)-(8) per-file outcomes, as an unprivileged user ----------------------------

NOBODY = 65534


class Nobody:
    """Runs `fleetsync` as uid/gid 65534 without capabilities (what root becomes on
    an NFS export with root_squash), with a Python that user can run: a venv of a
    system python3.11 that reads a copy of this worktree's installed packages and of
    fleetsync itself (the worktree may be where that user cannot read, under /root)."""

    def __init__(self, base: str, venv: str):
        self.base, self.venv = base, venv

    def env(self) -> dict:
        return {**os.environ, "HOME": os.path.join(self.base, "home"),
                "TMPDIR": os.path.join(self.base, "tmp"),
                "PATH": os.path.join(self.venv, "bin") + ":" + os.environ.get("PATH", "")}

    def fleetsync(self, *args: str, timeout: float = 300):
        import subprocess

        from .support import REPO
        return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                               "--clear-groups", os.path.join(self.venv, "bin", "python"),
                               "-m", "fleetsync.controller.cli", *args],
                              cwd=REPO, env=self.env(), capture_output=True, timeout=timeout)


def _package_dirs(repo: str) -> dict[str, str]:
    """setup.cfg's package_dir: each package of fleetsync and its folder in repo."""
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(repo, "setup.cfg"))
    lines = cfg["options"]["package_dir"].strip().splitlines()
    return dict((part.strip() for part in line.split("=", 1)) for line in lines)


def _runs_as_nobody(cmd: str) -> bool:
    import subprocess
    r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                        "sh", "-c", cmd], capture_output=True)
    return r.returncode == 0


@pytest.fixture(scope="module")
def nobody():
    import shutil
    import subprocess
    import sys
    import sysconfig
    import tempfile
    if os.geteuid() != 0:
        pytest.skip("switching to an unprivileged user needs root")
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is not installed")
    candidates = [p for p in (os.path.realpath(sys.executable), "/usr/bin/python3.11",
                              shutil.which("python3.11") or "") if p]
    python = next((p for p in candidates if _runs_as_nobody(f"exec {p} -c 'import sys'")), None)
    if python is None:
        pytest.skip(f"no python3.11 that uid {NOBODY} can run (tried {candidates})")
    base = tempfile.mkdtemp(prefix="fleetsync-nobody-", dir="/tmp")
    try:
        os.chmod(base, 0o755)
        venv = os.path.join(base, "venv")
        subprocess.run([python, "-m", "venv", "--without-pip", venv], check=True,
                       capture_output=True)
        purelib = sysconfig.get_paths()["purelib"]
        site = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                               "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        copied = os.path.join(base, "site")
        shutil.copytree(purelib, copied, symlinks=True,
                        ignore=shutil.ignore_patterns("__editable__*"))
        from .support import REPO
        for package, folder in _package_dirs(REPO).items():
            shutil.copytree(os.path.join(REPO, folder),
                            os.path.join(copied, *package.split(".")), symlinks=True)
        with open(os.path.join(site, "worktree.pth"), "w") as f:
            f.write(f"import site; site.addsitedir({copied!r})\n")
        bindir = os.path.dirname(sys.executable)
        for name in os.listdir(bindir):          # ansible-* scripts, for the new python
            if name.startswith("ansible"):
                with open(os.path.join(bindir, name)) as f:
                    body = f.read().split("\n", 1)[1]
                target = os.path.join(venv, "bin", name)
                with open(target, "w") as f:
                    f.write(f"#!{venv}/bin/python\n{body}")
                os.chmod(target, 0o755)
        work = os.path.join(base, "w")
        for d in ("w", "w/home", "w/tmp"):
            os.mkdir(os.path.join(base, d))
            os.chown(os.path.join(base, d), NOBODY, NOBODY)
        runner = Nobody(work, venv)
        r = runner.fleetsync("--help")
        if r.returncode != 0:
            pytest.skip(f"fleetsync cannot run as uid {NOBODY}: {r.stderr.decode()[-300:]}")
        yield runner
    finally:
        shutil.rmtree(base, ignore_errors=True)


def chown_tree(root: bytes) -> None:
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            os.lchown(os.path.join(d, n), NOBODY, NOBODY)
    os.lchown(root, NOBODY, NOBODY)


UNREADABLE = [b"secret", b"new\nline", b"\xff\xfe-not-utf8", b"-leading-dash", b"--rsync-opt"]


def test_unreadable_entries_as_an_unprivileged_user_are_named_and_fail_at_once(nobody):
    """Issue 10, items 1-3: a directory at 000, one at 0444, unreadable files with
    odd names. Every entry arrives or is named; exit 1; no pointless retries; retry
    --failed re-copies only the failed files."""
    import shutil
    case = os.path.join(nobody.base.encode(), b"case1")
    src, dest, ledger = case + b"/src", case + b"/dest", os.fsdecode(case + b"/l.db")
    os.makedirs(src + b"/ok/deep")
    os.makedirs(src + b"/locked")
    os.makedirs(src + b"/noenter")
    for rel in (b"ok/a", b"ok/deep/b", b"locked/inside", b"noenter/t", b"top"):
        with open(src + b"/" + rel, "wb") as f:
            f.write(rel * 1000)
    for name in UNREADABLE:
        with open(src + b"/ok/" + name, "wb") as f:
            f.write(b"unreadable " + name)
    chown_tree(case)
    for name in UNREADABLE:
        os.chmod(src + b"/ok/" + name, 0)
    os.chmod(src + b"/locked", 0)
    os.chmod(src + b"/noenter", 0o444)
    try:
        r = nobody.fleetsync("run", "--no-api", "--src", os.fsdecode(src), "--dest",
                             os.fsdecode(dest), "--ledger", ledger, "--max-retries", "3")
        assert r.returncode == 1, r.stderr.decode()
        assert b"7 entries did not arrive" in r.stdout, r.stdout
        missing = {bytes(p): (c, s) for p, c, s in query(
            ledger, "SELECT path, class, source FROM missing_entries")}
        assert missing == {
            b"locked": ("permanent", "walk-list"), b"noenter/t": ("permanent", "walk"),
            **{b"ok/" + n: ("permanent", "rsync") for n in UNREADABLE}}
        # Failed at once: one attempt per batch, no retry spent on a permission error.
        assert query(ledger, "SELECT status, retry_count, rsync_exit_code FROM attempts "
                     "WHERE status != 'success'") == [("failed", 0, 23)]
        # Every other entry arrived.
        for rel in (b"ok/a", b"ok/deep/b", b"top"):
            with open(dest + b"/" + rel, "rb") as f:
                assert f.read() == rel * 1000
        errors = query(ledger, "SELECT message FROM log WHERE level = 'error'")
        assert any("new\\x0aline" in m for (m,) in errors), errors
        assert not any("\n" in m for (m,) in errors)
        # The owner fixes the permissions; an arrived file is removed from DEST to see
        # that retry --failed sends the failed files alone.
        for name in UNREADABLE:
            os.chmod(src + b"/ok/" + name, 0o644)
        os.unlink(dest + b"/ok/a")
        r = nobody.fleetsync("retry", "--ledger", ledger, "--failed")
        assert r.returncode == 0 and b"1 batches back in the queue" in r.stdout, r.stderr
        r = nobody.fleetsync("run", "--no-api", "--src", os.fsdecode(src), "--dest",
                             os.fsdecode(dest), "--ledger", ledger)
        assert r.returncode == 1, r.stderr.decode()       # the walk's two are still missing
        assert b"2 entries did not arrive" in r.stdout, r.stdout
        for name in UNREADABLE:
            with open(dest + b"/ok/" + name, "rb") as f:
                assert f.read() == b"unreadable " + name
        assert not os.path.exists(dest + b"/ok/a")        # not sent again
        assert {bytes(p) for (p,) in query(ledger, "SELECT path FROM missing_entries")} == {
            b"locked", b"noenter/t"}
        # The API names a batch's failed files through the one path formatter.
        from fleetsync.api import make_app
        from .test_api import call
        app = make_app(ledger)
        [(task_id,)] = query(ledger, "SELECT DISTINCT task_id FROM entry_outcomes "
                             "WHERE source = 'rsync'")
        failed = call(app, f"/batches/{task_id}").json["failed_entries"]
        by_hex = {f["path_hex"]: f for f in failed}
        assert by_hex[b"ok/new\nline".hex()]["path"] == "ok/new\\x0aline"
        assert by_hex[b"ok/\xff\xfe-not-utf8".hex()]["class"] == "permanent"
        assert all(not f["open"] for f in failed if f["source"] == "rsync")   # arrived since
        # Still open: only the walk's rows cut with this batch (which depends on timing).
        assert {f["path"] for f in failed if f["open"]} <= {"noenter/t", "locked"}
        assert all(f["source"] != "rsync" for f in failed if f["open"])
        assert call(app, "/status").json["entries_not_arrived"] == 2
        app.snapshots.close()   # a reader as root would make -wal/-shm the owner cannot write
        # The owner opens the two directories: --rescan lists them now, their old
        # entries (older than the first walk) included, and nothing is missing.
        os.chmod(src + b"/locked", 0o755)
        os.chmod(src + b"/noenter", 0o755)
        r = nobody.fleetsync("run", "--no-api", "--rescan", "--src", os.fsdecode(src), "--dest",
                             os.fsdecode(dest), "--ledger", ledger)
        assert r.returncode == 0, (r.stdout, query(ledger, "SELECT * FROM missing_entries"),
                                   os.listdir(dest + b"/locked"), os.listdir(dest + b"/noenter"))
        for rel in (b"locked/inside", b"noenter/t"):
            with open(dest + b"/" + rel, "rb") as f:
                assert f.read() == rel * 1000
        assert query(ledger, "SELECT path FROM missing_entries") == []
        assert query(ledger, "SELECT count(*) FROM missing_entries") == [(0,)]
    finally:
        for d, dirs, _ in os.walk(case):
            for n in dirs:
                os.chmod(os.path.join(d, n), 0o755)
        shutil.rmtree(case, ignore_errors=True)


def test_a_ledger_the_user_cannot_write_is_refused_in_one_line(nobody):
    case = os.path.join(nobody.base, "case2")
    os.makedirs(os.path.join(case, "src"))
    with open(os.path.join(case, "src", "f"), "w") as f:
        f.write("x")
    ledger = os.path.join(case, "l.db")           # root's, 0644, in root's directory
    assert fleetsync(*run_args(os.path.join(case, "src"), os.path.join(case, "dest"),
                               ledger)).returncode == 0
    before = open(ledger, "rb").read()
    r = nobody.fleetsync(*run_args(os.path.join(case, "src"), os.path.join(case, "dest"),
                                   ledger))
    assert r.returncode == 2
    err = r.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "cannot write the ledger" in err[0], err
    assert open(ledger, "rb").read() == before
    r = nobody.fleetsync("status", "--ledger", ledger)      # a reader may
    assert r.returncode == 0, r.stderr.decode()
    # The user's own ledger, but a reader as root left a -shm only root can write.
    mine = os.path.join(nobody.base, "case3")
    os.makedirs(os.path.join(mine, "src"))
    with open(os.path.join(mine, "src", "f"), "w") as f:
        f.write("x")
    chown_tree(mine.encode())
    args = run_args(os.path.join(mine, "src"), os.path.join(mine, "dest"),
                    os.path.join(mine, "l.db"))
    assert nobody.fleetsync(*args).returncode == 0
    with open(os.path.join(mine, "l.db-shm"), "wb"):
        pass                                        # root's, 0644
    r = nobody.fleetsync(*args)
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, err
    assert "cannot write" in err[0] and "l.db-shm (owned by uid 0" in err[0], err


def test_files_and_a_directory_deleted_while_their_batch_waits_end_0_named_vanished(tmp_path):
    from .test_dispatch import walk_only
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    tree(src, [f"f{i}" for i in range(8)] + [f"gone/g{i}" for i in range(3)]
         + ["new\nline", "-dash"])
    walk_only(src, dest, ledger, entries=4)          # the batches wait in the ledger
    for rel in ("f3", "new\nline", "-dash", "gone/g0", "gone/g1", "gone/g2"):
        (src / rel).unlink()
    (src / "gone").rmdir()
    r = fleetsync(*run_args(src, dest, ledger, "--max-retries", "2"))
    assert r.returncode == 0, r.stderr.decode()
    assert b"0 entries did not arrive, 7 vanished from SRC" in r.stdout, r.stdout
    vanished = {bytes(p) for p, c in query(ledger, "SELECT path, class FROM missing_entries")
                if c == "vanished"}
    assert vanished == {b"f3", b"new\nline", b"-dash", b"gone", b"gone/g0", b"gone/g1",
                        b"gone/g2"}
    # No retry was spent on them, every batch succeeded.
    assert query(ledger, "SELECT count(*) FROM attempts WHERE status != 'success'") == [(0,)]
    assert query(ledger, "SELECT state, batches FROM batch_counts WHERE batches > 0") == [
        ("succeeded", query(ledger, "SELECT count(*) FROM batches")[0][0])]
    warnings = [m for (m,) in query(ledger, "SELECT message FROM log WHERE level='warning'")]
    assert any(m.endswith(" retry 0 exit=24") for m in warnings), warnings
    # --rescan settles a vanished file that came back: copied by a new batch.
    (src / "f3").write_text("back")
    r = fleetsync(*run_args(src, dest, ledger, "--rescan"))
    assert r.returncode == 0, r.stderr.decode()
    assert (dest / "f3").read_text() == "back"
    assert b"f3" not in {bytes(p) for (p,) in query(ledger, "SELECT path FROM missing_entries")}


# -- the classes and the mapping, line by line ------------------------------------

def test_the_classes_of_each_errno():
    import errno

    from fleetsync.controller.policy import Policy, Verdict, classify
    from fleetsync.ledger.states import EntryClass as C
    assert classify(errno.ENOENT) is C.VANISHED
    assert classify(errno.ENOENT, sending=False) is C.MAY_HEAL     # DEST's side
    for e in (errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.ELOOP):
        assert classify(e) is C.PERMANENT
    for e in (errno.EIO, errno.ESTALE, errno.EAGAIN, errno.ENOSPC, errno.ETIMEDOUT):
        assert classify(e) is C.MAY_HEAL
    p = Policy(max_retries=2)
    assert p.entry_verdict(24, 0, [C.VANISHED, C.VANISHED], True) == (Verdict.SUCCEED, True)
    assert p.entry_verdict(23, 0, [C.PERMANENT, C.VANISHED], True) == (Verdict.FAIL, True)
    assert p.entry_verdict(23, 0, [C.MAY_HEAL, C.PERMANENT], True) == (Verdict.RETRY, True)
    assert p.entry_verdict(23, 2, [C.MAY_HEAL], True) == (Verdict.FAIL, True)
    # A line not mapped: what arrived is unknown, the batch-level policy decides.
    assert p.entry_verdict(23, 0, [C.PERMANENT], False) == (Verdict.RETRY, False)
    assert p.entry_verdict(30, 0, [], True) == (Verdict.RETRY, False)       # a timeout


def test_rsync_lines_map_back_to_their_entry_or_say_they_cannot():
    from fleetsync.controller.file_outcomes import file_outcomes
    from fleetsync.controller.outcome import Outcome, file_error
    entries = {b"new\nline", b"\xff\xfe", b"-dash", b"d", b"d/x", b'q" -> "r', b"q"}

    def one(line, src="/s", dest="/t"):
        out = Outcome(1, 1, 23, file_errors=[file_error(line)])
        [found], _ = file_outcomes(out, entries, src, dest)
        return found
    assert one('rsync: [sender] send_files failed to open "/s/new\\#012line": '
               "Permission denied (13)").path == b"new\nline"
    assert one('rsync: [sender] link_stat "/s/\\#377\\#376" failed: '
               "No such file or directory (2)").cls.value == "vanished"
    assert one('rsync: [sender] readlink_stat("/s/-dash") failed: '
               "Too many levels of symbolic links (40)").cls.value == "permanent"
    mk = one('rsync: [generator] recv_generator: mkdir "/t/d" failed: '
             "No such file or directory (2)")
    assert mk.path == b"d" and mk.cls.value == "may_heal"          # DEST's ENOENT
    assert one('rsync: [receiver] rename "/t/d/.x.AbC123" -> "d/x": '
               "No space left on device (28)").path == b"d/x"     # its temporary file
    assert one('file has vanished: "/s/d/x"').cls.value == "vanished"
    assert one("could not make way for new regular file: -dash").path == b"-dash"
    # An implied parent (not an entry) and a name that two readings fit: not mapped.
    assert one('rsync: [sender] link_stat "/s/elsewhere" failed: '
               "No such file or directory (2)").path is None
    two = one('rsync: [receiver] rename "/t/q" -> "r": File exists (17)')
    assert two.path is None and "not mapped" in two.reason


def _rsyncs_of_a_batch() -> list[int]:
    """Pids of the rsyncs (sender and receiver) a local slot runs for a batch now."""
    return [pid for pid in processes.matching(b"--log-file-format=fleetsync:")
            if (argv := processes.argv(pid) or [b""]) and os.path.basename(argv[0]) == b"rsync"
            and any(a.startswith(b"--files-from") for a in argv)]


def test_files_and_a_directory_deleted_while_their_batch_runs_end_0_named_vanished(tmp_path):
    """The batch's rsync is stopped (SIGSTOP) while it copies a large first file at a
    low --bwlimit; the entries after it are deleted, then rsync goes on. Whether rsync
    had listed them already ("file has vanished") or not (link_stat ENOENT), they
    vanished: the run ends 0 and names them."""
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    src.mkdir()
    (src / "a-big").write_bytes(os.urandom(8 << 20))
    tree(src, ["z-small", "zdir/x", "zdir/y"])
    from .test_dispatch import walk_only
    walk_only(src, dest, ledger)                     # one batch: a-big first, then the rest
    p = popen(*run_args(src, dest, ledger, "--bwlimit", "1MiB"))
    stopped = []
    try:
        deadline = time.monotonic() + 240
        while not stopped and p.poll() is None and time.monotonic() < deadline:
            for pid in _rsyncs_of_a_batch():
                try:
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        if not stopped:
            pytest.skip("the batch's rsync ended before it could be stopped")
        for rel in ("z-small", "zdir/x", "zdir/y"):
            (src / rel).unlink()
        (src / "zdir").rmdir()
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()
    assert b"0 entries did not arrive" in out, out
    vanished = {bytes(x) for x, c in query(ledger, "SELECT path, class FROM missing_entries")
                if c == "vanished"}
    assert {b"z-small", b"zdir/x", b"zdir/y"} <= vanished, vanished
    assert (dest / "a-big").stat().st_size == 8 << 20


# -- issue 20, item 5: a refusal touches nothing -------------------------------------

def _untouched(ledger) -> tuple:
    """What a refused command must leave as it was: the ledger's bytes (its journal
    mode is in them: header bytes 18-19 are 1 for a rollback journal, 2 for WAL), and
    which of its -wal, -shm, -journal and .lock files exist."""
    import hashlib
    with open(ledger, "rb") as f:
        data = f.read()
    return (hashlib.sha256(data).hexdigest(), data[18:20],
            tuple(os.path.exists(f"{ledger}{s}") for s in ("-wal", "-shm", "-journal", ".lock")))


def _rollback_journal(ledger) -> None:
    """The ledger in rollback-journal mode, as an archive copy or another tool leaves
    it, and no lock file beside it (so a refused run that makes one is seen)."""
    con = sqlite3.connect(ledger)
    assert con.execute("PRAGMA journal_mode = DELETE").fetchone() == ("delete",)
    con.close()
    if os.path.exists(f"{ledger}.lock"):
        os.unlink(f"{ledger}.lock")


def _refused(r, says: str) -> None:
    assert says in error_line(r)


def test_a_refused_run_or_command_leaves_the_ledger_byte_for_byte(tmp_path):
    """Issue 20, item 5: each refusal that comes once the ledger is known is decided
    by reading alone: the file keeps its bytes and its rollback journal, and no -wal,
    -shm or lock file is left beside it."""
    src, dest, ledger = tmp_path / "src", tmp_path / "x" / "dest", tmp_path / "l.db"
    tree(src, ["a/f1", "b/g", "top"])
    dest.parent.mkdir()
    other = tmp_path / "other"
    tree(other)
    assert fleetsync(*run_args(src, dest, ledger)).returncode == 0
    _rollback_journal(ledger)
    before = _untouched(ledger)
    assert before[1] == b"\x01\x01" and before[2] == (False,) * 4
    refusals = [
        (run_args(other, dest, ledger), "belongs to another migration"),
        (run_args(src, tmp_path / "elsewhere", ledger), "belongs to another migration"),
        (run_args(other, dest, ledger, "--rescan", "--delete-dry-run"),
         "belongs to another migration"),
    ]
    for args, says in refusals:
        _refused(fleetsync(*args), says)
        assert _untouched(ledger) == before, args
    # --delete with a top-level entry of the last walk missing from SRC.
    for f in (src / "b").iterdir():
        f.unlink()
    (src / "b").rmdir()
    _refused(fleetsync(*run_args(src, dest, ledger, "--delete")), "--delete refused")
    assert _untouched(ledger) == before
    # retry of a batch the ledger does not have; verify without its inventory.
    _refused(fleetsync("retry", "--ledger", str(ledger), "--task", "99"), "no batch 99")
    assert _untouched(ledger) == before
    _refused(fleetsync("verify", "--ledger", str(ledger), "--inventory",
                       str(tmp_path / "gone.ini")), "gone.ini")
    assert _untouched(ledger) == before
    # A refusal that only the hosts' preflight can make (DEST's parent is gone) comes
    # once the run has begun and recorded itself: the ledger is still left in
    # rollback-journal mode, with no -wal or -shm.
    import shutil
    shutil.rmtree(tmp_path / "x")
    _refused(fleetsync(*run_args(src, dest, ledger)), "no host can run the migration")
    after = _untouched(ledger)
    assert after[1] == b"\x01\x01" and after[2][:3] == (False,) * 3, after


def test_a_ledger_of_a_newer_fleetsync_is_refused_changing_nothing(tmp_path):
    from fleetsync.ledger.schema import SCHEMA_VERSION
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    tree(src)
    assert fleetsync(*run_args(src, dest, ledger)).returncode == 0
    con = sqlite3.connect(ledger)
    con.execute("UPDATE migration SET schema_version = ?", (SCHEMA_VERSION + 1,))
    con.commit()
    con.close()
    _rollback_journal(ledger)
    before = _untouched(ledger)
    for args in (run_args(src, dest, ledger), ("retry", "--ledger", str(ledger), "--failed"),
                 ("verify", "--ledger", str(ledger))):
        _refused(fleetsync(*args), f"schema {SCHEMA_VERSION + 1}")
        assert _untouched(ledger) == before, args


def test_a_refused_run_leaves_the_ledger_readable_by_a_read_only_auditor(nobody):
    """Issue 20, item 5: the ledger in a directory nobody may write (0555): an auditor
    as another user reads it with `fleetsync status` and sqlite3 after a run was
    refused on it (a ledger switched to WAL would need a -shm it cannot make)."""
    import subprocess
    case = os.path.join(nobody.base, "case-auditor")
    src, other, ledger = (os.path.join(case, n) for n in ("src", "other", "l.db"))
    for d in (src, other):
        os.makedirs(d)
        with open(os.path.join(d, "f"), "w") as f:
            f.write(d)
    try:
        assert fleetsync(*run_args(src, os.path.join(case, "dest"), ledger)).returncode == 0
        _rollback_journal(ledger)
        before = _untouched(ledger)
        _refused(fleetsync(*run_args(other, os.path.join(case, "dest"), ledger)),
                 "belongs to another migration")
        assert _untouched(ledger) == before
        os.chmod(case, 0o555)
        r = nobody.fleetsync("status", "--ledger", ledger)
        assert r.returncode == 0, r.stderr.decode()
        assert b"1 of 1 batches succeeded" in r.stdout or b"batches" in r.stdout, r.stdout
        r = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             os.path.join(nobody.venv, "bin", "python"), "-c",
             "import sqlite3, sys; c = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True);"
             " print(c.execute('SELECT count(*) FROM batches').fetchone()[0])", ledger],
            capture_output=True, timeout=60)
        assert r.returncode == 0 and r.stdout.strip() == b"1", r.stderr.decode()
        assert _untouched(ledger) == before
    finally:
        os.chmod(case, 0o755)


def test_ansible_that_cannot_start_says_why_in_the_error_line(tmp_path):
    """ansible-playbook failing before any host runs (here: no writable /dev/shm, as
    in a container or chroot without one) names its reason in the run's one error
    line and the log, not only "failed rc=1". A private mount namespace gives this run
    a read-only /dev/shm."""
    import subprocess
    import sys

    from .support import REPO, error_line, private_mounts, query
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    tree(src)
    script = 'mount -t tmpfs -o ro tmpfs /dev/shm && exec "$@"'
    r = subprocess.run([*private_mounts(script, "/dev/shm"), sys.executable, "-m",
                        "fleetsync.controller.cli", *run_args(src, dest, ledger)],
                       cwd=REPO, capture_output=True, timeout=300)
    line = error_line(r)
    assert "no host can run the migration" in line and "/dev/shm" in line, line
    assert "\x1b" not in line
    assert any("/dev/shm" in m for (m,) in query(ledger, "SELECT message FROM log"))
