"""One progress line: batches, files, bytes, rate and ETA, from the ledger.

`fleetsync run` redraws it on a terminal once a second (nothing when stderr is
not a terminal: logs stay clean); `fleetsync status` prints it once.
"""
from __future__ import annotations

import logging
import sys
import threading
import time

from sqlalchemy import select

from fleetsync.ledger import db, migration, queries, schema

log = logging.getLogger(__name__)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return ""


def _duration(sec: float) -> str:
    sec = int(sec)
    return f"{sec // 3600}:{sec % 3600 // 60:02d}:{sec % 60:02d}"


def _run_state(conn) -> str:
    """"running", "finished" (the last run ended with nothing left) or "stopped"
    (interrupted, crashed, or never started): the API's rule, a heartbeat younger
    than migration.LIVE_AFTER_HEARTBEAT."""
    row = conn.execute(select(schema.migration.c.run_started_ts,
                              schema.migration.c.run_heartbeat_ts,
                              schema.migration.c.finished_ts)).first()
    if row is None:
        return "stopped"
    if row.run_started_ts is None:      # the last run ended (migration.end_run/stop_run)
        return "finished" if row.finished_ts is not None else "stopped"
    beat = row.run_heartbeat_ts or row.run_started_ts
    return "running" if time.time() - beat < migration.LIVE_AFTER_HEARTBEAT else "stopped"


def line(conn, running: bool | None = None) -> str:
    """batches done/total (failed), files, bytes; while a run goes on, bytes/s and the
    ETA at that rate; else whether it finished or stopped, and after how long.
    running: known by the caller (the run itself), or None to read it from the ledger."""
    counts = queries.batch_counts(conn)
    tp = queries.throughput(conn)
    total_bytes = sum(c["bytes"] for c in counts.values())
    total = sum(c["batches"] for c in counts.values())
    head = (f"batches {tp['batches_completed']}/{total} ({tp['batches_failed']} failed)  "
            f"files {tp['files_processed']:,}  {_size(tp['bytes_processed'])}/{_size(total_bytes)}")
    state = "running" if running else _run_state(conn) if running is None else "stopped"
    if state != "running":
        # No rate or ETA: nothing moves, and an average would read as a live speed.
        how = "finished" if state == "finished" else "stopped (no run going on)"
        return f"{head}  {how} after {_duration(tp['elapsed_sec'])}"
    left = total_bytes - tp["bytes_processed"]
    rate = tp["bytes_per_sec"]
    eta = _duration(left / rate) if rate > 0 and left > 0 else ("0:00:00" if left <= 0 else "?")
    return f"{head}  {_size(rate)}/s  {tp['files_per_sec']:.0f} files/s  ETA {eta}"


class Live:
    """Redraws the line on stderr every second while a run goes on (terminals only)."""

    def __init__(self, ledger_path: str, stream=sys.stderr):
        self.ledger_path, self.stream = ledger_path, stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def start(self) -> "Live":
        if self.stream.isatty():
            self._thread.start()
        return self

    def _loop(self) -> None:
        engine = db.reader(self.ledger_path)   # one engine for the whole run
        while not self._stop.wait(1.0):
            try:
                with engine.connect() as conn, conn.begin():
                    text = line(conn, running=True)
                self.stream.write("\r\033[K" + text)
                self.stream.flush()
            except Exception as e:   # a busy or vanished ledger: skip one redraw
                log.debug("progress line not drawn: %s", e)
        engine.dispose()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self.stream.write("\r\033[K")
            self.stream.flush()
