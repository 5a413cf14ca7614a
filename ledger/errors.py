"""The one base of every error that fleetsync says in one line (exit status 2 on the
command line, a task's error in the playbook): bad input, a ledger it cannot use, an
inventory it cannot read; and a run that cannot go on (CannotGoOn, exit status 4).
Each layer raises its own kind; the command line catches this base alone. Anything
else is a bug, with its traceback. At the bottom layer so that every package can use
it (controller -> api -> ledger)."""


class FleetsyncError(Exception):
    """Said in one line; nothing was lost."""
    exit_status = 2      # the command line's: a usage or configuration error


class CannotGoOn(FleetsyncError):
    """The run began and could not go on (its ledger's disk is full): every process of
    the run was stopped, nothing recorded is lost; fix the cause and run again to resume."""
    exit_status = 4
