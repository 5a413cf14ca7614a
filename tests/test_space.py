"""A ledger whose disk fills (issue 27, item 1): the real `fleetsync run` on a real
small filesystem (a tmpfs of 1 MiB, or one filled during the copy), one line and
exit 4, no process of the run left, and the resume after space is freed exact.
Needs root (mount); skipped with the reason otherwise."""
from __future__ import annotations

import errno
import os
import sqlite3
import stat
import subprocess

import pytest

from fleetsync.api import make_app
from fleetsync.controller import processes
from fleetsync.ledger import batches, db, space

from .support import eventually, fleetsync, free_port, popen, query, snapshot


def _tree(root, dirs: int, files: int, size: int) -> None:
    for d in range(dirs):
        os.makedirs(os.path.join(root, f"d{d}"))
        for i in range(files):
            with open(os.path.join(root, f"d{d}", f"f{i}"), "wb") as f:
                f.write(bytes([i % 251]) * size)


def _fill(folder: str) -> str:
    """A file that takes every free byte of folder's filesystem."""
    path = os.path.join(folder, "filler")
    with open(path, "wb", buffering=0) as f:
        try:
            while f.write(b"\0" * 4096):
                pass
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return path


def _stopped_in_one_line(out: str, err: str, mount: str) -> None:
    """Exit 4's one line names the filesystem; no traceback from any process."""
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("fleetsync: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert f"the ledger's filesystem {mount} is full" in errors[0]
    assert "run again to resume" in errors[0]
    assert "Traceback" not in err + out and "OperationalError" not in err + out, err


def _nothing_left(ledger: str, pid: int) -> None:
    """No process of the run: its walkers (forks carrying its command line), its API,
    its ansible-playbook and ssh (the migration's marker on their command lines)."""
    (mig_id,), = query(ledger, "SELECT migration_id FROM migration")
    marks = (f"fleetsync:{mig_id}".encode(), ledger.encode())
    eventually(lambda: not processes.matching(*marks), "every process of the run to end")
    assert processes.stat(pid) is None


def _copied(ledger: str) -> bool:
    """A batch succeeded (False while the run is still making the ledger's tables)."""
    try:
        return bool(query(ledger, "SELECT 1 FROM attempts WHERE status = 'success'"))
    except sqlite3.OperationalError:
        return False


def _run(tmp_path, ledger: str, src, *extra: str) -> subprocess.Popen:
    return popen("run", "--src", str(src), "--dest", str(tmp_path / "dest"), "--ledger", ledger,
                 "--port", str(free_port()), *extra)


def test_a_1_mib_ledger_disk_stops_the_walk_in_one_line_and_the_resume_is_exact(
        tmp_path, small_fs):
    """The issue's case: 20,000 files, the ledger on 1 MiB. Warned at the start (the
    estimate from SRC's used inodes: SRC has a filesystem of its own here), stopped in
    one line, exit 4; exact once freed, without the warning."""
    src = os.path.join(small_fs("128m"), "src")      # a 4 KiB page a file
    _tree(src, 100, 200, 1)
    mount = small_fs("1m")
    ledger = os.path.join(mount, "l.db")
    p = _run(tmp_path, ledger, src)
    out, err = (s.decode() for s in p.communicate(timeout=300))
    assert p.returncode == 4, err
    _stopped_in_one_line(out, err, mount)
    assert f"warning: the ledger's filesystem {mount} has" in err
    _nothing_left(ledger, p.pid)
    # the API says it too, from the ledger as the run left it
    r = fleetsync("status", "--ledger", ledger)
    assert r.returncode == 0, r.stderr
    body = b"".join(make_app(ledger)({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics"},
                                     lambda *a: None)).decode()
    assert "fleetsync_ledger_space_short 1" in body

    subprocess.run(["mount", "-o", "remount,size=64m", mount], check=True)
    r = fleetsync("run", "--src", str(src), "--dest", str(tmp_path / "dest"),
                  "--ledger", ledger, "--no-api")
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert "warning: the ledger's filesystem" not in r.stderr.decode()
    assert snapshot(os.fsencode(src)) == snapshot(bytes(tmp_path / "dest"))


def test_a_ledger_disk_that_fills_during_the_copy_stops_ansible_and_resumes_exact(
        tmp_path, small_fs):
    """The disk fills once batches are being copied (a batch succeeded): the claims,
    the results and the heartbeats can no longer be written; ansible-playbook, its
    rsyncs and the API stop with the run, and the resume copies the rest."""
    src = tmp_path / "src"
    _tree(src, 20, 50, 20_000)
    mount = small_fs("16m")
    ledger = os.path.join(mount, "l.db")
    p = _run(tmp_path, ledger, src, "--batch-files", "20", "--bwlimit", "1M")   # ~20 s of copy
    eventually(lambda: _copied(ledger), "a batch copied", proc=p)
    filler = _fill(mount)
    out, err = (s.decode() for s in p.communicate(timeout=300))
    assert p.returncode == 4, err
    _stopped_in_one_line(out, err, mount)
    _nothing_left(ledger, p.pid)

    os.unlink(filler)
    r = fleetsync("run", "--src", str(src), "--dest", str(tmp_path / "dest"),
                  "--ledger", ledger, "--no-api")
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert snapshot(bytes(src)) == snapshot(bytes(tmp_path / "dest"))


def test_room_counts_the_walk_where_the_ledger_has_one(tmp_path, make_ledger, small_fs):
    """Entries: SRC's used inodes before a complete walk (SRC on a filesystem of its
    own, which nothing else changes meanwhile); the walk's count after it (SRC itself
    included); the need is what the ledger is expected to add to its size now."""
    src = os.path.join(small_fs("1m"), "src")
    _tree(src, 2, 3, 1)
    ledger = make_ledger(src)
    with db.connect(ledger, readonly=True) as conn, conn.begin():
        before = space.room(conn)
    st = os.statvfs(src)
    assert before.counted == "SRC's used inodes"
    assert before.entries == st.f_files - st.f_ffree
    r = fleetsync("scan", "--src", src, "--ledger", ledger)
    assert r.returncode == 0, r.stderr
    with db.connect(ledger, readonly=True) as conn, conn.begin():
        after = space.room(conn)
    assert (after.counted, after.entries) == ("the walk's count", 1 + 2 + 6)
    assert after.needed == max(0, 8 * after.per_entry - os.path.getsize(ledger))
    assert after.filesystem == space.mount_point(str(tmp_path)) and after.free > 0


def test_the_playbooks_outcome_names_exit_4_and_fails_the_play(tmp_path, small_fs):
    """migrate.yml's Outcome: fleetsync's one line, and what to do; ansible-playbook 2."""
    from .test_playbook import local_inventory, outcome, playbook
    src = os.path.join(small_fs("128m"), "src")
    _tree(src, 100, 200, 1)
    ledger = os.path.join(small_fs("1m"), "l.db")
    r = playbook(local_inventory(tmp_path), "-e", f"src={src}", "-e", f"dest={tmp_path / 'd'}",
                 "-e", f"fleetsync_ledger={ledger}", "-e", "fleetsync_no_api=true")
    assert r.returncode == 2, r.stdout[-3000:]
    said = outcome(r)
    assert said.startswith("fleetsync exit 4, could not go on: fleetsync: error: the ledger's "
                           f"filesystem {os.path.dirname(ledger)} is full"), said
    assert said.endswith("(fix the cause, then run the playbook again to resume)"), said


def _hostile_tree(root, dirs: int, files: int, size: int) -> None:
    """_tree, and in each directory a name with a newline, one that is not UTF-8, one
    that starts with a space, a symlink and an empty directory (each directory's
    entries sort around its files)."""
    _tree(root, dirs, files, size)
    for d in range(dirs):
        here = os.path.join(os.fsencode(root), b"d%d" % d)
        for name in (b"nl\nname", b"\xff\xfe", b" sp name"):
            with open(os.path.join(here, name), "wb") as f:
                f.write(b"h" * size)
        os.symlink(b"f0", os.path.join(here, b"link"))
        os.mkdir(os.path.join(here, b"empty"))


def _whole_at_dest(src: bytes, dest: bytes, path: bytes) -> bool:
    """The entry is at DEST with SRC's type; a regular file with SRC's size and mtime."""
    a = os.lstat(os.path.join(src, path))
    try:
        b = os.lstat(os.path.join(dest, path))
    except FileNotFoundError:
        return False
    if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode):
        return False
    return not stat.S_ISREG(a.st_mode) or (
        (a.st_size, int(a.st_mtime)) == (b.st_size, int(b.st_mtime)))


def _full_dest_run(tmp_path, mount: str, *extra: str, url: str | None = None):
    """DEST in mount (20 MiB), 50 MiB to copy, hostile names: (src, dest, ledger, run).
    url: DEST as the run is given it, when not the path (a daemon's module there)."""
    src = tmp_path / "src"
    _hostile_tree(src, 5, 100, 100 * 1024)
    dest = os.path.join(mount, "dest")
    ledger = str(tmp_path / "l.db")
    r = fleetsync("run", "--src", str(src), "--dest", url or dest, "--ledger", ledger,
                  "--no-api", *extra)
    assert r.returncode == 1, r.stderr.decode()[-3000:]
    return os.fsencode(src), os.fsencode(dest), ledger, r


@pytest.fixture
def daemon(tmp_path):
    """daemon(path) -> the rsync:// URL of a module at path, served by a real rsync
    daemon on a free port (a remote DEST), stopped afterwards."""
    started = []

    def serve(path: str) -> str:
        port = free_port()
        conf = tmp_path / "rsyncd.conf"
        conf.write_text(f"use chroot = false\nuid = root\ngid = root\n[mod]\n"
                        f"path = {path}\nread only = false\n")
        p = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}",
                              f"--port={port}", "--address=127.0.0.1"])
        started.append(p)
        url = f"rsync://127.0.0.1:{port}/mod/"
        eventually(lambda: subprocess.run(["rsync", url], capture_output=True).returncode == 0,
                   "the rsync daemon to answer", proc=p)
        return url

    yield serve
    for p in started:
        p.terminate()
        p.wait(timeout=30)


