"""The playbooks pass ansible-lint's production profile (its strictest).

ansible-lint lives in .venv-lint, a venv of its own (`make test` creates it;
requirements-lint.txt says why), so it cannot move .venv's ansible-core off 2.19.
It runs once for every playbook of playbooks/, offline (no update check, no
collection install); each playbook is then its own test.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess

import pytest

from .support import REPO

LINT = os.path.join(REPO, ".venv-lint", "bin", "ansible-lint")
PLAYBOOKS = sorted(os.path.relpath(p, REPO)
                   for p in glob.glob(os.path.join(REPO, "playbooks", "*.yml")))

pytestmark = pytest.mark.skipif(
    not os.path.exists(LINT), reason="ansible-lint is not installed in .venv-lint "
    "(`make lint-venv`, which `make test` runs, creates it)")


@pytest.fixture(scope="module")
def violations() -> dict[str, list[str]]:
    """{playbook: ["path:line rule: description", ...]} from one ansible-lint run."""
    r = subprocess.run([LINT, "--offline", "--profile", "production", "-f", "json", *PLAYBOOKS],
                       cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "NO_COLOR": "1",
                            "PATH": os.path.dirname(LINT) + os.pathsep + os.environ["PATH"]})
    # 0: clean, 2: violations found; anything else is ansible-lint itself failing.
    assert r.returncode in (0, 2), r.stderr[-3000:]
    found: dict[str, list[str]] = {p: [] for p in PLAYBOOKS}
    for v in json.loads(r.stdout or "[]"):
        where = v["location"]
        line = where.get("positions", {}).get("begin", {}).get("line", where.get("lines", {}))
        found.setdefault(where["path"], []).append(
            f"{where['path']}:{line} {v['check_name']}: {v['description']}")
    return found


def test_every_playbook_is_linted():
    assert {"playbooks/migrate.yml", "playbooks/dispatch.yml"} <= set(PLAYBOOKS)


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_is_clean_with_the_production_profile(violations, playbook):
    if playbook == "playbooks/dispatch.yml" and _before_the_fleet_branch():
        pytest.skip("dispatch.yml is made lint-clean on branch `fleet` (with the task names "
                    "controller/dispatch.py matches); this check runs once it is merged")
    assert violations[playbook] == []


def test_nothing_outside_the_playbooks_is_reported(violations):
    """A violation in a file a playbook pulls in (a template, a plugin) counts too."""
    assert {p: v for p, v in violations.items() if p not in PLAYBOOKS and v} == {}


def _before_the_fleet_branch() -> bool:
    """dispatch.yml still has the lower-case task names that branch `fleet` renames."""
    with open(os.path.join(REPO, "playbooks", "dispatch.yml")) as f:
        return "- name: preflight\n" in f.read()
