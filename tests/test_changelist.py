"""Change lists (controller/changelist.py): `run --files-from FILE [--from0]` copies the
listed entries and nothing else, on real rsync and real files; the filters apply to the
list and its ancestors; a listed hard link brings its other names; a listed path that
vanished leaves DEST with --delete; bad lists are one line, exit 2, no ledger."""
from __future__ import annotations

import os

import pytest

from fleetsync.controller import changelist
from fleetsync.controller.errors import UsageError

from .support import error_line, ok, query, run_tree

NEWLINE = b"d/new\nline"


def _write(path: bytes, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _files(root: bytes) -> dict[bytes, bytes | None]:
    """Every entry under root: a file's content, None for a directory."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(d, name), root)] = None
        for name in files:
            with open(os.path.join(d, name), "rb") as f:
                out[os.path.relpath(os.path.join(d, name), root)] = f.read()
    return out


@pytest.fixture
def copied(tmp_path):
    """A tree copied once in full (rules: the defaults and *.tmp), then changed."""
    src = os.fsencode(tmp_path / "src")
    for rel, data in [(b"a/b/f1", b"one"), (b"a/f2", b"two"), (b"c/f3", b"three"),
                      (b"c/keep", b"keep"), (b"u/unlisted", b"old"), (b"d/f4", b"four")]:
        _write(src + b"/" + rel, data)
    os.link(src + b"/a/f2", src + b"/c/f2link")
    ok(run_tree(tmp_path, "--exclude", "*.tmp"))
    # the changes, listed and not
    f1 = src + b"/a/b/f1"
    st = os.stat(f1)
    _write(f1, b"ONE")                      # same size, same mtime: only a listed file
    os.utime(f1, ns=(st.st_atime_ns, st.st_mtime_ns))   # copies whatever the quick check says
    with open(src + b"/a/f2", "wb") as f:   # both names of the inode change
        f.write(b"TWO, longer")
    _write(src + b"/u/unlisted", b"new")    # not listed: stays old at DEST
    _write(src + b"/.snapshot/h/x", b"snap")            # under an excluded directory
    _write(src + b"/d/scratch.tmp", b"tmp")             # excluded by name
    _write(src + b"/" + NEWLINE, b"nl")
    _write(src + b"/e/f/g/deep", b"deep")   # its parents are not listed
    os.unlink(src + b"/c/f3")               # vanished
    _write(os.fsencode(tmp_path / "dest") + b"/u/extra", b"DEST only")   # no pass goes there
    return tmp_path


LISTED = [b"a/b/f1", b"a/f2", b".snapshot/h/x", b"d/scratch.tmp", NEWLINE, b"e/f/g/deep",
          b"c/f3", b"c", b"d"]


def test_a_change_list_copies_exactly_the_listed_entries(copied):
    tmp_path = copied
    src, dest = os.fsencode(tmp_path / "src"), os.fsencode(tmp_path / "dest")
    listing = tmp_path / "changes"
    # absolute under SRC and relative mixed, as `find SRC` and `zfs diff` write them
    listing.write_bytes(b"".join((src + b"/" + p if i % 2 else p) + b"\0"
                                 for i, p in enumerate(LISTED)))
    before = _files(dest)
    last_task = query(tmp_path / "l.db", "SELECT max(task_id) FROM batches")[0][0]
    out = ok(run_tree(tmp_path, "--files-from", str(listing), "--from0", "--delete"))
    assert "SRC not walked" in out, out

    expected = dict(before)
    for rel in [b"a/b/f1", b"a/f2", b"c/f2link", NEWLINE, b"e/f/g/deep"]:
        with open(src + b"/" + rel, "rb") as f:
            expected[rel] = f.read()
    expected.update({b"e": None, b"e/f": None, b"e/f/g": None})
    del expected[b"c/f3"]
    assert _files(dest) == expected
    assert expected[b"a/b/f1"] == b"ONE" and expected[b"u/unlisted"] == b"old"
    assert os.stat(dest + b"/a/f2").st_ino == os.stat(dest + b"/c/f2link").st_ino

    # the ledger names each listed entry: queued, left out with its rule, or deleted
    queued = {bytes(p) for (p,) in query(tmp_path / "l.db", "SELECT path FROM batch_files "
                                         "WHERE task_id > ?", last_task)}
    assert queued == {b"a/b/f1", b"a/f2", b"c/f2link", NEWLINE, b"e/f/g/deep", b"c", b"d"}
    pruned = dict(query(tmp_path / "l.db", "SELECT path, rule FROM pruned"))
    assert pruned[b".snapshot/h/x"] == "- .snapshot*"
    assert pruned[b"d/scratch.tmp"] == "- *.tmp"
    assert query(tmp_path / "l.db", "SELECT path FROM deletions WHERE dry_run = 0") == [
        ("c/f3",)]


def test_an_empty_list_copies_nothing_and_succeeds(copied):
    tmp_path = copied
    before = _files(os.fsencode(tmp_path / "dest"))
    (tmp_path / "empty").write_bytes(b"")
    out = ok(run_tree(tmp_path, "--files-from", str(tmp_path / "empty")))
    assert "0 paths, 0 entries queued" in out, out
    assert _files(os.fsencode(tmp_path / "dest")) == before


def test_a_ledger_without_a_complete_walk_is_refused_and_nothing_created(tmp_path):
    _write(os.fsencode(tmp_path / "src") + b"/x/one", b"1")
    (tmp_path / "list").write_bytes(b"x/one\n")
    r = run_tree(tmp_path, "--files-from", str(tmp_path / "list"))
    assert "holds no complete walk of SRC" in error_line(r)
    assert sorted(os.listdir(tmp_path)) == ["list", "src"]


@pytest.mark.parametrize("content, extra, said", [
    (b"../x\n", [], "../x is not under SRC"),
    (b"a/../../x\n", [], "is not under SRC"),
    (b"/etc/passwd\n", [], "/etc/passwd is not under SRC"),
    (b"ok\nbad\0name\n", [], "line 2 holds a NUL"),
    (b"link/passwd\n", [], "goes through the symlink link"),
    (None, [], "No such file or directory"),
    (b"", ["--rescan"], "--rescan walks all of SRC"),
    (b"", ["--change-filters"], "--change-filters walks all of SRC"),
])
def test_a_bad_list_is_one_line_and_creates_nothing(tmp_path, content, extra, said):
    (tmp_path / "src" / "a").mkdir(parents=True)
    os.symlink("/etc", tmp_path / "src" / "link")
    if content is not None:
        (tmp_path / "list").write_bytes(content)
    r = run_tree(tmp_path, "--files-from", str(tmp_path / "list"), *extra)
    assert said in error_line(r)
    assert sorted(os.listdir(tmp_path)) == (["list", "src"] if content is not None
                                            else ["src"])


def test_from0_without_files_from_is_refused(tmp_path):
    (tmp_path / "src").mkdir()
    assert "--from0 goes with --files-from" in error_line(run_tree(tmp_path, "--from0"))
    assert not (tmp_path / "l.db").exists()


def test_a_directory_as_the_list_is_one_line(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "list").mkdir()
    assert "Is a directory" in error_line(run_tree(tmp_path, "--files-from",
                                                   str(tmp_path / "list")))
    assert not (tmp_path / "l.db").exists()


def test_read_normalizes_and_keeps_a_newline_with_from0(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "l").write_bytes(b"a//b/./c\r\n" + os.fsencode(src) + b"/x\n\n" +
                                 os.fsencode(src) + b"\n")
    assert changelist.read(str(tmp_path / "l"), False, str(src)) == [b".", b"a/b/c", b"x"]
    (tmp_path / "z").write_bytes(b"new\nline\0other\0")
    assert changelist.read(str(tmp_path / "z"), True, str(src)) == [b"new\nline", b"other"]
    (tmp_path / "o").write_bytes(os.fsencode(src) + b"-other/x\0")   # a prefix, not under
    with pytest.raises(UsageError, match="not under SRC"):
        changelist.read(str(tmp_path / "o"), True, str(src))
