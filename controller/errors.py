"""Bad input from the operator (ledger/errors.py: the base the command line catches)."""

from fleetsync.ledger.errors import FleetsyncError


class UsageError(FleetsyncError):
    """Bad input from the operator: said in one line, nothing lost."""


class WalkFailed(FleetsyncError):
    """The walk of SRC could not complete (a producer kept failing): the log in the
    ledger says why; the next run or scan resumes it."""
