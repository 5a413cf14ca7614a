"""The batch command and the parsing of its output, with real sh, base64, gzip and rsync."""
from __future__ import annotations

import os
import subprocess

import pytest

from fleetsync.controller import outcome, processes, protocol, rsync

from .support import eventually


def run_command(cmd: str) -> str:
    return subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True,
                          errors="replace").stdout


def test_the_command_copies_odd_names_and_reports(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    names = [b"new\nline", b"-dash", b"\xff\xfe", b"sp ace", b"q'\"$(x)`y`"]
    for n in names:
        (src / os.fsdecode(n)).write_bytes(n)
    cmd = rsync.batch_command(7, 3, names, str(src), str(dest),
                                 rsync.DEFAULT_RSYNC_OPTIONS, "fleetsync:m:t", 100)
    out = outcome.parse(run_command(cmd))
    assert (out.task_id, out.claim_no, out.rsync_exit_code) == (7, 3, 0)
    assert out.end_ts >= out.start_ts > 0
    assert out.bytes_sent > 0 and out.bytes_received > 0
    assert out.errors == []
    assert sorted(os.listdir(os.fsencode(dest))) == sorted(names)


def test_a_damaged_list_never_runs_rsync(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    cmd = rsync.batch_command(1, 1, [b"a"], str(src), str(tmp_path / "dest"), ["-a"], "m", 0)
    b64, _ = rsync.encode_list([b"a"])
    damaged = cmd.replace(b64, rsync.encode_list([b"a", b"b"])[0])   # a longer list
    out = outcome.parse(run_command(damaged))
    assert out.rsync_exit_code == rsync.LIST_DAMAGED
    assert not (tmp_path / "dest").exists()


def test_a_listed_file_that_vanished_is_exit_24(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "here").write_text("x")
    cmd = rsync.batch_command(2, 1, [b"here", b"gone"], str(src), str(tmp_path / "d"),
                                 ["-a"], "m", 0)
    out = outcome.parse(run_command(cmd))
    assert out.rsync_exit_code == 24
    assert any("gone" in e for e in out.errors)
    assert (tmp_path / "d" / "here").exists()


def test_other_errors_keep_their_exit_code(tmp_path):
    cmd = rsync.batch_command(3, 1, [b"x"], str(tmp_path / "nosrc"), str(tmp_path / "d"),
                                 ["-a", "--no-such-option"], "m", 0)
    out = outcome.parse(run_command(cmd))
    assert out.rsync_exit_code == 1
    assert out.errors


def test_parse_without_a_batch_is_none():
    assert outcome.parse("@@fleetsync idle\n") is None
    assert outcome.parse("") is None


def test_long_lists_stay_under_the_argument_limit():
    # 64 KiB of incompressible names (the walk's limit) still fits one argument.
    names = [os.urandom(255).replace(b"\0", b"x").replace(b"/", b"y") for _ in range(260)]
    cmd = rsync.batch_command(1, 1, names, "/s", "/d", ["-a"], "m", 0)
    assert sum(len(n) + 1 for n in names) >= 64 * 1024
    assert len(cmd.encode()) < 128 * 1024


def test_src_itself_never_drags_the_top_level_along(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "sub").mkdir(parents=True)
    (src / "top-file").write_text("x")
    (src / "sub" / "f").write_text("y")
    os.utime(src, (1_000_000_000, 1_000_000_000))
    out = outcome.parse(run_command(rsync.batch_command(
        1, 1, [b"."], str(src), str(dest), ["-a"], "m", 0)))
    assert out.rsync_exit_code == 0
    assert not (dest / "top-file").exists()
    out = outcome.parse(run_command(rsync.root_command(str(src), str(dest), ["-a"], "m")))
    assert (out.kind, out.rsync_exit_code) == ("dirs", 0)
    assert os.listdir(dest) == [] and os.stat(dest).st_mtime == 1_000_000_000


def test_the_directory_pass_removes_a_dead_rsyncs_temporary_files_only(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("f")
    (src / "d" / ".real.abcdef").write_text("a real file with a temp-like name")
    out = outcome.parse(run_command(rsync.batch_command(
        1, 1, [b".", b"d", b"d/f", b"d/.real.abcdef"], str(src), str(dest), ["-a"], "m", 0)))
    assert out.rsync_exit_code == 0
    (dest / "d" / ".f.Xy12Zq").write_text("half a file")     # what rsync -9'd leaves
    (dest / "d" / "operator-file").write_text("not ours to delete")
    outs = outcome.parse_all(run_command(rsync.dirs_command(
        [b".", b"d"], str(src), str(dest), ["-a"], "m", "off", {b"d"})))
    assert [o.kind for o in outs] == ["clean", "dirs", "dirs"]
    assert all(o.rsync_exit_code == 0 for o in outs)
    assert sorted(os.listdir(dest / "d")) == [".real.abcdef", "f", "operator-file"]
    # rsync may also itemize d/ itself (its time differs): only deletions count.
    assert [i for i in outs[0].itemized if i.startswith("*deleting")] == [
        "*deleting   d/.f.Xy12Zq"]


def test_the_delete_pass_keeps_what_the_filter_rules_exclude(tmp_path):
    """The rules reach the delete pass's rsync: an excluded name at DEST is protected
    (and an excluded one in SRC not sent); --delete-excluded removes it."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("f")
    (src / "d" / "new.tmp").write_text("excluded in SRC")
    (dest / "d" / "cache").mkdir(parents=True)
    (dest / "d" / "f").write_text("f")
    (dest / "d" / "old.tmp").write_text("excluded at DEST")
    (dest / "d" / "gone").write_text("no longer in SRC")
    rules = ["- *.tmp", "- cache/"]
    outs = outcome.parse_all(run_command(rsync.dirs_command(
        [b".", b"d"], str(src), str(dest), ["-a"], "m", "on", filters=rules)))
    assert all(o.rsync_exit_code == 0 for o in outs)
    assert sorted(os.listdir(dest / "d")) == ["cache", "f", "old.tmp"]
    outs = outcome.parse_all(run_command(rsync.dirs_command(
        [b".", b"d"], str(src), str(dest), ["-a"], "m", "on", filters=rules,
        delete_excluded=True)))
    assert all(o.rsync_exit_code == 0 for o in outs)
    assert sorted(os.listdir(dest / "d")) == ["f"]


def test_an_item_runs_its_batches_side_by_side_and_caps_what_each_prints(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "a").mkdir(parents=True)
    for i in range(12):
        (src / "a" / f"f{i}").write_text(str(i))
    jobs = [rsync.Job(i + 1, 1, [b"a", *[b"a/f%d" % k for k in range(i * 3, i * 3 + 3)]],
                      ["-a"], 100) for i in range(4)]
    # A batch whose files all vanished prints a line per file: capped on the host.
    jobs.append(rsync.Job(5, 2, [b"a/gone%04d" % i for i in range(400)], ["-a"], 0))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    # DEST exists before an item runs: the preflight makes it. Without it, the lanes'
    # first rsyncs race to create it and one may fail (exit 11, seen in a chroot).
    dest.mkdir()
    out = subprocess.run(["/bin/sh", "-c", rsync.item_command(jobs, str(src), str(dest), "m", 3)],
                         capture_output=True, text=True, env=dict(os.environ, TMPDIR=str(tmp))).stdout
    outs = outcome.parse_all(out)
    assert [o.task_id for o in outs] == [1, 2, 3, 4, 5]
    assert [o.rsync_exit_code for o in outs[:4]] == [0, 0, 0, 0]
    assert all(o.bytes_sent > 0 and o.bytes_received > 0 for o in outs)
    assert outs[4].rsync_exit_code in (23, 24)
    assert len(out) < 400 * 60 and len(outs[4].errors) < 100
    assert outs[4].errors[-1].startswith("fleetsync: ") and "not shown" in outs[4].errors[-1]
    assert "Number of files" not in out           # --stats lines nobody reads
    assert sorted(os.listdir(dest / "a")) == sorted(os.listdir(src / "a"))
    assert os.listdir(tmp) == []                  # the item's directory is gone


def test_a_damaged_list_inside_an_item_fails_that_batch_only(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    (src / "b").write_text("b")
    jobs = [rsync.Job(1, 1, [b"a"], ["-a"], 0), rsync.Job(2, 1, [b"b"], ["-a"], 0)]
    cmd = rsync.item_command(jobs, str(src), str(tmp_path / "dest"), "m", 2)
    damaged = cmd.replace(jobs[0].listed()[0], rsync.encode_list([b"a", b"x"])[0])
    outs = outcome.parse_all(run_command(damaged))
    assert [(o.task_id, o.rsync_exit_code) for o in outs] == [(1, rsync.LIST_DAMAGED), (2, 0)]


def test_a_capped_rsync_is_given_its_bytes_at_half_its_cap():
    assert rsync.capped_rate(["-a", "--bwlimit=100"]) == 100 << 10       # rsync's KiB
    assert rsync.capped_rate(["--bwlimit=1m", "--bwlimit=256k"]) == 256 << 10   # the last
    assert rsync.capped_rate(["-a"]) is None and rsync.capped_rate(["--bwlimit=0"]) is None
    gib = 1 << 30
    assert rsync.batch_seconds(gib) == gib // rsync.MIN_RATE
    assert rsync.batch_seconds(gib, 100 << 10) == gib // (50 << 10)
    assert rsync.batch_seconds(gib, 100 << 20) == gib // rsync.MIN_RATE  # a high cap: no change
    assert rsync.batch_seconds(100, 1) == rsync.MIN_BATCH_SECONDS


def _slow_item(tmp_path, beat: float):
    """An item of two batches in one lane: a ~6 s copy (600 kB at --bwlimit=100), then
    a small one. Its own TMPDIR, to see what it leaves."""
    src, tmp = tmp_path / "src", tmp_path / "tmp"
    src.mkdir()
    tmp.mkdir()
    (src / "big").write_bytes(os.urandom(600_000))
    (src / "small").write_text("small")
    jobs = [rsync.Job(1, 1, [b"big"], ["-a", "--bwlimit=100"], 600_000),
            rsync.Job(2, 1, [b"small"], ["-a"], 5)]
    cmd = rsync.item_command(jobs, str(src), str(tmp_path / "dest"), "m", 1, beat=beat)
    return subprocess.Popen(["/bin/sh", "-c", cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, TMPDIR=str(tmp)))


def _item_rsyncs(tmp_path) -> list[int]:
    return [p for p in processes.matching(os.fsencode(tmp_path / "tmp"))
            if (processes.argv(p) or [b""])[0].endswith(b"rsync")]


def test_a_running_item_beats_and_its_outcomes_still_parse(tmp_path):
    proc = _slow_item(tmp_path, beat=0.2)
    out = proc.communicate(timeout=120)[0].decode()
    # The copy lasts seconds at its cap: the item printed empty lines meanwhile, and
    # nothing but empty lines before the first outcome.
    head = out[:out.index(protocol.MARK)]
    assert head and set(head) == {"\n"}, head[:100]
    outs = outcome.parse_all(out)
    assert [(o.task_id, o.rsync_exit_code) for o in outs] == [(1, 0), (2, 0)]
    assert (tmp_path / "dest" / "small").read_text() == "small"
    assert os.listdir(tmp_path / "tmp") == []


@pytest.mark.parametrize("how", ["output_closed", "terminated"])
def test_an_item_whose_controller_is_gone_stops_its_rsyncs(tmp_path, how):
    """The controller's end of an item is gone (its host was lost): the item stops its
    rsync and starts no other batch, so the batch does not run here and elsewhere."""
    proc = _slow_item(tmp_path, beat=0.2)
    eventually(lambda: _item_rsyncs(tmp_path), "the item's rsync starting", 60, proc)
    if how == "output_closed":
        proc.stdout.close()
    else:
        proc.terminate()
    proc.wait(timeout=60)
    eventually(lambda: not _item_rsyncs(tmp_path), "the item's rsync stopping", 60)
    dest = tmp_path / "dest"
    assert not (dest / "big").exists() and not (dest / "small").exists()
    assert os.listdir(tmp_path / "tmp") == []


def _at_dest(src, dest, name: bytes) -> bool:
    """At DEST with SRC's type; a regular file with SRC's size and mtime."""
    from .test_space import _whole_at_dest
    return _whole_at_dest(os.fsencode(src), os.fsencode(dest), name)


def test_a_batch_that_fails_as_a_whole_is_looked_at_on_dest_names_exact(tmp_path, small_fs):
    """DEST on 1 MiB: rsync exits 11 at a 2 MiB file. The look at DEST that follows
    names exactly the entries that are not there whole (odd names on both sides of
    the failure, a directory), from SRC's and DEST's stats, never from the copy's
    own listing; a batch that succeeds gets no look, nor one whose look fails."""
    src, dest = tmp_path / "src", os.path.join(small_fs("1m"), "dest")
    (src / "sub").mkdir(parents=True)
    early = [b"0nl\nx", b"0\xff\xfe", b"0back\\#012slash"]
    late = [b"znl\ny", b"z\xfe", b"sub/f"]
    for name in early + late:
        (src / os.fsdecode(name)).write_bytes(b"s" * 1000)
    (src / "big").write_bytes(os.urandom(2 << 20))
    (src / "ok").write_text("fine")
    names = sorted([*early, *late, b"big", b"sub"])
    jobs = [rsync.Job(1, 1, names, ["-a"], 3 << 20, sums="xxh128", regular=7),
            rsync.Job(2, 1, [b"ok"], ["-a"], 4, sums="xxh128", regular=1),
            rsync.Job(3, 1, [b"ok"], ["-a", "--no-such-option"], 4)]
    os.mkdir(dest)
    cmd = rsync.item_command(jobs, str(src), dest, "m", 1)
    failed, fine, broken = outcome.parse_all(run_command(cmd))
    assert failed.rsync_exit_code == 11 and any("No space left on device (28)" in e
                                                 for e in failed.errors)
    missing = {n for n in names if not _at_dest(src, dest, n)}
    assert b"big" in missing and any(n in missing for n in late)
    assert not any(n in missing for n in early)
    assert failed.not_at_dest == missing
    # the arrived files' checksums are there (a pass over SRC fills in what %C lacked)
    assert set(early) <= set(failed.sums)
    assert (fine.rsync_exit_code, fine.not_at_dest) == (0, None)
    assert (broken.rsync_exit_code, broken.not_at_dest) == (1, None)
