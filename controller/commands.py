"""What each `fleetsync` command does once controller/cli.py has parsed its arguments:
run, scan, verify, retry, bwlimit, backup, serve and status (one function each, named
after it)."""
from __future__ import annotations

import argparse
import json
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from fleetsync.ledger import backup as backups
from fleetsync.ledger import (bandwidth, batches, census, custody, db, deletions, dirpass,
                              entry_outcomes, faults, filter_rules, logbook, migration, queries,
                              runs, sizes, space, timetable, walkqueue)
from fleetsync.ledger.lock import LedgerLock
from fleetsync.ledger import verify as verifications
from fleetsync.ledger.states import DeleteMode, OutcomeKind, VerifyState

from . import (changelist, defaults, delete_guard, filters, inventory, processes, progress,
               scan_summary, window)
from . import report as reports
from .dispatch import DispatchError, Dispatcher, Settings
from .errors import UsageError, WalkFailed
from .hostrun import FleetRun, kill_leftovers
from .integrity import IntegrityCheck
from .policy import Policy
from .producer import Limits
from .resources import DEFAULT_INVENTORY
from .rsync import DEFAULT_RSYNC_OPTIONS
from .walk import Walk

if TYPE_CHECKING:     # annotations only: the API's socket is bound by controller/cli.py
    from .listener import Listener


def _check_src(src: str) -> str:
    """SRC, absolute, or one clear line about what is wrong."""
    if not os.path.exists(src):
        raise UsageError(f"SRC {src} does not exist")
    if not os.path.isdir(src):
        raise UsageError(f"SRC {src} is not a directory")
    if not os.access(src, os.R_OK | os.X_OK):
        raise UsageError(f"SRC {src} is not readable")
    return os.path.realpath(src)


def _check_paths(src: str, dest: str) -> tuple[str, str]:
    """Absolute SRC and DEST, or one clear line about what is wrong."""
    src = _check_src(src)
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
    # A bad bound is refused even without --delete: set for every run (group_vars,
    # say), it would otherwise wait unseen until the cutover.
    delete_guard.check_bound_syntax(args.max_delete)
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
    if getattr(args, "max_retries", 0) < 0:
        raise UsageError("--max-retries must be 0 or more")
    return Limits(entries=args.batch_files, bytes=_size("--batch-bytes", args.batch_bytes))


def _size(option: str, text: str) -> int:
    """A size option, or one line that names it."""
    try:
        return sizes.parse(text)
    except sizes.SizeError as e:
        raise UsageError(f"{option} {text}: {e}") from None


def _timetable(option: str, text: str) -> timetable.Timetable:
    """A cap or a timetable (ledger/timetable.py), or one line that names the fault."""
    try:
        return timetable.parse(text)
    except timetable.TimetableError as e:
        raise UsageError(f"{option} {text}: {e}") from None


def _start_api(api, args, ledger_path: str) -> None:
    """The API in a process of its own (a dashboard polling hard shares no GIL with
    the dispatcher; it ends with this process, also on kill -9), on the socket
    controller/cli.py bound before anything was created."""
    api.start_process(ledger_path, args.token)
    print(f"fleetsync: API at {api.says(args.token)}", file=sys.stderr, flush=True)


def run(args, loading: inventory.Loading | None = None, api=None,
        ahead: FleetRun | None = None) -> int:
    """`fleetsync run`: walk SRC, dispatch its batches, end with the directory pass.
    loading: the inventory, when the caller started reading it already; api: the
    API's bound socket (controller/listener.py), None for --no-api; ahead: the
    dispatch's Ansible, when the caller started it already (FleetRun.ahead: its
    caller drops it if the run does not adopt it)."""
    src, dest = _check_paths(args.src, args.dest)
    if args.checksum_choice is not None:
        custody.check(args.checksum_choice)     # at once: before the inventory is read
    _verify_rate(args)
    limits = _limits(args)
    bwlimit = _timetable("--bwlimit", args.bwlimit) if args.bwlimit else None
    run_window = window.from_args(args)       # this run's alone: not stored
    for line in window.rsync_option_warnings(args.rsync_option):
        print(line, file=sys.stderr)
    delete = _check_delete(args, src)
    given = filters.rules_of(args.filter_rules)     # bad rules: one line, nothing created
    if args.delete_excluded and delete is DeleteMode.OFF:
        raise UsageError("--delete-excluded goes with --delete (or --delete-dry-run)")
    listed = _change_list(args, src)     # a bad list: one line, nothing created
    ledger_path = os.path.abspath(args.ledger)
    db.check(ledger_path, write=True)
    # Whether the run goes on is decided by reading alone: a refusal leaves the
    # ledger byte for byte, its journal mode too, with no -wal, -shm or lock file.
    opened = migration.opening(ledger_path, src, dest)
    if opened is not None and delete is DeleteMode.ON:
        _guard_top_level(args, ledger_path, src)
    choice = _filter_choice(args, opened, given)
    algorithm = _checksum_choice(args.checksum_choice, opened)
    if listed is not None:
        _check_list_fits(opened)
    # Last of the checks that write nothing: the inventory is read meanwhile.
    hosts = inventory.with_slots(
        (loading or inventory.Loading(args.inventory, limit=args.limit)).result(), args.slots)
    # One run per ledger, held until this process ends: a second run would kill
    # this one's rsyncs as leftovers and fight over its batches. A full or damaged
    # ledger stops the run whole (its processes ended by the steps' own clean-up),
    # said in one line.
    with _locked(ledger_path), faults.in_one_line(ledger_path):
        try:
            return _run(_RunPlan(args=args, src=src, dest=dest, limits=limits,
                                 bwlimit=bwlimit, window=run_window, delete=delete,
                                 hosts=hosts, ledger_path=ledger_path, api=api,
                                 choice=choice, listed=listed, algorithm=algorithm,
                                 ahead=ahead))
        except (DispatchError, inventory.InventoryError):
            # Refused once it had begun (no host passed its preflight, say): the
            # ledger is left as a finished run leaves it, in rollback-journal mode,
            # so that a reader who may not write beside it can still open it.
            _fold_wal(ledger_path)
            raise


