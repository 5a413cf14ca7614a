"""The operator's flows through Ansible: playbooks/migrate.yml run by the real
ansible-playbook on the local inventory, its options and its outcome line, and
what the operator reads when the inventory is broken."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from .support import REPO, fleetsync

PLAYBOOK = os.path.join(REPO, "playbooks", "migrate.yml")
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")


def query(ledger, sql, *args):
    con = sqlite3.connect(ledger)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


# -- 13. a broken inventory says what ansible-inventory said first ------------------------
@pytest.mark.parametrize("text, words", [
    ("[movers]\nlocalhost ansible_connection=local\n\n[movers:vars]\nfoo\n",
     "cannot be read: Expected key=value, got: foo (ini plugin)"),
    ("all: [this is: not, an inventory\n", "cannot be read: YAML parsing failed"),
])
def test_a_broken_inventory_shows_the_first_informative_error(tmp_path, text, words):
    (tmp_path / "s").mkdir()
    inv = tmp_path / ("inv.yml" if text.startswith("all") else "inv.ini")
    inv.write_text(text)
    r = fleetsync("run", "--no-api", "--src", str(tmp_path / "s"), "--dest", str(tmp_path / "d"),
                  "--ledger", str(tmp_path / "l.db"), "--inventory", str(inv))
    assert r.returncode == 2
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
    assert "No inventory was parsed" not in lines[0]
    assert not (tmp_path / "l.db").exists()
