"""The operator's flows through Ansible: playbooks/migrate.yml run by the real
ansible-playbook on the local inventory, its options and its outcome line, and
what the operator reads when the inventory is broken."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .support import eventually, fleetsync, query, REPO

PLAYBOOK = os.path.join(REPO, "playbooks", "migrate.yml")
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")



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


def playbook(inventory, *extra: str, cwd=None, check: bool = False) -> subprocess.CompletedProcess:
    """The real ansible-playbook on migrate.yml, as an operator runs it."""
    return subprocess.run([ANSIBLE_PLAYBOOK, "-i", str(inventory), PLAYBOOK,
                           *(["--check"] if check else []), *extra],
                          capture_output=True, text=True, timeout=300, cwd=cwd or REPO)


def outcome(r: subprocess.CompletedProcess) -> str:
    """The final task's one line."""
    lines = [ln.strip() for ln in r.stdout.splitlines() if '"msg": "' in ln]
    assert lines, r.stdout[-3000:]
    return lines[-1].split('"msg": "', 1)[1].rstrip('"')


def local_inventory(tmp_path, group_vars: dict[str, str] | None = None,
                    hosts: str = "localhost ansible_connection=local fleetsync_slots=2\n"):
    inv = tmp_path / "inv"
    (inv / "group_vars").mkdir(parents=True)
    (inv / "hosts.ini").write_text("[movers]\n" + hosts)
    for name, text in (group_vars or {}).items():
        (inv / "group_vars" / name).write_text(text)
    return inv / "hosts.ini"


def tree(root, files: int = 10) -> None:
    (root / "d").mkdir(parents=True)
    for i in range(files):
        (root / "d" / f"f{i}").write_text(str(i))


# -- 1. options where the README says they may be -----------------------------------------
@pytest.mark.parametrize("where", ["movers.yml", "all.yml"])
def test_the_options_in_group_vars_are_read(tmp_path, where):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    tree(src)
    inv = local_inventory(tmp_path, {where: f"src: {src}\ndest: {dest}\nfleetsync_ledger: {ledger}\n"
                                            "fleetsync_batch_files: 3\nfleetsync_batch_bytes: 30MiB\n"
                                            "fleetsync_no_api: true\n"})
    r = playbook(inv)
    assert r.returncode == 0, r.stdout[-3000:]
    assert outcome(r).startswith("fleetsync exit 0, all copied: fleetsync: 4 of 4 batches")
    assert (dest / "d" / "f9").read_text() == "9"
    [(options,)] = query(ledger, "SELECT options FROM migration")
    assert '"batch_bytes": 31457280' in options and '"batch_files": 3' in options
    assert "reserved name" not in r.stdout + r.stderr