def _checksum_choice(given: str | None, mig: migration.Migration | None) -> str:
    """The checksum this run records: --checksum-choice (already checked by run(),
    before the inventory is read), else the ledger's, else the default. A ledger
    keeps the algorithm it recorded first (one ledger never holds two kinds of
    digest): another is refused before anything is written."""
    kept = None if mig is None else mig.options.get(custody.OPTION)
    if kept is not None and given is not None and given != kept:
        raise custody.ChecksumChoiceError(
            f"this ledger records {kept} checksums (fixed when its migration began): "
            f"--checksum-choice {given} needs another --ledger")
    return kept or given or defaults.CHECKSUM_CHOICE


def _filter_choice(args, mig: migration.Migration | None,
                   given: list[filters.Rule]) -> filters.Choice:
    """This run's filter rules, given the ledger's migration as read before anything
    is written (None: a new ledger); other rules than the ledger's are refused
    (unless --change-filters), so a refused run leaves the ledger as it was."""
    return filters.choose(given, args.no_default_excludes,
                          getattr(args, "change_filters", False),   # scan has none
                          bool(args.filter_rules) or args.no_default_excludes,
                          None if mig is None else filter_rules.stored(mig.options),
                          mig is not None, mig is not None and mig.walk_done)


def _change_list(args, src: str) -> list[bytes] | None:
    """--files-from's paths (controller/changelist.py), read and checked before
    anything is created; None without it."""
    if args.from0 and not args.files_from:
        raise UsageError("--from0 goes with --files-from")
    if not args.files_from:
        return None
    for given, option in ((args.rescan, "--rescan"), (args.change_filters, "--change-filters")):
        if given:
            raise UsageError(f"--files-from queues the listed entries alone; {option} walks "
                             "all of SRC: give one or the other")
    return changelist.read(args.files_from, args.from0, src)


def _check_list_fits(mig: migration.Migration | None) -> None:
    """A change list brings a complete copy up to date: a ledger whose walk of SRC
    never ended (or a new one) would count the list's entries as all of SRC, and
    a rescan owed to changed rules must run first."""
    if mig is None or not mig.walk_done:
        raise UsageError("--files-from: the ledger holds no complete walk of SRC: copy it "
                         "in full first (`fleetsync run` without --files-from); a change "
                         "list then brings that copy up to date")
    if filter_rules.rescan_owed(mig.options):
        raise UsageError("--files-from: the filter rules changed and their rescan has not "
                         "run: resume with `fleetsync run` first")


def _locked(ledger_path: str) -> LedgerLock:
    """The ledger's lock (refused in one line when a live run holds it); a stale
    lock of a dead run is taken over, and said so."""
    lock = LedgerLock(ledger_path).acquire()
    if lock.stale:
        print(f"fleetsync: took over the stale lock of {lock.stale} (no longer running)",
              file=sys.stderr)
    return lock


@dataclass(frozen=True)
class _RunPlan:
    """What `fleetsync run` checked before taking the ledger's lock: the input of the
    run's steps below."""
    args: argparse.Namespace
    src: str
    dest: str
    limits: Limits
    bwlimit: timetable.Timetable | None  # kept in the ledger
    window: window.Window                # this run's alone
    delete: DeleteMode                   # as asked: ON runs a dry run first (the guard)
    hosts: dict[str, inventory.Host]
    ledger_path: str
    api: Listener | None                 # the API's bound socket; None for --no-api
    choice: filters.Choice
    listed: list[bytes] | None = None    # --files-from's paths: queued alone, no walk
    algorithm: str = defaults.CHECKSUM_CHOICE   # the checksums recorded (ledger/custody.py)
    ahead: FleetRun | None = None        # the dispatch's Ansible, started at launch


