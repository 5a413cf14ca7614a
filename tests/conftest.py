"""Fixtures shared by the test modules. Keep this small: one module's helpers stay in it."""
from __future__ import annotations

import os

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
