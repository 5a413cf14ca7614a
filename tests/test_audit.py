"""Audits that answer: what the ledger says after a run, read with plain sqlite3
(real `fleetsync run`, real rsync, real SQLite files)."""
from __future__ import annotations

import os
import shutil
import sqlite3

from .support import fleetsync


def query(ledger, sql, *args):
    con = sqlite3.connect(ledger)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def run(src, dest, ledger, *more):
    r = fleetsync("run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger),
                  "--no-api", *more)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return r


# -- 12. normal events stay out of /logs.errors ------------------------------------------
def test_a_directory_removed_from_src_is_no_error(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f").write_text("f")
    (src / "c").mkdir()
    (src / "c" / "g").write_text("g")
    run(src, dest, ledger)
    shutil.rmtree(src / "a" / "b")
    run(src, dest, ledger)                              # the directory pass meets a/b
    run(src, dest, ledger, "--rescan", "--delete")      # the walk and the delete pass too
    assert query(ledger, "SELECT message FROM log WHERE level = 'error'") == []
    infos = [m for (m,) in query(ledger, "SELECT message FROM log WHERE level = 'info'")]
    assert any(m.startswith("directory pass (dirs) exit=24") for m in infos), infos
    assert not (dest / "a" / "b").exists() and (dest / "c" / "g").read_text() == "g"
