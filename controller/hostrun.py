"""Dispatch runs: one ansible-runner run of playbooks/dispatch.yml for several hosts.

A FleetRun drives every host that is ready when it starts (the whole fleet at
the start of `fleetsync run`), one fork per host (forks = its hosts); a host
that joins the inventory or comes back after its back-off gets a run of its
own. Each host of a run is seen by the dispatcher as a HostRun: its events,
its worker id, whether it was lost, its own stop file (a host leaving or lost
stops claiming while the other hosts of the run go on). An unreachable host
drops out of the play by itself; a run whose hosts are all done or lost is
stopped.

A host is heard from by its events and, while an item runs (which may take
hours under a low cap), by its beats: the item prints an empty line every few
seconds (rsync.item_command) and the dispatcher counts the bytes the host's
Ansible worker has read (HostRun.heard). The lookup of the first item writes that
worker's pid beside the host's stop file (worker_file).

The event handler only puts events on a queue and returns False: an exception
inside ansible-runner's event handler kills its thread (the run then never
finishes), a slow one makes the run time out, and True would write a
job_events/*.json file per event. The dispatcher thread does all the ledger
work. Each run has its own fresh private_data_dir (0700), removed when the run
ends and, after a crash, by the next run (kill_leftovers), so artifacts stay
bounded (ansible-runner's rotate_artifacts is not safe with concurrent runs: it
deletes by mtime in the shared parent).
"""
from __future__ import annotations

import enum
import errno
import json
import logging
import os
import queue
import re
import shutil
import signal
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field

from . import defaults, inventory, processes, rsync
from .environment import ansible_env, control_dir
from .resources import DISPATCH_PLAYBOOK

log = logging.getLogger(__name__)

# The task names of playbooks/dispatch.yml (events are matched by them).
PREFLIGHT_TASK = "Preflight"
# The extra variable that names the file of a run's parameters (FleetRun._write_params),
# and the one that names where a run started ahead writes the hosts it read (HostsRead).
PARAMS_VAR = "fleetsync_params"
HOSTS_OUT_VAR = "fleetsync_hosts_out"
BATCHES_TASK = "Batches"


def _signal(pids: list[int], sig: int) -> int:
    done = 0
    for pid in pids:
        try:
            os.kill(pid, sig)
            done += 1
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ESRCH):   # it ended meanwhile: fine
                log.warning("cannot signal process %s: %s", pid, e.strerror)
    return done


def kill_leftovers(migration_id: str, spare: str | None = None) -> int:
    """Kill what a dead controller of this migration left on this machine (its
    ansible-playbook runs, their workers, rsyncs and ssh clients; the ssh
    ControlPersist masters of its control directory) and remove its run
    directories; those of the run token `spare` (this run's, started ahead of the
    ledger: FleetRun.ahead) are this run's own. Returns how many processes were
    killed."""
    mark = rsync.marker(migration_id, "").encode()
    own = rsync.marker(migration_id, spare).encode() if spare else None
    killed = _signal([pid for pid in processes.matching(mark)
                      if own is None or own not in (processes.command_line(pid) or b"")],
                     signal.SIGKILL)
    close_masters(migration_id)
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        if name.startswith(rsync.marker(migration_id, "")) and not (
                spare and name.startswith(rsync.marker(migration_id, spare))):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
    return killed


def stop_now(migration_id: str, run_token: str, grace: float = 2.0) -> None:
    """Everything this run started on this machine ends: SIGTERM first (an rsync
    told so removes its temporary file), SIGKILL after `grace` seconds."""
    mark = rsync.marker(migration_id, run_token).encode()
    if _signal(processes.matching(mark), signal.SIGTERM):
        _wait_gone(mark, grace)
        _signal(processes.matching(mark), signal.SIGKILL)
    # An item's shell removes its directory on a signal, unless it was killed first
    # (SIGKILL after the grace, or by ansible-playbook's own stop on a loaded
    # machine): this machine's are removed here, a remote host's by the preflight
    # of the next run.
    _wait_gone(mark, grace)
    prefix = rsync.item_dir_prefix(migration_id, run_token)
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        if name.startswith(prefix):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)


def _wait_gone(mark: bytes, seconds: float) -> None:
    """Until no process carries mark, for at most `seconds`."""
    deadline = time.time() + seconds
    while time.time() < deadline and processes.matching(mark):
        time.sleep(0.1)


