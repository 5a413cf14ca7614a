"""Every state machine of fleetsync, one Enum each.

Values are what the ledger stores (and what the API and audits read), so a
value never changes meaning. SQL binds them as parameters; only DDL (views,
triggers, partial indexes), which cannot take parameters, spells them out,
and it does so from these Enums too.
"""
from __future__ import annotations

import enum


class BatchState(str, enum.Enum):
    PENDING = "pending"      # waiting to be claimed
    RUNNING = "running"      # claimed by a worker slot
    SUCCEEDED = "succeeded"  # rsync exit 0
    FAILED = "failed"        # gave up: fatal exit code or retries used up


class Compare(enum.IntEnum):
    """How a batch's rsync decides that a file at DEST is already up to date
    (column batches.checksum)."""
    QUICK = 0      # rsync's quick check: same size and mtime (a first copy)
    CHECKSUM = 1   # --checksum: a verify found other bytes under the same size and time
    ALWAYS = 2     # --ignore-times: a rescan saw the entry change (its inode or ctime),
    #                though its size and mtime may not show it (replaced by rename,
    #                rewritten in place with its mtime set back): the new contents must
    #                arrive whatever DEST's size and mtime say. Not --checksum: most
    #                changed files differ anyway and would be read twice for nothing.


class EntryType(enum.IntEnum):
    """What an entry of SRC is, as the walk's lstat saw it (columns batch_files.type
    and hardlinks.type). Not a state machine: a kind, kept small (0 and 1 take no
    bytes in a SQLite record; NULL: a row written before the walk recorded it)."""
    FILE = 0       # a regular file
    DIR = 1        # a directory
    SYMLINK = 2    # a symbolic link (never followed)
    OTHER = 3      # a fifo, a socket, a device


class ReportOutcome(str, enum.Enum):
    """What became of one entry of SRC, as `fleetsync report` says it (its rows are
    read from the batches' states and missing_entries: ledger/report_rows.py)."""
    ARRIVED = "arrived"                # its latest batch copied it, nothing says otherwise
    NOT_ARRIVED = "not arrived"        # named by missing_entries, or not copied yet
    VANISHED = "vanished"              # gone from SRC between the walk and its copy
    EXCLUDED = "excluded by rule"      # a filter rule of the last walk left it out
    DELETED = "deleted"                # left SRC after its copy; --delete removed it from DEST


class LogLevel(str, enum.Enum):
    """The level of a row of table log (/logs serves warnings and errors)."""
    INFO = "info"          # a normal event worth a line: a host joined, a batch requeued
    WARNING = "warning"    # something went wrong and was handled: a retry, a lost host
    ERROR = "error"        # something did not arrive or cannot run: the operator acts


class AttemptStatus(str, enum.Enum):
    SUCCESS = "success"  # the batch succeeded
    RETRY = "retry"      # failed, will run again
    FAILED = "failed"    # failed for good
    LOST = "lost"        # the host was lost; the batch went back to pending, no retry used
    REQUEUED = "requeued"  # an operator put the batch back in the queue (`fleetsync retry`)
    STOPPED = "stopped"  # its run's window closed with --cutoff hard: rsync stopped, the
                         # batch went back to pending, no retry used


class VerifyState(str, enum.Enum):
    """A succeeded batch verified by file: its files hashed at DEST, compared with the
    checksums recorded from SRC (FileVerdict, each file's)."""
    PENDING = "pending"    # to be checked
    RUNNING = "running"    # a slot checks it now
    VERIFIED = "verified"  # every file of it is the same at DEST
    DIFFERS = "differs"    # a file differs, is missing, or has no checksum recorded
    ERROR = "error"        # the check itself failed (its rsync exit: not 0, 23 or 24)
    STALE = "stale"        # the batch went back in the queue since: the verdict was about
                           # the old copy; checked again once the new copy succeeded


class FileVerdict(enum.IntEnum):
    """One file of a succeeded batch, checked at DEST against SRC's recorded checksum
    (batch_files.verified; NULL: not checked)."""
    SAME = 0        # DEST's checksum equals the one recorded from SRC
    DIFFERS = 1     # DEST holds other bytes
    MISSING = 2     # nothing (or not a regular file) at DEST under its name
    UNRECORDED = 3  # no checksum of SRC was recorded for it: nothing to compare with


class WorkerState(str, enum.Enum):
    UP = "up"        # answered its preflight
    LOST = "lost"    # unreachable or silent; tried again after its back-off
    GONE = "gone"    # removed from the inventory


class WalkDirState(str, enum.Enum):
    """A directory of SRC in the walk's shared queue."""
    PENDING = "pending"    # to be listed (from its offset)
    CLAIMED = "claimed"    # a producer lists it now
    DONE = "done"          # every entry is in an enqueued batch


class ProducerState(str, enum.Enum):
    RUNNING = "running"
    DONE = "done"


class OutcomeKind(str, enum.Enum):
    """What one rsync of a worker's item was for."""
    COPY = "copy"        # a batch
    VERIFY = "verify"    # a check of a succeeded batch
    DIRS = "dirs"        # the directory pass: modes and times of directories
    DELETE = "delete"    # the directory pass with --delete (or --delete-dry-run)
    CLEAN = "clean"      # the directory pass removing a killed rsync's temporary files


class DeleteMode(str, enum.Enum):
    OFF = "off"          # DEST keeps what SRC no longer has
    ON = "on"            # --delete: the directory pass removes it
    DRY_RUN = "dry-run"  # --delete-dry-run: the pass lists it in `deletions`, removes nothing


class EntryClass(str, enum.Enum):
    """Why one entry did not arrive (table entry_outcomes; controller/policy.py
    classifies, and says why each errno is where it is)."""
    PERMANENT = "permanent"  # the same copy fails the same way: failed at once, no retries
    MAY_HEAL = "may_heal"    # a later try can succeed: retried (the failed entries alone)
    VANISHED = "vanished"    # gone from SRC since the walk: an outcome, not a failure


class EntrySource(str, enum.Enum):
    """Who said an entry did not arrive (table entry_outcomes)."""
    RSYNC = "rsync"          # a per-file error line of an attempt's rsync
    WALK = "walk"            # the walk could not stat the entry
    WALK_LIST = "walk-list"  # the walk could not list (or enter) the directory


class RunState(str, enum.Enum):
    """The migration's run as `fleetsync status`, the dashboard and /run see it
    (ledger/migration.py run_state decides it)."""
    RUNNING = "running"    # a run goes on: its controller was heard from lately
    STOPPED = "stopped"    # the last run stopped on a signal, work left
    CRASHED = "crashed"    # the last run ended without closing (kill -9, a second Ctrl-C,
                           # a lost machine): not running, its batches wait again
    FINISHED = "finished"  # the last run ended with nothing left to copy
    WAITING = "waiting"    # no run goes on and batches wait (requeued after the run
                           # finished, or a ledger no run has copied for yet)
