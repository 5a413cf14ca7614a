"""The lines a worker host prints for the controller to read: every kind, how it is
written and how it is read back, in one place.

A worker's output mixes rsync's own lines with ours, which start with MARK:

  @@fleetsync begin task=T claim=C kind=K start=S   a batch (or check, or pass) starts
  @@fleetsync end task=T claim=C rc=R end=E         ...and ends with rsync's exit code R
  @@fleetsync stop                                  no more work for this host: its loop ends
  @@fleetsync idle                                  nothing to run yet: ask again
  @@fleetsync worker NAME                           the preflight passed; the host's worker id
  @@fleetsync error WHY                             the preflight failed, and why
  @@fleetsync killed leftover PID                   the preflight killed a dead run's process
  @@fleetsync checked task=T rc=R                   a failed batch's look at DEST ran (rc 0:
                                                    its MISSING lines name all it lacks)

Between begin and end, rsync's itemized lines (a deletion's entries) start with
ITEM, and SUM's lines carry a full-file checksum (a copy's, of SRC; a verify's, of
DEST):

  @@C HEX NAME                                      HEX: the checksum of NAME (as rsync
                                                    prints names: \\#ooo for odd bytes)
  @@M %i NAME                                       after a batch failed: an entry of it
                                                    that is not at DEST whole (CHECK_FORMAT)
 While an item runs, the host prints BEAT's empty lines,
which nobody parses: their bytes alone say the host is alive (controller/hostrun.py).

Writers: the shell fragments controller/rsync.py and controller/slot.py emit come
from here. playbooks/preflight.sh.j2 (worker, error, killed), dispatch.yml and
migrate.yml (worker, stop, error) keep the text in place, where Ansible reads it;
tests/test_protocol.py checks that text against this module.
Readers: controller/outcome.py (begin, end, itemized and checksum lines) and
controller/dispatch.py (stop, idle, worker, error, killed) call the parsers below.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from fleetsync.ledger import logbook
from fleetsync.ledger.states import OutcomeKind

MARK = "@@fleetsync"
ITEM = "@@I "     # rsync's itemized lines (what differs, what is deleted)
ITEMIZE = f"--out-format={ITEM}%i %n"    # the rsync option that writes them
BEAT = "printf '\\n'"    # the shell that writes one beat (an empty line)
SUM = "@@C "      # a file's full-file checksum and its name
# What rsync prints for every entry it sends (a copy) or lists (a checksum pass):
# SUM, the 11 characters of %i, then %C (hex, or blanks when rsync has none) and
# the name. rsync.sums() keeps only the lines with a checksum, as `@@C HEX NAME`.
SUM_FORMAT = f"--out-format={SUM}%i %C %n"
MISSING = "@@M "  # an entry a dry run would send again: not at DEST whole
# A failed batch's look at DEST (controller/rsync.py: _dest_check) is a dry run of the
# batch's own rsync: a line per entry it would still send or create (%i's update
# type `>`, `c` or `h`); an entry present with only its attributes differing (`.`)
# has arrived (a regular file's size and mtime equal SRC's: rsync's quick check).
CHECK_FORMAT = f"--out-format={MISSING}%i %n"
NOT_THERE = f"^{MISSING}[<>ch]"    # the update types of an entry that is not there


class Kind(Enum):
    """Every kind of MARK line."""
    BEGIN = "begin"
    END = "end"
    STOP = "stop"
    IDLE = "idle"
    WORKER = "worker"
    ERROR = "error"
    KILLED = "killed"
    CHECKED = "checked"


def prefix(kind: Kind) -> str:
    """What every line of this kind starts with (its values follow after a space)."""
    return f"{MARK} {kind.value}"


# -- writers: shell fragments ----------------------------------------------------------------
# $(date +%s.%N): the host's clock, in the host's shell, when the line is printed.

def begin(task_id: int, claim: int, kind: OutcomeKind) -> str:
    """The shell that prints a batch's begin line."""
    return (f"echo {prefix(Kind.BEGIN)} task={int(task_id)} claim={int(claim)} "
            f"kind={OutcomeKind(kind).value} start=$(date +%s.%N)")


def end(task_id: int, claim: int, rc: str = "$rc") -> str:
    """The shell that prints a batch's end line; rc: the shell word of its exit code."""
    return (f"echo {prefix(Kind.END)} task={int(task_id)} claim={int(claim)} rc={rc} "
            "end=$(date +%s.%N)")


