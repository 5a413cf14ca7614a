"""The dispatcher: keeps every host of the inventory busy and records what happens.

One thread owns the ledger connection of the controller. It starts one
FleetRun (one ansible-playbook run, one fork per host) for the hosts that are
ready, the whole fleet at the start, and one more for hosts that join or come
back later; turns runner events, and the beats of running items, into
heartbeats and batch transitions, notices lost hosts (unreachable, or not heard
from while holding a batch) and ends what they still run, re-reads the inventory
when it changes, and ends when the walk is done and nothing waits or runs. It is
a child subreaper: the ssh masters that its runs daemonize stay its children,
and it ends them when it ends.
"""
from __future__ import annotations

import ctypes
import logging
import os
import queue
import time
import uuid
from dataclasses import dataclass, field

from fleetsync.ledger import (bandwidth, batches, db, deletions, dirpass, logbook, migration,
                              verify, workers)
from fleetsync.ledger.errors import FleetsyncError
from fleetsync.ledger.states import DeleteMode, LogLevel, OutcomeKind, VerifyState

from . import defaults, file_outcomes, inventory, outcome, processes, protocol, rsync, slot
from .hostrun import (BATCHES_TASK, PREFLIGHT_TASK, Event, EventKind, FleetRun, HostRun,
                      close_masters, stop_now)
from .outcome import Outcome
from .policy import Policy
from .walk import Walk

log = logging.getLogger(__name__)

BACKOFF_FIRST, BACKOFF_MAX = defaults.BACKOFF_FIRST, defaults.BACKOFF_MAX
INVENTORY_EVERY, HEARTBEAT_EVERY = defaults.INVENTORY_EVERY, defaults.HEARTBEAT_EVERY


class DispatchError(FleetsyncError):
    """The run cannot go on: no host can work (said in one line)."""


@dataclass
class Settings:
    ledger_path: str
    inventory_path: str
    policy: Policy = field(default_factory=Policy)
    rsync_options: list[str] = field(default_factory=lambda: list(rsync.DEFAULT_RSYNC_OPTIONS))
    items_per_run: int = defaults.ITEMS_PER_RUN    # batches per ansible-playbook run and slot
    # Silence that loses a host holding a batch (its running items beat well within it).
    heartbeat_timeout: float = defaults.HEARTBEAT_TIMEOUT
    delete: DeleteMode = DeleteMode.OFF            # the directory pass deletes too
    slots: int | None = None                       # --slots: every host's, over the inventory's
    limit: str | None = None                       # --limit: the hosts of the inventory it uses
    # This `fleetsync run`: carried in the command line of every process it starts,
    # so that the next run can tell them from its own and kill them.
    run_token: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    # The run's window (controller/window.py): no claim from then on (the windows' clock).
    window_stop_at: float | None = None


