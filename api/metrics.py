"""/metrics: the numbers of /status, /progress and /throughput in Prometheus text format.

Counts are the same integers the JSON routes give; times are unrounded
seconds (Prometheus computes its own rates with rate()).
"""
from __future__ import annotations

from sqlalchemy import Connection

from fleetsync.ledger import queries

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    """A label value with the escapes the text format asks for."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _metric(lines: list[str], name: str, help_: str, samples: list[tuple[str, float]]) -> None:
    lines.append(f"# HELP fleetsync_{name} {help_}")
    lines.append(f"# TYPE fleetsync_{name} gauge")
    lines.extend(f"fleetsync_{name}{labels} {value}" for labels, value in samples)


def render(conn: Connection) -> str:
    counts = queries.batch_counts(conn)
    status = queries.status(conn)
    pending = queries.progress(conn)["pending"]
    beats = queries.heartbeat_times(conn)
    lines: list[str] = []
    for key, help_ in [("total_batches", "Batches enqueued (/status.total_batches)."),
                       ("completed_batches", "Batches succeeded."),
                       ("failed_batches", "Batches failed for good."),
                       ("queue_depth", "Batches waiting to be dispatched (not running)."),
                       ("producers_done", "Producers that finished their walk."),
                       ("entries_not_arrived", "Entries that could not be read or written "
                                               "(view missing_entries).")]:
        _metric(lines, key, help_, [("", status[key])])
    _metric(lines, "pending_batches", "total - completed - failed (includes running).",
            [("", pending)])
    for key, help_ in [("batches", "Batches in each state."),
                       ("files", "Files of the batches in each state."),
                       ("directories", "Directories of the batches in each state."),
                       ("bytes", "Scanned bytes of the batches in each state.")]:
        _metric(lines, f"state_{key}", help_,
                [(f'{{state="{state}"}}', c[key]) for state, c in sorted(counts.items())])
    _metric(lines, "elapsed_seconds", "Running time of the migration across resumes.",
            [("", queries.elapsed_sec(conn))])
    _metric(lines, "worker_heartbeat_timestamp_seconds", "Last event heard from each worker.",
            [(f'{{worker_id="{_label(w)}"}}', ts) for w, ts in beats])
    return "\n".join(lines) + "\n"
