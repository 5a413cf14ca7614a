"""The ledger's tables, indexes and the triggers that keep the counters exact.

Operators read this file to write their own SQL audits, so every column says
what it holds. Times are seconds since the epoch (REAL); paths are BLOBs
relative to SRC, because a Linux name is bytes and need not be UTF-8.
"""
from __future__ import annotations

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    text,
)

from .db import APPLICATION_ID
from .states import AttemptStatus, BatchState, EntryClass, FileVerdict, VerifyState, WalkDirState

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
    Column("scan_newer_than", Float),                 # not NULL: the walk is a rescan (it
                                                      # compares fingerprints); the value, a
                                                      # time, is no longer read
    Column("finished_ts", Float),                     # last run ended with nothing left
    Column("bwlimit", Integer),                       # bytes/s for the whole fleet, NULL: none
                                                      # (or a timetable: table bandwidth)
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
# name, type and mode, inode, size, mtime, ctime; see walkqueue.fingerprint) in
# listing order.
walk_prints = Table(
    "walk_prints", metadata,
    Column("path", LargeBinary, primary_key=True),    # the directory, relative to SRC
    Column("old", Integer, primary_key=True),         # 0: this walk; 1: the walk before
    Column("seq", Integer, primary_key=True),         # position of its first entry
    Column("prints", LargeBinary, nullable=False),    # signed 64-bit ints, native order
    sqlite_with_rowid=False,
)

# One row per entry of SRC that a filter rule left out (controller/filters.py): an
# excluded file, or an excluded directory whose subtree was not walked (no row for
# what is beneath it). Rows of the last walk: a rescan starts the table again.
pruned = Table(
    "pruned", metadata,
    Column("path", LargeBinary, primary_key=True),    # relative to SRC
    Column("is_dir", Integer, nullable=False),        # 1: a directory, not entered
    Column("rule", Text, nullable=False),             # the rule that excluded it, "- PATTERN"
    Column("ts", Float, nullable=False),              # when the walk saw it
    # What the report says of it (lstat's; NULL beneath an excluded directory of a
    # change list, and in a ledger written before they were kept).
    Column("size", Integer),
    Column("type", Integer),                          # states.EntryType
    Column("mtime", Integer),                         # whole seconds since the epoch
    sqlite_with_rowid=False,
)

# What the walk records of each entry beside its size, for `fleetsync scan` and the
# report (issues 22, 23). NULL in rows of a ledger written before them (added by
# create() with ALTER TABLE: an older fleetsync still writes such a ledger, its rows
# NULL there). Small integers: ~7 bytes an entry (bench/README.md, walk).
def _walked() -> list[Column]:
    return [
        Column("type", Integer),    # states.EntryType: 0 file, 1 dir, 2 symlink, 3 other
        Column("mtime", Integer),   # lstat st_mtime, whole seconds since the epoch
        Column("blocks", Integer),  # lstat st_blocks: 512-byte units allocated (du's)
    ]


WALKED = [c.name for c in _walked()]

# Entries with more than one link wait here during the walk; when it ends they
# are cut into batches by inode, so all links of a file travel in one rsync -H.
hardlinks = Table(
    "hardlinks", metadata,
    Column("dev", Integer, primary_key=True),
    Column("ino", Integer, primary_key=True),
    Column("path", LargeBinary, primary_key=True),    # relative to SRC
    Column("size", Integer, nullable=False),
    Column("task_id", Integer),                       # the batch it went into
    *_walked(),                                       # type, mtime, blocks, as above
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
    Column("checksum", Integer, nullable=False, server_default="0"),  # states.Compare
    Column("sparse", Integer, nullable=False, server_default="0"),    # has a file with holes
    Column("worker_id", Text),                        # who holds it (running) or ran it last
    Column("producer_id", Integer),
    Column("last_exit_code", Integer),
    Column("created_ts", Float, nullable=False),
    Column("claimed_ts", Float),
    Column("finished_ts", Float),
)

# What custody records of each file (issue 23): SRC's full-file checksum, taken
# from the copy's own rsync, and what `fleetsync verify` found at DEST. NULL until
# recorded; added by create() with ALTER TABLE to an older ledger, like _walked.
def _custody() -> list[Column]:
    return [
        Column("checksum", LargeBinary),  # raw digest of SRC's bytes; the algorithm is
                                          # migration.options' checksum_choice (xxh128)
        Column("verified", Integer),      # states.FileVerdict; NULL: not checked
    ]


