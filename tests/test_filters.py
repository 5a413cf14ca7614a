"""Filter rules (controller/filters.py) against rsync itself: for a tree with tricky
names and a set of rules, what the walk queues equals what `rsync -an` with the same
rules would copy, and the ledger holds one pruned row per entry left out at the top
of what was left out."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from fleetsync.controller.errors import UsageError
from fleetsync.controller.filters import Filters, Rule, Sign, parse_filter, rules_of
from fleetsync.controller.producer import Limits
from fleetsync.controller.walk import Walk

from .support import make_odd_tree, query

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


def test_no_rules_leaves_nothing_out(tmp_path, make_ledger, tree):
    ledger = make_ledger(tree)
    assert walk_selects(ledger, tree, []) == everything(tree)
    assert query(ledger, "SELECT count(*) FROM pruned") == [(0,)]


def test_the_first_rule_that_matches_decides():
    f = Filters([parse_filter("+ keep.tmp"), parse_filter("- *.tmp")])
    assert f.excluded(b"a/keep.tmp", False) is None
    assert f.excluded(b"a/x.tmp", False) == Rule(Sign.EXCLUDE, "*.tmp")
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
