"""Docs that stay honest: the README names every field of the user's API spec, its
shell examples run as shown, and its demo excerpt is what `make demo` prints."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from .support import REPO

SPEC = os.path.join(os.path.dirname(REPO), "shared", "spec", "api.ko.md")
README = os.path.join(REPO, "README.md")

# The spec's fields, as its examples show them (kept here too so that the test runs
# where shared/ is not beside the repository).
FIELDS = {
    "/status": ["total_batches", "completed_batches", "failed_batches", "queue_depth",
                "producers_done"],
    "/progress": ["total", "completed", "failed", "pending"],
    "/throughput": ["batches_per_sec", "elapsed_sec", "batches_completed", "batches_failed",
                    "files_processed", "bytes_processed", "gb_processed", "bytes_per_sec",
                    "gb_per_sec", "files_per_sec"],
    "/workers": ["heartbeats"],
    "/logs": ["warnings", "errors"],
    "/results": ["results", "retained_limit", "retained_count", "worker_id", "task_id",
                 "status", "retry_count", "rsync_exit_code", "stats", "bytes_sent",
                 "bytes_received", "start_ts", "end_ts", "file_count", "directory_count",
                 "estimated_bytes", "received_ts"],
}


def _keys(obj) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _keys(v)}
    return set()


def test_the_field_list_matches_the_spec_when_the_spec_is_here():
    if not os.path.exists(SPEC):
        pytest.skip("shared/spec/api.ko.md is not beside this clone")
    text = open(SPEC, encoding="utf-8").read()
    spec_keys = set()
    for block in re.findall(r"```json\n(.*?)```", text, re.S):
        spec_keys |= _keys(json.loads(block))
    spec_keys -= {"worker-a-uuid", "worker-b-uuid"}
    assert spec_keys == {f for fs in FIELDS.values() for f in fs}


def test_every_spec_field_is_in_the_readme_api_section():
    readme = open(README, encoding="utf-8").read()
    api = readme[readme.index("## API reference"):]
    for path, fields in FIELDS.items():
        assert f"GET {path}" in api, path
        for field in fields:
            assert f"`{field}`" in api or f'"{field}"' in api, (path, field)


# -- the README's shell examples run as shown (issue 20, 11) ---------------------------------
# A ```sh block runs, in order with the others, in a checkout of its own, with its paths
# made temporary; one that cannot run here says so just above it, in a comment the
# reader does not see:  <!-- docs-test: skip: WHY -->
SKIP = re.compile(r"<!-- docs-test: skip: (.+?) -->")
BLOCK = re.compile(r"^(<!-- docs-test: [^\n]*-->\n)?```sh\n(.*?)^```", re.S | re.M)
# The machine-wide places the examples name, moved under the test's own directory.
PLACES = re.compile(r"(?<=[\s=])/(?=(?:data|mnt|var/lib/fleetsync|etc/fleetsync)\b)")
REPO_PATH = re.compile(r"(?<![\w/.$-])((?:\.venv|inventory|playbooks)/[\w./-]*[\w])")


def shell_blocks() -> list[tuple[int, str | None, str]]:
    """(line, why it is skipped or None, text) of every ```sh block of the README."""
    readme = open(README, encoding="utf-8").read()
    found = []
    for m in BLOCK.finditer(readme):
        mark = SKIP.search(m[1] or "")
        assert m[1] is None or mark, f"README line {readme.count(chr(10), 0, m.start()) + 1}: " \
            f"unknown docs-test comment {m[1]!r}"
        found.append((readme.count("\n", 0, m.start()) + 1, mark[1] if mark else None, m[2]))
    return found


def _checkout(work) -> dict:
    """A checkout as the README's reader has one (the inventory theirs to change), and
    the environment with its .venv/bin on PATH."""
    work.mkdir()
    shutil.copytree(os.path.join(REPO, "inventory"), work / "inventory")
    os.symlink(os.path.join(REPO, "playbooks"), work / "playbooks")
    os.symlink(sys.prefix, work / ".venv")
    return dict(os.environ, PATH=os.path.join(sys.prefix, "bin") + os.pathsep + os.environ["PATH"])


def _temporary(text: str, root, port: int) -> str:
    """The block with its places under root, the sources it copies made, and the API of
    a plain `fleetsync run` on a free port (8000 may be taken on a shared machine)."""
    text = PLACES.sub(f"{root}/", text)
    text = re.sub(r"(fleetsync run)(?![^\n]*(?:--port|--no-api))", rf"\1 --port {port}", text)
    for src in re.findall(r"(?:--src |-e src=)(\S+)", text):
        if not os.path.exists(src):
            os.makedirs(os.path.join(src, "d"))
            for i in range(5):
                with open(os.path.join(src, "d", f"f{i}"), "w") as f:
                    f.write(f"file {i}\n")
    for token in re.findall(r"--token-file (\S+)", text):
        os.makedirs(os.path.dirname(token), exist_ok=True)
        with open(token, "w") as f:
            f.write("s3cret\n")
    return text


def test_the_readme_marks_what_cannot_run_here():
    blocks = shell_blocks()
    assert len(blocks) >= 6, blocks
    assert any(why is None for _, why, _ in blocks)
    assert all(why is None or why.strip() for _, why, _ in blocks)


def test_every_shell_example_of_the_readme_runs_as_shown(tmp_path):
    from .support import free_port
    work, root = tmp_path / "work", tmp_path / "root"
    env = _checkout(work)
    blocks = shell_blocks()
    for line, why, text in blocks:
        if why is not None:
            continue
        script = _temporary(text, root, free_port())
        r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=work, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (f"README line {line}", script, r.stdout[-3000:],
                                   r.stderr[-3000:])
    # What cannot run here names only files that exist, or that an example made.
    for line, why, text in blocks:
        for path in REPO_PATH.findall(text):
            assert (work / path).exists(), f"README line {line}: {path} does not exist"


# -- the demo excerpt is what `make demo` prints ---------------------------------------------
def _demo_lines(text: str) -> list[str]:
    """Lines of a demo's output without what changes from run to run: times, rates,
    ports, the demo's directory, the batch count (walkers cut their own batches), the
    walkers' count (the cores); the progress lines, whose number depends on time."""
    out = []
    for line in text.splitlines():
        if " progress {" in line or not line.strip():
            continue
        line = re.sub(r"/\S*/demo(?=[/\s]|$)", "DEMO", line)
        line = re.sub(r"(127\.0\.0\.1:|--port )\d+", r"\1PORT", line)
        line = re.sub(r"\d+\.\d+", "F", line)
        line = re.sub(r'("(?:total_batches|completed_batches|batches_completed|total|completed'
                      r'|producers_done)": )\d+', r"\1N", line)
        line = re.sub(r"\d+ of \d+ batches", "N of N batches", line)
        out.append(line.rstrip())
    return out


def test_the_readme_demo_excerpt_is_what_make_demo_prints(tmp_path):
    readme = open(README, encoding="utf-8").read()
    start = readme.index("`make demo` prints")
    begin = readme.index("```\n", start) + 4
    excerpt = readme[begin:readme.index("```", begin)]
    # One batch count throughout the excerpt (but for the progress while it ran).
    final = "\n".join(ln for ln in excerpt.splitlines() if " progress {" not in ln)
    counts = set(re.findall(r'"(?:total_batches|completed_batches|batches_completed|total|'
                            r'completed)": (\d+)', final))
    counts |= {n for pair in re.findall(r"(\d+) of (\d+) batches", final) for n in pair}
    assert len(counts) == 1, counts
    r = subprocess.run([sys.executable, "-m", "fleetsync.controller.demo", "--dir",
                        str(tmp_path / "demo")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:]
    shown, printed = _demo_lines(excerpt), _demo_lines(r.stdout)
    # The API processes' own lines come from other processes: in the output, in any order.
    said = [ln for ln in shown if ln.startswith("fleetsync: ") and " API " in ln]
    assert all(ln in printed for ln in said), (said, printed)
    rest = iter([ln for ln in printed if ln not in said])
    missing = [ln for ln in shown if ln not in said and not any(ln == p for p in rest)]
    assert missing == [], (missing, r.stdout[-3000:])


def test_the_architecture_section_names_every_module():
    """A newcomer can find any file from the README's map (issue 21, item 7)."""
    text = open(README, encoding="utf-8").read()
    section = text[text.index("## Architecture"):text.index("## Monitoring")]
    missing = []
    for top in ("controller", "ledger", "api", "playbooks"):
        for d, _, files in os.walk(os.path.join(REPO, top)):
            for name in files:
                if name == "__init__.py" or "__pycache__" in d or not name.endswith(
                        (".py", ".yml", ".j2")):
                    continue
                rel = os.path.relpath(os.path.join(d, name), os.path.join(REPO, top))
                if f"`{rel}`" not in section:
                    missing.append(f"{top}/{rel}")
    assert missing == []
