"""Filter rules (controller/filters.py) against rsync itself: for a tree with tricky
names and a set of rules, what the walk queues equals what `rsync -an` with the same
rules would copy, and the ledger holds one pruned row per entry left out at the top
of what was left out."""
from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

import fleetsync.controller.producer as producer_module
from fleetsync.controller.errors import UsageError
from fleetsync.controller.filters import Filters, Rule, Sign, parse_filter, rules_of
from fleetsync.controller.producer import Limits
from fleetsync.controller.walk import Walk
from fleetsync.ledger import db, migration

from .support import fleetsync, make_odd_tree, ok, query, run_tree

EXTRA = [  # (path, is a directory)
    (b".snapshot", True), (b".snapshot/hourly.0", True), (b".snapshot/hourly.0/f", False),
    (b".snapshot.1", False), (b"sub", True), (b"sub/.zfs", True), (b"sub/.zfs/x", False),
    (b"sub/.ckpt", False), (b"sub/empty", False), (b"sub/keep.c", False),
    (b"keep.c", False), (b"foo", True), (b"foo/bar", False), (b"foo/bar.c", False),
    (b"foo/x", True), (b"foo/x/bar", False), (b"foo/x/y", True), (b"foo/x/y/bar", True),
    (b"foo/x/y/bar/z.c", False), (b"zab", False), (b"xab", False), (b"aab", False),
    (b"ax", False), (b"bx", False), (b"[x]", False), (b"a.txt", False), (b"d.txt", False),
    (b"sub/foo", True), (b"sub/foo/bar", False), (b"back\\slash", False),
]

RULE_SETS = [
    ["- /d00"],                                   # anchored at SRC
    ["- /sub/foo/bar"],
    ["- empty/"],                                 # directories only (sub/empty is a file)
    ["- empty"],
    ["- *.c"],                                    # * within a component
    ["- foo/*"],                                  # inner slash: the end of the path
    ["- foo/*/bar"],
    ["- foo/**"],                                 # ** across components
    ["- /foo/**/bar"],
    ["- **/bar"],
    ["- d0*/d1*/**"],
    ["- ?ab"],                                    # ?
    ["- [a-c]*.txt", "- [!a]x"],                  # classes
    ["- [[:digit:]]*", "- \\[x]"],
    ["- [x]"],
    ["- back\\slash", "- *\\*"],                  # a backslash: literal without a wildcard
    ["- foo/***"],                                # the directory and all under it
    ["+ */", "+ *.c", "- *"],                     # include before exclude
    ["+ foo/", "+ foo/bar.c", "- *"],
    ["+ /sub/.zfs", "- .zfs", "- .snapshot*", "- .ckpt"],
    ["- .snapshot*", "- .zfs", "- .ckpt"],        # the default excludes
    ["- new*", "- *here", "- with space", "- x*"],  # odd names
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> bytes:
    src = os.fsencode(tmp_path_factory.mktemp("filters") / "src")
    make_odd_tree(src)
    for path, is_dir in EXTRA:
        full = os.path.join(src, path)
        if is_dir:
            os.makedirs(full, exist_ok=True)
        else:
            with open(full, "wb") as f:
                f.write(path)
    return src


def _unescape(name: bytes) -> bytes:
    """rsync's output escapes bytes it will not print as \\#ooo."""
    return re.sub(rb"\\#([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), name)


def rsync_selects(src: bytes, rules: list[str], dest: bytes) -> set[bytes]:
    """What `rsync -an` with these rules would copy, relative to SRC (SRC itself '.')."""
    out = subprocess.run([b"rsync", b"-an", b"--out-format=%n",
                          *[os.fsencode(f"--filter={r}") for r in rules],
                          src + b"/", dest + b"/"], capture_output=True, check=True).stdout
    names = set()
    for line in out.split(b"\n"):
        if line:
            name = _unescape(line).rstrip(b"/")
            names.add(b"." if name == b"." else name)
    return names


def walk_selects(ledger: str, src: bytes, rules: list[str]) -> set[bytes]:
    walk = Walk(ledger, os.fsdecode(src), 2, Limits(entries=7),
                filters=Filters([parse_filter(r) for r in rules]))
    walk.start()
    assert walk.join(timeout=120), "the walk did not complete"
    rows = [bytes(p) for (p,) in query(ledger, "SELECT path FROM batch_files")]
    assert len(rows) == len(set(rows)), "an entry queued twice"
    return set(rows)


def everything(src: bytes) -> set[bytes]:
    found = {b"."}
    for d, dirs, files in os.walk(src):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(d, name), src))
    return found


