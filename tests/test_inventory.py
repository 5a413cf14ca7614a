import json
import os
import shutil

import pytest

from fleetsync.controller import defaults, inventory

from .support import REPO, fleetsync, query


def test_hosts_slots_and_aliases(tmp_path):
    inv = tmp_path / "inv.ini"
    inv.write_text("[movers]\na ansible_connection=local fleetsync_slots=3\nb ansible_host=10.9.9.9\n"
                   "[movers:vars]\nansible_user=mover\n")
    hosts = inventory.load(str(inv))
    assert sorted(hosts) == ["a", "b"]
    assert hosts["a"].slots == 3 and hosts["b"].slots == defaults.SLOTS
    aliases = hosts["b"].aliases()
    assert list(aliases) == ["b--slot1", "b--slot2"]
    assert all(v["ansible_host"] == "10.9.9.9" and v["ansible_user"] == "mover"
               for v in aliases.values())
    assert inventory.host_of("b--slot2") == "b"
    rt = tmp_path / "rt.json"
    inventory.write_runtime(str(rt), hosts["a"])
    assert set(json.loads(rt.read_text())["all"]["hosts"]) == {"a--slot1", "a--slot2", "a--slot3"}


@pytest.mark.parametrize("text, words", [
    ("[movers]\na fleetsync_slots=zero\n", "fleetsync_slots"),
    ("[movers]\na fleetsync_slots=0\n", "at least 1"),
    ("# nothing here\n", "no host"),
])
def test_bad_inventories(tmp_path, text, words):
    inv = tmp_path / "inv.ini"
    inv.write_text(text)
    with pytest.raises(inventory.InventoryError, match=words):
        inventory.load(str(inv))


def test_missing_inventory(tmp_path):
    with pytest.raises(inventory.InventoryError, match="does not exist"):
        inventory.load(str(tmp_path / "nope.ini"))


# -- --limit: Ansible's host patterns, kept on every re-read ---------------------------------
def _fleet(path, *hosts: str) -> None:
    """Write the inventory atomically (as the README asks), its mtime a second later."""
    tmp = path.with_suffix(".new")
    tmp.write_text("[movers]\n" + "".join(f"{h} ansible_connection=local\n" for h in hosts)
                   + "[others]\nz1 ansible_connection=local\n")
    old = path.stat().st_mtime_ns if path.exists() else 0
    os.replace(tmp, path)
    os.utime(path, ns=(old + 1_000_000_000, old + 1_000_000_000))


@pytest.mark.parametrize("limit, hosts", [
    ("localhost", ["localhost"]),
    ("movers:!ghost*", ["localhost", "mover2"]),
    ("mover2,z1", ["mover2", "z1"]),     # a list of hosts
    ("all", ["ghost.invalid", "localhost", "mover2", "z1"]),
])
def test_limit_keeps_the_hosts_an_ansible_limit_would(tmp_path, limit, hosts):
    inv = tmp_path / "inv.ini"
    _fleet(inv, "localhost", "ghost.invalid", "mover2")
    assert sorted(inventory.load(str(inv), limit=limit)) == hosts


def test_a_limit_that_matches_no_host_is_one_clear_error(tmp_path):
    inv = tmp_path / "inv.ini"
    _fleet(inv, "localhost")
    with pytest.raises(inventory.InventoryError,
                       match=f"--limit nomatch matches no host of inventory {inv}"):
        inventory.load(str(inv), limit="nomatch")
    (tmp_path / "src").mkdir()
    r = fleetsync("run", "--no-api", "--src", str(tmp_path / "src"), "--dest",
                  str(tmp_path / "dest"), "--ledger", str(tmp_path / "l.db"),
                  "--inventory", str(inv), "--limit", "nomatch")
    assert r.returncode == 2 and r.stderr.decode().strip().splitlines() == [
        f"fleetsync: error: --limit nomatch matches no host of inventory {inv}"]
    assert not (tmp_path / "l.db").exists()


