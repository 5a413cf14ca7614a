"""What to do with a batch after an rsync exit code.

Retried (up to --max-retries): 23 partial transfer, 24 vanished source files,
the transport codes 10 11 12 30 35 255 (socket, I/O, protocol data stream,
timeouts, ssh), 20 (rsync got a signal), timeout's 124/137, and our 250 (the
file list arrived damaged): a second try can succeed. Failed at once: usage and
setup errors (1 syntax, 2 protocol incompatibility, 3 cannot select input or
output files, 4 unsupported action, 5 cannot start the client-server protocol,
6 daemon log, 13 diagnostics, 14 IPC, 21 waitpid, 22 memory, 25 --max-delete):
the same command on the same host would fail the same way.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

DEFAULT_FATAL = frozenset({1, 2, 3, 4, 5, 6, 13, 14, 21, 22, 25})


class Verdict(str, enum.Enum):
    SUCCEED = "succeed"
    RETRY = "retry"
    FAIL = "fail"


@dataclass(frozen=True)
class Policy:
    max_retries: int = 3
    fatal: frozenset = field(default=DEFAULT_FATAL)

    def verdict(self, exit_code: int | None, retry_count: int) -> Verdict:
        """retry_count: retries already used by this batch before this attempt."""
        if exit_code == 0:
            return Verdict.SUCCEED
        if exit_code in self.fatal or retry_count >= self.max_retries:
            return Verdict.FAIL
        return Verdict.RETRY
