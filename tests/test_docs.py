"""Docs that stay honest: the README names every field of the user's API spec."""
from __future__ import annotations

import json
import os
import re

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
