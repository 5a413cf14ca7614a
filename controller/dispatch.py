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
from dataclasses import dataclass, field

from fleetsync.ledger import (batches, custody, db, dirpass, logbook, migration, verify,
                              workers)
from fleetsync.ledger.errors import FleetsyncError
from fleetsync.ledger.states import DeleteMode, LogLevel, OutcomeKind, VerifyState

from . import defaults, inventory, outcome, protocol, rsync
from .backoff import Backoff
from .hostrun import (BATCHES_TASK, PREFLIGHT_TASK, Event, EventKind, FleetRun, HostRun,
                      close_masters, stop_now, this_controller)
from .integrity import IntegrityCheck
from .inventory_watch import InventoryWatch
from .policy import Policy
from .preflights import Preflights
from .recorder import Recorder
from .silence import Silence
from .walk import Walk

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = defaults.HEARTBEAT_EVERY


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
    run_token: str = field(default_factory=rsync.new_run_token)
    # The run's window (controller/window.py): no claim from then on (the windows' clock).
    window_stop_at: float | None = None
    # --verify-rate: the fleet's bound on a verify's reads of DEST, bytes per second.
    verify_rate: int | None = None


class Dispatcher:
    """Routes the runner events of the hosts' runs to the ledger; starts runs for the
    hosts that are ready (InventoryWatch: who they are; Backoff: when a lost one may
    try again; Preflights: which cannot work) and loses the silent ones; Recorder
    writes what their output says."""

    def __init__(self, settings: Settings, walk: Walk | None,
                 hosts: dict[str, inventory.Host] | None = None, ahead: FleetRun | None = None):
        """ahead: the run `fleetsync run` started at its launch (FleetRun.ahead), which
        the first hosts' run adopts when it fits, else drops."""
        self.settings = settings
        self.ahead = ahead
        self.mode = OutcomeKind.COPY
        self.walk = walk
        self.engine = db.writer(settings.ledger_path)
        self.conn = self.engine.connect()
        self.mig = migration.load(self.conn)
        self.conn.rollback()
        self.events: queue.Queue[Event] = queue.Queue()
        self.hosts: dict[str, inventory.Host] = hosts or {}
        self.runs: dict[str, HostRun] = {}
        self.fleets: list[FleetRun] = []     # every run started: _wait_fleets
        self.backoff = Backoff()
        self.preflights = Preflights()
        self.recorder = Recorder(self.conn, self.mig, settings.policy, settings.delete)
        self.silence = Silence(self.conn, settings.heartbeat_timeout, settings.rsync_options)
        self.beats: dict[str, float] = {}
        self.stopping = False
        # The lookups of this dispatch stop claiming when this process is gone
        # (kill -9): nothing would record what they ran.
        self.controller = this_controller()
        _become_subreaper()
        # Hosts of earlier runs are not up until they pass this run's preflight
        # (they would shrink every rsync's share of --bwlimit).
        workers.forget_all(self.conn)
        self.inventory = InventoryWatch(settings.inventory_path, settings.limit, settings.slots,
                                        read=bool(hosts))
        self._next_beat = 0.0
        # The ledger's integrity check of this run (controller/integrity.py), when it
        # runs beside the copy: a damaged ledger stops the dispatch at once.
        self.integrity: IntegrityCheck | None = None
        if ahead is not None and not self._done():
            # It waits for its parameters: the hosts' first run goes on now, not once
            # the caller has started the rest of the run (the API...) and the loop.
            self._start_runs()

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
            self._drop_ahead()
            self._wait_fleets()
            close_masters(self.mig.migration_id)

    def _wait_fleets(self) -> None:
        """Each run's thread to its end: the loop ends once every host's play has, but
        the thread removes the run's directory only when ansible-playbook has exited
        (its threads are daemons: a command that returned at once, as verify does,
        left /tmp/fleetsync:MID:TOKEN-... behind every time)."""
        for fleet in self.fleets:
            if not fleet.wait_ended(defaults.DROP_WAIT):
                log.warning("the run %s did not end within %s s: its directory %s may stay",
                            fleet.token, defaults.DROP_WAIT, fleet.dir)

    def _stop_now(self) -> None:
        for fleet in {id(r.fleet): r.fleet for r in self.runs.values() if r.fleet}.values():
            fleet.cancel()
        stop_now(self.mig.migration_id, self.settings.run_token)

    def _loop(self) -> None:
        while True:
            if self.integrity is not None:
                self.integrity.raise_if_damaged()
            now = time.time()
            if self.inventory.due(now):
                self._reload_inventory()
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
        """The hosts of the inventory, when its files changed: those that left claim
        nothing more, those that joined start with the next runs."""
        try:
            hosts = self.inventory.changed(known=bool(self.hosts))
        except inventory.InventoryError as e:
            if not self.hosts:
                raise
            logbook.add(self.conn, LogLevel.WARNING, f"{e}; keeping the hosts known before")
            return
        if hosts is None:
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
                 if name not in self.runs and self.backoff.ready(name, now)]
        if not ready:
            return
        # Enough loop items for a full share of batches, or for the whole
        # directory pass (commands of >= 100 directories) on one host.
        items = max(self.settings.items_per_run, batches.directory_total(self.conn) // 100 + 10)
        ahead, self.ahead = self.ahead, None
        if ahead is not None and ahead.fits(self.mig.migration_id, self.settings.run_token):
            # Its Ansible has started already and waits for these parameters.
            ahead.adopt(ready, self._extravars(), self.events, items)
            fleet = ahead
        else:
            if ahead is not None:
                ahead.drop()
            fleet = FleetRun(ready, self._extravars(), self.events, items)
            fleet.start()
        self.fleets.append(fleet)
        self.runs.update(fleet.members)

    def _drop_ahead(self) -> None:
        """The run started ahead, when no hosts' run adopted it (nothing was left to do)."""
        ahead, self.ahead = self.ahead, None
        if ahead is not None:
            ahead.drop()

    def _extravars(self) -> dict:
        return {"fleetsync_ledger": os.path.abspath(self.settings.ledger_path),
                "fleetsync_src": self.mig.src, "fleetsync_dest": self.mig.dest,
                "fleetsync_migration_id": self.mig.migration_id,
                "fleetsync_run_token": self.settings.run_token,
                "fleetsync_controller": self.controller,
                "fleetsync_rsync_options": self.settings.rsync_options,
                "fleetsync_mode": self.mode.value, "fleetsync_delete": self.settings.delete.value,
                "fleetsync_beat": beat_seconds(self.settings.heartbeat_timeout),
                "fleetsync_window_stop_at": self.settings.window_stop_at,
                "fleetsync_verify_rate": self.settings.verify_rate,
                "fleetsync_checksum_choice": custody.choice(self.mig.options)}

    def _lose(self, run: HostRun, why: str) -> None:
        """The host is gone for now: its batches wait again, it rests before a retry."""
        if run.lost:
            return
        run.lost = why
        name = run.host.name
        wid = run.worker_id or self.preflights.worker_of(name)
        wait = self.backoff.after_loss(name)
        released = []
        if batches.work_left(self.conn).finished:
            dirpass.restart(self.conn)    # its part of the directory pass may be lost
        if wid:
            released = batches.release_worker(self.conn, wid, f"host {name} lost: {why}")
            verify.release_worker(self.conn, wid)
            workers.lost(self.conn, wid, time.time() + wait)
        else:
            self.preflights.note(name, f"unreachable: {why}")
        logbook.add(self.conn, LogLevel.WARNING, f"host {name} lost: {why}; {len(released)} "
                    f"batches back to waiting; next try in {wait:.0f} s", worker_id=wid)
        run.cancel()
        # Its batches may start elsewhere now: whatever of its item still runs stops
        # (rsync.item_command fences itself when its output is gone).
        run.end_item()

    def _listen(self, now: float) -> None:
        """Hear the hosts inside an item: the beats its command prints while its rsyncs
        run (one read of /proc per host, hostrun.HostRun.heard) move its heartbeat."""
        for run in self.runs.values():
            if run.worker_id and not run.lost and not run.ended and run.heard():
                run.last_event = now
                self.beats[run.worker_id] = now

    def _check_silent(self, now: float) -> None:
        """A host holding a batch and not heard from for too long is lost (Silence)."""
        for run in list(self.runs.values()):
            why = self.silence.why_lost(run, now)
            if why is not None:
                self._lose(run, why)

    def _check_hopeless(self) -> None:
        """No host passed its preflight (each failed it or was unreachable before it)
        and none is trying now: say why in one line rather than wait forever."""
        first = self.preflights.hopeless(self.hosts, self.runs)
        if first is not None:
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
                    self.recorder.record(out, run.worker_id)
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
        """The host's preflight passed (it works as the worker it names) or failed."""
        stdout = ev.res.get("stdout", "")
        if ev.kind == EventKind.ON_OK and run.worker_id is None:
            run.worker_id = protocol.worker(stdout)
            self.preflights.passed(run.host.name, run.worker_id)
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
            if self.preflights.failed(run.host.name, why):
                logbook.add(self.conn, LogLevel.ERROR, f"host {run.host.name} preflight: {why}")

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
        elif not run.lost and self.preflights.note(
                name, f"dispatch ended before its preflight ({status})"):
            logbook.add(self.conn, LogLevel.ERROR, f"host {name}: {self.preflights.why_not(name)}")
        if self.preflights.why_not(name) is not None:
            self.backoff.after_failure(name)

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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:500]
