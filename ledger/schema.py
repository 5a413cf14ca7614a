"""The ledger's tables, indexes and the triggers that keep the counters exact.

Operators read this file to write their own SQL audits, so every column says
what it holds. Times are seconds since the epoch (REAL); paths are BLOBs
relative to SRC, because a Linux name is bytes and need not be UTF-8.
"""
from __future__ import annotations

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    text,
)

from .states import AttemptStatus, BatchState, VerifyState, WalkDirState, sql_list

__all__ = ["AttemptStatus", "BatchState", "create", "metadata"]

SCHEMA_VERSION = 1


metadata = MetaData()

migration = Table(
    "migration", metadata,
    Column("id", Integer, primary_key=True),          # always 1: one migration per ledger
    Column("migration_id", Text, nullable=False),     # a UUID, also marks the rsyncs it starts
    Column("schema_version", Integer, nullable=False),
    Column("src", Text, nullable=False),              # absolute, as given (surrogateescape)
    Column("dest", Text, nullable=False),
    Column("options", Text, nullable=False),          # JSON of the options fixed at creation
    Column("created_ts", Float, nullable=False),
    Column("elapsed_before", Float, nullable=False, server_default="0"),  # earlier runs
    Column("run_started_ts", Float),                  # start of the current (or last) run
    Column("run_heartbeat_ts", Float),                # the controller was alive then
    Column("walk_done", Integer, nullable=False, server_default="0"),
    Column("scan_started_ts", Float),                 # the walk of SRC now (or last) started
    Column("scan_newer_than", Float),                 # a --rescan walk takes entries changed
                                                      # (ctime) since then; NULL: all
    Column("finished_ts", Float),                     # last run ended with nothing left
    Column("bwlimit", Integer),                       # bytes/s for the whole fleet, NULL: none
    Column("dirs_pass_cursor", Integer),              # directory pass: last task_id handed out
    Column("dirs_pass_done_ts", Float),               # every part of the pass handed out
)

producers = Table(
    "producers", metadata,
    Column("producer_id", Integer, primary_key=True),
    Column("state", Text, nullable=False),            # ProducerState
    Column("pid", Integer),
    Column("started_ts", Float),
    Column("finished_ts", Float),
    Column("dirs", Integer, nullable=False, server_default="0"),    # directories listed
    Column("entries", Integer, nullable=False, server_default="0"), # entries enqueued
    Column("bytes", Integer, nullable=False, server_default="0"),
)

# The walk's shared work queue: every directory still to list. Producers claim
# directories from here, so a deep branch is shared out as soon as it is seen.
walk_dirs = Table(
    "walk_dirs", metadata,
    Column("dir_id", Integer, primary_key=True),
    Column("path", LargeBinary, nullable=False, unique=True),  # relative to SRC, b"" is SRC
    Column("state", Text, nullable=False,
           server_default=WalkDirState.PENDING.value),          # WalkDirState
    Column("producer_id", Integer),
    Column("offset", Integer, nullable=False, server_default="0"),  # entries already enqueued
)

# What each walk saw of each entry, for the cutover pass (`run --rescan`, see
# ledger/walkqueue.py): per directory, chunks of 8-byte fingerprints (a hash of
# name, type, inode, size, mtime, ctime, mode, owner, links) in listing order.
walk_prints = Table(
    "walk_prints", metadata,
    Column("path", LargeBinary, primary_key=True),    # the directory, relative to SRC
    Column("old", Integer, primary_key=True),         # 0: this walk; 1: the walk before
    Column("seq", Integer, primary_key=True),         # position of its first entry
    Column("prints", LargeBinary, nullable=False),    # signed 64-bit ints, native order
    sqlite_with_rowid=False,
)

# Entries with more than one link wait here during the walk; when it ends they
# are cut into batches by inode, so all links of a file travel in one rsync -H.
hardlinks = Table(
    "hardlinks", metadata,
    Column("dev", Integer, primary_key=True),
    Column("ino", Integer, primary_key=True),
    Column("path", LargeBinary, primary_key=True),    # relative to SRC
    Column("size", Integer, nullable=False),
    Column("task_id", Integer),                       # the batch it went into
    sqlite_with_rowid=False,
)

batches = Table(
    "batches", metadata,
    Column("task_id", Integer, primary_key=True),     # 1, 2, 3... in enqueue order
    Column("state", Text, nullable=False, server_default=BatchState.PENDING.value),
    Column("file_count", Integer, nullable=False),       # non-directory entries
    Column("directory_count", Integer, nullable=False),
    Column("estimated_bytes", Integer, nullable=False),  # sum of lstat sizes at the walk
    Column("retry_count", Integer, nullable=False, server_default="0"),
    Column("claim", Integer, nullable=False, server_default="0"),  # bumped by every claim
    Column("checksum", Integer, nullable=False, server_default="0"),  # copy with --checksum
    Column("sparse", Integer, nullable=False, server_default="0"),    # has a file with holes
    Column("worker_id", Text),                        # who holds it (running) or ran it last
    Column("producer_id", Integer),
    Column("last_exit_code", Integer),
    Column("created_ts", Float, nullable=False),
    Column("claimed_ts", Float),
    Column("finished_ts", Float),
)

