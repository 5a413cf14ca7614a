"""`fleetsync scan` on real trees (issue 22, item 3): its census equals what os.walk
and lstat say of the tree, a later `run` copies from its walk without walking SRC
again, `run --rescan` then catches what changed, and bad input is one line."""
from __future__ import annotations

import errno
import json
import multiprocessing.popen_fork  # noqa: F401  (imported before a child drops root)
import os
import stat
import sys
import traceback

from fleetsync.controller import cli, commands, scan_summary  # noqa: F401  (the same)
from fleetsync.ledger import census  # noqa: F401

from .support import error_line, fleetsync, ok, query, run_tree, snapshot

NOBODY = 65534


def make_tree(src: bytes, outside: bytes) -> None:
    """Every kind of entry a scan counts: files of many sizes, directories, symlinks,
    a fifo, hard links (a group inside SRC, one linked from outside), a sparse file,
    a name that is not UTF-8, one with a newline, an unreadable directory, and a
    .snapshot directory (left out by the default excludes)."""
    os.makedirs(os.path.join(src, b"a", b"b", b"c", b"deepest"))
    os.makedirs(os.path.join(src, b"wide"))
    for i in range(30):
        with open(os.path.join(src, b"wide", b"f%02d" % i), "wb") as f:
            f.write(b"x" * (i * 37))
    with open(os.path.join(src, b"a", b"b", b"c", b"deepest", b"bottom"), "wb") as f:
        f.write(b"bottom")
    for name in (b"\xff\xfe-not-utf8", b"new\nline", b"empty"):
        open(os.path.join(src, b"a", name), "wb").close()
    os.symlink(b"a", os.path.join(src, b"link-to-dir"))
    os.symlink(b"nowhere", os.path.join(src, b"a", b"dangling"))
    os.mkfifo(os.path.join(src, b"fifo"))
    with open(os.path.join(src, b"linked"), "wb") as f:
        f.write(b"one inode, three names")
    os.link(os.path.join(src, b"linked"), os.path.join(src, b"a", b"linked-2"))
    os.link(os.path.join(src, b"linked"), os.path.join(src, b"wide", b"linked-3"))
    with open(os.path.join(src, b"half-outside"), "wb") as f:
        f.write(b"the other name is outside SRC")
    os.link(os.path.join(src, b"half-outside"), outside)
    with open(os.path.join(src, b"sparse"), "wb") as f:
        f.seek(8 << 20)
        f.write(b"end")
    os.makedirs(os.path.join(src, b".snapshot", b"hourly.0"))
    open(os.path.join(src, b".snapshot", b"hourly.0", b"old"), "wb").close()
    locked = os.path.join(src, b"locked")
    os.makedirs(os.path.join(locked, b"inside"))
    open(os.path.join(locked, b"secret"), "wb").close()
    os.chmod(locked, 0)


def expected(src: bytes, unreadable: bytes = b"locked") -> dict:
    """What a scan should find, from os.walk and lstat: the .snapshot subtree left out,
    the unreadable directory counted but not entered; SRC itself is a directory."""
    counts = {"files": 0, "dirs": 0, "symlinks": 0, "others": 0, "bytes": 0, "blocks": 0,
              "sparse": 0, "not_utf8": 0, "newline": 0}
    inodes: dict[tuple, int] = {}
    deepest, per_dir = b"", {}

    def count(path: bytes, rel: bytes) -> None:
        nonlocal deepest
        st = os.lstat(path)
        kind = {stat.S_IFREG: "files", stat.S_IFDIR: "dirs",
                stat.S_IFLNK: "symlinks"}.get(stat.S_IFMT(st.st_mode), "others")
        counts[kind] += 1
        counts["blocks"] += st.st_blocks
        if kind != "dirs":
            counts["bytes"] += st.st_size
            if st.st_nlink > 1:
                inodes[(st.st_dev, st.st_ino)] = inodes.get((st.st_dev, st.st_ino), 0) + 1
        counts["sparse"] += kind == "files" and st.st_blocks * 512 < st.st_size
        name = os.path.basename(rel)
        try:
            name.decode()
        except UnicodeDecodeError:
            counts["not_utf8"] += 1
        counts["newline"] += b"\n" in name
        if rel.count(b"/") > deepest.count(b"/"):
            deepest = rel

    count(src, b".")
    for d, dirs, files in os.walk(src):
        rel_d = os.path.relpath(d, src)
        dirs[:] = [x for x in dirs if x != b".snapshot"]
        for name in dirs + files:
            count(os.path.join(d, name), os.path.normpath(os.path.join(rel_d, name)))
        per_dir[b"" if rel_d == b"." else rel_d] = len(dirs) + len(files)
        dirs[:] = [x for x in dirs if os.path.join(rel_d, x) != os.path.join(b".", unreadable)]
    counts["groups"] = sum(n > 1 for n in inodes.values())
    counts["alone"] = sum(n == 1 for n in inodes.values())
    counts["deepest"] = deepest
    counts["per_dir"] = per_dir
    return counts


