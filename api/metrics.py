"""/metrics: the ledger's numbers in Prometheus text format, for dashboards and alerts.

Gauges repeat /status, /progress and /throughput (the same integers; times are
unrounded seconds). Counters (`_total`) only ever go up, so Prometheus'
rate() and increase() work on them: attempts by status, retries, rsync's bytes,
entries recorded as not arrived by class. They come from the `attempt_counts` and
`outcome_counts` tables kept by triggers (ledger/schema.py), read in ledger/queries.py,
so a scrape reads a handful of rows at any number of attempts. Workers are one
row per host. monitoring/alerts.yml and monitoring/grafana-dashboard.json use
these names: a renamed metric breaks them (tests/test_metrics.py checks).
"""
from __future__ import annotations

import importlib.metadata
import time

from sqlalchemy import Connection

from fleetsync.ledger import queries, space
from fleetsync.ledger.states import AttemptStatus, WorkerState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

try:
    VERSION = importlib.metadata.version("fleetsync")
except importlib.metadata.PackageNotFoundError:   # a source tree never installed
    VERSION = "unknown"

def _label(value: str) -> str:
    """A label value with the escapes the text format asks for."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_label(str(v))}"' for k, v in labels.items()) + "}"


def _metric(lines: list[str], name: str, help_: str, samples: list[tuple[str, float]],
            kind: str = "gauge") -> None:
    lines.append(f"# HELP fleetsync_{name} {help_}")
    lines.append(f"# TYPE fleetsync_{name} {kind}")
    lines.extend(f"fleetsync_{name}{labels} {value}" for labels, value in samples)


def render(conn: Connection, now: float | None = None) -> str:
    now = time.time() if now is None else now
    counts = queries.batch_counts(conn)
    status = queries.status(conn)
    pending = queries.progress(conn)["pending"]
    beats = queries.heartbeat_times(conn)
    lines: list[str] = []
    _metric(lines, "build_info", "The fleetsync version serving these metrics (always 1).",
            [(_labels(version=VERSION), 1)])
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
                [(_labels(state=state), c[key]) for state, c in sorted(counts.items())])
    _metric(lines, "elapsed_seconds", "Running time of the migration across resumes.",
            [("", queries.elapsed_sec(conn, now))])
    _metric(lines, "worker_heartbeat_timestamp_seconds", "Last event or beat heard from each worker.",
            [(_labels(worker_id=w), ts) for w, ts in beats])
    _counters(lines, conn)
    _workers(lines, conn, now)
    _room(lines, conn)
    return "\n".join(lines) + "\n"


def _room(lines: list[str], conn: Connection) -> None:
    """The ledger's filesystem: a full one stops the run (exit 4), so an alert can
    fire before (ledger/space.py: the need is an estimate)."""
    room = space.room(conn)
    if room is None:
        return
    _metric(lines, "ledger_free_bytes", f"Free bytes on the ledger's filesystem "
            f"({_label(room.filesystem)}).", [("", room.free)])
    _metric(lines, "ledger_needed_bytes", "What the ledger is expected to grow by: "
            "entries (the walk's count, else SRC's used inodes) x bytes per entry, less "
            "its size now.", [("", room.needed)])
    _metric(lines, "ledger_space_short", "1 when the ledger's filesystem has less free "
            "space than the ledger is expected to need (the run warned at start).",
            [("", int(room.short))])


def _counters(lines: list[str], conn: Connection) -> None:
    attempts = sorted(queries.attempt_counts(conn).items())
    _metric(lines, "attempts_total", "Attempts recorded, by status: success, retry (failed, "
            "will run again), failed (for good), lost (host lost), requeued (fleetsync retry).",
            [(_labels(status=s), n) for s, (n, _, _) in attempts], "counter")
    _metric(lines, "retries_total", "Retries scheduled after a retryable rsync exit "
            '(attempts_total{status="retry"}).',
            [("", dict(attempts)[AttemptStatus.RETRY.value][0])], "counter")
    _metric(lines, "bytes_sent_total", "Bytes rsync reported sent, over every attempt.",
            [("", sum(sent for _, (_, sent, _) in attempts))], "counter")
    _metric(lines, "bytes_received_total", "Bytes rsync reported received, over every attempt.",
            [("", sum(received for _, (_, _, received) in attempts))], "counter")
    _metric(lines, "entry_errors_total", "Entries recorded as not arrived, by class, each "
            "time one was (a per-file rsync error, a walk error; a batch that failed as a "
            "whole is in attempts_total): rate() shows new ones, entries_not_arrived how many "
            "are still missing. vanished: deleted from SRC, an outcome, not a failure.",
            [(_labels(**{"class": c}), n) for c, n in sorted(queries.outcome_counts(conn).items())],
            "counter")


def _workers(lines: list[str], conn: Connection, now: float) -> None:
    rows = queries.worker_rows(conn)
    by_state = {s.value: 0 for s in WorkerState}
    for _, _, state, _ in rows:
        by_state[state] = by_state.get(state, 0) + 1
    _metric(lines, "workers", "Workers in each state: up, lost (unreachable or silent; "
            "tried again after a back-off), gone (left the inventory).",
            [(_labels(state=s), n) for s, n in sorted(by_state.items())])
    _metric(lines, "worker_heartbeat_age_seconds", "Seconds since each worker was last heard "
            "from, with its state (the API's clock, which is the controller's).",
            [(_labels(worker_id=w, host=h, state=s), max(0.0, now - ts))
             for w, h, s, ts in rows if ts is not None])
