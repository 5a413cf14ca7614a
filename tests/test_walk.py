"""The walk on real trees into real ledgers: every entry once, limits kept, kill -9 safe."""
from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import time

import pytest

import fleetsync.controller.producer as producer_module
from fleetsync.controller.walk import Walk
from fleetsync.controller.producer import Limits

from .support import REPO, query

# A walk in its own process, so that a test can kill it with -9 at any instant.
WALK_CHILD = """
import sys
import fleetsync.controller.producer as producer_module
from fleetsync.controller.walk import Walk
from fleetsync.controller.producer import Limits
ledger, src, count, entries = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if sys.argv[5] == "threads":      # every stat counts as slow: the threaded walk
    producer_module.SLOW_CALL = -1.0
walk = Walk(ledger, src, count, Limits(entries=entries), rescan=sys.argv[6] == "rescan")
walk.start()
print("started", flush=True)
sys.exit(0 if walk.join() else 1)
"""


# ---------------------------------------------------------------- trees

def touch(path: bytes, size: int = 0) -> None:
    with open(path, "wb") as f:
        f.write(b"x" * size)


def make_odd_tree(root: bytes, outside: bytes) -> None:
    """Every kind of entry and name the walk must carry, and symlinks it must not follow."""
    os.makedirs(root)
    for i, name in enumerate([b"new\nline", b"tab\there", b"\xff\xfe", b"-leading-dash",
                              b"--rsync-option", b"with space", b" leading space",
                              b"trailing space ", b"x" * 255]):
        touch(os.path.join(root, name), i)
    long_dir = os.path.join(root, b"y" * 255)
    os.mkdir(long_dir)
    touch(os.path.join(long_dir, b"z" * 255), 3)
    deep = root
    for i in range(40):
        deep = os.path.join(deep, b"d%02d" % i)
    os.makedirs(deep)
    touch(os.path.join(deep, b"bottom"), 6)
    os.makedirs(os.path.join(root, b"empty", b"nested-empty"))
    os.makedirs(os.path.join(root, b"dir\nwith\xffodd name"))
    touch(os.path.join(root, b"dir\nwith\xffodd name", b"inner"), 5)
    os.makedirs(os.path.join(root, b"target", b"sub"))
    touch(os.path.join(root, b"target", b"sub", b"file"), 4)
    os.symlink(b"target", os.path.join(root, b"link-to-dir"))
    os.symlink(os.path.join(root, b"target"), os.path.join(root, b"absolute-link-to-dir"))
    os.symlink(b".", os.path.join(root, b"link-to-self"))
    os.symlink(outside, os.path.join(root, b"link-outside"))
    os.symlink(b"does/not/exist", os.path.join(root, b"dangling"))
    os.mkfifo(os.path.join(root, b"fifo"))
    os.makedirs(outside)
    touch(os.path.join(outside, b"not-in-the-tree"))