def close_masters(migration_id: str) -> None:
    """End the ssh ControlPersist masters of this migration (they would linger for
    ControlPersist's 900 s) and remove their sockets; a master that is a child of
    this process (it is a subreaper) is reaped, so its CPU counts as ours."""
    cp = control_dir(migration_id)
    pids = set(processes.matching(cp.encode()))
    _signal(list(pids), signal.SIGTERM)
    deadline = time.time() + 2.0
    while pids:
        for pid in list(pids):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            except ChildProcessError:    # not ours to reap: it ends by itself
                pass
            pids.discard(pid)
        if pids and time.time() > deadline:
            _signal(list(pids), signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.02)
    shutil.rmtree(cp, ignore_errors=True)


class EventKind(str, enum.Enum):
    """The events the dispatcher acts on: ansible-runner's names (a str compares equal
    to its member), and FINISHED, fleetsync's own: a host's run is over."""
    ON_OK = "runner_on_ok"
    ON_FAILED = "runner_on_failed"
    ON_UNREACHABLE = "runner_on_unreachable"
    ITEM_ON_OK = "runner_item_on_ok"
    ITEM_ON_FAILED = "runner_item_on_failed"
    FINISHED = "finished"


@dataclass
class Event:
    run: "HostRun"
    kind: str            # ansible-runner's event name (an EventKind or another), or FINISHED
    task: str | None
    res: dict
    ts: float
    status: str | None = None


def worker_file(stop_file: str) -> str:
    """Where the lookups of a host's items write which process runs them (slot.py)."""
    return stop_file + ".worker"


# Connections whose Ansible worker reads a command's output through read(2) (pipes
# from ssh or a local shell), which /proc/PID/io counts. Paramiko reads a socket
# with recv(2), which it does not: its hosts are heard only when an item ends.
_UNCOUNTED = ("paramiko",)


@dataclass
class HostRun:
    """One host in a FleetRun, as the dispatcher follows it."""
    host: inventory.Host
    fleet: "FleetRun | None" = None
    worker_id: str | None = None
    last_event: float = field(default_factory=time.time)   # when it was last heard from
    lost: str | None = None          # why the host was declared lost
    ended: bool = False              # its play is over (the dispatcher was told)
    stop_file: str = ""
    _worker: tuple[int, str] | None = None      # (pid, start time) of its items' worker
    _read: int | None = None                     # bytes that worker had read at the last look
    _deaf: bool = False                          # its worker's counters cannot be read

    @property
    def audible(self) -> bool:
        """Whether its items' beats can be heard while they run (see heard)."""
        connection = str(self.host.vars.get("ansible_connection") or "ssh")
        return not self._deaf and not any(word in connection for word in _UNCOUNTED)

    def heard(self) -> bool:
        """Whether the host spoke since the last look: the Ansible worker that runs its
        items read more of their output (rsync.item_command prints a beat every few
        seconds while its rsyncs run). One read of /proc/PID/io: no Ansible work, no
        ssh round trip, whatever the cap makes an item last. Between two items that
        worker also reads the ledger (the next item's lookup): the host has just
        answered then, with the item that ended."""
        if self._worker is None:
            self._worker = _worker_of(worker_file(self.stop_file))
            if self._worker is None:
                return False
        pid, start = self._worker
        try:
            if processes.start_time(pid) != start:     # that worker has ended
                self._worker = self._read = None
                return False
            read = _bytes_read(pid)
        except PermissionError as e:
            # /proc/PID/io needs ptrace access (kernel.yama.ptrace_scope 2 or 3
            # denies it; hidepid=1 the whole of /proc/PID for another user's worker):
            # the host is then heard as over paramiko, when items end.
            log.warning("cannot hear the beats of host %s: %s", self.host.name, e)
            self._deaf = True
            return False
        if read is None:
            self._worker = self._read = None
            return False
        before, self._read = self._read, read
        return before is not None and read != before

    def end_item(self) -> int:
        """End the item the host runs now (it was lost): SIGTERM to what its worker
        started, the ssh client or the local shell. The host's end of the item then
        finds its output gone at its next beat (or gets the signal) and stops its
        rsyncs (rsync.item_command). Returns how many processes were signalled."""
        worker = self._worker or _worker_of(worker_file(self.stop_file))
        try:
            if worker is None or processes.start_time(worker[0]) != worker[1]:
                return 0
        except PermissionError as e:     # another user's worker: not ours to signal
            log.warning("cannot end the item of host %s: %s", self.host.name, e)
            return 0
        return _signal(processes.children().get(worker[0], []), signal.SIGTERM)

    def drain(self) -> None:
        """Finish the batches in hand, claim no more."""
        try:
            open(self.stop_file, "a").close()
        except OSError as e:   # its run dir is gone: the run has ended already
            log.info("stop file of host %s: %s", self.host.name, e.strerror)

    def cancel(self) -> None:
        """Stop now: no more claims; the run stops when none of its hosts works."""
        self.drain()
        if self.fleet is not None:
            self.fleet.stop_if_idle()