# -- 3. every run option reachable, with prefixed names; 4. relative paths ------------------
def test_every_run_option_reaches_fleetsync_run(tmp_path):
    (tmp_path / "work").mkdir()
    inv = local_inventory(tmp_path)
    r = playbook(inv, "-e", "src=../old", "-e", "dest=new", "-e", "fleetsync_ledger=m.db",
                 "-e", "fleetsync_delete=true", "-e", "fleetsync_max_delete=5",
                 "-e", "fleetsync_verify=yes", "-e", "fleetsync_rescan=true",
                 "-e", "fleetsync_bwlimit=10MiB", "-e", "fleetsync_no_api=true",
                 "-e", "fleetsync_slots=3", "-e", "fleetsync_port=18109",
                 "-e", "fleetsync_bind=127.0.0.2", "-e", "fleetsync_batch_files=300",
                 "-e", "fleetsync_batch_bytes=30MiB", "-e", "fleetsync_producers=2",
                 "-e", "fleetsync_max_retries=1", "-e", "fleetsync_heartbeat_timeout=60",
                 "-e", "fleetsync_delete_dry_run=false", "-e", "fleetsync_items_per_run=50",
                 "-e", "fleetsync_no_default_excludes=true", "-e", "fleetsync_change_filters=1",
                 "-e", "fleetsync_delete_excluded=yes", "-e", "fleetsync_exclude_from=ex.txt",
                 "-e", "fleetsync_files_from=changes", "-e", "fleetsync_from0=true",
                 "-e", '{"fleetsync_filters": ["-_*.tmp", "+_keep"]}',
                 "-e", "fleetsync_rsync_options='-A -X'", cwd=tmp_path / "work", check=True)
    assert r.returncode == 0, r.stdout[-3000:]
    line = outcome(r)
    assert line.startswith("check mode: fleetsync would run: "), line
    argv = line.split(" -m fleetsync.controller.cli run ", 1)[1].split()
    assert argv == ["--src", str(tmp_path / "old"), "--dest", str(tmp_path / "work" / "new"),
                    "--inventory", str(inv), "--ledger", str(tmp_path / "work" / "m.db"),
                    "--batch-files", "300", "--batch-bytes", "30MiB", "--producers", "2",
                    "--max-retries", "1", "--max-delete", "5", "--heartbeat-timeout", "60",
                    "--bwlimit", "10MiB", "--bind", "127.0.0.2", "--port", "18109",
                    "--slots", "3", "--items-per-run", "50", "--delete", "--verify", "--rescan",
                    "--no-api", "--no-default-excludes", "--change-filters", "--delete-excluded",
                    "--from0", "--rsync-option=-A", "--rsync-option=-X", "--filter=-_*.tmp",
                    "--filter=+_keep", "--exclude-from", str(tmp_path / "work" / "ex.txt"),
                    "--files-from", str(tmp_path / "work" / "changes")]
    assert "WARNING" not in r.stdout + r.stderr


def test_an_old_name_still_works_with_a_warning_and_hosts_must_agree(tmp_path):
    inv = local_inventory(tmp_path, hosts="localhost ansible_connection=local fleetsync_slots=2\n"
                                          "other ansible_connection=local\n")
    r = playbook(inv, "-e", "src=/s", "-e", "dest=/d", "-e", "port=18109", check=True)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "--port 18109" in outcome(r)
    assert "--slots" not in outcome(r)        # the inventory's own slots stay per host
    assert "the variable 'port' is now 'fleetsync_port'" in r.stdout + r.stderr
    (tmp_path / "inv" / "host_vars").mkdir()
    (tmp_path / "inv" / "host_vars" / "other.yml").write_text("fleetsync_batch_files: 7\n")
    r = playbook(inv, "-e", "src=/s", "-e", "dest=/d", check=True)
    assert r.returncode == 2 and "the hosts see different migration options" in r.stdout


def test_bad_flag_is_one_line(tmp_path):
    r = playbook(local_inventory(tmp_path), "-e", "src=/s", "-e", "dest=/d",
                 "-e", "fleetsync_delete=maybe", check=True)
    assert r.returncode == 2
    assert "fleetsync: fleetsync_delete must be true or false, not 'maybe'" in r.stdout + r.stderr