def scan_as_nobody(args: list[str], out: str) -> int:
    """`fleetsync scan ARGS` in a child that gave up root (so permissions apply to it,
    and the locked directory cannot be listed; what the command does once parsed, in
    the modules imported before), stdout to `out`; as any other user, the command
    itself. Returns the exit status."""
    if os.geteuid() != 0:
        r = fleetsync(*args)
        with open(out, "wb") as f:
            f.write(r.stdout)
        sys.stderr.write(r.stderr.decode())
        return r.returncode
    parsed = cli._parser().parse_args(args)   # as root: it reads the package's metadata
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            os.dup2(fd, 1)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            sys.stdout = open(1, "w", closefd=False)
            code = commands.scan(parsed)
            sys.stdout.flush()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_the_census_is_what_the_tree_holds(tmp_path, open_to_nobody):
    src = os.fsencode(tmp_path / "src")
    make_tree(src, os.fsencode(tmp_path / "outside"))
    want = expected(src)
    ledger, out = str(tmp_path / "scan.db"), str(tmp_path / "out.json")
    code = scan_as_nobody(["scan", "--src", os.fsdecode(src), "--ledger", ledger, "--json"],
                          out)
    assert code == 1, open(out).read()          # an entry could not be read: exit 1
    got = json.load(open(out))
    for key in ("files", "dirs", "symlinks", "others", "bytes"):
        assert got[key] == want[key], key
    assert got["entries"] == sum(got[k] for k in ("files", "dirs", "symlinks", "others"))
    assert got["allocated_bytes"] == want["blocks"] * 512
    assert got["sparse"]["files"] == want["sparse"] == 1
    assert sum(b["files"] for b in got["size_histogram"]) == want["files"]
    assert all(b["from"] <= b["bytes"] / b["files"] <= b["to"] for b in got["size_histogram"])
    assert got["hardlinks"] == {"groups": want["groups"], "names": 3, "alone": want["alone"]}
    assert (got["odd_names"]["not_utf8"], got["odd_names"]["newline"]) == (
        want["not_utf8"], want["newline"]) == (1, 1)
    assert {bytes.fromhex(e["path_hex"]) for e in got["odd_names"]["examples"]} == {
        b"a/\xff\xfe-not-utf8", b"a/new\nline"}
    assert bytes.fromhex(got["deepest"]["path_hex"]) == want["deepest"]
    largest = got["largest_dirs"][0]
    assert (bytes.fromhex(largest["path_hex"]), largest["entries"]) == max(
        ((p, n) for p, n in want["per_dir"].items()), key=lambda t: t[1])
    [unreadable] = got["unreadable"]["examples"]
    assert (unreadable["path"], unreadable["what"], unreadable["errno"]) == (
        "locked", "list", errno.EACCES)
    assert got["unreadable"]["entries"] == 1
    assert got["excluded"]["entries"] == 1 and got["excluded"]["dirs"] == 1
    assert got["excluded"]["by_rule"] == {"- .snapshot*": 1}
    # Nothing was copied and no batch ran: the scan's batches wait for a run.
    assert query(ledger, "SELECT dest FROM migration") == [("",)]
    assert query(ledger, "SELECT count(*) FROM attempts") == [(0,)]
    assert query(ledger, "SELECT count(*) FROM batch_files") == [(got["entries"],)]