CUSTODY = {c.name: c.type.compile() for c in _custody()}

batch_files = Table(
    "batch_files", metadata,
    Column("task_id", Integer, primary_key=True),
    Column("path", LargeBinary, primary_key=True),    # relative to SRC
    Column("is_dir", Integer, nullable=False),
    Column("size", Integer, nullable=False),          # lstat size
    *_walked(),                                       # type, mtime, blocks (see _walked)
    *_custody(),                                      # checksum, verified (see _custody)
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
    Column("heartbeat_ts", Float),                    # last heard from it (event or beat)
    Column("first_seen_ts", Float),
    Column("slots", Integer),
    Column("lost_count", Integer, nullable=False, server_default="0"),
    Column("backoff_until", Float),
)

# One row per `fleetsync run`: `fleetsync verify` checks, by default, on the
# workers of the inventory the migration last ran with.
runs = Table(
    "runs", metadata,
    Column("run_id", Integer, primary_key=True),
    Column("started_ts", Float, nullable=False),
    Column("inventory", Text, nullable=False),        # absolute path given to --inventory
)

# The fleet's bandwidth timetable (ledger/timetable.py), when one is set: one row. A
# constant cap is migration.bwlimit alone; `fleetsync bwlimit` replaces either.
bandwidth = Table(
    "bandwidth", metadata,
    Column("id", Integer, primary_key=True),          # always 1
    Column("timetable", Text, nullable=False),        # as given: '08:00,512k 19:00,off'
    Column("set_ts", Float, nullable=False),
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
    Column("differences", Text, nullable=False, server_default="[]"),  # its first files not intact
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

# --- attempt_counts: the counters of /metrics (issue 14) ----------------------------------
# Prometheus counters (`_total`) only ever go up, and a scrape must not scan
# `attempts` (one row per try of every batch). One row per attempt status, kept
# by a trigger in the same transaction as each attempt row; attempts are never
# updated or deleted (triggers below refuse it), so these only grow.
attempt_counts = Table(
    "attempt_counts", metadata,
    Column("status", Text, primary_key=True),                       # AttemptStatus
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("bytes_sent", Integer, nullable=False, server_default="0"),      # rsync --stats,
    Column("bytes_received", Integer, nullable=False, server_default="0"),  # NULL counts 0
)

_ATTEMPT_COUNTS_TRIGGER = """CREATE TRIGGER attempt_counts_insert AFTER INSERT ON attempts BEGIN
     INSERT OR IGNORE INTO attempt_counts(status) VALUES (NEW.status);
     UPDATE attempt_counts SET attempts = attempts + 1,
       bytes_sent = bytes_sent + coalesce(NEW.bytes_sent, 0),
       bytes_received = bytes_received + coalesce(NEW.bytes_received, 0)
     WHERE status = NEW.status;
   END"""


def _create_counts(conn, table: str, key: str, keys: list[str], trigger: str,
                   create_trigger: str, backfill: str) -> None:
    """A counter table's trigger and, on a ledger written before it existed, the
    counts of the rows already there (backfill): both in create()'s one write
    transaction, so that no row is counted twice or missed; then a zero row for
    every key, so that every counter is there from the start."""
    exists = conn.execute(text("SELECT 1 FROM sqlite_master WHERE type = 'trigger' "
                               "AND name = :name"), {"name": trigger}).first()
    if exists is None:
        conn.execute(text(backfill))
        conn.execute(text(create_trigger))
    conn.execute(text(f"INSERT OR IGNORE INTO {table}({key}) VALUES "
                      + ", ".join(f"('{k}')" for k in keys)))


def _create_attempt_counts(conn) -> None:
    _create_counts(
        conn, "attempt_counts", "status", [s.value for s in AttemptStatus],
        "attempt_counts_insert", _ATTEMPT_COUNTS_TRIGGER,
        "INSERT OR REPLACE INTO attempt_counts(status, attempts, bytes_sent, bytes_received) "
        "SELECT status, count(*), coalesce(sum(bytes_sent), 0), "
        "coalesce(sum(bytes_received), 0) FROM attempts GROUP BY status")
# --- end of attempt_counts -----------------------------------------------------------------


# -- Per-file outcomes (issue 10; ledger/entry_outcomes.py) ------------------------
# One row per entry that did not arrive, when it was seen: an rsync per-file error
# line of an attempt, or an error of the walk. A row is never deleted; it is
# settled (settled_ts) when a later copy of its entry arrived.
entry_outcomes = Table(
    "entry_outcomes", metadata,
    Column("outcome_id", Integer, primary_key=True),
    Column("task_id", Integer),          # its batch; NULL: a walk error cut with no entry
    Column("attempt_id", Integer),       # the attempt (attempts) whose rsync said so;
                                         # NULL: the walk
    Column("source", Text, nullable=False),  # EntrySource: rsync | walk | walk-list
    Column("path", LargeBinary),         # relative to SRC: the batch's entry (or the
                                         # directory the walk could not list); NULL: the
                                         # line could not be mapped to one entry
    Column("class", Text, nullable=False),   # EntryClass: permanent | may_heal | vanished
    Column("errno", Integer),            # the errno rsync or the walk gave, if any
    Column("reason", Text, nullable=False),  # e.g. "send_files failed to open: Permission
                                         # denied (13)"; an unmapped row holds the line
    Column("rest_arrived", Integer, nullable=False, server_default="0"),  # 1: the
                                         # attempt's other entries arrived, so only the
                                         # rows of its batch are to copy again
    Column("ts", Float, nullable=False),
    Column("settled_ts", Float),         # a later copy of the entry arrived (or a later
                                         # attempt's row speaks for it); NULL: open
    Column("settled_by", Integer),       # the attempt that settled it (NULL: none)
)

# Entries recorded as not arrived, by class, each time one was (a counter of
# /metrics: rows of entry_outcomes are only added, never deleted; settling one
# leaves it counted). One row per EntryClass, kept by a trigger.
outcome_counts = Table(
    "outcome_counts", metadata,
    Column("class", Text, primary_key=True),                        # EntryClass
    Column("entries", Integer, nullable=False, server_default="0"),
)

_OUTCOME_COUNTS_TRIGGER = """CREATE TRIGGER outcome_counts_insert AFTER INSERT ON entry_outcomes
   BEGIN
     INSERT OR IGNORE INTO outcome_counts(class) VALUES (NEW.class);
     UPDATE outcome_counts SET entries = entries + 1 WHERE class = NEW.class;
   END"""


def _create_outcome_counts(conn) -> None:
    _create_counts(
        conn, "outcome_counts", "class", [c.value for c in EntryClass],
        "outcome_counts_insert", _OUTCOME_COUNTS_TRIGGER,
        "INSERT OR REPLACE INTO outcome_counts(class, entries) "
        "SELECT class, count(*) FROM entry_outcomes GROUP BY class")


# Which entries did not arrive, and why: the open per-file rows, and every entry
# of a failed batch that failed as a whole (no per-file rows said what arrived).
_MISSING_ENTRIES_VIEW = f"""CREATE VIEW IF NOT EXISTS missing_entries AS
   SELECT o.path, CAST(o.path AS TEXT) AS path_text, o.class, o.reason, o.task_id,
          o.attempt_id, o.source, datetime(o.ts, 'unixepoch', 'localtime') AS seen
   FROM entry_outcomes o
   WHERE o.settled_ts IS NULL AND (o.rest_arrived = 1 OR o.source != 'rsync'
                                   OR o.class = '{EntryClass.VANISHED.value}')
   UNION ALL
   SELECT f.path, CAST(f.path AS TEXT), 'batch failed',
          'its batch failed as a whole: exit ' || coalesce(b.last_exit_code, 'none'),
          b.task_id, NULL, 'batch', datetime(b.finished_ts, 'unixepoch', 'localtime')
   FROM batches b JOIN batch_files f USING (task_id)
   WHERE b.state = '{BatchState.FAILED.value}' AND NOT EXISTS (
         SELECT 1 FROM entry_outcomes o WHERE o.task_id = b.task_id
         AND o.settled_ts IS NULL AND o.rest_arrived = 1)"""

# Every file a verify did not find intact, named (ledger/custody.py): the per-file
# verdicts other than SAME; the partial index keeps it cheap at millions of files.
_CUSTODY_PROBLEMS_VIEW = f"""CREATE VIEW IF NOT EXISTS custody_problems AS
   SELECT f.path, CAST(f.path AS TEXT) AS path_text, f.task_id,
          CASE f.verified WHEN {int(FileVerdict.DIFFERS)} THEN 'differs'
                          WHEN {int(FileVerdict.MISSING)} THEN 'missing'
                          ELSE 'unrecorded' END AS problem,
          lower(hex(f.checksum)) AS src_checksum
   FROM batch_files f
   WHERE f.verified IN ({int(FileVerdict.DIFFERS)}, {int(FileVerdict.MISSING)},
                        {int(FileVerdict.UNRECORDED)})"""

_ENTRY_OUTCOMES_DDL = [
    "CREATE INDEX IF NOT EXISTS entry_outcomes_open ON entry_outcomes(task_id) "
    "WHERE settled_ts IS NULL",
    "CREATE INDEX IF NOT EXISTS entry_outcomes_open_path ON entry_outcomes(path) "
    "WHERE settled_ts IS NULL",
    "CREATE INDEX IF NOT EXISTS batches_failed ON batches(task_id) "
    f"WHERE state = '{BatchState.FAILED.value}'",
    _MISSING_ENTRIES_VIEW,
    "CREATE INDEX IF NOT EXISTS batch_files_problems ON batch_files(task_id, path) "
    f"WHERE verified IN ({int(FileVerdict.DIFFERS)}, {int(FileVerdict.MISSING)}, "
    f"{int(FileVerdict.UNRECORDED)})",
    _CUSTODY_PROBLEMS_VIEW,
]
# -- end of per-file outcomes ---------------------------------------------------------

# DDL cannot bind parameters: the states it names are spelled from the Enums.
_EXTRA_DDL = [
    "CREATE INDEX IF NOT EXISTS walk_dirs_pending ON walk_dirs(dir_id) "
    f"WHERE state = '{WalkDirState.PENDING.value}'",
    "CREATE INDEX IF NOT EXISTS hardlinks_waiting ON hardlinks(dev, ino) WHERE task_id IS NULL",
    # a batch's hard links, when its checksums are recorded (ledger/custody.py)
    "CREATE INDEX IF NOT EXISTS hardlinks_batched ON hardlinks(task_id, path) "
    "WHERE task_id IS NOT NULL",
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
    # A verdict is about one copy: when a batch leaves succeeded (a requeue), the
    # next copy needs a check of its own. A check running then cannot record.
    f"""CREATE TRIGGER IF NOT EXISTS verifications_stale AFTER UPDATE OF state ON batches
       WHEN OLD.state = '{BatchState.SUCCEEDED.value}' AND NEW.state != OLD.state BEGIN
         UPDATE verifications SET state = '{VerifyState.STALE.value}' WHERE task_id = NEW.task_id;
       END""",
    # Ready views for audits with sqlite3 (see the README).
    f"""CREATE VIEW IF NOT EXISTS failed_batches AS
       SELECT b.task_id, b.retry_count, b.last_exit_code, b.worker_id,
              datetime(b.finished_ts, 'unixepoch', 'localtime') AS finished, a.errors
       FROM batches b LEFT JOIN attempts a ON a.attempt_id =
            (SELECT max(attempt_id) FROM attempts WHERE task_id = b.task_id)
       WHERE b.state = '{BatchState.FAILED.value}'""",
    # Per worker: succeeded work only. wall_seconds is the time at least one of its
    # slots ran a batch (the union of its attempts' spans, any outcome, across runs),
    # so mib_per_second is its wall-clock rate; slot_seconds sums the spans of its
    # parallel slots (a per-slot rate). Replaced, not kept, on an older ledger.
    "DROP VIEW IF EXISTS worker_throughput",
    f"""CREATE VIEW worker_throughput AS
       WITH timed AS (
         SELECT worker_id, start_ts, end_ts, max(end_ts) OVER (
                  PARTITION BY worker_id ORDER BY start_ts, end_ts
                  ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS busy_until
         FROM attempts WHERE start_ts IS NOT NULL AND end_ts >= start_ts),
       wall AS (
         SELECT worker_id,
                sum(max(0, end_ts - max(start_ts, coalesce(busy_until, start_ts)))) AS seconds
         FROM timed GROUP BY worker_id),
       done AS (
         SELECT a.worker_id, count(*) AS batches, sum(b.file_count) AS files,
                sum(b.estimated_bytes) AS bytes, sum(a.end_ts - a.start_ts) AS slot_seconds
         FROM attempts a JOIN batches b USING (task_id)
         WHERE a.status = '{AttemptStatus.SUCCESS.value}' GROUP BY a.worker_id),
       lost AS (
         SELECT worker_id, count(*) AS lost FROM attempts
         WHERE status = '{AttemptStatus.LOST.value}' GROUP BY worker_id)
       SELECT d.worker_id, d.batches, d.files, d.bytes,
              round(w.seconds, 1) AS wall_seconds,
              round(d.bytes / 1048576.0 / nullif(w.seconds, 0), 1) AS mib_per_second,
              round(d.slot_seconds, 1) AS slot_seconds,
              round(d.bytes / 1048576.0 / nullif(d.slot_seconds, 0), 1) AS mib_per_slot_second,
              coalesce(l.lost, 0) AS lost
       FROM done d LEFT JOIN wall w USING (worker_id) LEFT JOIN lost l USING (worker_id)""",
    """CREATE VIEW IF NOT EXISTS entries AS
       SELECT f.path, CAST(f.path AS TEXT) AS path_text, f.is_dir, f.size, f.task_id,
              b.state, b.worker_id, b.last_exit_code
       FROM batch_files f JOIN batches b USING (task_id)""",
    # "Which batch carried path X": `entries WHERE path_text = 'a/b'` (or a name that
    # is not UTF-8, 'a/' || X'ff') finds it through this index, not by a scan. Its
    # cost to the walk's inserts is measured in bench/audit.py.
    "CREATE INDEX IF NOT EXISTS batch_files_path_text ON batch_files(CAST(path AS TEXT))",
    # verify (ledger/custody.py) skips a file that --delete removed after its copy.
    "CREATE INDEX IF NOT EXISTS deletions_done ON deletions(path) WHERE dry_run = 0",
    "CREATE TRIGGER IF NOT EXISTS batch_counts_delete BEFORE DELETE ON batches BEGIN"
    " SELECT RAISE(ABORT, 'batches are never deleted'); END",
    "CREATE TRIGGER IF NOT EXISTS attempts_no_update BEFORE UPDATE ON attempts BEGIN"
    " SELECT RAISE(ABORT, 'attempts are never changed'); END",
    "CREATE TRIGGER IF NOT EXISTS attempts_no_delete BEFORE DELETE ON attempts BEGIN"
    " SELECT RAISE(ABORT, 'attempts are never deleted'); END",
    *_ENTRY_OUTCOMES_DDL,
]


def has_table(conn: Connection, name: str) -> bool:
    """The ledger has this table (one written by an older fleetsync, or still being
    created, may not)."""
    return conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                "AND name = ?", (name,)).first() is not None


