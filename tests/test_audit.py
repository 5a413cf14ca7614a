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


# -- 11. /workers: the state of each worker beside its heartbeat --------------------------
def test_workers_shows_up_lost_with_its_next_try_and_gone(make_ledger):
    import json
    import time
    import urllib.request

    from fleetsync.api.app import make_app
    from fleetsync.api.server import ServerThread
    from fleetsync.ledger import db, workers

    ledger = make_ledger("/src")
    retry_at = time.time() + 300
    with db.connect(ledger) as conn:
        for wid, host in (("a-1", "a"), ("b-1", "b"), ("c-1", "c")):
            workers.seen(conn, wid, host, 2)
        workers.lost(conn, "b-1", retry_at)
        workers.gone(conn, "c")
    with ServerThread(make_app(ledger), port=0) as api:
        with urllib.request.urlopen(f"{api.url}/workers", timeout=10) as r:
            body = json.load(r)
        with urllib.request.urlopen(f"{api.url}/openapi.json", timeout=10) as r:
            schema = json.load(r)["components"]["schemas"]["Workers"]
    assert set(body["heartbeats"]) == {"a-1", "b-1", "c-1"}      # the spec's key stays
    assert body["workers"] == {
        "a-1": {"host": "a", "state": "up", "next_try": None},
        "b-1": {"host": "b", "state": "lost",
                "next_try": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(retry_at))},
        "c-1": {"host": "c", "state": "gone", "next_try": None}}
    assert schema["required"] == ["heartbeats", "workers"]