def _run(plan: _RunPlan) -> int:
    """The run, in steps: open the migration, walk, dispatch the passes, close the run."""
    engine = db.writer(plan.ledger_path)
    mig, owed = _open_migration(plan, engine)
    _say_room(plan.ledger_path, engine)
    walk = _start_walk(plan, engine, mig, owed)
    if plan.delete is not DeleteMode.OFF:
        # The pass the bound is checked on covers every directory of SRC, not only
        # those a rescan touched (dirpass.next_part says why).
        with db.connect(plan.ledger_path) as conn:
            dirpass.restart(conn)
    # --delete: the pass runs as a dry run first; the real one only within --max-delete.
    settings = replace(_settings(plan.args, plan.ledger_path),
                       delete=DeleteMode.DRY_RUN if plan.delete is DeleteMode.ON
                       else plan.delete, window_stop_at=plan.window.stop_at)
    if plan.ahead is not None:       # its processes carry this run's token already
        settings = replace(settings, run_token=plan.ahead.run_token)
    started = time.time()
    try:
        with _dispatching(plan, settings, walk, engine, mig) as (dispatcher, stopped, watch):
            _passes(plan, settings, dispatcher, started, stopped)
    except delete_guard.DeleteRefused:
        # Nothing was deleted: the run ends as one without --delete, then says why.
        _close_run(plan.ledger_path, engine, stopped, watch, started, DeleteMode.OFF)
        raise
    return _close_run(plan.ledger_path, engine, stopped, watch, started, plan.delete)


def _open_migration(plan: _RunPlan, engine) -> tuple[migration.Migration, bool]:
    """The ledger's migration, opened (or created) for this run, the run begun and the
    batches of a dead run released; and whether changed filter rules owe a rescan."""
    mig = migration.open_or_create(engine, plan.src, plan.dest,
                                   _new_options(plan.limits, plan.choice),
                                   plan.ahead.migration_id if plan.ahead else None)
    for line in plan.choice.says():
        print(line, file=sys.stderr)
    if mig.repointed_from == migration.NO_DEST:
        print(f"fleetsync: this ledger holds a scan of {plan.src}: copying it to {plan.dest}"
              + (" from that walk (SRC is not walked again)" if mig.walk_done else ""),
              file=sys.stderr)
    elif mig.repointed_from:
        print(f"fleetsync: this ledger now copies to {plan.dest}, not {mig.repointed_from} "
              "(nothing was ever copied there)", file=sys.stderr)
    killed = _kill_leftovers(mig.migration_id, plan.ahead.run_token if plan.ahead else None)
    if killed:
        print(f"fleetsync: stopped {killed} processes left by an earlier run", file=sys.stderr)
    with engine.connect() as conn:
        migration.start_run(conn)
        runs.record(conn, os.path.abspath(plan.args.inventory))
        migration.keep_option(conn, custody.OPTION, plan.algorithm)
        if plan.bwlimit is not None:
            bandwidth.store(conn, plan.bwlimit)
        if plan.choice.change:
            filter_rules.change(conn, [str(r) for r in plan.choice.rules])
        filter_rules.set_delete_excluded(conn, plan.args.delete_excluded)
        with conn.begin():
            # changed rules owe a rescan, until it has begun (also after a crash)
            owed = filter_rules.rescan_owed(migration.load(conn).options)
        released = batches.release_all(conn, "the controller restarted")
    if released:
        print(f"fleetsync: resumed: {len(released)} batches of the last run wait again",
              file=sys.stderr)
    return mig, owed


def _say_room(ledger_path: str, engine) -> None:
    """A ledger's filesystem with less room than the migration is expected to need is
    said at the start (and in /metrics), not first found when it fills (exit 4)."""
    with engine.connect() as conn, conn.begin():
        found = space.room(conn, ledger_path)
    if found is not None and found.short:
        print("fleetsync: " + found.warning(), file=sys.stderr)


def _kill_leftovers(migration_id: str, spare: str | None = None) -> int:
    """hostrun.kill_leftovers, said to be partial when /proc hides other users'
    processes from this one (hidepid): their leftovers cannot be seen."""
    hidden = processes.hiding()
    if hidden:
        print(f"fleetsync: warning: {hidden}", file=sys.stderr)
    return kill_leftovers(migration_id, spare)


