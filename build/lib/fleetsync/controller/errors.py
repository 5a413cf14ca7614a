"""Errors the command line turns into one line and exit status 2."""


class UsageError(Exception):
    """Bad input from the operator: said in one line, nothing lost."""