class Dispatcher:
    def __init__(self, settings: Settings, walk: Walk | None,
                 hosts: dict[str, inventory.Host] | None = None):
        self.settings = settings
        self.walk = walk
        self.engine = db.writer(settings.ledger_path)
        self.conn = self.engine.connect()
        self.mig = migration.load(self.conn)
        self.conn.rollback()
        self.events: queue.Queue[Event] = queue.Queue()
        self.hosts: dict[str, inventory.Host] = hosts or {}
        self.runs: dict[str, HostRun] = {}
        self.backoff: dict[str, float] = {}
        self.preflight_errors: dict[str, str] = {}
        self.beats: dict[str, float] = {}
        self.worker_of_host: dict[str, str] = {}
        self.losses: dict[str, int] = {}
        self.stopping = False
        # The lookups of this dispatch stop claiming when this process is gone
        # (kill -9): nothing would record what they ran.
        self.controller = f"{os.getpid()}:{processes.start_time(os.getpid())}"
        _become_subreaper()
        # Hosts of earlier runs are not up until they pass this run's preflight
        # (they would shrink every rsync's share of --bwlimit).
        workers.forget_all(self.conn)
        self._inventory_mtime = _mtime(settings.inventory_path) if hosts else None
        self._next_inventory = self._next_beat = 0.0

    # -- the loop ---------------------------------------------------------------
    def run(self, mode: OutcomeKind = OutcomeKind.COPY) -> None:
        """Dispatch until every batch is done and the directory pass has run (copy), or
        until every succeeded batch is checked (verify)."""
        self.mode = mode
        try:
            self._loop()
        except BaseException:     # stopped now (a second Ctrl-C) or broken: nothing stays
            self._stop_now()
            raise
        finally:
            close_masters(self.mig.migration_id)

    def _stop_now(self) -> None:
        for fleet in {id(r.fleet): r.fleet for r in self.runs.values() if r.fleet}.values():
            fleet.cancel()
        stop_now(self.mig.migration_id, self.settings.run_token)

    def _loop(self) -> None:
        while True:
            now = time.time()
            if now >= self._next_inventory:
                self._reload_inventory()
                self._next_inventory = now + INVENTORY_EVERY
            self._finish_walk()
            done = self._done()
            if self.stopping or done:
                for r in self.runs.values():
                    r.drain()
                if not self.runs:
                    break
            else:
                self._start_runs()
                self._check_silent(now)
                self._check_hopeless()
            self._handle_events(0.2)
            if time.time() >= self._next_beat:
                self._listen(time.time())
                self._flush_heartbeats()
        self._flush_heartbeats()

    def _done(self) -> bool:
        if self.mode is OutcomeKind.VERIFY:
            with self.conn.begin():
                c = verify.counts(self.conn)
            return c[VerifyState.PENDING] == c[VerifyState.RUNNING] == 0
        return batches.work_left(self.conn).finished and dirpass.done(self.conn)

    def stop(self) -> None:
        self.stopping = True

    def _finish_walk(self) -> None:
        if self.walk is None:
            return
        for _ in range(2):     # twice: a producer that died between the calls is replaced too
            self.walk.watch()
            if self.walk.running():
                return
        if not self.walk.join(0):
            raise DispatchError("the walk of SRC failed; see the log in the ledger")
        self.walk = None

    # -- hosts --------------------------------------------------------------------
    def _reload_inventory(self) -> None:
        mtime = _mtime(self.settings.inventory_path)
        if mtime == self._inventory_mtime and self.hosts:
            return
        self._inventory_mtime = mtime
        try:
            hosts = inventory.with_slots(inventory.load(self.settings.inventory_path,
                                                        limit=self.settings.limit),
                                         self.settings.slots)
        except inventory.InventoryError as e:
            if not self.hosts:
                raise
            logbook.add(self.conn, LogLevel.WARNING, f"{e}; keeping the hosts known before")
            return
        for name in set(self.hosts) - set(hosts):
            if name in self.runs:     # first: it claims nothing after the line below
                self.runs[name].drain()
            logbook.add(self.conn, LogLevel.INFO, f"host {name} left the inventory: no new batches")
            workers.gone(self.conn, name)
        for name in set(hosts) - set(self.hosts):
            if self.hosts:
                logbook.add(self.conn, LogLevel.INFO, f"host {name} joined the inventory")
        self.hosts = hosts

    def _start_runs(self) -> None:
        """One run for every host that is ready now (not running, not resting)."""
        now = time.time()
        ready = [host for name, host in self.hosts.items()
                 if name not in self.runs and self.backoff.get(name, 0) <= now]
        if not ready:
            return
        # Enough loop items for a full share of batches, or for the whole
        # directory pass (commands of >= 100 directories) on one host.
        items = max(self.settings.items_per_run, batches.directory_total(self.conn) // 100 + 10)
        fleet = FleetRun(ready, self._extravars(), self.events, items)
        fleet.start()
        self.runs.update(fleet.members)

    def _extravars(self) -> dict:
        return {"fleetsync_ledger": os.path.abspath(self.settings.ledger_path),
                "fleetsync_src": self.mig.src, "fleetsync_dest": self.mig.dest,
                "fleetsync_migration_id": self.mig.migration_id,
                "fleetsync_run_token": self.settings.run_token,
                "fleetsync_controller": self.controller,
                "fleetsync_rsync_options": self.settings.rsync_options,
                "fleetsync_mode": self.mode.value, "fleetsync_delete": self.settings.delete.value,
                "fleetsync_beat": beat_seconds(self.settings.heartbeat_timeout),
                "fleetsync_window_stop_at": self.settings.window_stop_at}

    def _lose(self, run: HostRun, why: str) -> None:
        """The host is gone for now: its batches wait again, it rests before a retry."""
        if run.lost:
            return
        run.lost = why
        name = run.host.name
        wid = run.worker_id or self.worker_of_host.get(name)
        wait = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** self._count_loss(name))
        self.backoff[name] = time.time() + wait
        released = []
        if batches.work_left(self.conn).finished:
            dirpass.restart(self.conn)    # its part of the directory pass may be lost
        if wid:
            released = batches.release_worker(self.conn, wid, f"host {name} lost: {why}")
            verify.release_worker(self.conn, wid)
            workers.lost(self.conn, wid, time.time() + wait)
        elif name not in self.preflight_errors:
            self.preflight_errors[name] = f"unreachable: {why}"
        logbook.add(self.conn, LogLevel.WARNING, f"host {name} lost: {why}; {len(released)} "
                    f"batches back to waiting; next try in {wait:.0f} s", worker_id=wid)
        run.cancel()
        # Its batches may start elsewhere now: whatever of its item still runs stops
        # (rsync.item_command fences itself when its output is gone).
        run.end_item()

    def _count_loss(self, name: str) -> int:
        """Count one more loss of this host; returns how often it was lost before in
        this run (the back-off doubles with each)."""
        self.losses[name] = self.losses.get(name, 0) + 1
        return self.losses[name] - 1

    def _listen(self, now: float) -> None:
        """Hear the hosts inside an item: the beats its command prints while its rsyncs
        run (one read of /proc per host, hostrun.HostRun.heard) move its heartbeat."""
        for run in self.runs.values():
            if run.worker_id and not run.lost and not run.ended and run.heard():
                run.last_event = now
                self.beats[run.worker_id] = now

    def _check_silent(self, now: float) -> None:
        """A host holding a batch and not heard from for the heartbeat timeout is lost.
        Its items beat while they run, however slowly a cap makes them copy; a host
        whose beats cannot be heard (hostrun._UNCOUNTED) is given its batch's bytes at
        the rate its rsync may go, on top."""
        for run in list(self.runs.values()):
            if run.lost or not run.worker_id:
                continue
            if now - run.last_event <= self.settings.heartbeat_timeout:
                continue       # not silent long enough to matter, whatever it holds
            held = batches.held_bytes(self.conn, run.worker_id)
            if held is None:
                continue
            limit = self.settings.heartbeat_timeout
            if not run.audible:
                limit += held / self._stall_rate()
            if now - run.last_event > limit:
                self._lose(run, f"silent for {now - run.last_event:.0f} s while holding a batch")

    def _stall_rate(self) -> int:
        """The slowest pace a healthy rsync may keep: STALL_RATE, or its cap under it."""
        with self.conn.begin():     # the lowest cap of a timetable: a batch may start under it
            lowest = bandwidth.load(self.conn).lowest()
        capped = rsync.capped_rate(self.settings.rsync_options
                                   + slot.bwlimit_options(self.conn, lowest))
        return min(defaults.STALL_RATE, capped or defaults.STALL_RATE)

    def _check_hopeless(self) -> None:
        """No host passed its preflight (each failed it or was unreachable before it)
        and none is trying now: say why in one line rather than wait forever."""
        if self.hosts and not self.runs and set(self.hosts) <= set(self.preflight_errors):
            first = sorted(self.preflight_errors.items())[0]
            raise DispatchError(f"no host can run the migration: host {first[0]}: {first[1]}")

    # -- events -------------------------------------------------------------------
    def _handle_events(self, wait: float) -> None:
        deadline = time.time() + wait
        while True:
            try:
                ev = self.events.get(timeout=max(0.0, deadline - time.time()))
            except queue.Empty:
                return
            self._handle(ev)

    def _handle(self, ev: Event) -> None:
        run = ev.run
        if ev.kind == EventKind.FINISHED:
            self._finished(run, ev.status)
            return
        if run.ended:       # a late event of a host whose play is over
            return
        run.last_event = ev.ts
        if run.worker_id:
            self.beats[run.worker_id] = ev.ts
        if ev.kind == EventKind.ON_UNREACHABLE or ev.res.get("unreachable"):
            self._lose(run, _one_line(ev.res.get("msg") or "unreachable"))
            if ev.kind == EventKind.ON_UNREACHABLE:   # the host is out of the play
                self._finished(run, "unreachable")
        elif ev.task == PREFLIGHT_TASK:
            self._preflight(run, ev)
            if ev.kind == EventKind.ON_FAILED:        # the host is out of the play
                self._finished(run, "preflight failed")
        elif ev.task == BATCHES_TASK and ev.kind in (EventKind.ON_OK, EventKind.ON_FAILED):
            self._finished(run, ev.kind)             # its loop is over
        elif ev.task == BATCHES_TASK and ev.kind == EventKind.ITEM_ON_OK:
            stdout = ev.res.get("stdout", "")
            outcomes = outcome.parse_all(stdout)
            for out in outcomes:
                if run.worker_id:
                    self._record(out, run.worker_id)
            if not outcomes and not any(protocol.says(stdout, kind)
                                        for kind in (protocol.Kind.IDLE, protocol.Kind.STOP)):
                self._unreadable(run, stdout)
        elif ev.task == BATCHES_TASK and ev.kind == EventKind.ITEM_ON_FAILED:
            logbook.add(self.conn, LogLevel.ERROR, f"host {run.host.name}: "
                        + _one_line(ev.res.get("msg") or "dispatch failed"),
                        worker_id=run.worker_id)

    def _unreadable(self, run: HostRun, stdout: str) -> None:
        """A batch item whose output names no batch: which batch it ran is unknown, so
        the host's running batches wait again rather than stay running for ever (a
        report that still comes for one of them no longer matches its claim)."""
        released = (batches.release_worker(self.conn, run.worker_id, "unreadable output")
                    if run.worker_id else [])
        logbook.add(self.conn, LogLevel.ERROR, f"host {run.host.name}: unreadable batch output "
                    f"({_one_line(stdout)[:200]!r}); {len(released)} batches back to waiting",
                    worker_id=run.worker_id)

    def _preflight(self, run: HostRun, ev: Event) -> None:
        stdout = ev.res.get("stdout", "")
        if ev.kind == EventKind.ON_OK and run.worker_id is None:
            run.worker_id = protocol.worker(stdout)
            self.worker_of_host[run.host.name] = run.worker_id
            self.preflight_errors.pop(run.host.name, None)
            slots = self.hosts[run.host.name].slots if run.host.name in self.hosts else None
            workers.seen(self.conn, run.worker_id, run.host.name, slots or run.host.slots)
            self.beats[run.worker_id] = ev.ts
            for pid in protocol.killed(stdout):
                logbook.add(self.conn, LogLevel.WARNING,
                            f"host {run.host.name}: {protocol.killed_text(pid)}",
                            worker_id=run.worker_id)
        elif ev.kind == EventKind.ON_FAILED:
            why = ("; ".join(protocol.errors(stdout))
                   or _one_line(ev.res.get("msg") or stdout or "failed"))
            if run.host.name not in self.preflight_errors:
                logbook.add(self.conn, LogLevel.ERROR, f"host {run.host.name} preflight: {why}")
            self.preflight_errors[run.host.name] = why

    def _record(self, out: Outcome, worker_id: str) -> None:
        if out.kind is OutcomeKind.VERIFY:
            verify.record(self.conn, out.task_id, out.claim_no, out.rsync_exit_code,
                          out.itemized, out.errors)
        elif out.kind in (OutcomeKind.DIRS, OutcomeKind.DELETE, OutcomeKind.CLEAN):
            self._record_pass(out, worker_id)
        else:
            self._record_batch(out, worker_id)

    def _record_batch(self, out: Outcome, worker_id: str) -> None:
        """The verdict and the per-file rows (controller/file_outcomes.py)."""
        file_outcomes.record_batch(self.conn, out, worker_id, self.settings.policy, self.mig.src,
                     self.mig.dest)

    def _record_pass(self, out: Outcome, worker_id: str) -> None:
        """A part of the directory pass: its deletions go to the ledger, errors to the log."""
        if out.kind in (OutcomeKind.DELETE, OutcomeKind.CLEAN):
            deleted = [line.split(" ", 1)[1].strip() for line in out.itemized
                       if line.startswith("*deleting")]
            dry_run = (out.kind is OutcomeKind.DELETE
                       and self.settings.delete is DeleteMode.DRY_RUN)
            deletions.record(self.conn, deleted, dry_run, worker_id)
        if out.rsync_exit_code != 0:
            logbook.add(self.conn, _pass_level(out), f"directory pass ({out.kind.value}) "
                        f"exit={out.rsync_exit_code}: " + "; ".join(out.errors[:3]),
                        worker_id=worker_id)

    def _finished(self, run: HostRun, status: str | None) -> None:
        """The host's play is over (its loop ended, it failed its preflight, it was
        unreachable, or the whole run ended)."""
        if run.ended:
            return
        run.ended = True
        name = run.host.name
        if self.runs.get(name) is run:
            self.runs.pop(name)
        if run.fleet is not None:
            run.fleet.stop_if_idle()
        wid = run.worker_id
        if wid:
            # A run that ended leaves nothing running on its host (a lookup of a
            # lost host may have claimed one more batch while it was cancelled).
            released = batches.release_worker(self.conn, wid, f"dispatch on {name} ended")
            verify.release_worker(self.conn, wid)
            if released and not self.stopping and not run.lost:
                logbook.add(self.conn, LogLevel.WARNING, f"host {name}: dispatch ended ({status}) "
                            f"holding {len(released)} batches; back to waiting", worker_id=wid)
        elif not run.lost and name not in self.preflight_errors:
            self.preflight_errors[name] = f"dispatch ended before its preflight ({status})"
            logbook.add(self.conn, LogLevel.ERROR, f"host {name}: {self.preflight_errors[name]}")
        if name in self.preflight_errors:
            self.backoff[name] = max(self.backoff.get(name, 0), time.time() + BACKOFF_FIRST)

    def _flush_heartbeats(self) -> None:
        workers.heartbeat(self.conn, self.beats)
        migration.heartbeat(self.conn)
        self.beats = {}
        self._next_beat = time.time() + HEARTBEAT_EVERY

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()