@pytest.mark.parametrize("remote", [False, True], ids=["path", "rsync-daemon"])
def test_a_full_dest_records_what_arrived_by_looking_at_dest(tmp_path, small_fs, daemon,
                                                             remote):
    """Issue 27, item 2: the entries of the failed batches that are at DEST whole are
    recorded as arrived (their checksums kept: only theirs), the others carry rsync's
    reason and the host, in missing_entries and in `fleetsync report`; the next copy
    sends the missing entries alone. DEST a path on the worker, or a remote one (an
    rsync daemon's module: the look goes through rsync's own connection)."""
    mount = small_fs("20m")
    url = daemon(mount) + "dest" if remote else None
    src, dest, ledger, _ = _full_dest_run(tmp_path, mount, "--max-retries", "0", url=url)
    (worker,), = query(ledger, "SELECT worker_id FROM workers")
    failed = [t for (t,) in query(ledger, "SELECT task_id FROM batches WHERE state = 'failed'")]
    assert failed
    listed = {bytes(p): (t, c) for p, t, c in query(
        ledger, "SELECT path, task_id, checksum FROM batch_files")}
    absent = {p for p in listed if not _whole_at_dest(src, dest, p)}
    arrived = set(listed) - absent
    # the disk filled inside a failed batch: some of its entries arrived, hostile ones too
    assert any(listed[p][0] in failed for p in arrived) and absent
    assert any(b"\n" in p for p in absent) and any(b"\n" in p for p in arrived)
    assert any(b"\xff" in p for p in absent) and any(b"\xff" in p for p in arrived)
    rows = query(ledger, "SELECT path, class, reason FROM missing_entries")
    assert {bytes(p) for p, _, _ in rows} == absent and len(rows) == len(absent)
    for _, cls, reason in rows:
        assert cls == "may_heal" and "No space left on device (28)" in reason, reason
        assert f"host {worker}, rsync exit 11" in reason, reason
    # checksums: every regular file that arrived, and no other
    summed = {p for p, (_, c) in listed.items() if c is not None}
    regular = {p for p in listed if stat.S_ISREG(os.lstat(os.path.join(src, p)).st_mode)}
    assert summed == arrived & regular
    # the report: a row per entry, the reason in it
    from .test_report import rows_of
    r = fleetsync("report", "--ledger", ledger)
    assert r.returncode == 0, r.stderr
    by_path = {row["bytes"]: row for row in rows_of(r.stdout.decode())}
    assert {p for p, row in by_path.items() if row["outcome"] != "arrived"} == absent
    assert all(by_path[p]["outcome"].startswith("not arrived: not at DEST when its batch "
                                                f"failed (host {worker}, rsync exit 11)")
               or by_path[p]["outcome"].startswith("not arrived: write failed on: ")
               for p in absent)
    assert all(by_path[p]["outcome"].endswith("No space left on device (28)")
               or by_path[p]["outcome"].endswith(f"(host {worker}, rsync exit 11)")
               for p in absent)
    # the next copy of a failed batch sends only its entries that are not at DEST
    assert fleetsync("retry", "--ledger", ledger, "--failed").returncode == 0
    with db.connect(ledger) as conn:
        again = {p for t in failed for p, _, _ in batches.entries(conn, t)}
    assert again == absent