def _start_walk(plan: _RunPlan, engine, mig: migration.Migration, owed: bool) -> Walk | None:
    """The walk of SRC, started: when the ledger's first walk is not done, --rescan asks
    for one, or changed filter rules owe one; None when the ledger's walk stands, or
    when a change list's entries are queued instead (SRC is not walked)."""
    if plan.listed is not None:
        _queue_list(plan, mig)
        return None
    if mig.walk_done and not plan.args.rescan and not owed:
        return None
    walk = Walk(plan.ledger_path, plan.src, plan.args.producers,
                _ledger_limits(mig, plan.limits), rescan=plan.args.rescan or owed,
                filters=filters.Filters(plan.choice.rules))
    walk.start()
    if owed:
        with engine.connect() as conn:
            filter_rules.rescan_begun(conn)
    return walk


def _queue_list(plan: _RunPlan, mig: migration.Migration) -> None:
    """The change list's entries into batches, cut by the ledger's own limits; its
    directory pass covers its own batches' directories (with --delete too)."""
    deleting = plan.delete is not DeleteMode.OFF
    with db.connect(plan.ledger_path) as conn:
        migration.pass_after_copied(conn)      # before its batches exist
        selection = changelist.queue(conn, plan.src, plan.listed,
                                     _ledger_limits(mig, plan.limits),
                                     filters.Filters(plan.choice.rules), deleting)
    print(selection.line(plan.args.files_from, deleting), file=sys.stderr, flush=True)


def _new_options(limits: Limits, choice: filters.Choice) -> dict:
    """A new ledger's options: its batch limits and its filter rules (an existing
    ledger keeps its own)."""
    return {"batch_files": limits.entries, "batch_bytes": limits.bytes,
            "filters": [str(r) for r in choice.rules]}


def _ledger_limits(mig: migration.Migration, given: Limits) -> Limits:
    """The ledger's batch limits (a walk resumed or a list queued cuts as the first
    walk did); `given` where the ledger has none."""
    return Limits(entries=mig.options.get("batch_files", given.entries),
                  bytes=mig.options.get("batch_bytes", given.bytes))


@contextmanager
def _dispatching(plan: _RunPlan, settings: Settings, walk: Walk | None, engine,
                 mig: migration.Migration):
    """The copy's dispatcher, the live progress line, the signal handlers and the
    window's watch, for the passes; all of them (and the walk and the API) end with the
    block, however it ends."""
    dispatcher = Dispatcher(settings, walk, plan.hosts, plan.ahead)
    # The ledger's integrity, checked beside the copy: it never delays the first rsync.
    dispatcher.integrity = IntegrityCheck(plan.ledger_path).start()
    if plan.api is not None:      # after the dispatcher: its first run goes on first
        _start_api(plan.api, plan.args, plan.ledger_path)
    live = progress.Live(plan.ledger_path).start()
    stopped = _stop_on_signals()
    stopped.dispatcher = dispatcher
    watch = window.Watch(plan.window, plan.ledger_path, mig.migration_id, settings.run_token,
                         stopped).start()
    try:
        yield dispatcher, stopped, watch
    except KeyboardInterrupt:
        # Stopped at once by a second signal: the ledger says so (`status` shows a
        # stopped run, not a crashed one), then the interruption goes on up.
        with engine.connect() as conn:
            migration.stop_run(conn)
        raise
    finally:
        watch.stop()
        live.stop()
        if walk is not None:
            walk.stop()
        dispatcher.close()
        if plan.api is not None:
            plan.api.stop()


def _passes(plan: _RunPlan, settings: Settings, dispatcher: Dispatcher, started: float,
            stopped: Stopped) -> None:
    """The copy; then, unless a signal stopped it, the delete pass (--delete, raises
    DeleteRefused over --max-delete) and the checks (--verify)."""
    dispatcher.run()
    if not stopped.is_set():       # a stopped run is checked at its next start
        dispatcher.integrity.raise_if_damaged(wait=True)
    if plan.delete is DeleteMode.ON and not stopped.is_set():
        _delete_within_bound(plan.args, settings, dispatcher.hosts, started, stopped)
    if plan.args.verify and not stopped.is_set():
        _verify(settings, dispatcher.hosts, resume=False, stopped=stopped)
        for line in _problem_lines(settings.ledger_path):
            print(line, file=sys.stderr)


def _close_run(ledger_path: str, engine, stopped: Stopped, watch: window.Watch,
               started: float, delete: DeleteMode) -> int:
    """The run's end in the ledger (finished, or stopped by a signal or its window), its
    summary (delete: what the summary reports of the pass) and the WAL folded in."""
    with engine.connect() as conn:
        if batches.work_left(conn).finished:
            migration.end_run(conn)
        elif stopped.is_set():
            migration.stop_run(conn)
    engine.dispose()
    code = _summary(ledger_path, stopped.signum, delete, started)
    if watch.closed and not stopped.signum:
        print(window.summary(ledger_path, watch))
        code = window.WINDOW_EXIT
    _fold_wal(ledger_path)
    return code


