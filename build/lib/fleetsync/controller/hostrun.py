"""One ansible-runner run of playbooks/dispatch.yml on one host (all of its slots).

The event handler only puts events on a queue and returns False: an exception
inside ansible-runner's event handler kills its thread (the run then never
finishes), a slow one makes the run time out, and True would write a
job_events/*.json file per event. The dispatcher thread does all the ledger
work. Each run has its own fresh private_data_dir, removed when the run ends,
so artifacts stay bounded (ansible-runner's rotate_artifacts is not safe with
concurrent runs: it deletes by mtime in the shared parent).
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field

from . import inventory, rsync
from .environment import ansible_env
from .resources import DISPATCH_PLAYBOOK

log = logging.getLogger(__name__)


def kill_leftovers(migration_id: str) -> int:
    """Kill what a dead controller of this migration left on this machine: its
    ansible-playbook runs (still claiming batches) and their rsyncs."""
    mark = rsync.marker(migration_id, "").encode()
    killed = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if mark not in f.read():
                    continue
            os.kill(int(pid), signal.SIGKILL)
            killed += 1
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ESRCH):   # it ended meanwhile: fine
                log.warning("cannot stop leftover process %s: %s", pid, e.strerror)
    return killed


@dataclass
class Event:
    run: "HostRun"
    kind: str            # runner event name, or "finished"
    task: str | None
    res: dict
    ts: float
    status: str | None = None


@dataclass
class HostRun:
    host: inventory.Host
    extravars: dict
    events: queue.Queue
    items: int
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    worker_id: str | None = None
    last_event: float = field(default_factory=time.time)
    lost: str | None = None          # why the host was declared lost

    def start(self) -> None:
        # The marker in the directory name puts it in ansible-playbook's command line,
        # so a later run can find and stop what a killed controller left behind.
        self.dir = tempfile.mkdtemp(prefix=rsync.marker(
            self.extravars["fleetsync_migration_id"], self.extravars["fleetsync_run_token"])
            + "-" + self.token + "-")
        self.stop_file = os.path.join(self.dir, "stop")
        self.inventory = os.path.join(self.dir, "inventory.json")
        inventory.write_runtime(self.inventory, self.host)
        self._cancel = False
        self._pid: int | None = None
        self.thread = threading.Thread(target=self._run, name=f"run-{self.host.name}",
                                       daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import ansible_runner

        status = "error"
        try:
            r = ansible_runner.run(
                private_data_dir=self.dir, playbook=DISPATCH_PLAYBOOK, inventory=self.inventory,
                extravars=dict(self.extravars, fleetsync_stop_file=self.stop_file,
                               fleetsync_items=self.items),
                envvars=ansible_env(), forks=self.host.slots, quiet=True,
                event_handler=self._on_event, cancel_callback=lambda: self._cancel,
                settings={"pexpect_timeout": 1, "suppress_ansible_output": True})
            status = f"{r.status} rc={r.rc}"
        except Exception as e:  # run() raises OSError, CallbackError, pexpect TIMEOUT
            status = f"error: {type(e).__name__}: {e}"
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.events.put(Event(self, "finished", None, {}, time.time(), status))

    def _on_event(self, ev: dict) -> bool:
        try:
            if self._pid is None and ev.get("pid"):
                self._pid = ev["pid"]
            data = ev.get("event_data") or {}
            if data.get("host"):
                self.events.put_nowait(Event(self, ev.get("event", ""), data.get("task"),
                                             data.get("res") or {}, time.time()))
        except Exception:   # raising here would kill ansible-runner's thread
            log.exception("runner event of host %s dropped", self.host.name)
        return False   # no job_events/*.json files

    def drain(self) -> None:
        """Finish the batches in hand, claim no more."""
        try:
            open(self.stop_file, "a").close()
        except OSError as e:   # its run dir is gone: the run has ended already
            log.info("stop file of host %s: %s", self.host.name, e.strerror)

    def cancel(self) -> None:
        """Stop now: ansible-playbook forwards SIGTERM to its workers."""
        if self._pid:
            try:
                os.kill(self._pid, signal.SIGTERM)
            except ProcessLookupError:   # it ended meanwhile
                pass
        self._cancel = True