def test_a_full_dest_is_named_in_the_summary_and_heals_after_retry_failed(
        tmp_path, small_fs):
    """The summary names rsync's reason and the host, and says what to do. A plain run
    again does not send a failed batch again (the decision: README, "DEST fills
    up"); freed, `retry --failed` and a run make the copy exact, every checksum in."""
    src, dest, ledger, r = _full_dest_run(tmp_path, small_fs("20m"))
    (worker,), = query(ledger, "SELECT worker_id FROM workers")
    (failed,), = query(ledger, "SELECT count(*) FROM batches WHERE state = 'failed'")
    said = [line for line in r.stdout.decode().splitlines() if "space at DEST" in line]
    assert failed >= 1 and len(said) == 1, r.stdout.decode()
    assert said[0].startswith(f"fleetsync: {failed} failed batches ran out of space at "
                              f"DEST (host {worker}: rsync: [receiver] write failed on "
                              f"\"{os.fsdecode(dest)}/"), said
    assert said[0].endswith(f"No space left on device (28)): {space.DEST_FULL_ADVICE}"), said

    subprocess.run(["mount", "-o", "remount,size=128m", os.path.dirname(dest)], check=True)
    again = fleetsync("run", "--src", os.fsdecode(src), "--dest", os.fsdecode(dest),
                      "--ledger", ledger, "--no-api")
    assert again.returncode == 1 and "space at DEST" in again.stdout.decode()
    assert fleetsync("retry", "--ledger", ledger, "--failed").returncode == 0
    r = fleetsync("run", "--src", os.fsdecode(src), "--dest", os.fsdecode(dest),
                  "--ledger", ledger, "--no-api")
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert "space at DEST" not in r.stdout.decode()
    assert snapshot(src) == snapshot(dest)
    assert query(ledger, "SELECT count(*) FROM missing_entries") == [(0,)]
    regular = query(ledger, "SELECT count(*), count(checksum) FROM batch_files WHERE type = "
                    "(SELECT type FROM batch_files WHERE path = CAST('d0/f0' AS BLOB))")
    assert regular[0][0] == 5 * 103 and regular[0][1] == regular[0][0]