@pytest.mark.parametrize("rules", RULE_SETS, ids=lambda r: " ".join(r))
def test_the_walk_queues_what_rsync_would_copy(tmp_path, make_ledger, tree, rules):
    ledger = make_ledger(tree)
    expected = rsync_selects(tree, rules, os.fsencode(tmp_path / "dest"))
    assert walk_selects(ledger, tree, rules) == expected
    # One pruned row per entry left out whose parent was walked, none beneath.
    left_out = everything(tree) - expected
    tops = {p for p in left_out if os.path.dirname(p) in expected or b"/" not in p}
    pruned = {bytes(p): rule for p, rule in query(ledger, "SELECT path, rule FROM pruned")}
    assert set(pruned) == tops
    assert set(pruned.values()) <= {r for r in rules if r.startswith("-")}


@pytest.mark.parametrize("rules", [["- /d00", "- *.c", "- [!a]x"], ["- .snapshot*", "- *x*"]],
                         ids=["path rules", "name rules"])
def test_the_threaded_walk_prunes_the_same(tmp_path, make_ledger, tree, rules, monkeypatch):
    """As on a slow mount: the producers' reader and stat threads take the entries."""
    monkeypatch.setattr(producer_module, "SLOW_CALL", -1.0)
    monkeypatch.setattr(producer_module, "SLOW_SAMPLE", 4)
    ledger = make_ledger(tree)
    expected = rsync_selects(tree, rules, os.fsencode(tmp_path / "dest"))
    assert walk_selects(ledger, tree, rules) == expected


def test_no_rules_leaves_nothing_out(tmp_path, make_ledger, tree):
    ledger = make_ledger(tree)
    assert walk_selects(ledger, tree, []) == everything(tree)
    assert query(ledger, "SELECT count(*) FROM pruned") == [(0,)]


def test_the_first_rule_that_matches_decides():
    f = Filters([parse_filter("+ keep.tmp"), parse_filter("- *.tmp")])
    assert f.excluded(b"a/keep.tmp", False) is None
    assert f.excluded(b"a/x.tmp", False) == Rule(Sign.EXCLUDE, "*.tmp")
    assert f.by_name
    f = Filters([parse_filter("- /top"), parse_filter("- *.tmp")])   # over the path
    assert not f.by_name and f.excluded(b"a/x.tmp", False) == Rule(Sign.EXCLUDE, "*.tmp")
    assert f.excluded(b"top", False) and not f.excluded(b"a/top", False)
    f = Filters([parse_filter("- cache/"), parse_filter("+ *")])
    assert f.excluded(b"a/cache", True) == Rule(Sign.EXCLUDE, "cache/")
    assert f.excluded(b"a/cache", False) is None


def test_the_command_line_order_is_one_list(tmp_path):
    listed = tmp_path / "excludes"
    listed.write_text("# a comment\n\n; another\n*.o\n+ keep.o\n/build/\n")
    rules = rules_of([("include", "a.tmp"), ("exclude", "*.tmp"), ("filter", "+ x"),
                      ("exclude_from", str(listed)), ("exclude", "+ y"), ("filter", "-_z")])
    assert [str(r) for r in rules] == ["+ a.tmp", "- *.tmp", "+ x", "- *.o", "+ keep.o",
                                       "- /build/", "+ y", "- z"]
    assert [str(r) for r in rules_of([("exclude", "a"), ("exclude", "!"),
                                      ("exclude", "b")])] == ["- b"]
    assert [str(r) for r in rules_of([("exclude", "a"), ("filter", "!"),
                                      ("filter", "+ b")])] == ["+ b"]


