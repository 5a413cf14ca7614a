"""Files fleetsync ships beside its code: the playbooks and the default inventory.

They are package data (`fleetsync.playbooks`, `fleetsync.inventory`), found through
importlib.resources, so an installed wheel and a checkout find them alike,
whatever the working directory.
"""
from __future__ import annotations

import importlib.resources


def _path(package: str, name: str) -> str:
    return str(importlib.resources.files(package) / name)


DISPATCH_PLAYBOOK = _path("fleetsync.playbooks", "dispatch.yml")
DEFAULT_INVENTORY = _path("fleetsync.inventory", "local.ini")
