"""A run's ledger faults, said in one line wherever they are met: its disk full
(ledger/space.py: LedgerFull, exit status 4) or its file damaged (ledger/db.py:
LedgerDamaged, exit status 2). Every writer and reader of a run meets them as an
SQLite error at its next statement; the run's own clean-up stops its processes on
the way out, and the command line then says the fault once, not a traceback."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from . import db, space


@contextlib.contextmanager
def in_one_line(ledger_path: str) -> Iterator[None]:
    """A full or damaged ledger met inside the block raised as its one-line error;
    every other error goes on as it was."""
    try:
        yield
    except Exception as e:
        if space.full(e):
            raise space.full_error(ledger_path) from None
        if db.damaged(e):
            raise db.damaged_error(ledger_path, [str(getattr(e, "orig", e))]) from None
        raise
