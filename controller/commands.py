"""What each `fleetsync` command does once controller/cli.py has parsed its arguments:
run, verify, retry, bwlimit, serve and status (one function each, named after it)."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

from fleetsync.ledger import batches, db, deletions, migration, queries
from fleetsync.ledger import verify as verifications
from fleetsync.ledger.states import DeleteMode, OutcomeKind, VerifyState

from . import inventory, progress, sizes
from .dispatch import Dispatcher, Settings
from .errors import UsageError
from .hostrun import kill_leftovers
from .policy import Policy
from .producer import Limits
from .rsync import DEFAULT_RSYNC_OPTIONS
from .walk import Walk


def _check_paths(src: str, dest: str) -> tuple[str, str]:
    """Absolute SRC and DEST, or one clear line about what is wrong."""
    if not os.path.exists(src):
        raise UsageError(f"SRC {src} does not exist")
    if not os.path.isdir(src):
        raise UsageError(f"SRC {src} is not a directory")
    if not os.access(src, os.R_OK | os.X_OK):
        raise UsageError(f"SRC {src} is not readable")
    src = os.path.realpath(src)
    if ":" in dest.split("/", 1)[0]:      # host:/path or rsync://: checked on the workers
        return src, dest
    dest = os.path.realpath(dest)
    for a, b, what in ((dest, src, "DEST is inside SRC"), (src, dest, "SRC is inside DEST")):
        if a == b or a.startswith(b.rstrip("/") + "/"):
            raise UsageError(f"{what}: {src} -> {dest}")
    return src, dest


def _check_delete(args, src: str) -> DeleteMode:
    """--delete is refused when SRC looks empty or unmounted, since it would then
    empty DEST."""
    if not (args.delete or args.delete_dry_run):
        return DeleteMode.OFF
    with os.scandir(src) as it:
        if next(it, None) is None:
            raise UsageError(f"SRC {src} is empty (not mounted?): refusing to delete "
                             "anything from DEST")
    return DeleteMode.DRY_RUN if args.delete_dry_run else DeleteMode.ON


def _limits(args) -> Limits:
    if args.batch_files < 1:
        raise UsageError("--batch-files must be at least 1")
    if args.producers < 1:
        raise UsageError("--producers must be at least 1")
    if args.max_retries < 0:
        raise UsageError("--max-retries must be 0 or more")
    return Limits(entries=args.batch_files, bytes=sizes.parse(args.batch_bytes))


def _start_api(args, ledger_path: str):
    """The API in a process of its own (a dashboard polling hard shares no GIL with the
    dispatcher; it ends with this process, also on kill -9); None when it cannot bind
    (said once)."""
    from fleetsync.api.server import ServerProcess
    try:
        return ServerProcess(ledger_path, args.bind, args.port, token=args.token)
    except OSError as e:
        print(f"fleetsync: warning: API not served on {args.bind}:{args.port}: {e.strerror}",
              file=sys.stderr)
        return None


def run(args, loading: inventory.Loading | None = None) -> int:
    """`fleetsync run`: walk SRC, dispatch its batches, end with the directory pass.
    loading: the inventory, when the caller started reading it already."""
    src, dest = _check_paths(args.src, args.dest)
    limits = _limits(args)
    bwlimit = sizes.parse(args.bwlimit) if args.bwlimit else None
    delete = _check_delete(args, src)
    hosts = (loading or inventory.Loading(args.inventory)).result()
    ledger_path = os.path.abspath(args.ledger)
    options = {"batch_files": limits.entries, "batch_bytes": limits.bytes}
    engine = db.writer(ledger_path)
    mig = migration.open_or_create(engine, src, dest, options)
    killed = kill_leftovers(mig.migration_id)
    if killed:
        print(f"fleetsync: stopped {killed} processes left by an earlier run", file=sys.stderr)
    with engine.connect() as conn:
        migration.start_run(conn)
        if bwlimit:
            migration.set_bwlimit(conn, bwlimit)
        released = batches.release_all(conn, "the controller restarted")
    if released:
        print(f"fleetsync: resumed: {len(released)} batches of the last run wait again",
              file=sys.stderr)
    walk = None
    if not mig.walk_done or args.rescan:
        walk = Walk(ledger_path, src, args.producers, Limits(**{
            "entries": mig.options.get("batch_files", limits.entries),
            "bytes": mig.options.get("batch_bytes", limits.bytes)}), rescan=args.rescan)
        walk.start()
    api = None if args.no_api else _start_api(args, ledger_path)
    settings = _settings(args, ledger_path)
    settings.delete = delete
    started = time.time()
    dispatcher = Dispatcher(settings, walk, hosts)
    live = progress.Live(ledger_path).start()
    stopped = _stop_on_signals(dispatcher)
    try:
        dispatcher.run()
        if args.verify and not stopped.is_set():
            _verify(settings, dispatcher.hosts, again=False, stopped=stopped)
    finally:
        live.stop()
        if walk is not None:
            walk.stop()
        dispatcher.close()
        if api is not None:
            api.stop()
    with engine.connect() as conn:
        if batches.work_left(conn).finished:
            migration.end_run(conn)
    engine.dispose()
    return _summary(ledger_path, stopped.is_set(), delete, started)


def _settings(args, ledger_path: str) -> Settings:
    return Settings(ledger_path, os.path.abspath(args.inventory),
                    Policy(max_retries=getattr(args, "max_retries", Policy.max_retries)),
                    [*DEFAULT_RSYNC_OPTIONS, *args.rsync_option],
                    items_per_run=args.items_per_run,
                    heartbeat_timeout=args.heartbeat_timeout)


def _stop_on_signals(dispatcher: Dispatcher) -> threading.Event:
    """SIGINT/SIGTERM: finish the batches in hand; a second one: stop now."""
    stopped = threading.Event()

    def _stop(signum, _frame):
        if stopped.is_set():
            raise KeyboardInterrupt
        stopped.set()
        print("fleetsync: stopping: finishing the batches in hand (again to stop now)",
              file=sys.stderr)
        dispatcher.stop()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    return stopped


def _verify(settings: Settings, hosts, again: bool, stopped: threading.Event | None = None
            ) -> dict[VerifyState, int]:
    """Check succeeded batches on the workers; returns the counts per state."""
    with db.connect(settings.ledger_path) as conn:
        verifications.release_worker(conn, None)     # checks a dead run had in hand
        verifications.enqueue(conn, again)
    dispatcher = Dispatcher(settings, None, hosts)
    if stopped is None:
        stopped = _stop_on_signals(dispatcher)
    try:
        if not stopped.is_set():
            dispatcher.run(OutcomeKind.VERIFY)
    finally:
        dispatcher.close()
    with db.connect(settings.ledger_path, readonly=True) as conn, conn.begin():
        return verifications.counts(conn)


def verify(args) -> int:
    """`fleetsync verify`: check succeeded batches with rsync's checksums (a dry run)."""
    ledger_path = _existing(args.ledger)
    with db.connect(ledger_path) as conn:
        mig = migration.load(conn)
        conn.rollback()
    if mig is None:
        raise UsageError(f"{args.ledger} holds no migration")
    hosts = inventory.load(args.inventory)
    kill_leftovers(mig.migration_id)
    counts = _verify(_settings(args, ledger_path), hosts, args.again)
    print(f"fleetsync: {counts[VerifyState.VERIFIED]} batches verified, "
          f"{counts[VerifyState.DIFFERS]} differ, {counts[VerifyState.ERROR]} could not be "
          f"checked, {counts[VerifyState.PENDING]} not checked")
    if args.requeue and counts[VerifyState.DIFFERS]:
        with db.connect(ledger_path) as conn:
            ids = verifications.requeue_differences(conn)
        print(f"fleetsync: {len(ids)} batches that differ are back in the queue; "
              "`fleetsync run` copies them")
    unsettled = (VerifyState.DIFFERS, VerifyState.ERROR, VerifyState.PENDING)
    return 1 if any(counts[s] for s in unsettled) else 0


