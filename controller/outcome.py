"""What a worker's output says: the outcome of each batch an item ran.

The worker's command (controller/rsync.py) frames every rsync between a
`@@fleetsync begin` and a `@@fleetsync end` line (controller/protocol.py); between
them come rsync's own lines: its errors, its --stats totals and, for a check or a
deletion, its itemized lines.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from fleetsync.ledger import logbook
from fleetsync.ledger.entry_outcomes import IN_THE_WAY
from fleetsync.ledger.states import OutcomeKind

from . import protocol

@dataclass
class FileError:
    """One of rsync's per-file error lines, its path decoded to bytes (rsync prints
    a name's unprintable bytes, newlines and non-UTF-8 included, as \\#ooo).

    `paths`: every reading of the path(s) the line names, as rsync printed them
    (absolute, or relative to DEST for the "could not make way" lines); a line
    naming two paths (`rename "A" -> "B"`) gives one reading per place the
    separator could be, and only a reading that is an entry of the batch is ever
    taken (controller/file_outcomes.py maps them; it never guesses)."""
    line: str
    op: str                          # "send_files failed to open", "link_stat", ...
    paths: list[bytes]
    errno: int | None                # None: no errno in the line ("file has vanished")
    why: str                         # rsync's strerror text, or the line's own words
    relative: bool = False           # the path is relative to DEST, not absolute
    sending: bool = True             # rsync's sender said it (SRC's side)


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
    file_errors: list[FileError] = field(default_factory=list)   # per-file error lines
    other_errors: list[str] = field(default_factory=list)  # error lines naming no file
    sums: dict[bytes, bytes] = field(default_factory=dict)  # checksums by entry (SUM lines)
    # After a copy that failed as a whole: the entries its look at DEST did not find
    # there whole (names relative to SRC); None: no look ran, or it failed.
    not_at_dest: set[bytes] | None = None


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
    found = protocol.begins(stdout)
    ends = [at for at, _ in found[1:]] + [len(stdout)]
    return [_parse_one(begin, stdout[at:to]) for (at, begin), to in zip(found, ends)]


def _parse_one(begin: protocol.Begin, text: str) -> Outcome:
    out = Outcome(begin.task_id, begin.claim, None, kind=begin.kind, start_ts=begin.start)
    end = protocol.first_end(text)
    if end:
        out.rsync_exit_code = end.rc
        out.end_ts = end.end
    for kind, value in _STAT.findall(text):
        setattr(out, f"bytes_{kind}", int(value.replace(",", "")))
    lines = text.splitlines()
    out.errors = [line for line in lines if line.startswith(_ERROR_STARTS)]
    for line in out.errors:
        found = file_error(line)
        if found is not None:
            out.file_errors.append(found)
        elif not line.startswith("rsync error:"):    # the summary of the lines above
            out.other_errors.append(line)
    out.itemized = protocol.itemized(lines)
    out.sums = protocol.sums(lines)
    out.not_at_dest = protocol.not_at_dest(text, lines)
    if out.rsync_exit_code == 23 and _only_vanished(out.errors):
        # rsync says 23 for a listed file that no longer exists; it is the same
        # event as exit 24 ("vanished source files") and gets the same policy.
        out.rsync_exit_code = VANISHED_EXIT
    return out


_ERROR_STARTS = ("rsync:", "rsync error:", "fleetsync:", "timeout:", "file has vanished:",
                 "could not make way for new ", "cannot delete non-empty directory: ")
# rsync: [sender] send_files failed to open "/src/a": Permission denied (13)
# rsync: [sender] link_stat "/src/a" failed: No such file or directory (2)
# rsync: [sender] readlink_stat("/src/a") failed: Permission denied (13)
# rsync: [generator] recv_generator: mkdir "/dest/a" failed: Permission denied (13)
# The path runs from the first quote to the last one: strerror holds no quote.
_SYSERR = re.compile(r'^rsync: (?:\[(?P<role>\w+)\] )?(?P<op>[^"]*?)\(?"(?P<path>.*)"\)?'
                     r"(?: failed)?: (?P<why>[^\"]*) \((?P<errno>\d+)\)$")
_VANISHED_LINE = re.compile(r'^(?:rsync: (?:\[\w+\] )?)?file has vanished: "(?P<path>.*)"$')
# A DEST entry in the way: relative names, unquoted.
_IN_THE_WAY = re.compile(r"^(?P<op>could not make way for new [\w ]+|"
                         r"cannot delete non-empty directory): (?P<path>.+)$")
_TWO_PATHS = '" -> "'


def unescape(text: str) -> bytes:
    """A name as rsync printed it, back to its bytes (\\#ooo is one byte)."""
    return logbook.rsync_unescape(text)


def file_error(line: str) -> FileError | None:
    """The per-file error a line of rsync's reports, or None for any other line."""
    m = _VANISHED_LINE.match(line)
    if m:
        return FileError(line, "file has vanished", [unescape(m["path"])], None,
                         "vanished from SRC during the transfer")
    m = _SYSERR.match(line)
    if m:
        text = m["path"]
        # `rename "A" -> "B"`, `symlink "A" -> "B"`: the first path is the entry's
        # (or its temporary file's); the separator may sit inside a name too.
        cuts = [i for i in range(len(text)) if text.startswith(_TWO_PATHS, i)]
        readings = [text] + [text[:i] for i in cuts]
        return FileError(line, m["op"].strip(), [unescape(r) for r in readings],
                         int(m["errno"]), m["why"],
                         sending=m["role"] in (None, "sender") and "recv_" not in m["op"])
    m = _IN_THE_WAY.match(line)
    if m:
        return FileError(line, m["op"], [unescape(m["path"])], None,
                         IN_THE_WAY, relative=True,
                         sending=False)
    return None


def _only_vanished(errors: list[str]) -> bool:
    real = [e for e in errors if not e.startswith("rsync error:")]
    return bool(real) and all(_VANISHED.search(e) for e in real)