@pytest.mark.parametrize("given, said", [
    (("filter", "P foo"), "'- PATTERN' or '+ PATTERN'"),
    (("filter", "-! foo"), "'- PATTERN' or '+ PATTERN'"),
    (("filter", "merge rules.txt"), "'- PATTERN' or '+ PATTERN'"),
    (("filter", "- "), "the pattern is empty"),
    (("exclude", ""), "the pattern is empty"),
    (("include", "a\0b"), "cannot hold a NUL"),
    (("exclude_from", "/nonexistent/excludes"), "No such file"),
])
def test_bad_rules_are_one_line(given, said):
    with pytest.raises(UsageError, match=re.escape(said)):
        rules_of([given])


# ------------------------------------------------------------ `fleetsync run`, end to end

def refused(r, said: str) -> None:
    err = r.stderr.decode()
    assert r.returncode == 2, err + r.stdout.decode()
    assert len(err.strip().splitlines()) == 1 and said in err, err


def entries(root) -> set[bytes]:
    return everything(os.fsencode(root)) - {b"."}


def make_src(tmp_path) -> None:
    for d in ("keep", "scratch/deep", ".snapshot/hourly.0", "sub/.zfs/snap", "sub/.ckpt"):
        (tmp_path / "src" / d).mkdir(parents=True)
    for f in ("keep/a", "a.tmp", "scratch/s", "scratch/deep/t", ".snapshot/hourly.0/f",
              "sub/.zfs/snap/z", "sub/k", "sub/.ckpt/c", "sub/b.tmp"):
        (tmp_path / "src" / f).write_bytes(f.encode())


def pruned_rows(tmp_path) -> dict[bytes, str]:
    return {bytes(p): r for p, r in query(tmp_path / "l.db", "SELECT path, rule FROM pruned")}


def test_a_run_copies_src_less_what_the_rules_exclude(tmp_path):
    make_src(tmp_path)
    out = ok(run_tree(tmp_path, "--exclude", "scratch/", "--filter", "- *.tmp"))
    assert "default excludes: .snapshot*, .zfs, .ckpt" in out      # the run's first lines
    left_out = {b"scratch": "- scratch/", b"a.tmp": "- *.tmp", b"sub/b.tmp": "- *.tmp",
                b".snapshot": "- .snapshot*", b"sub/.zfs": "- .zfs", b"sub/.ckpt": "- .ckpt"}
    assert pruned_rows(tmp_path) == left_out                    # one row each, none beneath
    assert entries(tmp_path / "dest") == {b"keep", b"keep/a", b"sub", b"sub/k"}
    assert "6 entries left out by the filter rules" in out
    # not counted anywhere else: the batches hold the selected entries alone
    assert query(tmp_path / "l.db", "SELECT sum(file_count) FROM batches") == [(2,)]
    status = fleetsync("status", "--ledger", str(tmp_path / "l.db"))
    assert "6 entries left out by the filter rules" in status.stdout.decode()
    js = fleetsync("status", "--json", "--ledger", str(tmp_path / "l.db"))
    assert json.loads(js.stdout)["pruned"] == 6


def test_delete_keeps_excluded_dest_entries_unless_delete_excluded(tmp_path):
    make_src(tmp_path)
    ok(run_tree(tmp_path, "--exclude", "scratch/", "--exclude", "*.tmp"))
    dest = tmp_path / "dest"
    (dest / "scratch").mkdir()
    (dest / "scratch" / "x").write_bytes(b"x")       # excluded names at DEST
    (dest / "sub" / "old.tmp").write_bytes(b"o")
    (dest / "gone").write_bytes(b"g")                # not in SRC, not excluded
    ok(run_tree(tmp_path, "--delete", "--max-delete", "50"))    # the stored rules
    assert not (dest / "gone").exists()
    assert (dest / "scratch" / "x").exists() and (dest / "sub" / "old.tmp").exists()
    ok(run_tree(tmp_path, "--delete", "--max-delete", "50", "--delete-excluded"))
    assert entries(dest) == {b"keep", b"keep/a", b"sub", b"sub/k"}