def _summary(ledger_path: str, stopped: bool, delete: DeleteMode = DeleteMode.OFF,
             since: float = 0) -> int:
    dry_run = delete is DeleteMode.DRY_RUN
    with db.connect(ledger_path, readonly=True) as conn, conn.begin():
        st = queries.status(conn)
        checked = verifications.counts(conn)
        deleted = deletions.count(conn, dry_run, since)
    print(f"fleetsync: {st['completed_batches']} of {st['total_batches']} batches succeeded, "
          f"{st['failed_batches']} failed, {st['queue_depth']} waiting"
          + (f"; {checked[VerifyState.VERIFIED]} verified, "
             f"{checked[VerifyState.DIFFERS]} differ" if any(checked.values()) else "")
          + (f"; {deleted} entries {'would be ' if dry_run else ''}deleted "
             "from DEST (table deletions)" if delete is not DeleteMode.OFF else "")
          + (" (stopped)" if stopped else ""))
    if stopped:
        return 1
    return 1 if st["failed_batches"] else 0


def serve(args) -> int:
    """`fleetsync serve`: the API of a ledger, running, finished or crashed."""
    from fleetsync.api.app import make_app
    from fleetsync.api.server import serve as serve_api
    serve_api(make_app(_existing(args.ledger), token=args.token), args.bind, args.port)
    return 0


def _existing(ledger_path: str) -> str:
    if not os.path.exists(ledger_path):
        raise UsageError(f"no ledger at {ledger_path}")
    return os.path.abspath(ledger_path)


def status(args) -> int:
    """`fleetsync status`: the progress line (or, --json, the API's numbers)."""
    import json

    with db.connect(_existing(args.ledger), readonly=True) as conn, conn.begin():
        if args.json:
            print(json.dumps(queries.summary(conn), indent=2))
        else:
            print(progress.line(conn))
    return 0


def retry(args) -> int:
    """`fleetsync retry`: failed (or named) batches back in the queue."""
    with db.connect(_existing(args.ledger)) as conn:
        if migration.load(conn) is None:
            raise UsageError(f"{args.ledger} holds no migration")
        conn.rollback()
        done = batches.requeue(conn, None if args.failed else args.task, "requeued by an operator")
    missing = sorted(set(args.task or []) - set(done))
    print(f"fleetsync: {len(done)} batches back in the queue; `fleetsync run` copies them"
          + (f" (not failed or succeeded, or unknown: {missing})" if missing else ""))
    return 0


def bwlimit(args) -> int:
    """`fleetsync bwlimit`: the fleet's bandwidth cap, also during a run."""
    rate = None if args.rate.lower() in ("off", "none", "0") else sizes.parse(args.rate)
    with db.connect(_existing(args.ledger)) as conn:
        migration.set_bwlimit(conn, rate)
    print(f"fleetsync: bandwidth cap {'off' if rate is None else args.rate + '/s'}; "
          "batches that start from now on share it")
    return 0
