"""Bad input from the operator (ledger/errors.py: the base the command line catches)."""

from fleetsync.ledger.errors import FleetsyncError


class UsageError(FleetsyncError):
    """Bad input from the operator: said in one line, nothing lost."""
