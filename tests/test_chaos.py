"""The soak of mixed faults, short (issue 27, item 6): bench/chaos.py with one seed, a
tree of ~2,000 entries and every kind of fault once, on 4 lab hosts; and its checks,
shown to fail on a DEST that is not SRC.

The full soak (100,000 entries, many seeds) is a benchmark: bench/README.md.
"""
from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import types

from .lab import lab_or_skip
from .support import REPO, make_odd_tree

import pytest

CHAOS = os.path.join(REPO, "bench", "chaos.py")


def _chaos():
    spec = importlib.util.spec_from_file_location("chaos", CHAOS)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_short_soak_of_every_fault_ends_exact(tmp_path):
    why = lab_or_skip()
    if why:
        pytest.skip(why)
    out = tmp_path / "result.json"
    # Paced (--pace: each rsync at 8 KiB/s, small large files) so that the run still
    # copies when each fault comes; faults are triggered by batch counts, not times.
    r = subprocess.run([sys.executable, CHAOS, "--seed", "1", "--entries", "2000",
                        "--batch-files", "5", "--faults", "7", "--large-kib", "64",
                        "--pace", "8", "--heartbeat-timeout", "10", "--delete",
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=900)
    said = r.stdout + r.stderr[-3000:]
    assert r.returncode == 0, said
    [result] = json.loads(out.read_text())
    assert result["problems"] == [], said
    assert sorted(f["kind"] for f in result["faults"]) == sorted(_chaos().KINDS), said
    assert result["entries"] >= 2000
    assert "seed 1: OK" in r.stdout and "controller_kill" in r.stdout


def _soak_of(mod, tmp_path, delete: bool):
    """A Soak whose SRC and DEST are tmp_path/src and tmp_path/dest (no lab, no run)."""
    args = types.SimpleNamespace(delete=delete)
    s = mod.Soak.__new__(mod.Soak)
    s.args, s.src, s.dest, s.removed = args, str(tmp_path / "src"), str(tmp_path / "dest"), set()
    return s


def _dir_times(src: bytes, dest: bytes) -> None:
    """DEST's directories get SRC's times (the test's own changes moved them)."""
    for d, _, _ in os.walk(src):
        st = os.stat(d)
        os.utime(os.path.join(dest, os.path.relpath(d, src)), ns=(st.st_atime_ns, st.st_mtime_ns))


def test_the_soaks_checks_see_every_difference(tmp_path):
    """DEST made by `rsync -aHS` of a tree of the soak equals it; each kind of difference
    the soak must see is then found: a mode, an mtime, contents, a hard link broken,
    an extra entry (allowed without --delete only when the soak removed it)."""
    mod = _chaos()
    src, dest = os.fsencode(tmp_path / "src"), os.fsencode(tmp_path / "dest")
    os.makedirs(src)
    mod.make_tree(src, 400, random.Random(5), b"5", 4)
    subprocess.run(["rsync", "-aHS", src + b"/", dest], check=True)
    _dir_times(src, dest)      # rsync -H's late links change them after it set them
    s = _soak_of(mod, tmp_path, delete=True)
    assert s.check_dest() == []
    links = [p for p in mod.regular_files(src) if os.stat(p).st_nlink > 1]
    assert links, "the tree has hard links"
    victim = os.path.join(dest, os.path.relpath(links[0], src))
    data = open(victim, "rb").read()
    os.unlink(victim)
    with open(victim, "wb") as f:      # same contents, mode and time, but no longer linked
        f.write(data)
    st = os.stat(links[0])
    os.chmod(victim, st.st_mode & 0o7777)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert [p for p in s.check_dest() if "hard links not kept" in p], s.check_dest()
    os.unlink(victim)
    os.link(os.path.join(dest, os.path.relpath(links[1], src)), victim)
    _dir_times(src, dest)
    assert s.check_dest() == []
    files = [p for p in mod.regular_files(dest) if os.stat(p).st_nlink == 1]
    os.chmod(files[0], 0o600)
    os.utime(files[1], (1, 1))
    with open(files[2], "r+b") as f:
        f.write(b"X" * 3000)
    os.utime(files[2], ns=(os.stat(files[3]).st_atime_ns, os.stat(files[3]).st_mtime_ns))
    assert len([p for p in s.check_dest() if p.startswith("differs")]) == 3
    extra = os.path.join(dest, b"gone-from-src")
    open(extra, "wb").close()
    assert [p for p in s.check_dest() if "extra at DEST" in p]
    s.args.delete, s.removed = False, {b"gone-from-src"}
    assert not [p for p in s.check_dest() if "extra at DEST" in p]


def test_the_odd_tree_is_the_soaks_hostile_part(tmp_path):
    """The soak reuses tests/support.make_odd_tree (hostile names, fifo, symlinks);
    paced, its 32 MiB sparse file shrinks to --large-kib, still sparse."""
    mod = _chaos()
    src = os.fsencode(tmp_path / "src")
    os.makedirs(src)
    mod.make_tree(src, 300, random.Random(2), b"2", 64, paced=True)
    sparse = os.path.join(src, b"odd-2", b"sparse")
    assert os.path.getsize(sparse) == 64 << 10
    assert os.stat(sparse).st_blocks * 512 < 64 << 10
    plain = tmp_path / "plain"
    make_odd_tree(os.fsencode(plain))
    assert sorted(os.listdir(os.fsencode(plain))) == sorted(os.listdir(os.path.join(src, b"odd-2")))