batch_files = Table(
    "batch_files", metadata,
    Column("task_id", Integer, primary_key=True),
    Column("path", LargeBinary, primary_key=True),    # relative to SRC
    Column("is_dir", Integer, nullable=False),
    Column("size", Integer, nullable=False),          # lstat size
    sqlite_with_rowid=False,
)

attempts = Table(
    "attempts", metadata,
    Column("attempt_id", Integer, primary_key=True),  # never updated, never deleted
    Column("task_id", Integer, nullable=False),
    Column("claim", Integer, nullable=False),
    Column("retry_count", Integer, nullable=False),   # 0 for the first try
    Column("worker_id", Text),
    Column("status", Text, nullable=False),           # AttemptStatus
    Column("rsync_exit_code", Integer),
    Column("bytes_sent", Integer),
    Column("bytes_received", Integer),
    Column("start_ts", Float),
    Column("end_ts", Float),
    Column("received_ts", Float, nullable=False),     # when the controller recorded it
    Column("errors", Text, nullable=False, server_default="[]"),  # JSON list of lines
)

workers = Table(
    "workers", metadata,
    Column("worker_id", Text, primary_key=True),      # host name + UUID kept on the host
    Column("host", Text, nullable=False),             # inventory name
    Column("state", Text, nullable=False),            # WorkerState: up | lost | gone
    Column("heartbeat_ts", Float),                    # last event heard from it
    Column("first_seen_ts", Float),
    Column("slots", Integer),
    Column("lost_count", Integer, nullable=False, server_default="0"),
    Column("backoff_until", Float),
)

log = Table(
    "log", metadata,
    Column("log_id", Integer, primary_key=True),
    Column("ts", Float, nullable=False),
    Column("level", Text, nullable=False),            # info | warning | error
    Column("task_id", Integer),
    Column("worker_id", Text),
    Column("message", Text, nullable=False),
)

deletions = Table(
    "deletions", metadata,
    Column("deletion_id", Integer, primary_key=True),
    Column("ts", Float, nullable=False),
    Column("path", Text, nullable=False),             # as rsync printed it, relative to DEST
    Column("dry_run", Integer, nullable=False),       # 1: listed by --delete-dry-run only
    Column("worker_id", Text),
)

verifications = Table(
    "verifications", metadata,
    Column("task_id", Integer, primary_key=True),     # a succeeded batch, checked again
    Column("state", Text, nullable=False,
           server_default=VerifyState.PENDING.value),           # VerifyState
    Column("claim", Integer, nullable=False, server_default="0"),
    Column("worker_id", Text),
    Column("checked_ts", Float),
    Column("exit_code", Integer),
    Column("differences", Text, nullable=False, server_default="[]"),  # rsync's itemized lines
)

verify_counts = Table(
    "verify_counts", metadata,
    Column("state", Text, primary_key=True),
    Column("batches", Integer, nullable=False, server_default="0"),
)

# One row per batch state, kept by triggers in the same transaction as the
# change, so the API reads its numbers in O(1) at any number of batches.
batch_counts = Table(
    "batch_counts", metadata,
    Column("state", Text, primary_key=True),
    Column("batches", Integer, nullable=False, server_default="0"),
    Column("files", Integer, nullable=False, server_default="0"),
    Column("directories", Integer, nullable=False, server_default="0"),
    Column("bytes", Integer, nullable=False, server_default="0"),
)

