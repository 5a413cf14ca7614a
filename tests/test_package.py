"""The package as an operator installs it: a wheel in a fresh venv, used from elsewhere.

`pip install .` must give one `fleetsync` package (no top-level `controller`,
`ledger` or `api` to collide with other software) that finds its playbooks and
default inventory wherever it is run from.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from .support import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("wheel")
    # A copy of the sources: setuptools builds in the source tree (build/, *.egg-info).
    sources = tmp_path_factory.mktemp("sources") / "fleetsync"
    shutil.copytree(REPO, sources, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.egg-info", "demo", "out", "__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out),
                        str(sources)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.fail(f"pip wheel failed: {r.stderr[-2000:]}")
    [name] = [n for n in os.listdir(out) if n.endswith(".whl")]
    return str(out / name)


def test_the_wheel_holds_one_fleetsync_package_with_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"fleetsync"}, tops
    for data in ("fleetsync/playbooks/dispatch.yml", "fleetsync/playbooks/migrate.yml",
                 "fleetsync/playbooks/preflight.sh.j2",
                 "fleetsync/playbooks/lookup_plugins/fleetsync_claim.py",
                 "fleetsync/playbooks/strategy_plugins/fleetsync_free.py",
                 "fleetsync/inventory/local.ini"):
        assert data in names, data


def test_a_wheel_in_a_fresh_venv_migrates_from_another_directory(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", wheel],
                         capture_output=True, text=True, timeout=900)
    if pip.returncode != 0:
        pytest.fail(f"pip install of the wheel failed: {pip.stderr[-2000:]}")
    src, elsewhere = tmp_path / "src", tmp_path / "elsewhere"
    (src / "d").mkdir(parents=True)
    for i in range(30):
        (src / "d" / f"f{i}").write_text(f"file {i}\n")
    elsewhere.mkdir()
    # Not the checkout's venv, not the checkout's directory: only the installed wheel.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([str(venv / "bin" / "fleetsync"), "run", "--no-api", "--src", str(src),
                        "--dest", str(tmp_path / "dest"), "--batch-files", "10"],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "4 of 4 batches succeeded" in r.stderr + r.stdout
    assert sorted(os.listdir(tmp_path / "dest" / "d")) == sorted(os.listdir(src / "d"))
    assert os.path.exists(elsewhere / "fleetsync.db")
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import fleetsync.controller as c; print(c.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(venv)), where.stdout


# The layers: controller/ may use api/ and ledger/, api/ may use ledger/, ledger/
# uses neither (issue 21, item 1). Imports inside functions count too.
LAYERS = {"ledger": set(), "api": {"ledger"}, "controller": {"api", "ledger"}}


def test_imports_run_one_way_between_the_packages():
    import ast
    wrong = []
    for package, allowed in LAYERS.items():
        for d, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(d, name)
                for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                    names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                             else [node.module or ""] if isinstance(node, ast.ImportFrom)
                             and node.level == 0 else
                             # from ..x import y: a sibling package
                             [f"fleetsync.{node.module or ''}"] if isinstance(node, ast.ImportFrom)
                             and node.level == 2 else [])
                    for mod in names:
                        parts = mod.split(".")
                        if (parts[0] == "fleetsync" and len(parts) > 1 and parts[1] in LAYERS
                                and parts[1] != package and parts[1] not in allowed):
                            wrong.append(f"{os.path.relpath(path, REPO)}:{node.lineno} {mod}")
    assert wrong == []
