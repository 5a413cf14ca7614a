"""The worker output protocol (controller/protocol.py): every kind of line, as its
writer prints it (with real sh, rsync and Ansible's templating of the preflight),
is read back by its parser to the same values; the playbooks' text is the module's."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid

import pytest

from fleetsync.controller import outcome, processes, protocol
from fleetsync.controller.protocol import Kind
from fleetsync.ledger.states import OutcomeKind

from .support import eventually
from .test_playbook import _preflight

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(script: str, **env) -> str:
    return subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120, check=False).stdout


@pytest.mark.parametrize("kind", list(OutcomeKind))
def test_begin_and_end_round_trip(kind):
    before = time.time()
    out = sh(f"{protocol.begin(41, 7, kind)}; echo 'rsync: a line of its own'; rc=23; "
             f"{protocol.end(41, 7)}")
    [(at, begin)] = protocol.begins(out)
    assert at == 0
    assert (begin.task_id, begin.claim, begin.kind) == (41, 7, kind)
    end = protocol.first_end(out)
    assert (end.task_id, end.claim, end.rc) == (41, 7, 23)
    assert before - 1 < begin.start <= end.end < time.time() + 1
    # ...and the outcome parser reads them through the protocol.
    [parsed] = outcome.parse_all(out)
    assert (parsed.task_id, parsed.claim_no, parsed.kind, parsed.rsync_exit_code,
            parsed.start_ts, parsed.end_ts) == (41, 7, kind, 23, begin.start, end.end)


def test_an_end_without_its_begin_line_is_not_a_batch_and_a_begin_alone_has_no_end():
    assert protocol.begins(sh(protocol.end(1, 1, "0"))) == []
    out = sh(protocol.begin(2, 3, OutcomeKind.COPY))
    assert [b.task_id for _, b in protocol.begins(out)] == [2]
    assert protocol.first_end(out) is None


def test_several_batches_are_found_in_order():
    out = sh("; ".join(f"{protocol.begin(t, t + 1, OutcomeKind.VERIFY)}; rc={t}; "
                       f"{protocol.end(t, t + 1)}" for t in (5, 3, 9)))
    assert [(b.task_id, b.claim) for _, b in protocol.begins(out)] == [(5, 6), (3, 4), (9, 10)]
    assert [(o.task_id, o.rsync_exit_code) for o in outcome.parse_all(out)] == [
        (5, 5), (3, 3), (9, 9)]


@pytest.mark.parametrize("kind,shell", [(Kind.STOP, protocol.STOP), (Kind.IDLE, protocol.IDLE)])
def test_stop_and_idle_round_trip(kind, shell):
    out = sh(shell)
    assert [k for k in Kind if protocol.says(out, k)] == [kind]
    assert outcome.parse_all(out) == []
    # As ssh hands it back through Ansible's raw module.
    assert protocol.says(out.replace("\n", "\r\n") + "Shared connection closed.\r\n", kind)


def test_a_beat_is_an_empty_line_that_says_nothing():
    out = sh(f"{protocol.BEAT}; {protocol.BEAT}")
    assert out == "\n\n"
    assert not any(protocol.says(out, k) for k in Kind) and outcome.parse_all(out) == []


def test_itemized_lines_round_trip_with_real_rsync(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "sub").mkdir(parents=True)
    (src / "a b").write_text("x")
    (src / "sub" / "c").write_text("y")
    out = subprocess.run(["rsync", "-r", "--dry-run", protocol.ITEMIZE, f"{src}/", f"{dest}/"],
                         capture_output=True, text=True, check=True).stdout
    items = protocol.itemized(out.splitlines())
    assert sorted(i.split(" ", 1)[1] for i in items) == ["./", "a b", "sub/", "sub/c"]
    assert all(re.fullmatch(r"[<>ch.*][fdLDS][^ ]* .+", i) for i in items), items


def test_the_preflight_names_its_worker(tmp_path):
    out = sh(_preflight(tmp_path, str(uuid.uuid4()), "t"), HOME=str(tmp_path))
    worker_id = (tmp_path / ".fleetsync" / "worker_id").read_text().strip()
    assert protocol.worker(out) == f"{socket.gethostname()}-{worker_id}"
    assert protocol.errors(out) == [] and protocol.killed(out) == []
    # Ansible's raw module hands ssh's output back with \r\n.
    assert protocol.worker(out.replace("\n", "\r\n")) == protocol.worker(out)


def test_the_preflight_says_why_it_cannot_work(tmp_path):
    script = _preflight(tmp_path, str(uuid.uuid4()), "t")
    (tmp_path / "src").rmdir()
    out = sh(script, HOME=str(tmp_path))
    assert protocol.errors(out) == [f"SRC {tmp_path / 'src'} is not a readable directory"]
    with pytest.raises(ValueError, match="did not name the worker"):
        protocol.worker(out)


def test_the_preflight_reports_the_leftovers_it_killed(tmp_path):
    mid = str(uuid.uuid4())
    script = _preflight(tmp_path, mid, "live-token")
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)",
                             f"--log-file-format=fleetsync:{mid}:dead-token"])
    try:
        eventually(lambda: b"time.sleep(600)" in (processes.command_line(dead.pid) or b""),
                   "its exec (it may be under way)", 120)
        out = sh(script, HOME=str(tmp_path))
        dead.wait(60)
        assert protocol.killed(out) == [dead.pid], out
        assert protocol.killed_text(dead.pid) in out
    finally:
        dead.kill()
        dead.wait()


def _playbook(name: str) -> str:
    with open(os.path.join(REPO, "playbooks", name)) as f:
        return f.read()


def test_the_playbooks_test_the_modules_lines():
    """dispatch.yml and migrate.yml keep the text where Ansible reads it: it is this."""
    worker = f"'{protocol.prefix(Kind.WORKER)} '"
    dispatch, migrate = _playbook("dispatch.yml"), _playbook("migrate.yml")
    assert f"{worker} not in fleetsync_preflight.stdout" in dispatch
    assert f"'{protocol.prefix(Kind.STOP)}' in fleetsync_batch.stdout" in dispatch
    assert f"{worker} not in preflight.stdout" in migrate
    assert (f"select('match', '{protocol.MARK} ({Kind.WORKER.value}|{Kind.ERROR.value})')"
            in migrate)


def test_every_line_outside_the_module_is_one_of_its_kinds():
    """The playbooks' and the preflight's mark lines name a kind the module defines,
    and no Python module but protocol.py spells a line out."""
    kinds = {k.value for k in Kind}
    for name in ("dispatch.yml", "migrate.yml", "preflight.sh.j2"):
        words = re.findall(rf"{protocol.MARK} \(?(\w+)", _playbook(name))
        assert words and set(words) <= kinds, (name, words)
    spelled = []
    for folder in ("controller", "api", "ledger", os.path.join("playbooks", "lookup_plugins")):
        for name in os.listdir(os.path.join(REPO, folder)):
            if name.endswith(".py") and name != "protocol.py":
                with open(os.path.join(REPO, folder, name)) as f:
                    text = f.read()
                if protocol.MARK in text.replace(f"`{protocol.MARK}", "") or protocol.ITEM in text:
                    spelled.append(os.path.join(folder, name))
    assert spelled == []


def test_a_look_at_dest_round_trips_with_real_rsync(tmp_path):
    """CHECK_FORMAT's lines, as rsync prints them and NOT_THERE keeps them, give back
    the exact names of what is not at DEST (a newline, bytes that are not UTF-8, a
    backslash before #, a directory's /); an entry only its times differ on (`.d`,
    present) is not named; a look that did not end with rc 0 proves nothing."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    names = [b"new\nline", b"\xff\xfe", b"back\\#012slash", b"dir"]
    (src / "dir").mkdir(parents=True)
    (src / "here").write_text("x")
    for n in names[:3]:
        (src / os.fsdecode(n)).write_bytes(n)
    dest.mkdir()
    subprocess.run(["rsync", "-a", f"{src}/here", f"{dest}/"], check=True)
    (dest / "old").mkdir()
    os.utime(dest, (0, 0))                       # `.d..t......`: there, times differ
    lst = tmp_path / "lst"
    lst.write_bytes(b"\0".join([b".", b"here", *names]) + b"\0")
    out = sh(f"rsync -a -n {protocol.CHECK_FORMAT!r} --from0 --files-from={lst} {src}/ "
             f"{dest}/ > {tmp_path}/c; c=$?; LC_ALL=C grep -a -E '{protocol.NOT_THERE}' "
             f"{tmp_path}/c; {protocol.checked(4)}")
    assert protocol.says(out, Kind.CHECKED)
    assert protocol.not_at_dest(out, out.splitlines()) == set(names)
    failed = out.replace(f"{protocol.prefix(Kind.CHECKED)} task=4 rc=0",
                         f"{protocol.prefix(Kind.CHECKED)} task=4 rc=23")
    assert protocol.not_at_dest(failed, failed.splitlines()) is None
    assert protocol.not_at_dest("", []) is None