# -- 2. a string of rsync options; 3. slots per host; 4. a relative SRC -------------------
def test_rsync_options_as_a_string_slots_and_a_relative_src(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    tree(src)
    os.setxattr(src / "d" / "f3", "user.fleetsync", b"kept")
    (tmp_path / "work").mkdir()
    r = playbook(local_inventory(tmp_path), "-e", "src=../src", "-e", "dest=../dest",
                 "-e", f"fleetsync_ledger={ledger}", "-e", "rsync_options=-AX",
                 "-e", "fleetsync_slots=3", "-e", "fleetsync_no_api=true",
                 cwd=tmp_path / "work")
    assert r.returncode == 0, r.stdout[-3000:]
    assert outcome(r).startswith("fleetsync exit 0, all copied"), outcome(r)
    assert os.getxattr(dest / "d" / "f3", "user.fleetsync") == b"kept"     # -AX, whole
    assert query(ledger, "SELECT slots FROM workers") == [(3,)]           # not the inventory's 2
    assert "the variable 'rsync_options' is now 'fleetsync_rsync_options'" in r.stdout + r.stderr


# -- 5. the final task says which outcome happened ----------------------------------------
def test_outcome_1_entries_did_not_arrive(tmp_path):
    from fleetsync.controller.producer import Limits
    from fleetsync.controller.walk import Walk
    from fleetsync.ledger import db, migration

    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    tree(src)
    engine = db.writer(str(ledger))
    migration.open_or_create(engine, str(src), str(dest), {"batch_files": 5})
    engine.dispose()
    walk = Walk(str(ledger), str(src), 1, Limits(entries=5))
    walk.start()
    assert walk.join()
    # A non-empty directory at DEST where SRC has the file d/f4: rsync cannot make way
    # for it (a permanent per-file error), so that entry does not arrive. (A file that
    # vanished from SRC is no longer a failure: it is recorded as vanished.)
    (dest / "d" / "f4").mkdir(parents=True)
    (dest / "d" / "f4" / "in-the-way").write_text("x")
    # fleetsync_report (issue 23): written after the copy, when it matters most.
    (tmp_path / "audit").mkdir()
    r = playbook(local_inventory(tmp_path), "-e", f"src={src}", "-e", f"dest={dest}",
                 "-e", f"fleetsync_ledger={ledger}", "-e", "fleetsync_max_retries=0",
                 "-e", "fleetsync_no_api=true", "-e", "fleetsync_report=audit/r.html",
                 cwd=tmp_path)
    assert r.returncode == 2, r.stdout[-3000:]
    assert outcome(r).startswith("fleetsync exit 1, entries did not arrive: fleetsync: "), outcome(r)
    assert outcome(r).endswith(f"; report written: {tmp_path / 'audit' / 'r.html'}"), outcome(r)
    table = (tmp_path / "audit" / "r.csv").read_text()
    [f4] = [ln.split(",") for ln in table.splitlines() if ln.startswith("d/f4,")]
    assert f4[1:3] == ["file", "1"] and f4[4].startswith("not arrived: could not make way")
    assert subprocess.run(["sha256sum", "-c", "r.csv.sha256", "r.html.sha256"],
                          cwd=tmp_path / "audit", capture_output=True).returncode == 0
    assert "r.csv" in (tmp_path / "audit" / "r.html").read_text()


def test_a_report_path_needs_a_known_suffix(tmp_path):
    r = playbook(local_inventory(tmp_path), "-e", "src=/s", "-e", "dest=/d",
                 "-e", "fleetsync_report=/audit/r.txt", check=True)
    assert r.returncode == 2
    assert ("fleetsync: fleetsync_report '/audit/r.txt': give a file ending in .csv, .json "
            "or .html") in r.stdout + r.stderr


def test_outcome_2_refused_in_one_line(tmp_path):
    r = playbook(local_inventory(tmp_path), "-e", f"src={tmp_path / 'nothing'}",
                 "-e", f"dest={tmp_path / 'dest'}", "-e", f"fleetsync_ledger={tmp_path / 'l.db'}")
    assert r.returncode == 2, r.stdout[-3000:]
    assert outcome(r) == (f"fleetsync exit 2, refused: fleetsync: error: SRC "
                          f"{tmp_path / 'nothing'} does not exist")


def test_outcome_0_with_a_host_unreachable_is_exit_0(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    tree(src)
    inv = local_inventory(tmp_path, hosts="localhost ansible_connection=local\n"
                          "ghost ansible_host=127.0.0.1 ansible_port=1 ansible_connection=ssh\n")
    r = playbook(inv, "-e", f"src={src}", "-e", f"dest={dest}", "-e", f"fleetsync_ledger={ledger}",
                 "-e", "fleetsync_no_api=true")
    assert r.returncode == 0, r.stdout[-3000:]
    assert outcome(r).startswith("fleetsync exit 0, all copied"), outcome(r)
    assert (dest / "d" / "f9").read_text() == "9"


def test_the_command_line_of_a_remote_dest_and_a_list_of_rsync_options():
    from fleetsync.controller import playbook as pb

    run = pb.command({"src": "old", "dest": "nas:/export/new", "fleetsync_port": None,
                      "fleetsync_rsync_options": ["-A", "--chmod=D2775"],
                      "fleetsync_verify": False}, "/py", "inv.ini", "/home/op")
    assert run.argv == ["/py", "-m", "fleetsync.controller.cli", "run", "--src", "/home/op/old",
                        "--dest", "nas:/export/new", "--inventory", "/home/op/inv.ini",
                        "--ledger", "/home/op/fleetsync.db",
                        "--rsync-option=-A", "--rsync-option=--chmod=D2775"]
    assert (run.src, run.dest, run.warnings) == ("/home/op/old", "nas:/export/new", [])
    with pytest.raises(pb.PlaybookError, match="dest is not set"):
        pb.command({"src": "/s"}, "/py", "inv.ini", "/")


def test_the_filter_rules_keep_their_order():
    from fleetsync.controller import playbook as pb

    run = pb.command({"src": "/s", "dest": "/d", "fleetsync_filters": ["+ keep.tmp", "- *.tmp"],
                      "fleetsync_exclude_from": "excludes.txt",
                      "fleetsync_no_default_excludes": True, "fleetsync_change_filters": "yes",
                      "fleetsync_delete_excluded": False}, "/py", "inv.ini", "/home/op")
    assert run.argv[-6:] == ["--no-default-excludes", "--change-filters",
                             "--filter=+ keep.tmp", "--filter=- *.tmp",
                             "--exclude-from", "/home/op/excludes.txt"]
    for bad in (["*.tmp"], {"a": 1}, ["-*.tmp"]):
        with pytest.raises(pb.PlaybookError, match="fleetsync_filters"):
            pb.command({"src": "/s", "dest": "/d", "fleetsync_filters": bad}, "/py", "i", "/")


# -- the preflight: leftovers of dead runs, and nothing else --------------------------------
def _preflight(tmp_path, migration_id: str, run_token: str) -> str:
    """playbooks/preflight.sh.j2 as Ansible's own templating renders it for a host."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template
    (tmp_path / "src").mkdir()
    templar = Templar(loader=DataLoader(), variables=dict(
        fleetsync_src=str(tmp_path / "src"), fleetsync_dest=str(tmp_path / "dest"),
        fleetsync_migration_id=migration_id, fleetsync_run_token=run_token))
    with open(os.path.join(REPO, "playbooks", "preflight.sh.j2")) as f:
        return templar.template(trust_as_template(f.read()))


def test_a_preflight_kills_a_dead_runs_leftovers_not_another_hosts_preflight(tmp_path):
    """Hosts that share the controller's processes (localhost in a fleet) see each
    other's preflights: one host's leftover search must not find, and kill, the
    search another host runs at the same moment (seen under load)."""
    import re
    import uuid

    from fleetsync.controller import processes
    mid = str(uuid.uuid4())
    script = _preflight(tmp_path, mid, "live-token")
    [pattern] = re.findall(r'pgrep -f "([^"]+)"', script)
    # Processes with no child: a shell's child, between fork and exec, would look like
    # the shell and be killed with it.
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    others = {   # what each would look like in /proc, and whether it must survive
        "another host's search": (subprocess.Popen([*sleeper, "pgrep", "-f", pattern]), True),
        "this run's rsync": (subprocess.Popen(
            [*sleeper, f"--log-file-format=fleetsync:{mid}:live-token"]), True),
        "a dead run's rsync": (subprocess.Popen(
            [*sleeper, f"--log-file-format=fleetsync:{mid}:dead-token"]), False),
    }
    try:
        for p, _ in others.values():          # their exec may be under way: a guard
            eventually(lambda: b"time.sleep(600)" in (processes.command_line(p.pid) or b""),
                       "its exec", 120)
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                             env={**os.environ, "HOME": str(tmp_path)}, timeout=60).stdout
        for what, (p, survives) in others.items():
            p.poll() if survives else p.wait(60)
            assert (p.returncode is None) == survives, (what, out)
        killed = re.findall(r"@@fleetsync killed leftover (\d+)", out)
        assert killed == [str(others["a dead run's rsync"][0].pid)], out
        assert "@@fleetsync worker " in out
    finally:
        for p, _ in others.values():
            p.kill()
            p.wait()


# -- the play's --limit is the copy's: no attempt, worker or log line of another host ------
def test_the_playbook_limit_is_the_hosts_of_the_copy(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    tree(src)
    inv = local_inventory(tmp_path, hosts="localhost ansible_connection=local\n"
                                          "ghost.invalid ansible_connection=ssh\n")
    r = playbook(inv, "--limit", "localhost", "-e", f"src={src}", "-e", f"dest={dest}",
                 "-e", f"fleetsync_ledger={ledger}", "-e", "fleetsync_no_api=true")
    assert r.returncode == 0, r.stdout[-3000:]
    assert outcome(r).startswith("fleetsync exit 0, all copied"), outcome(r)
    assert (dest / "d" / "f9").read_text() == "9"
    assert query(ledger, "SELECT DISTINCT host FROM workers") == [("localhost",)]
    assert query(ledger, "SELECT count(*) FROM attempts WHERE worker_id NOT IN "
                         "(SELECT worker_id FROM workers WHERE host = 'localhost')") == [(0,)]
    assert query(ledger, "SELECT message FROM log WHERE message LIKE '%ghost%'") == []
    assert "ghost" not in r.stdout + r.stderr
    # verify takes the same --limit.
    v = fleetsync("verify", "--ledger", str(ledger), "--inventory", str(inv), "--limit", "localhost")
    assert v.returncode == 0 and b"0 differ" in v.stdout, v.stdout + v.stderr
    assert query(ledger, "SELECT DISTINCT host FROM workers") == [("localhost",)]
    assert query(ledger, "SELECT message FROM log WHERE message LIKE '%ghost%'") == []


def test_limit_reaches_fleetsync_run_and_a_retry_file_is_absolute(tmp_path):
    inv = local_inventory(tmp_path)
    r = playbook(inv, "-e", "src=/s", "-e", "dest=/d", "--limit", "movers:!ghost*", check=True)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "--limit movers:!ghost*" in outcome(r)
    from fleetsync.controller import playbook as pb
    run = pb.command({"src": "/s", "dest": "/d", "ansible_limit": "@retry.txt"},
                     "/py", "inv.ini", "/home/op")
    assert run.argv[-2:] == ["--limit", "@/home/op/retry.txt"]


# -- issue 20, 11. with port 0 the operator finds the API while the run goes on ------------
def test_with_port_0_the_api_url_is_in_a_file_while_the_run_goes_on(tmp_path):
    import json
    import urllib.request
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(1 << 20))      # ~16 s at the cap below
    url_file = tmp_path / "l.db.api"
    p = subprocess.Popen([ANSIBLE_PLAYBOOK, "-i", str(local_inventory(tmp_path)), PLAYBOOK,
                          "-e", f"src={src}", "-e", f"dest={dest}", "-e", f"fleetsync_ledger={ledger}",
                          "-e", "fleetsync_port=0", "-e", "fleetsync_bwlimit=64KiB"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        eventually(url_file.exists, "the URL file", 120, p)
        url = url_file.read_text().strip()
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0"), url
        with urllib.request.urlopen(url + "/status", timeout=30) as r:
            assert json.load(r)["total_batches"] >= 1
        out, _ = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, out[-3000:]
    # Said before the run task, and the file goes with the run.
    assert out.index(f"its URL is in {url_file}") < out.index("TASK [Run fleetsync")
    assert not url_file.exists()