def test_a_resume_with_other_rules_is_refused_and_writes_nothing(tmp_path):
    make_src(tmp_path)
    ok(run_tree(tmp_path, "--exclude", "scratch/"))
    before, files = (tmp_path / "l.db").read_bytes(), sorted(os.listdir(tmp_path))
    refused(run_tree(tmp_path, "--exclude", "*.tmp"), "differ from the ledger's")
    refused(run_tree(tmp_path, "--rescan", "--no-default-excludes"), "--change-filters")
    # byte for byte, and no -wal, -shm or lock file made
    assert (tmp_path / "l.db").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == files
    ok(run_tree(tmp_path, "--exclude", "scratch/"))             # the same rules: a resume
    ok(run_tree(tmp_path, "--rescan"))                          # none given: the stored ones


def test_change_filters_rescans_with_the_new_rules(tmp_path):
    make_src(tmp_path)
    ok(run_tree(tmp_path, "--exclude", "scratch/"))
    assert not (tmp_path / "dest" / "scratch").exists()
    out = ok(run_tree(tmp_path, "--change-filters", "--exclude", "*.tmp"))
    assert "--change-filters" in out
    dest = tmp_path / "dest"
    # newly included: queued by the rescan (the last walk had no print of them)
    assert (dest / "scratch" / "deep" / "t").read_bytes() == b"scratch/deep/t"
    # newly excluded: stays at DEST
    assert (dest / "a.tmp").exists() and (dest / "sub" / "b.tmp").exists()
    assert set(pruned_rows(tmp_path)) == {b"a.tmp", b"sub/b.tmp", b".snapshot", b"sub/.zfs",
                                          b"sub/.ckpt"}
    options = json.loads(query(tmp_path / "l.db", "SELECT options FROM migration")[0][0])
    assert options["filters"] == ["- *.tmp", "- .snapshot*", "- .zfs", "- .ckpt"]
    ok(run_tree(tmp_path, "--delete", "--max-delete", "50", "--delete-excluded"))
    assert not (dest / "a.tmp").exists() and not (dest / "sub" / "b.tmp").exists()
    assert (dest / "scratch" / "s").exists()


def test_default_excludes_apply_to_a_new_ledger_not_an_old_one(tmp_path):
    make_src(tmp_path)
    ok(run_tree(tmp_path, "--no-default-excludes", "--ledger", str(tmp_path / "all.db"),
           "--dest", str(tmp_path / "all")))
    assert (tmp_path / "all" / ".snapshot" / "hourly.0" / "f").exists()
    # A ledger made before filters: no "filters" in its options, no table pruned.
    engine = db.writer(str(tmp_path / "l.db"))
    migration.open_or_create(engine, str(tmp_path / "src"), str(tmp_path / "dest"), {})
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE pruned")
    engine.dispose()
    assert "left out" not in fleetsync("status", "--ledger",
                                       str(tmp_path / "l.db")).stdout.decode()
    out = ok(run_tree(tmp_path))
    assert "no filter rules" in out
    assert entries(tmp_path / "dest") == entries(tmp_path / "src")
    refused(run_tree(tmp_path, "--exclude", "x"), "differ from the ledger's")


@pytest.mark.parametrize("args, said", [
    (["--exclude-from", "/nonexistent/list"], "--exclude-from /nonexistent/list"),
    (["--exclude", ""], "the pattern is empty"),
    (["--filter", "P keep"], "'- PATTERN' or '+ PATTERN'"),
    (["--filter", "merge x"], "'- PATTERN' or '+ PATTERN'"),
    (["--exclude-from", "NUL"], "cannot hold a NUL"),
    (["--delete-excluded"], "goes with --delete"),
])
def test_bad_filter_input_is_one_line_and_creates_nothing(tmp_path, args, said):
    make_src(tmp_path)
    if "NUL" in args:
        (tmp_path / "nul").write_bytes(b"ok\nbad\0name\n")
        args = [a.replace("NUL", str(tmp_path / "nul")) for a in args]
    refused(run_tree(tmp_path, *args), said)
    assert not (tmp_path / "l.db").exists() and not (tmp_path / "dest").exists()