def _worker_of(path: str) -> tuple[int, str] | None:
    try:
        with open(path) as f:
            pid, _, start = f.read().strip().partition(":")
    except FileNotFoundError:    # no item has been handed out yet
        return None
    return (int(pid), start) if pid.isdigit() and start else None


def _bytes_read(pid: int) -> int | None:
    """What the process has read through read(2) so far (rchar), None once it ended."""
    try:
        with open(f"/proc/{pid}/io", "rb") as f:
            for line in f:
                if line.startswith(b"rchar:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


_COLOUR = re.compile(r"\x1b\[[0-9;]*m")    # Ansible's terminal colours


def this_controller() -> str:
    """This process as the lookups of its runs know it ("PID:START"): they stop claiming
    once it is gone (processes.controller_alive), and so does a run that waits for it."""
    return f"{os.getpid()}:{processes.start_time(os.getpid())}"


class HostsRead:
    """The inventory's hosts as the run started ahead read them: its strategy writes
    them, with their variables, in the shape of `ansible-inventory --list`
    (playbooks/strategy_plugins/fleetsync_free.py), so `fleetsync run` reads the
    inventory once. A run that ends without writing them (no host matched, or the
    inventory cannot be read) leaves it to `ansible-inventory`, which says why in
    the words it always did. Used as inventory.Loading is (result())."""

    def __init__(self, run: "FleetRun", path: str) -> None:
        """path: the inventory as the operator named it (errors name it so)."""
        self.run, self.path = run, path

    def result(self) -> dict[str, inventory.Host]:
        run = self.run
        deadline = time.time() + defaults.INVENTORY_WAIT
        while not os.path.exists(run.hosts_out):
            if run.ended or time.time() > deadline:
                return inventory.load(self.path, limit=run.limit)
            time.sleep(defaults.HOSTS_POLL)
        with open(run.hosts_out) as f:
            return inventory.listed(self.path, f.read(), run.limit)


class FleetRun:
    """One ansible-playbook run of playbooks/dispatch.yml. Its parameters (the
    dispatcher's extravars, its loop items, each host's lanes and stop file) reach
    the play through a file of its private_data_dir, which the play's first task
    waits for: so a run can start before they are known (FleetRun.ahead)."""

    def __init__(self, hosts: list[inventory.Host], extravars: dict, events: queue.Queue,
                 items: int):
        self.extravars = extravars
        self.events = events
        self.items = items
        self.token = uuid.uuid4().hex[:12]
        self.members = {h.name: HostRun(h, self) for h in hosts}
        self.inventory = ""
        self.limit: str | None = None
        self.forks = len(self.members)
        self.hosts_out = ""       # ahead: where its strategy writes the hosts it read
        self.adopted = True       # its parameters are the dispatcher's (ahead: once adopted)
        self._cancel = False
        self._pid: int | None = None
        self.ended = False
        self.error = ""     # Ansible's own last error line, for a run that fails as a whole

    @classmethod
    def ahead(cls, inventory_path: str, limit: str | None, migration_id: str) -> "FleetRun":
        """A run started at the launch of `fleetsync run`, before its dispatcher (and
        the ledger) exist: Ansible starts, reads the operator's inventory itself (within
        --limit) and waits for its parameters, which adopt() writes, or is dropped.
        migration_id: the ledger's, or the one a new ledger will get; the run token
        is new, and becomes the run's (Settings.run_token)."""
        run = cls([], {"fleetsync_migration_id": migration_id,
                       "fleetsync_run_token": rsync.new_run_token()}, queue.Queue(), 0)
        run.inventory, run.limit = os.path.abspath(inventory_path), limit
        run.forks = defaults.FORKS_AHEAD
        run.adopted = False
        run._launch()
        return run

    def start(self) -> None:
        self.inventory = ""
        self._launch()

    def _launch(self) -> None:
        # The marker in the directory name puts it in ansible-playbook's command line,
        # so a later run can find and stop what a killed controller left behind.
        self.dir = tempfile.mkdtemp(prefix=rsync.marker(self.migration_id, self.run_token)
                                    + "-" + self.token + "-")
        os.mkdir(os.path.join(self.dir, "stop"), 0o700)
        self.params = os.path.join(self.dir, "params.json")
        if not self.inventory:
            self.inventory = os.path.join(self.dir, "inventory.json")
            inventory.write_fleet(self.inventory, [m.host for m in self.members.values()])
        if self.adopted:
            self._write_params()
        else:
            self.hosts_out = os.path.join(self.dir, "hosts.json")
        self.thread = threading.Thread(target=self._run, name=f"run-{self.token}", daemon=True)
        self.thread.start()

    @property
    def migration_id(self) -> str:
        return self.extravars["fleetsync_migration_id"]

    @property
    def run_token(self) -> str:
        return self.extravars["fleetsync_run_token"]

    def fits(self, migration_id: str, run_token: str) -> bool:
        """Whether this run (started ahead) can serve the dispatcher of this migration and
        run token: it bet on the migration id before the ledger was opened."""
        return (not self.ended and not self._cancel and self.migration_id == migration_id
                and self.run_token == run_token)

    def adopt(self, hosts: list[inventory.Host], extravars: dict, events: queue.Queue,
              items: int) -> None:
        """The dispatcher takes over a run started ahead: its hosts, its parameters
        (written last: the play goes on once they are there) and its events. A host
        of the play that is not among hosts ends there (the inventory changed between
        the two reads of it)."""
        self.members = {h.name: HostRun(h, self) for h in hosts}
        self.extravars, self.events, self.items = extravars, events, items
        self.adopted = True
        self._write_params()
        if self.ended:
            # Its ansible-playbook ended meanwhile (killed): its end may have found no
            # member to tell. A second FINISHED of a host changes nothing.
            for m in self.members.values():
                self.events.put(Event(m, EventKind.FINISHED, None, {}, time.time(),
                                      "ended before it was adopted"))

    def drop(self) -> None:
        """A run started ahead that no dispatcher took (the run was refused, or bet on
        another migration id): it ends, with whatever it started, and its directory."""
        if self.adopted:
            return
        self._cancel = True
        stop_now(self.migration_id, self.run_token)
        self.thread.join(defaults.DROP_WAIT)

    def wait_ended(self, timeout: float) -> bool:
        """Its thread has ended (its directory removed), waiting up to timeout s."""
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def _write_params(self) -> None:
        """The play's parameters, whole or not at all (renamed into place)."""
        hosts = {}
        for i, m in enumerate(self.members.values()):
            m.stop_file = os.path.join(self.dir, "stop", str(i))
            hosts[m.host.name] = {"lanes": m.host.slots, "stop_file": m.stop_file}
        params = dict(self.extravars, fleetsync_items=self.items, fleetsync_hosts=hosts)
        with open(self.params + ".new", "w") as f:
            json.dump(params, f)
        os.rename(self.params + ".new", self.params)

    def _run(self) -> None:
        import ansible_runner

        status = "error"
        try:
            if self._cancel:     # dropped before it began
                return
            r = ansible_runner.run(
                private_data_dir=self.dir, playbook=DISPATCH_PLAYBOOK, inventory=self.inventory,
                limit=self.limit,
                # The rest waits in self.params; the strategy ties the run to the controller.
                extravars={PARAMS_VAR: self.params, "fleetsync_controller": this_controller(),
                           **({HOSTS_OUT_VAR: self.hosts_out} if self.hosts_out else {})},
                envvars=ansible_env(self.migration_id),
                forks=self.forks, quiet=True,
                event_handler=self._on_event, cancel_callback=lambda: self._cancel,
                settings={"pexpect_timeout": 1, "suppress_ansible_output": True})
            status = f"{r.status} rc={r.rc}" + (f": {self.error}" if r.rc and self.error else "")
        except Exception as e:  # run() raises OSError, CallbackError, pexpect TIMEOUT
            status = f"error: {type(e).__name__}: {e}"
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.ended = True
            for m in self.members.values():
                self.events.put(Event(m, EventKind.FINISHED, None, {}, time.time(), status))

    def _on_event(self, ev: dict) -> bool:
        try:
            if self._pid is None and ev.get("pid"):
                self._pid = ev["pid"]
            data = ev.get("event_data") or {}
            member = self.members.get(data.get("host"))
            if member is None and "ERROR" in (ev.get("stdout") or ""):
                # Ansible failing before any host ran (no /dev/shm, a bad config) says
                # why only here: its line goes into the run's status, so the log has it.
                self.error = " ".join(_COLOUR.sub("", ev["stdout"]).split())[:300]
            if member is not None:
                self.events.put_nowait(Event(member, ev.get("event", ""), data.get("task"),
                                             data.get("res") or {}, time.time()))
        except Exception:   # raising here would kill ansible-runner's thread
            log.exception("runner event dropped")
        return False   # no job_events/*.json files

    def stop_if_idle(self) -> None:
        """Stop the run when none of its hosts works any more (each ended or was lost):
        a lost host's fork may hang until ssh gives up, and nothing else needs the run."""
        if all(m.ended or m.lost for m in self.members.values()):
            self.cancel()

    def cancel(self) -> None:
        """Stop now: ansible-playbook forwards SIGTERM to its workers."""
        if self._pid:
            try:
                os.kill(self._pid, signal.SIGTERM)
            except ProcessLookupError:   # it ended meanwhile
                pass
        self._cancel = True
