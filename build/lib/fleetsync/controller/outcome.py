"""What a worker's output says: the outcome of each batch an item ran.

The worker's command (controller/rsync.py) frames every rsync between a
`@@fleetsync begin` and a `@@fleetsync end` line; between them come rsync's
own lines: its errors, its --stats totals and, for a check or a deletion, its
itemized lines.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from fleetsync.ledger.states import OutcomeKind

from .rsync import ITEM, MARK

@dataclass
class Outcome:
    """One batch's result as parsed from the worker's output."""
    task_id: int
    claim_no: int         # the claim it answers (batches.claim when it was claimed)
    rsync_exit_code: int | None
    kind: OutcomeKind = OutcomeKind.COPY
    itemized: list[str] = field(default_factory=list)   # verify: differences; delete: deletions
    start_ts: float | None = None
    end_ts: float | None = None
    bytes_sent: int | None = None
    bytes_received: int | None = None
    errors: list[str] = field(default_factory=list)


_BEGIN = re.compile(rf"^{MARK} begin task=(\d+) claim=(\d+) kind=(\w+) start=([\d.]+)", re.M)
_END = re.compile(rf"^{MARK} end task=(\d+) claim=(\d+) rc=(\d+) end=([\d.]+)", re.M)
_STAT = re.compile(r"^Total bytes (sent|received): ([\d,]+)", re.M)
_VANISHED = re.compile(r'^rsync: \[sender\] link_stat ".*" failed: No such file or directory'
                       r"|^file has vanished: ")
VANISHED_EXIT = 24


def parse(stdout: str) -> Outcome | None:
    """The outcome of one batch, or None when the output holds no batch."""
    found = parse_all(stdout)
    return found[0] if found else None


def parse_all(stdout: str) -> list[Outcome]:
    """Every rsync a command ran (a directory-pass part runs up to three), in order."""
    starts = [m.start() for m in _BEGIN.finditer(stdout)]
    return [_parse_one(stdout[a:b]) for a, b in zip(starts, starts[1:] + [len(stdout)])]


def _parse_one(text: str) -> Outcome:
    begin = _BEGIN.search(text)
    out = Outcome(int(begin[1]), int(begin[2]), None, kind=OutcomeKind(begin[3]),
                  start_ts=float(begin[4]))
    end = _END.search(text)
    if end:
        out.rsync_exit_code = int(end[3])
        out.end_ts = float(end[4])
    for kind, value in _STAT.findall(text):
        setattr(out, f"bytes_{kind}", int(value.replace(",", "")))
    lines = text.splitlines()
    out.errors = [line for line in lines
                  if line.startswith(("rsync:", "rsync error:", "fleetsync:", "timeout:",
                                      "file has vanished:"))]
    out.itemized = [line[len(ITEM):] for line in lines if line.startswith(ITEM)]
    if out.rsync_exit_code == 23 and _only_vanished(out.errors):
        # rsync says 23 for a listed file that no longer exists; it is the same
        # event as exit 24 ("vanished source files") and gets the same policy.
        out.rsync_exit_code = VANISHED_EXIT
    return out


def _only_vanished(errors: list[str]) -> bool:
    real = [e for e in errors if not e.startswith("rsync error:")]
    return bool(real) and all(_VANISHED.search(e) for e in real)
