"""The environment of every Ansible process fleetsync starts (ansible-inventory,
ansible-playbook through ansible-runner).

Noticing a dead or frozen host: ssh keepalives every 5 s, three missed = gone
(~15 s); a connection attempt gives up after 10 s. ControlPersist keeps the
master connection across batches and runs. Ansible refuses to start under a
non-UTF-8 locale (LC_ALL=POSIX), hence C.UTF-8.
"""
from __future__ import annotations

import os
import sys

SSH_ARGS = ("-o ControlMaster=auto -o ControlPersist=900s -o ServerAliveInterval=5 "
            "-o ServerAliveCountMax=3 -o ConnectTimeout=10")


def ansible_env() -> dict[str, str]:
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
    }
    if "ANSIBLE_HOST_KEY_CHECKING" in os.environ:
        env["ANSIBLE_HOST_KEY_CHECKING"] = os.environ["ANSIBLE_HOST_KEY_CHECKING"]
    return env


def process_env() -> dict[str, str]:
    """The whole environment of a process fleetsync starts itself."""
    return dict(os.environ) | ansible_env()