def test_a_host_added_mid_run_joins_only_within_the_limit(tmp_path, make_ledger):
    from fleetsync.controller.dispatch import Dispatcher, Settings
    inv = tmp_path / "inv.ini"
    _fleet(inv, "localhost", "ghost.invalid")
    settings = Settings(make_ledger(tmp_path), str(inv), limit="movers:!ghost*")
    d = Dispatcher(settings, None, inventory.load(str(inv), limit=settings.limit))
    try:
        assert sorted(d.hosts) == ["localhost"]
        _fleet(inv, "localhost", "ghost.invalid", "ghost2.invalid", "mover2")
        d._reload_inventory()
        assert sorted(d.hosts) == ["localhost", "mover2"]
        joined = [m for (m,) in query(settings.ledger_path, "SELECT message FROM log")]
        assert joined == ["host mover2 joined the inventory"]
    finally:
        d.close()


# -- issue 20, 11. the README's group_vars/movers.yml is the fleet's, not local.ini's -------
def test_the_example_group_vars_reach_the_example_fleet_not_local_ini(tmp_path):
    inv = tmp_path / "inventory"
    shutil.copytree(os.path.join(REPO, "inventory"), inv)
    shutil.copy(inv / "group_vars" / "all.yml.example", inv / "group_vars" / "movers.yml")
    local = inventory.load(str(inv / "local.ini"))
    assert sorted(local) == ["localhost"]
    assert "ansible_user" not in local["localhost"].vars
    assert "ansible_ssh_private_key_file" not in local["localhost"].vars
    assert local["localhost"].vars["ansible_connection"] == "local"
    fleet = inventory.load(str(inv / "example.ini"))
    assert fleet["mover01.example.org"].vars["ansible_user"] == "fleetsync"
    assert fleet["mover01.example.org"].vars["ansible_ssh_private_key_file"] == \
        "~/.ssh/fleetsync_ed25519"


# -- issue 25: the inventory read once, by the dispatch run started at launch ---------------
@pytest.mark.parametrize("limit", [None, "movers:!ghost*", "mover2,z1"])
def test_the_run_started_ahead_reads_the_hosts_ansible_inventory_lists(tmp_path, limit):
    """What the run started at launch hands over (its strategy's hosts) is what
    `ansible-inventory --list` says: the same hosts within the same --limit, with
    the same variables (group_vars and host_vars included), and no extra variable
    of the run's own."""
    from fleetsync.controller.hostrun import FleetRun, HostsRead
    from fleetsync.ledger import identity
    inv = tmp_path / "inv.ini"
    _fleet(inv, "localhost", "ghost.invalid", "mover2")
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "movers.yml").write_text("fleetsync_slots: 3\nshared: [1, 2]\n")
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "host_vars" / "mover2.yml").write_text("fleetsync_slots: 5\nodd: \"{{ x }}\"\n")
    ahead = FleetRun.ahead(str(inv), limit, identity.new_migration_id())
    try:
        read = HostsRead(ahead, str(inv)).result()
        assert ahead.hosts_out and os.path.exists(ahead.hosts_out)   # not ansible-inventory's
    finally:
        ahead.drop()
    listed = inventory.load(str(inv), limit=limit)
    assert sorted(read) == sorted(listed)
    for name, host in listed.items():
        assert read[name].slots == host.slots
        assert read[name].vars == host.vars, name
    assert read["mover2"].slots == 5
    assert not os.path.exists(ahead.dir)


def test_what_the_run_started_ahead_cannot_read_is_said_as_ansible_inventory_says_it(tmp_path):
    """No host matched (a broken inventory, a --limit of no host): the run ends without
    handing hosts over, and ansible-inventory's words are the error."""
    from fleetsync.controller.hostrun import FleetRun, HostsRead
    from fleetsync.ledger import identity
    inv = tmp_path / "inv.ini"
    _fleet(inv, "localhost")
    ahead = FleetRun.ahead(str(inv), "nomatch", identity.new_migration_id())
    try:
        with pytest.raises(inventory.InventoryError,
                           match=f"--limit nomatch matches no host of inventory {inv}"):
            HostsRead(ahead, str(inv)).result()
    finally:
        ahead.drop()
