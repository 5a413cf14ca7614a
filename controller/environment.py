"""The environment of every Ansible process fleetsync starts (ansible-inventory,
ansible-playbook through ansible-runner).

Noticing a dead or frozen host: ssh keepalives every 5 s, three missed = gone
(~15 s); a connection attempt gives up after 10 s. ControlPersist keeps the
master connection across batches and runs; the masters live in a control
directory of the migration's own (0700), which the end of a run, or the next
run after a crash, empties (hostrun.close_masters). Ansible refuses to start
under a non-UTF-8 locale (LC_ALL=POSIX), hence C.UTF-8.
"""
from __future__ import annotations

import os
import sys
import tempfile

from fleetsync.ledger import clock

SSH_ARGS = ("-o ControlMaster=auto -o ControlPersist=900s -o ServerAliveInterval=5 "
            "-o ServerAliveCountMax=3 -o ConnectTimeout=10")


MAX_EVENT_RES = 16 << 20


def control_dir(migration_id: str) -> str:
    """Where the ssh masters of a migration keep their sockets (short: a socket path
    may take 107 bytes, and ssh adds 17 while it creates one)."""
    return os.path.join(tempfile.gettempdir(), f"fleetsync-cp.{migration_id}")


def ansible_env(migration_id: str | None = None) -> dict[str, str]:
    """What fleetsync sets on top of its own environment."""
    env = {
        # The venv may not be activated: ansible-playbook is found beside our python.
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        "LC_ALL": "C.UTF-8",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_SSH_ARGS": SSH_ARGS,
        "ANSIBLE_TIMEOUT": "10",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        # An item's result larger than this is dropped by ansible-runner ({}); an
        # item's output is bounded well below it (controller/rsync.py: ITEM_OUTPUT_BYTES).
        "MAX_EVENT_RES": str(MAX_EVENT_RES),
    }
    if migration_id:
        env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = control_dir(migration_id)
    for name in ("ANSIBLE_HOST_KEY_CHECKING", clock.OFFSET_ENV):
        if name in os.environ:   # the windows' clock (ledger/clock.py) of the lookups too
            env[name] = os.environ[name]
    return env


def process_env() -> dict[str, str]:
    """The whole environment of a process fleetsync starts itself."""
    return dict(os.environ) | ansible_env()
