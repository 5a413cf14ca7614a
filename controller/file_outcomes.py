"""From an attempt's rsync output to its batch's transition and per-file rows.

controller/dispatch.py calls `record_batch` for every copy outcome (the one place
an Outcome becomes a batch transition). Each per-file error line is mapped back
to an entry of the batch: its path, decoded from rsync's escapes, must be SRC/ or
DEST/ followed by the entry's exact bytes (or by the entry's directory and rsync's
temporary name for it, `.NAME.XXXXXX`), and exactly one entry may match. Anything
else is recorded as a line that could not be mapped, never guessed.

A copy that rsync gave up on (looked_at_dest) is decided by its look at DEST
instead: what the look names missing gets a row, every other entry it sent arrived
(a line that named no entry stays in the attempt's errors).
"""
from __future__ import annotations

import os
import re

from sqlalchemy import Connection

from fleetsync.ledger import batches, hardlinks
from fleetsync.ledger.batches import Report
from fleetsync.ledger.entry_outcomes import EntryOutcome
from fleetsync.ledger.states import EntryClass, EntrySource

from .outcome import FileError, Outcome
from .policy import Policy, Verdict, classify

_TEMP = re.compile(rb"\.(.+)\.[A-Za-z0-9]{6}")


def walk_error(rel: bytes, err: OSError, what: str, listing: bool) -> EntryOutcome:
    """A walk error as a per-file row: `what` names the path for the log (through
    ledger/logbook.show_path). listing: a directory that could not be listed or
    entered, whose contents are unknown."""
    return EntryOutcome(rel or b".", classify(err.errno, sending=True),
                        f"{what}: {err.strerror}", err.errno,
                        EntrySource.WALK_LIST if listing else EntrySource.WALK)


def _roots(src: str, dest: str) -> list[bytes]:
    roots = [os.fsencode(src).rstrip(b"/")]
    head = dest.split("/", 1)[0]
    if ":" in head:                      # host:/path: the receiver prints its own path
        dest = dest.split(":", 1)[1]
    roots.append(os.fsencode(dest).rstrip(b"/"))
    return roots


def _readings(fe: FileError, roots: list[bytes]):
    """Every entry path the line could name (relative to SRC)."""
    for path in fe.paths:
        rels = [path] if fe.relative else [
            b"." if path == root else path[len(root) + 1:]
            for root in roots if path == root or path.startswith(root + b"/")]
        for rel in rels:
            yield rel
            head, name = os.path.split(rel)
            temp = _TEMP.fullmatch(name)
            if temp:                     # rsync's temporary file of the entry
                yield os.path.join(head, temp[1])


def map_entry(fe: FileError, entries: set[bytes], roots: list[bytes]) -> bytes | None:
    """The one entry of the batch the line names, or None."""
    found = {rel for rel in _readings(fe, roots) if rel in entries}
    return found.pop() if len(found) == 1 else None


def file_outcomes(out: Outcome, entries: set[bytes], src: str, dest: str
                  ) -> tuple[list[EntryOutcome], bool]:
    """(per-file rows, every line was mapped and no error line named no file)."""
    roots, found, seen = _roots(src, dest), [], set()
    mapped_all = not out.other_errors
    for fe in out.file_errors:
        path = map_entry(fe, entries, roots)
        if path is None:
            mapped_all = False
            found.append(EntryOutcome(None, classify(fe.errno, fe.sending),
                                      f"not mapped to one entry of the batch: {fe.line}",
                                      fe.errno))
            continue
        if path in seen:                 # two lines about one entry: the first says it
            continue
        seen.add(path)
        cls = (EntryClass.VANISHED if fe.errno is None and fe.op == "file has vanished"
               else EntryClass.PERMANENT if fe.errno is None
               else classify(fe.errno, fe.sending))
        why = f"{fe.op}: {fe.why}" + (f" ({fe.errno})" if fe.errno is not None else "")
        found.append(EntryOutcome(path, cls, why, fe.errno))
    return found, mapped_all


def looked_at_dest(conn: Connection, out: Outcome, found: list[EntryOutcome],
                   worker_id: str) -> tuple[list[EntryOutcome], bool]:
    """(per-file rows, rest_arrived) of a copy that failed as a whole, from its look at
    DEST (controller/rsync.py: _dest_check): a row for each entry it sent that is not
    there whole, and for the other names of its hard links (one name alone cannot be
    sent again: it would arrive as a file of its own); every other entry it sent
    arrived. Each row says why, with the host. Nothing missing (rsync failed after
    the last entry arrived): the batch stays failed as a whole, as before."""
    sent = {p for p, _, _ in batches.entries(conn, out.task_id)} - {b"."}
    missing = out.not_at_dest & sent
    with conn.begin():
        groups = hardlinks.groups_in(conn, out.task_id)
    for group in groups:
        if group & missing:
            missing |= group & sent
    if not missing:
        return found, False
    own = {o.path: o for o in found if o.path is not None}
    cls, why, err = _cause(out)
    where = f"host {worker_id}, rsync exit {out.rsync_exit_code}"
    return [EntryOutcome(p, own[p].cls, f"{own[p].reason} ({where})", own[p].errno)
            if p in own else
            EntryOutcome(p, cls, f"not at DEST when its batch failed ({where}): {why}", err)
            for p in sorted(missing)], True


def _cause(out: Outcome) -> tuple[EntryClass, str, int | None]:
    """Why rsync gave up on the batch, as rsync said it: its first per-file error
    with an errno ("No space left on device (28)"), else its first other error line."""
    for fe in out.file_errors:
        if fe.errno is not None:
            return classify(fe.errno, fe.sending), f"{fe.why} ({fe.errno})", fe.errno
    return EntryClass.MAY_HEAL, (out.other_errors or out.errors or ["(no error line)"])[0], None


def record_batch(conn: Connection, out: Outcome, worker_id: str, policy: Policy,
                 src: str, dest: str) -> None:
    """The batch's transition for this outcome, with its per-file rows."""
    report = Report(out.task_id, out.claim_no, worker_id, out.rsync_exit_code,
                    out.bytes_sent, out.bytes_received, out.start_ts, out.end_ts, out.errors,
                    checksums=out.sums)
    used = batches.retry_count_of(conn, out.task_id)
    found, mapped_all = [], True
    if out.file_errors or out.rsync_exit_code != 0:
        with conn.begin():
            entries = {p for p, _, _ in batches.entries_in(conn, out.task_id)}
        found, mapped_all = file_outcomes(out, entries, src, dest)
    verdict, rest_arrived = policy.entry_verdict(
        out.rsync_exit_code, used, [o.cls for o in found], mapped_all)
    rest_arrived = rest_arrived and mapped_all
    if verdict is not Verdict.SUCCEED and not rest_arrived and out.not_at_dest:
        found, rest_arrived = looked_at_dest(conn, out, found, worker_id)
    report.file_outcomes, report.rest_arrived = found, rest_arrived
    if verdict is Verdict.SUCCEED:
        batches.succeed(conn, report, retries_used=used)
    elif verdict is Verdict.RETRY:
        batches.retry(conn, report, used + 1)
    else:
        batches.fail(conn, report, used)
