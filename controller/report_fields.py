"""The columns of `fleetsync report`'s rows, as every format writes them, and the
counts its summary needs (controller/report.py writes; controller/report_html.py
shows).

Paths are written losslessly (escape_path): UTF-8 where they are, `\\xNN` for a byte
that is not UTF-8 and for a control character (so a newline stays on its row), and
`\\\\` for a backslash itself: `printf '%b'` (or Python's codecs.escape_decode) gives
the exact bytes back. Times are ISO 8601 in UTC; mtime stays whole seconds since the
epoch, as `stat -c %Y` prints it.
"""
from __future__ import annotations

import datetime
import functools

from fleetsync.ledger.report_rows import Entry
from fleetsync.ledger.states import EntryType, FileVerdict, ReportOutcome

from .defaults import REPORT_FAILURES

COLUMNS = ("path", "type", "size", "mtime", "outcome", "checksum", "verified", "worker",
           "task_id", "attempt", "copied_at")
TYPES = {EntryType.FILE: "file", EntryType.DIR: "dir", EntryType.SYMLINK: "symlink",
         EntryType.OTHER: "other"}
# FileVerdict -> the report's word (NULL: "not checked"). MISSING is finer than the
# issue's "differs": nothing (or no regular file) is at DEST under the name.
VERDICTS = {FileVerdict.SAME: "yes", FileVerdict.DIFFERS: "differs",
            FileVerdict.MISSING: "missing", FileVerdict.UNRECORDED: "not checked"}
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7f)}


def escape_path(path: bytes) -> str:
    """A path as the report writes it, one line, lossless (the module doc)."""
    if path.isascii() and b"\\" not in path:
        text = path.decode("ascii")
        if text.isprintable():          # most names: nothing to escape (and 3x faster)
            return text
    text = path.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")
    return text.translate(_CONTROL)


def utc(ts: float | None) -> str:
    """A time as ISO 8601 in UTC, to the second ("" for none)."""
    return "" if ts is None else _utc_second(int(ts))


@functools.lru_cache(maxsize=4096)
def _utc_second(second: int) -> str:
    """The entries of a batch share their copy's time: formatted once."""
    return datetime.datetime.fromtimestamp(second, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


# Outcomes written with their reason; those the HTML lists as failures.
_WITH_REASON = {ReportOutcome.NOT_ARRIVED, ReportOutcome.EXCLUDED}
_FAILED = {ReportOutcome.NOT_ARRIVED, ReportOutcome.VANISHED}
_DIR = EntryType.DIR


def fields(e: Entry, algorithm: str) -> dict:
    """One row's columns (COLUMNS), as every format writes them."""
    outcome = e.outcome.value
    if e.reason and e.outcome in _WITH_REASON:
        outcome = f"{outcome}: {e.reason}"
    verified = "not checked" if e.verified is None else VERDICTS[e.verified]
    return {"path": escape_path(e.path), "type": TYPES.get(e.type, ""), "size": e.size,
            "mtime": e.mtime, "outcome": outcome,
            "checksum": f"{algorithm}:{e.checksum.hex()}" if e.checksum else "",
            "verified": verified, "worker": e.worker or "", "task_id": e.task_id,
            "attempt": e.attempt, "copied_at": utc(e.copied_ts)}


class Tally:
    """What the summary needs of the rows, counted as they pass: counts and bytes by
    outcome, the first failures and the first rows for the HTML (bounded)."""

    def __init__(self, keep_rows: int = 0):
        self.outcomes = {o: {"entries": 0, "bytes": 0} for o in ReportOutcome}
        self.types = {name: 0 for name in (*TYPES.values(), "unknown")}
        self.verified = {word: 0 for word in dict.fromkeys(VERDICTS.values())}
        self.entries = 0
        self.failures: list[dict] = []
        self.rows: list[dict] = []
        self.keep_rows = keep_rows

    def add(self, e: Entry, row: dict) -> None:
        self.entries += 1
        counted = self.outcomes[e.outcome]
        counted["entries"] += 1
        counted["bytes"] += (e.size or 0) if e.type is not _DIR else 0
        self.types[row["type"] or "unknown"] += 1
        self.verified[row["verified"]] += 1
        if e.outcome in _FAILED and len(self.failures) < REPORT_FAILURES:
            self.failures.append(row)
        if len(self.rows) < self.keep_rows:
            self.rows.append(row)

    def summary(self) -> dict:
        return {"entries": self.entries,
                "outcomes": {o.value: counted for o, counted in self.outcomes.items()},
                "types": self.types,
                "verified": self.verified}