def scan(args) -> int:
    """`fleetsync scan`: the walk alone, into the ledger (no host, nothing copied), then
    its census; a later `run` with a --dest copies from that walk. A ledger whose walk
    is complete is not walked again (its census is printed). Exit 1 when some entry
    could not be read, as `run` would then."""
    src = _check_src(args.src)
    limits = _limits(args)
    given = filters.rules_of(args.filter_rules)     # bad rules: one line, nothing created
    ledger_path = os.path.abspath(args.ledger)
    db.check(ledger_path, write=True)
    opened = migration.opening(ledger_path, src)    # another SRC: one line, nothing written
    choice = _filter_choice(args, opened, given)
    with _locked(ledger_path), faults.in_one_line(ledger_path):
        engine = db.writer(ledger_path)
        mig = migration.open_or_create(engine, src, None, _new_options(limits, choice))
        engine.dispose()
        for line in choice.says():
            print(line, file=sys.stderr)
        if mig.walk_done:
            print("fleetsync: the walk of SRC in this ledger is complete: its census "
                  "(`fleetsync run --rescan` walks SRC again)", file=sys.stderr)
        else:
            _walk_alone(Walk(ledger_path, src, args.producers, _ledger_limits(mig, limits),
                             filters=filters.Filters(choice.rules)), ledger_path)
        with db.connect(ledger_path, readonly=True) as conn, conn.begin():
            found = census.census(conn)
        _fold_wal(ledger_path)
    found = {"src": mig.src, "ledger": ledger_path, **found}
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        print("\n".join(scan_summary.lines(found)))
    return 1 if found["unreadable"]["entries"] else 0


def _walk_alone(walk: Walk, ledger_path: str) -> None:
    """The walk, with the scan's progress line on a terminal, until it is complete;
    a producer killed from outside is replaced (Walk.watch), as during a run."""
    walk.start()
    live = progress.Live(ledger_path, draw=progress.scan_line).start()
    try:
        while True:
            walk.watch()
            if not walk.running():
                break
            # until a producer ends (at once) or the next look at them
            multiprocessing.connection.wait([p.sentinel for p in walk.procs],
                                            defaults.WALK_POLL)
        if not walk.join(0):
            raise WalkFailed("the walk of SRC failed; see the log in the ledger "
                             "(`fleetsync scan` again resumes it)")
    finally:
        live.stop()
        walk.stop()



def _fold_wal(ledger_path: str) -> None:
    """The run's last transactions into the ledger file itself, so a copy of the file
    alone is the whole ledger (the API's readers cannot fold the WAL in)."""
    if not backups.checkpoint(ledger_path):
        print("fleetsync: warning: a reader kept part of the ledger in its WAL; copy it "
              "with `fleetsync backup`, not cp", file=sys.stderr)


def _guard_top_level(args, ledger_path: str, src: str) -> None:
    """--delete with top-level entries the ledger copied before missing from SRC:
    refused before anything runs (or is written), unless named or a bound is given."""
    with db.connect(ledger_path, readonly=True) as conn:
        missing = delete_guard.missing_top_level(conn, src, args.allow_delete)
    if missing and args.max_delete is None:
        raise delete_guard.refuse_missing(missing, src)


def _delete_within_bound(args, settings: Settings, hosts, since: float,
                         stopped: Stopped) -> None:
    """After the dry-run pass: the real one when its count is within --max-delete
    (said in one line), else DeleteRefused (nothing deleted)."""
    with db.connect(settings.ledger_path, readonly=True) as conn, conn.begin():
        would = deletions.count(conn, True, since)
        # DEST's entries: SRC's as the walk found them, and those the pass would delete
        # (a batch count would count an entry once per rescan that queued it again).
        dest_entries = walkqueue.entries_seen(conn) + would
    limit = delete_guard.bound(args.max_delete, dest_entries)
    if would > limit:
        with db.connect(settings.ledger_path, readonly=True) as conn:
            examples = deletions.listed(conn, True, since, delete_guard.NAMES_SHOWN)
        raise delete_guard.refuse_count(would, limit, args.max_delete, dest_entries, examples)
    print(f"fleetsync: --delete: {would} entries to delete from DEST, within --max-delete "
          f"{args.max_delete or defaults.MAX_DELETE} ({limit} of {dest_entries})",
          file=sys.stderr)
    with db.connect(settings.ledger_path) as conn:
        dirpass.restart(conn)
    stopped.dispatch(Dispatcher(replace(settings, delete=DeleteMode.ON), None, hosts))
    _copy_what_was_in_the_way(settings, hosts, stopped)