def no_such_table(error: Exception) -> bool:
    """The same question, asked afterwards of a query's error: for the API's hot
    reads, where a has_table look-up on every request would cost more than the read."""
    return "no such table" in str(error)


def _add_columns(conn: Connection) -> None:
    """A ledger written before the walk recorded type, mtime and blocks (or before
    custody recorded checksums) gets the columns, NULL in its rows: ALTER TABLE ADD
    COLUMN rewrites no row."""
    added = [(batch_files, {c: "INTEGER" for c in WALKED} | CUSTODY),
             (hardlinks, {c: "INTEGER" for c in WALKED}),
             (pruned, {c: "INTEGER" for c in ("size", "type", "mtime")})]
    for table, columns in added:
        have = {r[1] for r in conn.execute(text(f"PRAGMA table_info({table.name})"))}
        for column, kind in columns.items():
            if column not in have:
                conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column} {kind}"))


def create(target: Engine | Connection) -> None:
    """Create every table, index and trigger; safe to run on an existing ledger. One
    transaction (the caller's, given a connection inside one): a reader, `fleetsync
    backup` say, sees no ledger or a whole one, never tables without their counts."""
    if isinstance(target, Engine):
        with target.begin() as conn:
            create(conn)
        return
    conn = target
    metadata.create_all(conn)
    _add_columns(conn)
    # Marks the file as a fleetsync ledger (ledger/db.py: check refuses others).
    conn.execute(text(f"PRAGMA application_id = {APPLICATION_ID}"))
    for ddl in _EXTRA_DDL:
        conn.execute(text(ddl))
    _create_attempt_counts(conn)
    _create_outcome_counts(conn)
    conn.execute(text(
        "INSERT OR IGNORE INTO batch_counts(state) VALUES "
        + ", ".join(f"('{s.value}')" for s in BatchState)
    ))
