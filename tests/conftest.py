"""Fixtures shared by the test modules. Keep this small: one module's helpers stay in it."""
from __future__ import annotations

import os
import stat
import subprocess

import pytest

from fleetsync.ledger import db, migration


@pytest.fixture
def make_ledger(tmp_path):
    """make_ledger(src, name="ledger.db") -> path of a new ledger for SRC (a real file)."""
    engines = []

    def make(src: str | bytes, name: str = "ledger.db") -> str:
        path = str(tmp_path / name)
        engine = db.writer(path)
        engines.append(engine)
        migration.open_or_create(engine, os.fsdecode(src), str(tmp_path / "dest"), {})
        return path

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture
def open_to_nobody(tmp_path):
    """tmp_path (and the way to it) usable by nobody while the test runs."""
    dirs = [tmp_path, tmp_path.parent, tmp_path.parent.parent]
    modes = [stat.S_IMODE(os.stat(d).st_mode) for d in dirs]
    for d in dirs:
        os.chmod(d, 0o777 if d == tmp_path else 0o755)
    yield
    for d, mode in zip(dirs, modes):
        os.chmod(d, mode)


@pytest.fixture
def small_fs(tmp_path):
    """small_fs(size) -> a directory on a tmpfs of that size, unmounted afterwards
    (tests/test_space.py, tests/test_rsync.py: full disks); skipped without root."""
    mounted = []

    def mount(size: str) -> str:
        where = str(tmp_path / f"fs{len(mounted)}")
        os.mkdir(where)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", where],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs (root needed): {r.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", where], check=False)