def test_a_run_copies_from_the_scan_without_walking_again_and_a_rescan_catches_changes(
        tmp_path):
    src = os.fsencode(tmp_path / "src")
    make_tree(src, os.fsencode(tmp_path / "outside"))
    os.chmod(os.path.join(src, b"locked"), 0o755)
    ledger = str(tmp_path / "l.db")
    r = fleetsync("scan", "--src", os.fsdecode(src), "--ledger", ledger)
    out = ok(r)
    assert "without walking SRC again" in out
    walked = query(ledger, "SELECT producer_id, started_ts, finished_ts, entries FROM producers")
    walk = query(ledger, "SELECT dir_id, path, state, offset FROM walk_dirs ORDER BY dir_id")
    started = query(ledger, "SELECT scan_started_ts FROM migration")
    batches = query(ledger, "SELECT count(*) FROM batches")
    out = ok(run_tree(tmp_path))
    assert "holds a scan of" in out and "SRC is not walked again" in out
    # the same walk: no producer started, no directory listed again, no batch added
    assert query(ledger, "SELECT producer_id, started_ts, finished_ts, entries "
                         "FROM producers") == walked
    assert query(ledger, "SELECT dir_id, path, state, offset FROM walk_dirs "
                         "ORDER BY dir_id") == walk
    assert query(ledger, "SELECT scan_started_ts FROM migration") == started
    assert query(ledger, "SELECT count(*) FROM batches") == batches
    dest = os.fsencode(tmp_path / "dest")
    want = {p: v for p, v in snapshot(src).items() if not p.startswith(b".snapshot")}
    assert snapshot(dest) == want
    # A change since the scan: a --rescan catches it.
    with open(os.path.join(src, b"wide", b"f03"), "ab") as f:
        f.write(b"more")
    with open(os.path.join(src, b"a", b"new-file"), "wb") as f:
        f.write(b"new")
    ok(run_tree(tmp_path, "--rescan"))
    assert snapshot(dest) == {p: v for p, v in snapshot(src).items()
                              if not p.startswith(b".snapshot")}


def test_an_older_ledger_opens_and_its_rows_count_by_is_dir(tmp_path):
    """A ledger written before the walk recorded type, mtime and blocks (the columns
    dropped here, as it was made) is given the columns; its rows count as unknown."""
    import sqlite3
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"x")
    os.symlink("d", src / "l")
    ledger = str(tmp_path / "l.db")
    ok(fleetsync("scan", "--src", str(src), "--ledger", ledger))
    con = sqlite3.connect(ledger)
    for table in ("batch_files", "hardlinks"):
        for column in ("type", "mtime", "blocks"):
            con.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    con.commit()
    con.close()
    r = fleetsync("scan", "--src", str(src), "--ledger", ledger, "--json")
    assert "the walk of SRC in this ledger is complete" in ok(r)
    got = json.loads(r.stdout)
    assert (got["dirs"], got["unknown_type"], got["files"], got["symlinks"]) == (2, 2, 0, 0)
    assert {r[1] for r in query(ledger, "PRAGMA table_info(batch_files)")} >= {
        "type", "mtime", "blocks"}
    # and a run copies it as any ledger
    ok(fleetsync("run", "--src", str(src), "--dest", str(tmp_path / "dest"), "--ledger",
                 ledger, "--no-api"))
    assert os.readlink(tmp_path / "dest" / "l") == "d"


def test_bad_input_is_one_line_and_changes_nothing(tmp_path):
    src, other = tmp_path / "src", tmp_path / "other"
    src.mkdir()
    other.mkdir()
    (src / "f").write_bytes(b"x")
    ledger = tmp_path / "l.db"
    ok(fleetsync("scan", "--src", str(src), "--ledger", str(ledger)))
    before = ledger.read_bytes()
    line = error_line(fleetsync("scan", "--src", str(other), "--ledger", str(ledger)))
    assert f"belongs to another SRC ({src})" in line
    assert ledger.read_bytes() == before
    fresh = tmp_path / "new.db"
    for args, words in ((["--src", str(tmp_path / "missing")], "does not exist"),
                        (["--src", str(src), "--exclude", ""], "the pattern is empty"),
                        (["--src", str(src), "--exclude-from", str(tmp_path / "nope")],
                         "--exclude-from"),
                        (["--src", str(src), "--filter", "merge x"], "a rule is"),
                        (["--src", str(src), "--batch-files", "0"], "--batch-files")):
        r = fleetsync("scan", *args, "--ledger", str(fresh))
        assert words in error_line(r), args
        assert not os.path.exists(fresh) and r.stdout == b""
    (tmp_path / "notes.txt").write_text("not a ledger\n")
    assert "not an SQLite database" in error_line(
        fleetsync("scan", "--src", str(src), "--ledger", str(tmp_path / "notes.txt")))
    line = error_line(fleetsync("run", "--src", str(other), "--dest", str(tmp_path / "d"),
                                "--ledger", str(ledger), "--no-api"))
    assert f"another migration (a scan of {src})" in line
    # other rules than the scan's: refused as a run would refuse them
    assert "differ from the ledger's" in error_line(
        fleetsync("scan", "--src", str(src), "--ledger", str(ledger), "--exclude", "*.o"))
    assert ledger.read_bytes() == before
