import json

import pytest

from fleetsync.controller import defaults, inventory


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
