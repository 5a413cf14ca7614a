"""The command line as an operator meets it: --help, status, serve."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.request

import pytest

from .support import fleetsync, free_port, popen


@pytest.mark.parametrize("cmd", [[], ["run"], ["serve"], ["status"]])
def test_help_of_every_command(cmd):
    r = fleetsync(*cmd, "--help")
    assert r.returncode == 0
    out = r.stdout.decode()
    assert "usage: fleetsync" in out
    for sub in (["run", "serve", "status"] if not cmd else []):
        assert sub in out


def test_the_console_script_is_installed():
    exe = shutil.which("fleetsync", path=os.path.dirname(sys.executable))
    assert exe, "pip install -e . installs the fleetsync command"


def test_status_and_serve_on_a_finished_ledger(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(12):
        (src / "d" / f"f{i}").write_bytes(b"x" * i)
    ledger = str(tmp_path / "l.db")
    r = fleetsync("run", "--no-api", "--src", str(src), "--dest", str(tmp_path / "dest"),
                  "--ledger", ledger, "--batch-files", "5")
    assert r.returncode == 0, r.stderr.decode()
    st = json.loads(fleetsync("status", "--json", "--ledger", ledger).stdout)
    assert st["status"]["total_batches"] == st["status"]["completed_batches"] == 3
    assert st["throughput"]["files_processed"] == 12
    port = free_port()
    p = popen("serve", "--ledger", ledger, "--port", str(port))
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as resp:
                    body = json.load(resp)
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("serve did not answer")
        assert body == st["status"]
    finally:
        p.terminate()
        p.wait(10)


def test_status_and_serve_without_a_ledger_are_one_line(tmp_path):
    for cmd in ("status", "serve"):
        r = fleetsync(cmd, "--ledger", str(tmp_path / "none.db"))
        assert r.returncode == 2
        assert len(r.stderr.decode().strip().splitlines()) == 1
        assert not (tmp_path / "none.db").exists()