def make_wide_tree(root: bytes, dirs: int, files: int, fanout: int = 10) -> None:
    """`dirs` directories (fanout per level), `files` files in each."""
    os.makedirs(root)
    made = [root]
    for i in range(dirs):
        parent = made[i // fanout]
        d = os.path.join(parent, b"d%d" % i)
        os.mkdir(d)
        made.append(d)
    for d in made[1:]:
        for j in range(files):
            touch(os.path.join(d, b"f%d" % j), j % 7)


def expected(root: bytes) -> dict[bytes, tuple[int, int]]:
    """What the walk must list: every entry under root (root as b'.') -> (is_dir, size).
    os.walk does not descend symlinks; lstat says what each entry itself is."""
    out = {b".": (1, 0)}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(d, name)
            st = os.lstat(path)
            is_dir = stat.S_ISDIR(st.st_mode)
            out[os.path.relpath(path, root)] = (1, 0) if is_dir else (0, st.st_size)
    return out


# ---------------------------------------------------------------- ledgers

def run_walk(ledger: str, src: bytes, producers: int = 2, limits: Limits = Limits()) -> None:
    walk = Walk(ledger, os.fsdecode(src), producers, limits)
    walk.start()
    assert walk.join(timeout=120), "the walk did not complete"



def listed(ledger: str) -> dict[bytes, tuple[int, int]]:
    """Every entry in batch_files, checking that none is there twice."""
    rows = query(ledger, "SELECT path, is_dir, size FROM batch_files")
    paths = [bytes(p) for p, _, _ in rows]
    dups = {p for p in paths if paths.count(p) > 1} if len(set(paths)) != len(paths) else set()
    assert not dups, f"listed more than once: {sorted(dups)[:10]}"
    return {bytes(p): (d, s) for p, d, s in rows}


def assert_counts_match(ledger: str) -> None:
    """Each batch's counts, and the batch_counts triggers, agree with a recount."""
    bad = query(ledger, """
        SELECT b.task_id FROM batches b JOIN (
            SELECT task_id, sum(is_dir = 0) AS files, sum(is_dir) AS dirs,
                   sum(CASE WHEN is_dir THEN 0 ELSE size END) AS bytes
            FROM batch_files GROUP BY task_id) r USING (task_id)
        WHERE b.file_count != r.files OR b.directory_count != r.dirs
              OR b.estimated_bytes != r.bytes""")
    assert bad == []
    assert query(ledger, "SELECT count(*) FROM batches WHERE task_id NOT IN "
                         "(SELECT task_id FROM batch_files)") == [(0,)]
    recount = query(ledger, "SELECT state, count(*), sum(file_count), sum(directory_count), "
                            "sum(estimated_bytes) FROM batches GROUP BY state")
    kept = query(ledger, "SELECT state, batches, files, directories, bytes FROM batch_counts "
                         "WHERE batches != 0")
    assert sorted(kept) == sorted(recount)


def assert_walk_complete(ledger: str, src: bytes) -> None:
    assert listed(ledger) == expected(src)
    assert query(ledger, "SELECT count(*) FROM walk_dirs WHERE state != 'done'") == [(0,)]
    assert query(ledger, "SELECT walk_done FROM migration") == [(1,)]
    assert_counts_match(ledger)


# ---------------------------------------------------------------- tests

@pytest.fixture(params=["one thread", "threads"])
def mode(request, monkeypatch):
    """Each walk test runs twice: as on a local disk (one thread per producer), and
    as on a slow mount, where every stat counts as a round trip so the producers
    start their reader and stat threads after the first SLOW_SAMPLE entries
    (a walk on FUSE is not needed for that: the threads are the same)."""
    if request.param == "threads":
        monkeypatch.setattr(producer_module, "SLOW_CALL", -1.0)
        monkeypatch.setattr(producer_module, "SLOW_SAMPLE", 4)
    return request.param


def test_every_entry_is_listed_once_and_symlinks_are_not_followed(tmp_path, make_ledger,
                                                                   mode):
    src = os.fsencode(tmp_path / "src")
    make_odd_tree(src, os.fsencode(tmp_path / "outside"))
    ledger = make_ledger(src)
    run_walk(ledger, src, producers=2)
    got = listed(ledger)
    assert got == expected(src)
    for link in (b"link-to-dir", b"absolute-link-to-dir", b"link-to-self", b"link-outside"):
        assert got[link][0] == 0, f"{link!r} is a symlink, not a directory"
        assert not any(p.startswith(link + b"/") for p in got), f"{link!r} was followed"
    assert b"/".join(b"d%02d" % i for i in range(40)) + b"/bottom" in got
    assert query(ledger, "SELECT count(*) FROM log") == [(0,)]
    assert_walk_complete(ledger, src)


def test_batch_limits_are_kept_and_a_huge_file_rides_alone(tmp_path, make_ledger, mode):
    src = os.fsencode(tmp_path / "src")
    make_wide_tree(src, dirs=30, files=25)
    for i in range(20):
        touch(os.path.join(src, b"d3", b"n" * 120 + b"%d" % i), 1000 + i)
    with open(os.path.join(src, b"d7", b"huge"), "wb") as f:
        f.truncate(1 << 30)    # sparse: a GiB on paper, nothing on disk
    limits = Limits(entries=7, bytes=10_000, name_bytes=400)
    ledger = make_ledger(src)
    run_walk(ledger, src, producers=2, limits=limits)
    assert_walk_complete(ledger, src)
    sizes: dict[int, list[tuple[int, int]]] = {}
    for task_id, path, size in query(ledger, "SELECT task_id, path, size FROM batch_files"):
        sizes.setdefault(task_id, []).append((len(path) + 1, size))
    for task_id, entries in sizes.items():
        assert len(entries) <= limits.entries
        if len(entries) > 1:
            assert sum(s for _, s in entries) <= limits.bytes, task_id
            assert sum(n for n, _ in entries) <= limits.name_bytes, task_id
    [(huge_batch,)] = query(ledger, "SELECT task_id FROM batch_files WHERE path = ?",
                            b"d7/huge")
    assert len(sizes[huge_batch]) == 1


@pytest.mark.parametrize("producers", [1, 2, 4])
def test_any_number_of_producers_lists_the_same_entries(tmp_path, make_ledger, producers,
                                                         mode):
    src = os.fsencode(tmp_path / "src")
    make_wide_tree(src, dirs=120, files=15, fanout=5)
    make_odd_tree(os.path.join(src, b"odd"), os.fsencode(tmp_path / "outside"))
    ledger = make_ledger(src)
    run_walk(ledger, src, producers=producers, limits=Limits(entries=40))
    assert_walk_complete(ledger, src)
    assert query(ledger, "SELECT count(*), sum(state = 'done') FROM producers") == [
        (producers, producers)]


def test_a_finished_walk_run_again_adds_nothing(tmp_path, make_ledger):
    src = os.fsencode(tmp_path / "src")
    make_wide_tree(src, dirs=10, files=10)
    ledger = make_ledger(src)
    run_walk(ledger, src)
    before = query(ledger, "SELECT count(*) FROM batches")
    run_walk(ledger, src)
    assert query(ledger, "SELECT count(*) FROM batches") == before
    assert_walk_complete(ledger, src)


def _walk_as_nobody(ledger: str, src: bytes) -> int:
    """Run the walk in a child that gave up root, so permissions apply to it."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            walk = Walk(ledger, os.fsdecode(src), 2, Limits())
            walk.start()
            os._exit(0 if walk.join(timeout=60) else 1)
        finally:
            os._exit(2)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_an_unreadable_directory_is_logged_and_the_walk_goes_on(tmp_path, make_ledger,
                                                                 open_to_nobody, mode):
    # Root reads any directory: the walk runs as nobody (uid 65534) in a child instead.
    src = os.fsencode(tmp_path / "src")
    make_wide_tree(src, dirs=12, files=5, fanout=4)
    locked = os.path.join(src, b"d1", b"locked\nname")
    os.mkdir(locked)
    touch(os.path.join(locked, b"secret"))
    os.chmod(locked, 0)
    ledger = make_ledger(src)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(ledger + suffix):
            os.chmod(ledger + suffix, 0o666)
    if os.geteuid() == 0:
        assert _walk_as_nobody(ledger, src) == 0
    else:
        run_walk(ledger, src)
    want = {p: v for p, v in expected(src).items() if not p.startswith(b"d1/locked\nname/")}
    assert listed(ledger) == want            # its own entry is there, the rest goes on
    [(level, message)] = query(ledger, "SELECT level, message FROM log")
    assert level == "error"
    assert message == f"cannot list {os.fsdecode(src)}/d1/locked\\x0aname: Permission denied"


# ---------------------------------------------------------------- kill -9

def start_child_walk(ledger: str, src: bytes, producers: int, entries: int,
                     mode: str = "one thread", rescan: bool = False) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", WALK_CHILD, ledger, os.fsdecode(src), str(producers),
         str(entries), mode, "rescan" if rescan else "full"], cwd=REPO,
        stdout=subprocess.PIPE, start_new_session=True)
    assert child.stdout.readline() == b"started\n"
    return child


def _group_alive(pgid: int) -> bool:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def kill_controller(child: subprocess.Popen) -> None:
    """kill -9 the walk's parent; its producers die with it (PDEATHSIG). Wait for them.
    A walk that ended first (a fast machine walks these trees in ~0.1 s) is left as it
    ended: its pid, reaped by poll(), may no longer be signalled (ESRCH)."""
    if child.poll() is None:      # not reaped: a zombie still takes the signal
        os.kill(child.pid, signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 10
    while _group_alive(child.pid):
        assert time.monotonic() < deadline, "producers outlived their controller"
        time.sleep(0.005)


def test_kill_9_at_random_instants_then_resume(tmp_path, make_ledger, mode):
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    print(f"random seed {seed}")
    src = os.fsencode(tmp_path / "src")
    make_wide_tree(src, dirs=300, files=80)
    make_odd_tree(os.path.join(src, b"odd"), os.fsencode(tmp_path / "outside"))
    ledger = make_ledger(src)
    progress = []
    for i in range(6):
        child = start_child_walk(ledger, src, producers=rnd.choice([1, 2, 3]), entries=50,
                                 mode=mode)
        # Every other kill waits for the walk to have enqueued more than before, so
        # that kills land mid-walk on a quiet machine (which walks this tree in
        # ~0.1 s) and on a busy one alike; the others land at a random instant.
        if i % 2:
            before = progress[-1] if progress else 0
            while child.poll() is None and query(
                    ledger, "SELECT count(*) FROM batch_files")[0][0] <= before:
                time.sleep(0.001)
        time.sleep(rnd.uniform(0, 0.05))
        kill_controller(child)
        progress.append(query(ledger, "SELECT count(*) FROM batch_files")[0][0])
        listed(ledger)       # never a duplicate, even between kills
    run_walk(ledger, src, producers=2, limits=Limits(entries=50))
    total = len(expected(src))
    assert any(0 < n < total for n in progress), f"no kill landed mid-walk: {progress}"
    assert_walk_complete(ledger, src)


def test_a_flat_directory_cut_mid_way_resumes_after_kill_9(tmp_path, make_ledger, mode):
    src = os.fsencode(tmp_path / "src")
    os.makedirs(src)
    for i in range(5000):
        touch(os.path.join(src, b"file-%05d" % i))
    for attempt in range(10):
        ledger = make_ledger(src, f"ledger{attempt}.db")
        child = start_child_walk(ledger, src, producers=1, entries=100, mode=mode)
        while True:     # kill as soon as the root directory is partly enqueued
            rows = query(ledger, "SELECT state, offset FROM walk_dirs WHERE path = x''")
            if rows and rows[0][1] > 0 or child.poll() is not None:
                break
        kill_controller(child)
        [(state, offset)] = query(ledger, "SELECT state, offset FROM walk_dirs WHERE path = x''")
        if state != "done":
            break
    assert state != "done" and 0 < offset < 5001, "the walk always finished before the kill"
    run_walk(ledger, src, producers=1, limits=Limits(entries=100))
    assert_walk_complete(ledger, src)
    assert query(ledger, "SELECT max(file_count + directory_count) FROM batches") == [(100,)]


def test_a_crashed_producer_hands_its_directories_to_the_others(tmp_path, make_ledger,
                                                               monkeypatch):
    src = os.fsencode(tmp_path / "src")
    make_wide_tree(src, dirs=40, files=20, fanout=4)
    real_list_dir = producer_module.Producer.list_dir

    crashed = tmp_path / "crashed"

    def list_dir(self, d):        # a bug met once, by whichever producer lists first
        if not crashed.exists():
            crashed.touch()
            raise RuntimeError("injected bug")
        return real_list_dir(self, d)

    monkeypatch.setattr(producer_module.Producer, "list_dir", list_dir)
    ledger = make_ledger(src)
    walk = Walk(ledger, os.fsdecode(src), 2, Limits(entries=30))
    walk.start()
    assert walk.join(timeout=60) is False            # a producer failed: not a clean walk
    codes = [p.exitcode for p in walk.procs]
    assert sorted(codes) == [0, 3]
    assert listed(ledger) == expected(src)           # yet the other one listed it all, once
    assert query(ledger, "SELECT count(*) FROM walk_dirs WHERE state != 'done'") == [(0,)]
    assert query(ledger, "SELECT message FROM log") == [
        (f"producer {codes.index(3) + 1} crashed: RuntimeError: injected bug",)]


def test_a_producer_killed_from_outside_is_replaced(tmp_path, make_ledger, monkeypatch):
    src = os.fsencode(tmp_path / "src")
    make_wide_tree(src, dirs=40, files=20, fanout=4)
    stuck = tmp_path / "stuck"
    real_list_dir = producer_module.Producer.list_dir

    def list_dir(self, d):        # the producer hangs once, holding its claimed directories
        if not stuck.exists():
            stuck.touch()
            time.sleep(3600)
        return real_list_dir(self, d)

    monkeypatch.setattr(producer_module.Producer, "list_dir", list_dir)
    ledger = make_ledger(src)
    walk = Walk(ledger, os.fsdecode(src), 1, Limits(entries=30))
    walk.start()
    deadline = time.time() + 30
    while not stuck.exists() and time.time() < deadline:
        time.sleep(0.01)
    os.kill(walk.procs[0].pid, signal.SIGKILL)     # the OOM killer, say: nothing released
    while time.time() < deadline + 30:           # as the dispatcher does
        walk.watch()
        if not walk.running():
            break
        time.sleep(0.05)
    assert walk.join(timeout=60)
    assert walk.restarts == 1
    assert listed(ledger) == expected(src)
    assert query(ledger, "SELECT message FROM log") == [
        ("producer 1 ended with exit -9; a new one lists its directories again",)]


def test_only_batches_with_a_sparse_file_are_marked_sparse(tmp_path, make_ledger):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    for i in range(3):
        (src / "a" / f"plain{i}").write_bytes(b"x" * 5000)
    with open(src / "b" / "holes", "wb") as f:
        f.seek(8 << 20)
        f.write(b"end")
    ledger = make_ledger(os.fsencode(src))
    run_walk(ledger, os.fsencode(src), 1, Limits(entries=1))
    marked = query(ledger, "SELECT DISTINCT f.path FROM batches b JOIN batch_files f "
                   "USING (task_id) WHERE b.sparse = 1 AND f.is_dir = 0")
    assert (b"b/holes",) in marked
    assert not any(p.startswith(b"a/plain") for (p,) in marked)


# ---------------------------------------------------------------- the cutover pass (--rescan)

def queued_since(ledger: str, task_id: int) -> list[bytes]:
    return sorted(bytes(p) for (p,) in query(
        ledger, "SELECT path FROM batch_files WHERE task_id > ?", task_id)) + sorted(
        bytes(p) for (p,) in query(ledger, "SELECT path FROM hardlinks WHERE task_id IS NULL"))


def last_task(ledger: str) -> int:
    return query(ledger, "SELECT coalesce(max(task_id), 0) FROM batches")[0][0]


def rescan(ledger: str, src: bytes, producers: int = 2, limits: Limits = Limits()) -> None:
    walk = Walk(ledger, os.fsdecode(src), producers, limits, rescan=True)
    walk.start()
    assert walk.join(timeout=120), "the rescan did not complete"


def make_changes(src: bytes) -> set[bytes]:
    """The changes a cutover must carry, none of them visible to size alone; returns
    the paths that must be queued (the entries and the directories that hold them)."""
    st = os.lstat(os.path.join(src, b"d1/f2"))
    # mtime set back, same size
    os.utime(os.path.join(src, b"d1/f2"), ns=(st.st_atime_ns, st.st_mtime_ns - 3600 * 10**9))
    # replaced by rename: same size, same mtime, another inode
    old = os.path.join(src, b"d2/f3")
    st = os.lstat(old)
    tmp = os.path.join(src, b"d2/.f3.tmp")
    touch(tmp, st.st_size)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(tmp, old)
    os.mkdir(os.path.join(src, b"d3/new-empty"))                     # a new empty directory
    os.unlink(os.path.join(src, b"d4/f1"))                           # a deleted file
    os.chmod(os.path.join(src, b"d5/f4"), 0o600)                     # a mode change
    os.chmod(os.path.join(src, b"d6"), 0o700)                        # ...of a directory
    os.chmod(os.path.join(src, b"odd", b"new\nline"), 0o640)         # a hostile name
    return {b"d1/f2", b"d1", b"d2/f3", b"d2", b"d3/new-empty", b"d3", b"d4", b"d5/f4",
            b"d5", b"d6", b"odd/new\nline", b"odd"}


def test_a_rescan_queues_exactly_what_changed_without_trusting_the_clock(
        tmp_path, make_ledger, mode):
    # No sleep between the walks: a ctime check with its 1 s margin would queue every
    # entry; the fingerprints queue the changed ones and their directories only.
    src = os.fsencode(tmp_path / "src")
    make_wide_tree(src, dirs=12, files=6, fanout=100)
    make_odd_tree(os.path.join(src, b"odd"), os.fsencode(tmp_path / "outside"))
    ledger = make_ledger(src)
    run_walk(ledger, src)
    before = last_task(ledger)
    want = make_changes(src)
    rescan(ledger, src)
    got = queued_since(ledger, before)
    assert sorted(set(got)) == sorted(want)
    files = [p for p in got if not query(ledger, "SELECT 1 FROM batch_files WHERE path = ? "
                                         "AND is_dir = 1", p)]
    assert len(files) == len(set(files)), "a file queued twice"
    assert query(ledger, "SELECT walk_done FROM migration") == [(1,)]
    assert query(ledger, "SELECT count(*) FROM walk_prints WHERE old = 1") == [(0,)]
    assert_counts_match(ledger)
    # and a second rescan of an unchanged tree queues nothing
    before = last_task(ledger)
    rescan(ledger, src)
    assert queued_since(ledger, before) == []


def test_a_rescan_of_a_deleted_directory_lists_nothing_of_it(tmp_path, make_ledger):
    src = os.fsencode(tmp_path / "src")
    make_wide_tree(src, dirs=6, files=3, fanout=3)
    ledger = make_ledger(src)
    run_walk(ledger, src)
    before = last_task(ledger)
    for name in os.listdir(os.path.join(src, b"d0", b"d3")):
        os.unlink(os.path.join(src, b"d0", b"d3", name))
    os.rmdir(os.path.join(src, b"d0", b"d3"))
    # One producer: with two, the one listing SRC may queue d0 (its time changed) while
    # the other lists d0, finds d3 gone and queues d0 again (Producer._listed sees only
    # its own open batch): twice is harmless to the copy, but "once" would then
    # depend on which producer got there first.
    rescan(ledger, src, producers=1)
    assert queued_since(ledger, before) == [b"d0"]                 # its parent, once
    assert query(ledger, "SELECT count(*) FROM log") == [(0,)]      # no "cannot list"
    assert query(ledger, "SELECT count(*) FROM walk_prints WHERE path = ?",
                 b"d0/d3") == [(0,)]


def test_a_rescan_killed_9_resumes_without_losing_a_change(tmp_path, make_ledger, mode):
    src = os.fsencode(tmp_path / "src")
    os.makedirs(os.path.join(src, b"flat"))
    for i in range(6000):
        touch(os.path.join(src, b"flat", b"f%05d" % i), 3)
    make_wide_tree(os.path.join(src, b"tree"), dirs=40, files=20, fanout=4)
    ledger = make_ledger(src)
    run_walk(ledger, src, limits=Limits(entries=50))
    before = last_task(ledger)
    changed = {b"flat/f%05d" % i for i in range(0, 6000, 250)}
    for p in changed:
        touch(os.path.join(src, p), 4)
    changed |= {b"flat"}
    for attempt in range(5):
        child = start_child_walk(ledger, src, producers=2, entries=50, mode=mode, rescan=True)
        time.sleep(0.02 * attempt)
        kill_controller(child)
    rescan(ledger, src, limits=Limits(entries=50))
    got = queued_since(ledger, before)
    assert set(got) == changed
    assert len([p for p in got if p != b"flat"]) == len(changed) - 1, "a file queued twice"


def test_a_cutover_with_delete_makes_dest_equal_to_src(tmp_path):
    """End to end: a first copy, the changes, `run --rescan --delete`: DEST is SRC."""
    from .support import fleetsync, snapshot
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    make_wide_tree(os.fsencode(src), dirs=12, files=6, fanout=100)
    make_odd_tree(os.fsencode(src / "odd"), os.fsencode(tmp_path / "outside"))
    os.unlink(src / "odd" / "link-outside")     # not to compare a tree outside SRC
    args = ["run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger),
            "--no-api", "--batch-files", "20"]
    r = fleetsync(*args)
    assert r.returncode == 0, r.stderr.decode()
    assert snapshot(os.fsencode(src)) == snapshot(os.fsencode(dest))
    make_changes(os.fsencode(src))
    for name in os.listdir(src / "d7"):          # a deleted directory, too
        os.unlink(src / "d7" / name)
    os.rmdir(src / "d7")
    # d7 is a top-level entry: the --delete guard wants its removal named.
    r = fleetsync(*args, "--rescan", "--delete", "--allow-delete", "d7", "--max-delete", "100%")
    assert r.returncode == 0, r.stderr.decode() + r.stdout.decode()
    assert snapshot(os.fsencode(src)) == snapshot(os.fsencode(dest))


def test_the_walks_inline_fingerprint_is_walkqueue_fingerprint(tmp_path, make_ledger, mode):
    """The hot loop fingerprints a plain file inline (producer._list_here) and every
    other entry through walkqueue.fingerprint: the two must agree, or a rescan would
    queue every plain file (or miss changes). Both paths are in this directory."""
    from array import array
    from fleetsync.ledger.walkqueue import fingerprint
    src = os.fsencode(tmp_path / "src")
    os.makedirs(os.path.join(src, b"sub"))
    for i in range(20):
        touch(os.path.join(src, b"f%d" % i), i)                  # plain: inline
    os.link(os.path.join(src, b"f1"), os.path.join(src, b"hard"))  # 2 links: take()
    os.symlink(b"f2", os.path.join(src, b"link"))                  # a symlink: take()
    ledger = make_ledger(src)
    run_walk(ledger, src)
    stored = array("q")
    for (chunk,) in query(ledger, "SELECT prints FROM walk_prints WHERE path = x'' "
                                  "AND old = 0 ORDER BY seq"):
        stored.frombytes(bytes(chunk))
    want = {fingerprint(name, os.lstat(os.path.join(src, name)))
            for name in os.listdir(src)} | {fingerprint(b".", os.lstat(src))}   # SRC's own
    assert len(want) == 24 and set(stored) == want      # 20 files, hard, link, sub, SRC
