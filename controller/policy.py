"""What to do with a batch after an rsync exit code, and with its entries after
rsync's per-file errors.

Batch level. Retried (up to --max-retries): 23 partial transfer, 24 vanished
source files, the transport codes 10 11 12 30 35 255 (socket, I/O, protocol data
stream, timeouts, ssh), 20 (rsync got a signal), timeout's 124/137, and our 250
(the file list arrived damaged): a second try can succeed. Failed at once: usage
and setup errors (1 syntax, 2 protocol incompatibility, 3 cannot select input or
output files, 4 unsupported action, 5 cannot start the client-server protocol,
6 daemon log, 13 diagnostics, 14 IPC, 21 waitpid, 22 memory, 25 --max-delete):
the same command on the same host would fail the same way.

Entry level (issue 10). When rsync exits 23 or 24 and every error line names an
entry of the batch, the batch's verdict comes from its entries' classes:

- vanished (ENOENT on the sender, "file has vanished"): gone from SRC since the
  walk. An outcome to record, not a failure: alone, the batch *succeeds* (with a
  warning `task N retry R exit=24` and the entries named).
- permanent (EACCES, EPERM: permissions, root_squash; ENAMETOOLONG: the name is
  too long for DEST; ELOOP: a path through a symlink loop; an entry of another
  type in the way at DEST): the same copy fails the same way, so the batch *fails
  at once*, no retries spent; its other entries arrived, and `fleetsync retry
  --failed` sends the failed entries alone.
- may heal (EIO, ESTALE: a flaky disk, an NFS handle gone stale; EAGAIN; ENOSPC:
  DEST may get space; ETIMEDOUT; any errno not named here, and ENOENT on the
  receiving side, which is DEST's, not SRC's): *retried*, the failing entries
  alone, up to --max-retries; then failed.

A line that names no entry of the batch (an implied parent directory, a name
that cannot be told apart) or an error line that names no file at all makes the
attempt a batch-level failure: what arrived is not known, never guessed. A batch
that rsync gave up on (an exit other than 0, 23, 24: 11 on a full DEST) is then
looked at on its worker (controller/rsync.py: _dest_check), and what its look finds
at DEST whole arrived (controller/file_outcomes.py: looked_at_dest).
"""
from __future__ import annotations

import enum
import errno
from dataclasses import dataclass, field

from fleetsync.ledger.states import EntryClass

from . import defaults

DEFAULT_FATAL = frozenset({1, 2, 3, 4, 5, 6, 13, 14, 21, 22, 25})
PER_FILE_EXITS = frozenset({23, 24})   # rsync's "some files did not arrive"

# Every errno not named here may heal (EIO, ESTALE, EAGAIN, ENOSPC, ETIMEDOUT...).
PERMANENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.ELOOP})


def classify(err: int | None, sending: bool = True) -> EntryClass:
    """The class of an errno. sending: it was SRC's side (rsync's sender, the walk);
    an ENOENT there means the entry vanished, on DEST's side it may heal."""
    if err == errno.ENOENT:
        return EntryClass.VANISHED if sending else EntryClass.MAY_HEAL
    if err in PERMANENT_ERRNOS:
        return EntryClass.PERMANENT
    return EntryClass.MAY_HEAL


class Verdict(str, enum.Enum):
    SUCCEED = "succeed"
    RETRY = "retry"
    FAIL = "fail"


@dataclass(frozen=True)
class Policy:
    max_retries: int = defaults.MAX_RETRIES
    fatal: frozenset = field(default=DEFAULT_FATAL)

    def verdict(self, exit_code: int | None, retry_count: int) -> Verdict:
        """retry_count: retries already used by this batch before this attempt."""
        if exit_code == 0:
            return Verdict.SUCCEED
        if exit_code in self.fatal or retry_count >= self.max_retries:
            return Verdict.FAIL
        return Verdict.RETRY

    def entry_verdict(self, exit_code: int | None, retry_count: int,
                      classes: list[EntryClass], per_file_only: bool) -> tuple[Verdict, bool]:
        """(verdict, rest_arrived) of an attempt with per-file errors of these classes.
        per_file_only: every error line named an entry of the batch. rest_arrived:
        every entry the attempt sent, but those of `classes`, is at DEST."""
        if not (per_file_only and exit_code in PER_FILE_EXITS and classes):
            verdict = self.verdict(exit_code, retry_count)
            return verdict, verdict is Verdict.SUCCEED
        if all(c is EntryClass.VANISHED for c in classes):
            return Verdict.SUCCEED, True
        if EntryClass.MAY_HEAL not in classes or retry_count >= self.max_retries:
            return Verdict.FAIL, True
        return Verdict.RETRY, True
