"""One ansible-runner run of playbooks/dispatch.yml on one host (all of its slots).

The event handler only puts events on a queue: an exception or a slow handler
would stall ansible-runner (see shared/notes/ansible-runner.md). The
dispatcher thread does all the ledger work. Each run has its own fresh
private_data_dir, removed when the run ends, so artifacts stay bounded.
"""
from __future__ import annotations

import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field

from . import inventory, transfer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAYBOOK = os.path.join(REPO, "playbooks", "dispatch.yml")

# Noticing a dead or frozen host: keepalives every 5 s, three missed = gone
# (~15 s); a connection attempt gives up after 10 s. ControlPersist keeps the
# master connection across batches and runs.
SSH_ARGS = ("-o ControlMaster=auto -o ControlPersist=900s -o ServerAliveInterval=5 "
            "-o ServerAliveCountMax=3 -o ConnectTimeout=10")


def ansible_env() -> dict[str, str]:
    """The environment of every ansible process fleetsync starts."""
    env = {
        # The venv may not be activated: ansible-playbook is found beside our python.
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "LC_ALL": "C.UTF-8",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_SSH_ARGS": SSH_ARGS,
        "ANSIBLE_TIMEOUT": "10",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_LOCALHOST_WARNING": "False",
    }
    if "ANSIBLE_HOST_KEY_CHECKING" in os.environ:
        env["ANSIBLE_HOST_KEY_CHECKING"] = os.environ["ANSIBLE_HOST_KEY_CHECKING"]
    return env


def kill_leftovers(migration_id: str) -> int:
    """Kill what a dead controller of this migration left on this machine: its
    ansible-playbook runs (still claiming batches) and their rsyncs."""
    mark = transfer.marker(migration_id, "").encode()
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
        except OSError:
            pass
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
    preflight_error: str | None = None

    def start(self) -> None:
        # The marker in the directory name puts it in ansible-playbook's command line,
        # so a later run can find and stop what a killed controller left behind.
        self.dir = tempfile.mkdtemp(prefix=transfer.marker(
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
                private_data_dir=self.dir, playbook=PLAYBOOK, inventory=self.inventory,
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
        except Exception:
            pass
        return False   # no job_events/*.json files

    def drain(self) -> None:
        """Finish the batches in hand, claim no more."""
        try:
            open(self.stop_file, "a").close()
        except OSError:
            pass

    def cancel(self) -> None:
        """Stop now: ansible-playbook forwards SIGTERM to its workers."""
        if self._pid:
            try:
                os.kill(self._pid, signal.SIGTERM)
            except OSError:
                pass
        self._cancel = True

    def alive(self) -> bool:
        return self.thread.is_alive()
