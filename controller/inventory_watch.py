"""The inventory of a run, read again when its files change: hosts may join or leave
the fleet while it runs (checked every INVENTORY_EVERY, controller/defaults.py)."""
from __future__ import annotations

import os

from . import defaults, inventory


class InventoryWatch:
    """The inventory at path (with the run's --limit and --slots), and the newest
    change of its files as last read."""

    def __init__(self, path: str, limit: str | None, slots: int | None, read: bool) -> None:
        """read: whether the caller has read the inventory as it is now."""
        self.path, self.limit, self.slots = path, limit, slots
        self._mtime = _mtime(path) if read else None
        self._next_check = 0.0

    def due(self, now: float) -> bool:
        """Whether it is time to look at the files again (once per INVENTORY_EVERY)."""
        if now < self._next_check:
            return False
        self._next_check = now + defaults.INVENTORY_EVERY
        return True

    def changed(self, known: bool) -> dict[str, inventory.Host] | None:
        """The inventory's hosts when its files changed since the last read, or when
        no host is known yet (known: False); None when nothing changed.
        InventoryError when it cannot be read."""
        mtime = _mtime(self.path)
        if mtime == self._mtime and known:
            return None
        self._mtime = mtime
        return inventory.with_slots(inventory.load(self.path, limit=self.limit), self.slots)


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
