"""The recorder: what a worker's output says (controller/outcome.py's Outcome) as
the ledger's rows: a check's verdict, a part of the directory pass, or a batch's
attempt (controller/file_outcomes.py)."""
from __future__ import annotations

from sqlalchemy import Connection

from fleetsync.ledger import deletions, logbook, migration, verify
from fleetsync.ledger.states import DeleteMode, LogLevel, OutcomeKind

from . import file_outcomes, outcome
from .outcome import Outcome
from .policy import Policy


class Recorder:
    """Records outcomes on the dispatcher's connection; delete: the dispatch's
    --delete mode (a dry run's deletions are recorded as such)."""

    def __init__(self, conn: Connection, mig: migration.Migration, policy: Policy,
                 delete: DeleteMode) -> None:
        self.conn, self.mig, self.policy, self.delete = conn, mig, policy, delete

    def record(self, out: Outcome, worker_id: str) -> None:
        if out.kind is OutcomeKind.VERIFY:
            verify.record(self.conn, out.task_id, out.claim_no, out.rsync_exit_code,
                          out.sums, out.errors)
        elif out.kind in (OutcomeKind.DIRS, OutcomeKind.DELETE, OutcomeKind.CLEAN):
            self._record_pass(out, worker_id)
        else:
            self._record_batch(out, worker_id)

    def _record_batch(self, out: Outcome, worker_id: str) -> None:
        """The verdict and the per-file rows (controller/file_outcomes.py)."""
        file_outcomes.record_batch(self.conn, out, worker_id, self.policy, self.mig.src,
                                   self.mig.dest)

    def _record_pass(self, out: Outcome, worker_id: str) -> None:
        """A part of the directory pass: its deletions go to the ledger, errors to the log."""
        if out.kind in (OutcomeKind.DELETE, OutcomeKind.CLEAN):
            deleted = [line.split(" ", 1)[1].strip() for line in out.itemized
                       if line.startswith("*deleting")]
            dry_run = out.kind is OutcomeKind.DELETE and self.delete is DeleteMode.DRY_RUN
            deletions.record(self.conn, deleted, dry_run, worker_id)
        if out.rsync_exit_code != 0:
            logbook.add(self.conn, _pass_level(out), f"directory pass ({out.kind.value}) "
                        f"exit={out.rsync_exit_code}: " + "; ".join(out.errors[:3]),
                        worker_id=worker_id)


def _pass_level(out: Outcome) -> LogLevel:
    """A directory removed from SRC since the walk is a normal event, not an error for
    /logs: rsync's exit 24 (vanished; outcome.py maps a listed entry that no longer
    exists to it)."""
    return LogLevel.INFO if out.rsync_exit_code == outcome.VANISHED_EXIT else LogLevel.ERROR