# DDL cannot bind parameters: the states it names are spelled from the Enums.
_EXTRA_DDL = [
    "CREATE INDEX IF NOT EXISTS walk_dirs_pending ON walk_dirs(dir_id) "
    f"WHERE state = '{WalkDirState.PENDING.value}'",
    "CREATE INDEX IF NOT EXISTS hardlinks_waiting ON hardlinks(dev, ino) WHERE task_id IS NULL",
    "CREATE INDEX IF NOT EXISTS walk_dirs_claimed ON walk_dirs(dir_id) "
    f"WHERE state = '{WalkDirState.CLAIMED.value}'",
    "CREATE INDEX IF NOT EXISTS batches_waiting ON batches(task_id) "
    f"WHERE state = '{BatchState.PENDING.value}'",
    "CREATE INDEX IF NOT EXISTS batches_running ON batches(worker_id) "
    f"WHERE state = '{BatchState.RUNNING.value}'",
    "CREATE INDEX IF NOT EXISTS attempts_task ON attempts(task_id)",
    "CREATE INDEX IF NOT EXISTS attempts_worker ON attempts(worker_id, attempt_id)",
    "CREATE INDEX IF NOT EXISTS attempts_status ON attempts(status, attempt_id)",
    "CREATE INDEX IF NOT EXISTS log_level ON log(level, log_id)",
    """CREATE TRIGGER IF NOT EXISTS batch_counts_insert AFTER INSERT ON batches BEGIN
         UPDATE batch_counts SET batches = batches + 1, files = files + NEW.file_count,
           directories = directories + NEW.directory_count, bytes = bytes + NEW.estimated_bytes
         WHERE state = NEW.state;
       END""",
    """CREATE TRIGGER IF NOT EXISTS batch_counts_update AFTER UPDATE OF state ON batches
       WHEN OLD.state != NEW.state BEGIN
         UPDATE batch_counts SET batches = batches - 1, files = files - OLD.file_count,
           directories = directories - OLD.directory_count, bytes = bytes - OLD.estimated_bytes
         WHERE state = OLD.state;
         UPDATE batch_counts SET batches = batches + 1, files = files + NEW.file_count,
           directories = directories + NEW.directory_count, bytes = bytes + NEW.estimated_bytes
         WHERE state = NEW.state;
       END""",
    "CREATE INDEX IF NOT EXISTS verifications_waiting ON verifications(task_id) "
    f"WHERE state = '{VerifyState.PENDING.value}'",
    """CREATE TRIGGER IF NOT EXISTS verify_counts_insert AFTER INSERT ON verifications BEGIN
         INSERT OR IGNORE INTO verify_counts(state) VALUES (NEW.state);
         UPDATE verify_counts SET batches = batches + 1 WHERE state = NEW.state;
       END""",
    """CREATE TRIGGER IF NOT EXISTS verify_counts_update AFTER UPDATE OF state ON verifications
       WHEN OLD.state != NEW.state BEGIN
         UPDATE verify_counts SET batches = batches - 1 WHERE state = OLD.state;
         INSERT OR IGNORE INTO verify_counts(state) VALUES (NEW.state);
         UPDATE verify_counts SET batches = batches + 1 WHERE state = NEW.state;
       END""",
    # Ready views for audits with sqlite3 (see the README).
    f"""CREATE VIEW IF NOT EXISTS failed_batches AS
       SELECT b.task_id, b.retry_count, b.last_exit_code, b.worker_id,
              datetime(b.finished_ts, 'unixepoch', 'localtime') AS finished, a.errors
       FROM batches b LEFT JOIN attempts a ON a.attempt_id =
            (SELECT max(attempt_id) FROM attempts WHERE task_id = b.task_id)
       WHERE b.state = '{BatchState.FAILED.value}'""",
    f"""CREATE VIEW IF NOT EXISTS worker_throughput AS
       SELECT a.worker_id, count(*) AS batches, sum(b.file_count) AS files,
              sum(b.estimated_bytes) AS bytes,
              round(sum(a.end_ts - a.start_ts), 1) AS rsync_seconds,
              round(sum(b.estimated_bytes) / 1048576.0
                    / nullif(sum(a.end_ts - a.start_ts), 0), 1) AS mib_per_rsync_second,
              sum(a.status = '{AttemptStatus.LOST.value}') AS lost
       FROM attempts a JOIN batches b USING (task_id)
       WHERE a.status IN {sql_list(AttemptStatus.SUCCESS, AttemptStatus.LOST)}
       GROUP BY a.worker_id""",
    """CREATE VIEW IF NOT EXISTS entries AS
       SELECT f.path, CAST(f.path AS TEXT) AS path_text, f.is_dir, f.size, f.task_id,
              b.state, b.worker_id, b.last_exit_code
       FROM batch_files f JOIN batches b USING (task_id)""",
    "CREATE TRIGGER IF NOT EXISTS batch_counts_delete BEFORE DELETE ON batches BEGIN"
    " SELECT RAISE(ABORT, 'batches are never deleted'); END",
    "CREATE TRIGGER IF NOT EXISTS attempts_no_update BEFORE UPDATE ON attempts BEGIN"
    " SELECT RAISE(ABORT, 'attempts are never changed'); END",
    "CREATE TRIGGER IF NOT EXISTS attempts_no_delete BEFORE DELETE ON attempts BEGIN"
    " SELECT RAISE(ABORT, 'attempts are never deleted'); END",
]


def create(engine: Engine) -> None:
    """Create every table, index and trigger; safe to run on an existing ledger."""
    metadata.create_all(engine)
    with engine.begin() as conn:
        for ddl in _EXTRA_DDL:
            conn.execute(text(ddl))
        conn.execute(text(
            "INSERT OR IGNORE INTO batch_counts(state) VALUES "
            + ", ".join(f"('{s.value}')" for s in BatchState)
        ))