def _copy_what_was_in_the_way(settings: Settings, hosts, stopped: Stopped) -> None:
    """Batches that failed on a DEST entry of another type (a directory that became a
    file or a symlink in SRC) copy again: the real pass replaced that entry, its
    subtree counted within --max-delete, so their entries can arrive now."""
    if stopped.is_set():
        return
    with db.connect(settings.ledger_path) as conn:
        blocked = entry_outcomes.in_the_way(conn)
        if not blocked:
            return
        batches.requeue(conn, blocked, "--delete replaced a DEST entry of another type")
        dirpass.restart(conn, after=blocked[0] - 1)
    stopped.dispatch(Dispatcher(replace(settings, delete=DeleteMode.OFF), None, hosts))


def _verify_rate(args) -> int | None:
    """--verify-rate in bytes per second (None: unbounded); a bad one is one line."""
    if not args.verify_rate:
        return None
    try:
        rate = sizes.parse(args.verify_rate)
    except sizes.SizeError as e:
        raise UsageError(f"--verify-rate {args.verify_rate!r}: {e}") from None
    if rate <= 0:
        raise UsageError(f"--verify-rate {args.verify_rate!r}: give a rate above 0, e.g. 200MiB")
    return rate


def _settings(args, ledger_path: str) -> Settings:
    return Settings(ledger_path, os.path.abspath(args.inventory),
                    Policy(max_retries=getattr(args, "max_retries", Policy.max_retries)),
                    [*DEFAULT_RSYNC_OPTIONS, *args.rsync_option],
                    items_per_run=args.items_per_run,
                    heartbeat_timeout=args.heartbeat_timeout, slots=args.slots,
                    limit=args.limit, verify_rate=_verify_rate(args))


class Stopped(threading.Event):
    """Set by the first SIGINT or SIGTERM; signum says which (exit status 128 + signum).
    The signal stops the dispatcher that runs then: the copy, the delete pass or the
    checks, each a dispatcher of its own, one after another."""
    signum = 0
    dispatcher: Dispatcher | None = None

    def dispatch(self, dispatcher: Dispatcher, mode: OutcomeKind = OutcomeKind.COPY) -> None:
        """Run this dispatcher, unless a signal came before, and close it."""
        self.dispatcher = dispatcher
        try:
            if not self.is_set():
                dispatcher.run(mode)
        finally:
            dispatcher.close()


def _stop_on_signals() -> Stopped:
    """SIGINT/SIGTERM: finish the batches in hand; a second one: stop now."""
    stopped = Stopped()

    def _stop(signum, _frame):
        if stopped.is_set():
            raise KeyboardInterrupt
        stopped.signum = signum
        stopped.set()
        print("fleetsync: stopping: finishing the batches in hand (again to stop now)",
              file=sys.stderr)
        if stopped.dispatcher is not None:
            stopped.dispatcher.stop()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    return stopped


def _verify(settings: Settings, hosts, resume: bool, stopped: Stopped | None = None
            ) -> tuple[dict[VerifyState, int], int, int]:
    """Check succeeded batches on the workers: all of them, or (resume) what a stopped
    verify left. Returns the counts per state, the signal that stopped the checks
    (0: none) and how many batches this verify checked itself."""
    since = time.time()
    with db.connect(settings.ledger_path) as conn:
        verifications.release_worker(conn, None)     # checks a dead run had in hand
        verifications.enqueue(conn, resume)
    stopped = stopped or _stop_on_signals()
    stopped.dispatch(Dispatcher(settings, None, hosts), OutcomeKind.VERIFY)
    with db.connect(settings.ledger_path, readonly=True) as conn, conn.begin():
        counts, checked = verifications.counts(conn), verifications.checked_since(conn, since)
    if stopped.is_set() and counts[VerifyState.PENDING]:
        print(f"fleetsync: `fleetsync verify --resume` checks the {counts[VerifyState.PENDING]} "
              "left; `fleetsync verify` checks every batch again", file=sys.stderr)
    return counts, stopped.signum if stopped.is_set() else 0, checked


