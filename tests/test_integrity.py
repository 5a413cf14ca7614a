"""A damaged ledger (issue 27, item 3): pages overwritten in the middle of a real
ledger (not a truncation), refused in one line by `status` (exit 2), `verify` and
`run` (whose check runs beside the copy, controller/integrity.py); the copy that
`fleetsync backup` made before is sound and a run resumes from it, exact."""
from __future__ import annotations

import os
import sqlite3

import pytest

from fleetsync.controller import processes
from fleetsync.ledger import db

from .support import error_line, fleetsync, ok, query, snapshot

PAGE = 4096


def _tree(root) -> None:
    for d in range(12):
        os.makedirs(os.path.join(root, f"dir{d}"))
        for i in range(150):
            with open(os.path.join(root, f"dir{d}", f"file-{i:04d}.dat"), "wb") as f:
                f.write(bytes([i % 251]) * (i * 7))


def _overwrite(ledger: str, index: str) -> list[int]:
    """Four pages in the middle of one index of the ledger overwritten with noise: the
    file keeps its size and its header, and the tables a run reads first stay whole."""
    con = sqlite3.connect(ledger)
    try:
        assert con.execute("PRAGMA page_size").fetchone()[0] == PAGE
        pages = [p for (p,) in con.execute(
            "SELECT pageno FROM dbstat WHERE name = ? ORDER BY pageno", (index,))]
    except sqlite3.OperationalError as e:      # an SQLite built without dbstat
        pytest.skip(f"this SQLite cannot list a table's pages: {e}")
    finally:
        con.close()
    assert len(pages) >= 8, pages
    middle = pages[len(pages) // 2 - 2:len(pages) // 2 + 2]
    size = os.path.getsize(ledger)
    with open(ledger, "r+b") as f:
        for page in middle:
            f.seek((page - 1) * PAGE)
            f.write(os.urandom(PAGE))
    assert os.path.getsize(ledger) == size
    return middle


def _refused(r, ledger: str) -> str:
    line = error_line(r)
    assert f"the ledger {ledger} is damaged (SQLite: " in line, line
    assert "`fleetsync backup`" in line, line
    assert b"Traceback" not in r.stderr + r.stdout
    return line


@pytest.fixture
def scanned(tmp_path):
    """A ledger that scanned SRC (nothing copied yet), and its backup copy."""
    src, ledger, copy = tmp_path / "src", str(tmp_path / "l.db"), str(tmp_path / "copy.db")
    _tree(src)
    ok(fleetsync("scan", "--src", str(src), "--ledger", ledger))
    ok(fleetsync("backup", "--ledger", ledger, copy))
    return src, ledger, copy


def test_status_and_verify_refuse_a_ledger_with_pages_overwritten(scanned):
    src, ledger, copy = scanned
    ok(fleetsync("status", "--ledger", ledger))
    db.check_integrity(ledger)
    pages = _overwrite(ledger, "batch_files_path_text")
    line = _refused(fleetsync("status", "--ledger", ledger), ledger)
    assert f"Page {pages[0]}" in line or f"Page {pages[1]}" in line, line
    with pytest.raises(db.LedgerDamaged):
        db.check_integrity(ledger)
    before = open(ledger, "rb").read()
    _refused(fleetsync("verify", "--ledger", ledger), ledger)
    assert open(ledger, "rb").read() == before       # nothing written
    ok(fleetsync("status", "--ledger", copy))          # the backup is sound


def test_run_stops_on_a_damaged_ledger_and_resumes_from_its_backup(scanned, tmp_path):
    """The check runs beside the copy (the damaged index is one the copy never
    reads): it stops the run in one line, exit 2, no process left; the backup copy,
    put back, resumes to an exact DEST."""
    src, ledger, copy = scanned
    _overwrite(ledger, "batch_files_path_text")
    dest = tmp_path / "dest"
    r = fleetsync("run", "--src", str(src), "--dest", str(dest), "--ledger", ledger, "--no-api")
    _refused(r, ledger)
    (mig_id,), = query(copy, "SELECT migration_id FROM migration")
    assert not processes.matching(f"fleetsync:{mig_id}".encode())

    os.replace(copy, ledger)
    for side in ("-wal", "-shm"):        # the damaged file's, as the line says
        if os.path.exists(ledger + side):
            os.unlink(ledger + side)
    ok(fleetsync("run", "--src", str(src), "--dest", str(dest), "--ledger", ledger, "--no-api"))
    assert snapshot(bytes(src)) == snapshot(bytes(dest))
    db.check_integrity(ledger)