def beat_seconds(heartbeat_timeout: float) -> float:
    """How often a running item beats: several times within the heartbeat timeout, so
    that a late beat or two on a loaded host does not lose it."""
    return max(0.2, min(rsync.BEAT_SECONDS, heartbeat_timeout / 4))


def _pass_level(out: Outcome) -> str:
    """A directory removed from SRC since the walk is a normal event, not an error for
    /logs: rsync's exit 24 (vanished; outcome.py maps a listed entry that no longer
    exists to it)."""
    return LogLevel.INFO if out.rsync_exit_code == outcome.VANISHED_EXIT else LogLevel.ERROR


def _become_subreaper() -> None:
    """Orphaned descendants (the ssh masters, daemonized by ssh itself) become this
    process's children: close_masters reaps them, and their CPU counts as the
    controller's."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(36, 1, 0, 0, 0) != 0:      # PR_SET_CHILD_SUBREAPER
            log.info("not a subreaper: errno %d", ctypes.get_errno())
    except (OSError, AttributeError) as e:      # not Linux: masters end by ControlPersist
        log.info("not a subreaper: %s", e)


def _mtime(path: str) -> int | None:
    """Newest change of an inventory: the file or directory, and the group_vars and
    host_vars that Ansible reads beside or inside it."""
    base = path if os.path.isdir(path) else os.path.dirname(path)
    newest = None
    for top in (path, os.path.join(base, "group_vars"), os.path.join(base, "host_vars")):
        for d, _, files in os.walk(top) if os.path.isdir(top) else [("", [], [top])]:
            for name in files:
                try:
                    m = os.stat(os.path.join(d, name)).st_mtime_ns
                except FileNotFoundError:   # removed since it was listed
                    continue
                newest = m if newest is None else max(newest, m)
    return newest


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:500]