def verify(args) -> int:
    """`fleetsync verify`: hash the files of succeeded batches at DEST and compare
    with SRC's recorded checksums: every batch, as DEST is now, or with --resume what
    a stopped verify left. Names the files that are not intact."""
    ledger_path = _existing(args.ledger, write=True)
    mig = migration.opening(ledger_path)      # read only: a refusal changes nothing
    if mig is None:
        raise UsageError(f"{args.ledger} holds no migration")
    db.check_integrity(ledger_path)           # its verdicts rest on the batches' rows
    args.inventory = _verify_inventory(ledger_path, args.inventory)
    hosts = inventory.with_slots(inventory.load(args.inventory, limit=args.limit), args.slots)
    # the lock: it kills leftovers of the migration, never a live run's
    with _locked(ledger_path), faults.in_one_line(ledger_path):
        _kill_leftovers(mig.migration_id)
        counts, stopped, checked = _verify(_settings(args, ledger_path), hosts, args.resume)
    verdicts = sum(counts[s] for s in (VerifyState.VERIFIED, VerifyState.DIFFERS,
                                        VerifyState.ERROR))
    print(f"fleetsync: {counts[VerifyState.VERIFIED]} batches verified, "
          f"{counts[VerifyState.DIFFERS]} differ, {counts[VerifyState.ERROR]} could not be "
          f"checked, {counts[VerifyState.PENDING]} not checked"
          + (f", {counts[VerifyState.STALE]} wait for a new copy (`fleetsync run`)"
             if counts[VerifyState.STALE] else "")
          + f"; this verify checked {checked}"
          + (f", {verdicts - checked} verdicts kept from the verify it resumed"
             if args.resume else "")
          + (" (stopped)" if stopped else ""))
    for line in _problem_lines(ledger_path):
        print(line)
    if args.requeue and counts[VerifyState.DIFFERS]:
        with db.connect(ledger_path) as conn:
            ids = verifications.requeue_differences(conn)
        print(f"fleetsync: {len(ids)} batches that differ are back in the queue; "
              "`fleetsync run` copies them")
    _fold_wal(ledger_path)
    if stopped:
        return 128 + stopped
    unsettled = (VerifyState.DIFFERS, VerifyState.ERROR, VerifyState.PENDING, VerifyState.STALE)
    return 1 if any(counts[s] for s in unsettled) else 0


def _problem_lines(ledger_path: str) -> list[str]:
    """The files a verify did not find intact, named (the first NAMED_PROBLEMS; the
    view custody_problems holds them all)."""
    with db.connect(ledger_path, readonly=True) as conn, conn.begin():
        counts, named = custody.problems(conn, defaults.NAMED_PROBLEMS)
    if not counts:
        return []
    total = sum(counts.values())
    lines = [f"fleetsync: {total} files are not proven intact at DEST: "
             + ", ".join(f"{n} {problem}" for problem, n in sorted(counts.items()))]
    lines += [f"  {problem}: {logbook.show_path(path)}" for problem, path in named]
    if total > len(named):
        lines.append(f"  ... {total - len(named)} more: sqlite3 {ledger_path} "
                     "'SELECT * FROM custody_problems'")
    return lines


def _verify_inventory(ledger_path: str, given: str | None) -> str:
    """--inventory, or the one the migration last ran with (its workers mount DEST),
    or this machine for a ledger that never ran."""
    if given:
        return given
    with db.connect(ledger_path, readonly=True) as conn:
        last = runs.last_inventory(conn)
    if last is None:
        return DEFAULT_INVENTORY
    if not os.path.exists(last):
        raise UsageError(f"the inventory of the last run, {last}, is gone: give --inventory")
    print(f"fleetsync: checking on the workers of {last} (the last run's inventory)",
          file=sys.stderr)
    return last


def _summary(ledger_path: str, stopped: int, delete: DeleteMode = DeleteMode.OFF,
             since: float = 0) -> int:
    """Print the run's outcome; the exit status: 128 + the signal that stopped it
    (130 for SIGINT, 143 for SIGTERM), else 1 if some entry did not arrive, else 0."""
    dry_run = delete is DeleteMode.DRY_RUN
    with db.connect(ledger_path, readonly=True) as conn, conn.begin():
        st = queries.status(conn)
        checked = verifications.counts(conn)
        deleted = deletions.count(conn, dry_run, since)
        missing, vanished = queries.not_arrived(conn)
        pruned = filter_rules.pruned_count(conn)
        full = space.dest_full(conn) if st["failed_batches"] else None
    print(f"fleetsync: {st['completed_batches']} of {st['total_batches']} batches succeeded, "
          f"{st['failed_batches']} failed, {st['queue_depth']} waiting; "
          + _arrival(missing, vanished)
          + (f"; {checked[VerifyState.VERIFIED]} verified, "
             f"{checked[VerifyState.DIFFERS]} differ" if any(checked.values()) else "")
          + (f"; {deleted} entries {'would be ' if dry_run else ''}deleted "
             "from DEST (table deletions)" if delete is not DeleteMode.OFF else "")
          + (" (stopped)" if stopped else ""))
    if pruned:
        print(f"fleetsync: {_pruned(pruned)}")
    if full is not None:
        print(f"fleetsync: {full.advice()}")
    if delete is DeleteMode.OFF:
        with db.connect(ledger_path, readonly=True) as conn:
            blocked = entry_outcomes.in_the_way(conn)
        if blocked:
            print(f"fleetsync: {len(blocked)} batches hold entries whose name DEST holds as "
                  "another type (a directory that became a file or a symlink in SRC): "
                  "`run --delete` replaces them, the replaced subtrees counted within "
                  "--max-delete")
    if stopped:
        return 128 + stopped
    # 0 only when every entry arrived or vanished from SRC (issue 10): a batch's
    # state alone would hide a directory the walk could not list.
    return 1 if missing else 0


