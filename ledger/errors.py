"""The one base of every error that fleetsync says in one line (exit status 2 on the
command line, a task's error in the playbook): bad input, a ledger it cannot use, an
inventory it cannot read, a run that cannot go on. Each layer raises its own kind;
the command line catches this base alone. Anything else is a bug, with its traceback.
At the bottom layer so that every package can use it (controller -> api -> ledger)."""


class FleetsyncError(Exception):
    """Said in one line; nothing was lost."""
