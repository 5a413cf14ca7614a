"""One progress line: batches, files, bytes, rate and ETA, from the ledger.

`fleetsync run` redraws it on a terminal once a second (nothing when stderr is
not a terminal: logs stay clean); `fleetsync status` prints it once.
"""
from __future__ import annotations

import logging
import sys
import threading

from fleetsync.ledger import db, queries

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


def line(conn) -> str:
    """batches done/total (failed), files, bytes, bytes/s, ETA at that rate."""
    counts = queries.batch_counts(conn)
    tp = queries.throughput(conn)
    total_bytes = sum(c["bytes"] for c in counts.values())
    left = total_bytes - tp["bytes_processed"]
    total = sum(c["batches"] for c in counts.values())
    rate = tp["bytes_per_sec"]
    eta = _duration(left / rate) if rate > 0 and left > 0 else ("0:00:00" if left <= 0 else "?")
    return (f"batches {tp['batches_completed']}/{total} ({tp['batches_failed']} failed)  "
            f"files {tp['files_processed']:,}  {_size(tp['bytes_processed'])}/{_size(total_bytes)}"
            f"  {_size(rate)}/s  {tp['files_per_sec']:.0f} files/s  ETA {eta}")


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
                    text = line(conn)
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
