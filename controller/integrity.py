"""The ledger's integrity check during a run: `PRAGMA quick_check` (ledger/db.py)
reads the whole file, about 1.3 GiB at 10M entries, so a run checks beside its
start, in a thread (sqlite3 lets go of the GIL while it reads), and never before
its first rsync. The dispatcher asks after it as it goes (a damaged ledger stops
the run, its processes ended, in one line) and the copy waits for it before the
run's end is recorded."""
from __future__ import annotations

import threading

from fleetsync.ledger import db


class IntegrityCheck(threading.Thread):
    """quick_check of one ledger, in the background; raise_if_damaged() says its
    verdict (LedgerDamaged) once it has one."""

    def __init__(self, ledger_path: str):
        super().__init__(name="integrity", daemon=True)
        self.ledger_path = ledger_path
        self.error: db.LedgerError | None = None

    def start(self) -> IntegrityCheck:
        super().start()
        return self

    def run(self) -> None:
        try:
            db.check_integrity(self.ledger_path)
        except db.LedgerError as e:     # raised in the run's thread by raise_if_damaged
            self.error = e

    def raise_if_damaged(self, wait: bool = False) -> None:
        """LedgerDamaged (or the LedgerError of a file it could not read) when the check
        found it; wait: until the check is over (else only a verdict found already)."""
        if wait:
            self.join()
        if self.error is not None:
            raise self.error