def _arrival(missing: int, vanished: int) -> str:
    """How many entries did not arrive (the README's exit status rests on it)."""
    return (f"{missing} entries did not arrive"
            + (f", {vanished} vanished from SRC" if vanished else "")
            + (" (view missing_entries)" if missing or vanished else ""))


def _pruned(count: int) -> str:
    return (f"{count} entries left out by the filter rules (table pruned; a directory "
            "counts once, not what is beneath it)")


def serve(args, api) -> int:
    """`fleetsync serve`: the API of a ledger, running, finished or crashed, until
    SIGINT or SIGTERM; exits 128 + that signal (130 for Ctrl-C).
    api: the socket controller/cli.py bound (controller/listener.py)."""
    from fleetsync.api.app import make_app
    ledger_path = _existing(args.ledger)
    stopped = Stopped()

    def _stop(signum, _frame):
        stopped.signum = signum
        stopped.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    api.start(make_app(ledger_path, token=args.token))
    print(f"fleetsync: serving the API of {ledger_path} at {api.says(args.token)}",
          flush=True)
    while not stopped.wait(1.0):   # a timeout: signal handlers run between waits
        pass
    api.stop()
    return 128 + stopped.signum


def _existing(ledger_path: str, write: bool = False) -> str:
    """The ledger's absolute path, once it is known to be a fleetsync ledger this
    command can use (else one line, exit 2, nothing changed)."""
    if not os.path.exists(ledger_path):
        raise UsageError(f"no ledger at {ledger_path}")
    db.check(ledger_path, write)
    return os.path.abspath(ledger_path)


def status(args) -> int:
    """`fleetsync status`: the progress line (or, --json, the API's numbers), of a
    ledger whose integrity was checked first (a damaged one: one line, exit 2)."""
    ledger_path = _existing(args.ledger)
    db.check_integrity(ledger_path)
    with progress.reading(ledger_path) as reading:
        pruned = filter_rules.pruned_count(reading.conn)
        if args.json:
            print(json.dumps({**reading.summary(), "pruned": pruned,
                              "window": bandwidth.window(reading.conn)}, indent=2))
        else:
            print(reading.line())
            print("fleetsync: " + bandwidth.line(reading.conn))
            print("fleetsync: " + _arrival(*queries.not_arrived(reading.conn)))
            if pruned:
                print(f"fleetsync: {_pruned(pruned)}")
    return 0


def backup(args) -> int:
    """`fleetsync backup`: a consistent, self-contained copy of the ledger, also during a run."""
    ledger_path = _existing(args.ledger)
    with db.connect(ledger_path, readonly=True) as conn:
        if not migration.created(conn):      # a run that is creating it, or none
            raise UsageError(f"{args.ledger} holds no migration yet: nothing to copy")
    if os.path.lexists(args.out):
        raise UsageError(f"{args.out} exists: give a new file for the copy")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise UsageError(f"no directory for {args.out}")
    size = backups.backup(ledger_path, args.out)
    print(f"fleetsync: ledger copied to {args.out} ({size:,} bytes, one file)")
    return 0


def retry(args) -> int:
    """`fleetsync retry`: failed (or named) batches back in the queue. A batch the
    ledger does not have is refused (one line, exit 2) before anything is written."""
    ledger_path = _existing(args.ledger, write=True)
    if migration.opening(ledger_path) is None:
        raise UsageError(f"{args.ledger} holds no migration")
    if args.task:
        with db.connect(ledger_path, readonly=True) as conn:
            unknown = batches.unknown(conn, args.task)
        if unknown:
            raise UsageError(f"no batch{'es' if len(unknown) > 1 else ''} "
                             f"{', '.join(map(str, unknown))} in {args.ledger} "
                             "(`fleetsync status` counts its batches): nothing was requeued")
    with db.connect(ledger_path) as conn:
        done = batches.requeue(conn, None if args.failed else args.task, "requeued by an operator")
    left = sorted(set(args.task or []) - set(done))
    print(f"fleetsync: {len(done)} batches back in the queue; `fleetsync run` copies them"
          + (f" (waiting or running already: {left})" if left else ""))
    return 0


def report(args) -> int:
    """`fleetsync report`: controller/report.py writes it."""
    return reports.run(args)


def bwlimit(args) -> int:
    """`fleetsync bwlimit`: the fleet's bandwidth cap or timetable, also during a run."""
    text = "off" if args.rate.strip().lower() in ("none", "0") else args.rate
    table = _timetable("bwlimit", text)       # bad input: one line, nothing opened
    with db.connect(_existing(args.ledger, write=True)) as conn:
        bandwidth.store(conn, table)
        with conn.begin():
            now = bandwidth.line(conn)
    print(f"fleetsync: {now}; the next item of each host uses it (batches claimed "
          "before it that have not started wait again)")
    return 0