def checked(task_id: int, rc: str = "$c") -> str:
    """The shell that prints the line closing a failed batch's look at DEST."""
    return f"echo {prefix(Kind.CHECKED)} task={int(task_id)} rc={rc}"


STOP = f"echo {prefix(Kind.STOP)}"
IDLE = f"echo {prefix(Kind.IDLE)}"


def killed_text(pid: int) -> str:
    """How a killed leftover is told (the line says it after MARK; the log repeats it)."""
    return f"{Kind.KILLED.value} leftover {pid}"


# -- readers ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Begin:
    task_id: int
    claim: int
    kind: OutcomeKind
    start: float


@dataclass(frozen=True)
class End:
    task_id: int
    claim: int
    rc: int
    end: float


_BEGIN = re.compile(rf"^{prefix(Kind.BEGIN)} task=(\d+) claim=(\d+) kind=(\w+) start=([\d.]+)",
                    re.M)
_END = re.compile(rf"^{prefix(Kind.END)} task=(\d+) claim=(\d+) rc=(\d+) end=([\d.]+)", re.M)
_CHECKED = re.compile(rf"^{prefix(Kind.CHECKED)} task=(\d+) rc=(\d+)", re.M)
_KILLED = re.compile(rf"^{prefix(Kind.KILLED)} leftover (\d+)")


def begins(stdout: str) -> list[tuple[int, Begin]]:
    """Every begin line of the output, with where it starts, in order."""
    return [(m.start(), Begin(int(m[1]), int(m[2]), OutcomeKind(m[3]), float(m[4])))
            for m in _BEGIN.finditer(stdout)]


def first_end(text: str) -> End | None:
    """The first end line of one batch's text, or None (the batch did not finish)."""
    m = _END.search(text)
    return m and End(int(m[1]), int(m[2]), int(m[3]), float(m[4]))


def itemized(lines: list[str]) -> list[str]:
    """rsync's itemized lines among these, without their prefix."""
    return [line[len(ITEM):] for line in lines if line.startswith(ITEM)]


def sums(lines: list[str]) -> dict[bytes, bytes]:
    """The checksums among these lines (`@@C HEX NAME`), raw, by name decoded from
    rsync's escapes; the first line of a name says it (a copy's own %C comes before
    a checksum pass's). A digest of zeros (a dry run's %C) is none. A split and
    bytes.fromhex, no regex: this runs for every file copied (bench/custody.py)."""
    found: dict[bytes, bytes] = {}
    start = len(SUM)
    for line in lines:
        if not line.startswith(SUM):
            continue
        digest, _, name = line[start:].partition(" ")
        try:
            raw = bytes.fromhex(digest)
        except ValueError:
            continue
        if name and raw.strip(b"\0"):
            path = (logbook.rsync_unescape(name) if "\\" in name
                    else name.encode("utf-8", "surrogateescape"))
            found.setdefault(path, raw)
    return found


def not_at_dest(text: str, lines: list[str]) -> set[bytes] | None:
    """The entries one batch's look at DEST found missing (names relative to SRC,
    decoded from rsync's escapes, a directory's trailing / dropped), or None when no
    look ran or it did not end with rc 0 (then what it printed proves nothing)."""
    m = _CHECKED.search(text)
    if m is None or m[2] != "0":
        return None
    found = set()
    for line in lines:
        if line.startswith(MISSING):
            name = line[len(MISSING):].partition(" ")[2]
            found.add(logbook.rsync_unescape(name.removesuffix("/")))
    return found


def says(stdout: str, kind: Kind) -> bool:
    """Whether the output holds a line of this kind (stop, idle: a word alone; the
    playbooks test `'@@fleetsync stop' in stdout` the same way)."""
    return prefix(kind) in stdout


def _rests(stdout: str, kind: Kind) -> list[str]:
    start = prefix(kind) + " "
    return [line[len(start):] for line in stdout.splitlines() if line.startswith(start)]


def worker(preflight_stdout: str) -> str:
    """The worker id the preflight named (ValueError when it named none)."""
    for rest in _rests(preflight_stdout, Kind.WORKER):
        return rest.strip()
    raise ValueError("the preflight did not name the worker")


def errors(preflight_stdout: str) -> list[str]:
    """Why the preflight failed, one reason per error line."""
    return _rests(preflight_stdout, Kind.ERROR)


def killed(preflight_stdout: str) -> list[int]:
    """The leftover processes the preflight killed."""
    return [int(m[1]) for m in map(_KILLED.match, preflight_stdout.splitlines()) if m]
