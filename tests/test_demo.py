"""`make demo` and the README's excerpt of it tell the same story."""
from __future__ import annotations

import re
import subprocess
import sys

from .support import REPO


def _ports(text: str) -> tuple[set[str], set[str]]:
    """The ports `fleetsync run --port P` used and the ports curl asked."""
    return (set(re.findall(r"fleetsync run .*--port (\d+)", text)),
            set(re.findall(r"curl -s http://127\.0\.0\.1:(\d+)/", text)))


def test_the_readme_excerpt_curls_the_port_the_run_served():
    readme = open(f"{REPO}/README.md", encoding="utf-8").read()
    excerpt = readme[readme.index("`make demo` prints"):readme.index("The first second")]
    run, curl = _ports(excerpt)
    assert len(run) == 1 and curl == run, (run, curl)


def test_the_demo_serves_the_finished_ledger_on_the_runs_port(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fleetsync.controller.demo", "--dir",
                        str(tmp_path / "demo"), "--files", "40"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    run, curl = _ports(r.stdout)
    assert len(run) == 1 and curl == run, (run, curl)
