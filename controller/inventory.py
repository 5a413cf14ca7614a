"""The fleet as the operator's Ansible inventory describes it, re-read when it changes.

`ansible-inventory --list` resolves groups, group_vars and host_vars exactly as
ansible-playbook would, and its `--limit` keeps the hosts an `ansible-playbook
--limit` would play (the same patterns: `movers:!mover03`, `mover0*`, `@file`);
a limit stays with every re-read, so a host added mid-run joins only if it matches. Each host runs as many batches at once as its
`fleetsync_slots` variable says (default 2). The runtime inventory handed to
ansible-runner lists each host once (one fork per host; the host runs its
slots side by side), with the variables the dispatch needs per host.
(`aliases`, one entry per slot, is the layout of earlier versions.)
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass

from fleetsync.ledger.errors import FleetsyncError

from . import defaults
from .environment import process_env

SLOT_SEP = "--slot"


class InventoryError(FleetsyncError):
    pass


@dataclass
class Host:
    name: str
    vars: dict
    slots: int

    def aliases(self) -> dict[str, dict]:
        """One inventory entry per slot, each a copy of the host."""
        base = dict(self.vars)
        base.setdefault("ansible_host", self.name)
        return {f"{self.name}{SLOT_SEP}{i}": dict(base, fleetsync_host=self.name)
                for i in range(1, self.slots + 1)}


def host_of(alias: str) -> str:
    return alias.rsplit(SLOT_SEP, 1)[0]


class Loading:
    """`ansible-inventory --list` running in the background (it takes about a second:
    `fleetsync run` starts it first and checks everything else meanwhile)."""

    def __init__(self, path: str, env: dict | None = None, limit: str | None = None):
        self.path = path
        self.limit = limit or None
        self.proc = None
        if os.path.exists(path):
            exe = os.path.join(os.path.dirname(sys.executable), "ansible-inventory")
            self.proc = subprocess.Popen(
                [exe if os.path.exists(exe) else "ansible-inventory", "-i", path, "--list",
                 *(["--limit", self.limit] if self.limit else [])],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=env or process_env())

    def result(self) -> dict[str, Host]:
        """Every host with its variables; one clear error when the inventory is broken."""
        if self.proc is None:
            raise InventoryError(f"inventory {self.path} does not exist")
        try:
            stdout, stderr = self.proc.communicate(timeout=defaults.INVENTORY_WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise InventoryError(f"inventory {self.path}: ansible-inventory took over "
                                 f"{defaults.INVENTORY_WAIT:.0f} s")
        return _hosts(self.path, self.proc.returncode, stdout, stderr, self.limit)


def load(path: str, env: dict | None = None, limit: str | None = None) -> dict[str, Host]:
    """Every host of the inventory (within `limit`, an Ansible host pattern) with its
    variables; one clear error when it is broken."""
    return Loading(path, env, limit).result()


def listed(path: str, text: str, limit: str | None = None) -> dict[str, Host]:
    """The hosts of an inventory listed as `ansible-inventory --list` lists them (by
    the dispatch run that read it: hostrun.HostsRead)."""
    return _hosts(path, 0, text, "", limit)


def _hosts(path: str, returncode: int, stdout: str, stderr: str,
           limit: str | None = None) -> dict[str, Host]:
    warnings = [line for line in stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    if returncode != 0:
        raise InventoryError(f"inventory {path} cannot be read: "
                             + (warnings[-1] if warnings else stderr.strip()[-300:]))
    data = json.loads(stdout)
    hostvars = data.get("_meta", {}).get("hostvars", {})
    names = set(hostvars)
    for group in data.values():
        if isinstance(group, dict):
            names.update(group.get("hosts", []))
    if not names:
        failed = _parse_failure(stderr)
        if failed:
            raise InventoryError(f"inventory {path} cannot be read: {failed}")
        if limit:
            raise InventoryError(f"--limit {limit} matches no host of inventory {path}")
        raise InventoryError(f"inventory {path} lists no host"
                             + (f" ({warnings[-1]})" if warnings else ""))
    hosts = {}
    for name in sorted(names):
        hv = hostvars.get(name, {})
        try:
            slots = int(hv.get("fleetsync_slots", defaults.SLOTS))
        except (TypeError, ValueError):
            raise InventoryError(f"host {name}: fleetsync_slots must be a number") from None
        if slots < 1:
            raise InventoryError(f"host {name}: fleetsync_slots must be at least 1")
        hosts[name] = Host(name, hv, slots)
    return hosts


_PARSE_FAILURE = re.compile(r"Failed to parse inventory with '([\w.]+)' plugin: "
                            r"(?:Failed to parse inventory: )?(.+)")


def _parse_failure(stderr: str) -> str | None:
    """The first reason a plugin gave for not parsing the inventory (`Expected
    key=value, got: foo`), not the summary that ends the warnings ("No inventory
    was parsed, only implicit localhost is available")."""
    for line in stderr.splitlines():
        found = _PARSE_FAILURE.search(line)
        if found:
            return f"{found[2].strip()} ({found[1]} plugin)"
    return None


def with_slots(hosts: dict[str, Host], slots: int | None) -> dict[str, Host]:
    """Every host with `slots` slots (`--slots`, the playbook's -e fleetsync_slots),
    whatever the inventory says; the hosts as they are when None."""
    if slots is None:
        return hosts
    if slots < 1:
        raise InventoryError("--slots must be at least 1")
    return {name: dataclasses.replace(h, slots=slots) for name, h in hosts.items()}


def write_runtime(path: str, host: Host) -> None:
    """The inventory one dispatch runs with: the host's slots as separate entries."""
    with open(path, "w") as f:
        json.dump({"all": {"hosts": host.aliases()}}, f)


def write_fleet(path: str, hosts: list[Host]) -> None:
    """The inventory of one dispatch run: each host once, with its variables (its
    lanes and stop file travel with the run's parameters, hostrun.FleetRun)."""
    entries = {}
    for h in hosts:
        v = dict(h.vars)
        v.setdefault("ansible_host", h.name)
        entries[h.name] = v
    with open(path, "w") as f:
        json.dump({"all": {"hosts": entries}}, f)
