"""A ledger's migration id, read at the launch of `fleetsync run` without SQLAlchemy.

The run starts its Ansible before it imports the ledger's code (controller/
headstart.py), and that Ansible's processes carry the migration id in their
command lines (rsync.marker) from their first instant. This reads it with the
standard library alone, read only (mode=ro, as db.check reads), and says None
for whatever it cannot read: the run then checks the ledger in full, as before,
and a head start that bet on the wrong id is dropped.
"""
from __future__ import annotations

import os
import sqlite3
import urllib.parse
import uuid


def migration_id(path: str) -> str | None:
    """The migration id the ledger at path holds, or None (no ledger, none yet, or
    a file this cannot read)."""
    if not os.path.isfile(path):
        return None
    try:
        con = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro",
                              uri=True)
        try:
            row = con.execute("SELECT migration_id FROM migration").fetchone()
        finally:
            con.close()
    except sqlite3.Error:     # not a ledger, or not one yet: the run's own checks say why
        return None
    return row[0] if row else None


def new_migration_id() -> str:
    """The id a new ledger's migration gets (ledger/migration.py creates it)."""
    return str(uuid.uuid4())
