"""The filter rules as the ledger keeps them, and what they left out (table pruned).

The rules live in the migration row's options (JSON), key "filters": a list of
rules in rsync's syntax ("- PATTERN"), in order. A ledger made before filters
existed has no such key, and keeps its old behaviour: no rules, no default
excludes. Two more keys go with them: "filters_rescan", set in the same write as
rules changed by --change-filters and cleared once the rescan that applies them
has begun (a run killed in between starts that rescan when resumed), and
"delete_excluded", this run's --delete-excluded, which the directory pass reads.

SQL style: SQLAlchemy Core (a few statements per run: no hot path).
"""
from __future__ import annotations

import json

from sqlalchemy import Connection, func, select, update

from . import schema
from .schema import migration, pruned


def _options(conn: Connection) -> dict:
    return json.loads(conn.execute(select(migration.c.options)).scalar_one())


def _update(conn: Connection, **changes) -> None:
    with conn.begin():
        options = _options(conn)
        options.update(changes)
        conn.execute(update(migration).values(options=json.dumps(options, sort_keys=True)))


def stored(options: dict) -> list[str] | None:
    """The rules of a migration's options; None: a ledger made before filters."""
    rules = options.get("filters")
    return None if rules is None else list(rules)


def change(conn: Connection, rules: list[str]) -> None:
    """--change-filters: the new rules, and a rescan owed to apply them."""
    _update(conn, filters=list(rules), filters_rescan=True)


def rescan_owed(options: dict) -> bool:
    return bool(options.get("filters_rescan"))


def rescan_begun(conn: Connection) -> None:
    """The rescan that applies changed rules has begun (it resumes as any rescan)."""
    _update(conn, filters_rescan=False)


def set_delete_excluded(conn: Connection, on: bool) -> None:
    """This run's --delete-excluded, for the delete pass (controller/slot.py)."""
    _update(conn, delete_excluded=bool(on))


def delete_excluded(options: dict) -> bool:
    return bool(options.get("delete_excluded"))


def pruned_count(conn: Connection) -> int:
    """Entries the last walk left out by a rule (an excluded directory counts once);
    0 for a ledger made before filters."""
    if not schema.has_table(conn, "pruned"):
        return 0
    return conn.execute(select(func.count()).select_from(pruned)).scalar_one()
