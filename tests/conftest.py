"""Fixtures shared by the test modules. Keep this small: one module's helpers stay in it."""
from __future__ import annotations

import os
import stat

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
