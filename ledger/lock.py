"""One `fleetsync run` (or `verify`) per ledger: a lock file beside the ledger.

A second run on a ledger in use would kill the first run's rsyncs (each run
stops the leftovers of its migration) and fight over its batches. So `run`
and `verify` hold `LEDGER.lock` for their whole life: an fcntl (POSIX) lock,
which the kernel drops when the process dies however it dies (kill -9, OOM),
and which NFS servers honour across hosts. The file also says who holds it
(pid and host), for the refusal and for the next run to say whose stale lock
it took over. The readers (the API, `serve`, `status`) never take it: they
open the ledger read-only and may watch a live run.

A lock file that names a holder but whose lock is free was left by a run that
died: it is taken over, and the caller says so.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from . import space
from .db import LedgerError


def lock_path(ledger_path: str) -> str:
    return os.path.abspath(ledger_path) + ".lock"


class LedgerLock:
    """Held from acquire() to release() (or the end of the process)."""

    def __init__(self, ledger_path: str):
        self.ledger_path = ledger_path
        self.path = lock_path(ledger_path)
        self.fd: int | None = None
        self.stale: str | None = None     # "pid N on host H" of a dead run taken over

    def acquire(self) -> LedgerLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise LedgerError(f"cannot create the ledger's lock {self.path}: "
                              f"{e.strerror}") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read(fd)
            os.close(fd)
            if e.errno in (errno.EACCES, errno.EAGAIN):
                raise LedgerError(f"ledger in use by {holder or 'another process'} "
                                  f"(lock {self.path})") from None
            raise LedgerError(f"cannot lock the ledger ({self.path}): {e.strerror}") from None
        # Locked: whoever the file still names is dead (or lost the lock with its host).
        self.stale = _read(fd) or None
        os.ftruncate(fd, 0)
        try:
            os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        except OSError as e:
            os.close(fd)
            if e.errno == errno.ENOSPC:      # the ledger's filesystem: it shares the folder
                raise space.full_error(self.ledger_path) from None
            raise
        self.fd = fd
        return self

    def release(self) -> None:
        """Empty the file (a clean end leaves no stale holder) and drop the lock."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        finally:
            os.close(self.fd)     # closing the only descriptor drops the POSIX lock
            self.fd = None

    def __enter__(self) -> LedgerLock:
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> str:
    data = os.pread(fd, 200, 0)
    return data.decode("utf-8", "replace").strip()


# struct flock of Linux (x86_64, aarch64): l_type, l_whence, l_start, l_len, l_pid.
_FLOCK = "hhqqi4x"


def held(ledger_path: str) -> bool | None:
    """Whether a run (or verify) holds the ledger's lock now, asked without taking it
    (F_GETLK: a reader must never make a starting run fail to lock). None when it
    cannot be told: no lock file (a ledger copied elsewhere, or one no run has used)
    or one this user cannot open; the caller then goes by the run's heartbeat."""
    try:
        fd = os.open(lock_path(ledger_path), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        asked = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        return struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, asked))[0] != fcntl.F_UNLCK
    except OSError:
        return None
    finally:
        os.close(fd)
