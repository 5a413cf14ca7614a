"""The command line as an operator meets it: --help, --version, status, serve, and
its edges: bad ports and addresses, signals, the token, errors in one line."""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from fleetsync.controller import cli, processes

from .support import eventually, fleetsync, popen, query

COMMANDS = ["run", "scan", "verify", "retry", "bwlimit", "backup", "serve", "status", "report"]


def one_line_error(r: subprocess.CompletedProcess) -> str:
    """An operator's mistake: exit 2, one line on stderr, no traceback, nothing on stdout."""
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and r.stdout == b""
    return err.strip()


@pytest.mark.parametrize("cmd", [[], *[[c] for c in COMMANDS]])
def test_help_of_every_command(cmd):
    r = fleetsync(*cmd, "--help")
    assert r.returncode == 0
    out = r.stdout.decode()
    assert out.startswith(f"usage: fleetsync {cmd[0] if cmd else ''}".rstrip())
    for sub in (COMMANDS if not cmd else []):
        assert re.search(rf"^\s+{sub}\s+\w", out, re.M), sub   # listed, with what it does
    if cmd:
        assert "--ledger PATH" in out and "SQLite ledger" in out


def _commands() -> dict[str, argparse.ArgumentParser]:
    top = cli._parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return {"": top, **sub.choices}


def test_every_option_of_every_command_has_help():
    parsers = _commands()
    assert set(parsers) == {"", *COMMANDS}
    missing = [f"{name or 'fleetsync'} {a.option_strings or a.dest}"
               for name, p in parsers.items() for a in p._actions
               if not isinstance(a, argparse._SubParsersAction) and not (a.help or "").strip()]
    assert missing == []


def test_version_from_the_installed_package():
    r = fleetsync("--version")
    assert r.returncode == 0
    assert r.stdout.decode().strip() == f"fleetsync {importlib.metadata.version('fleetsync')}"


def test_the_console_script_is_installed():
    exe = shutil.which("fleetsync", path=os.path.dirname(sys.executable))
    assert exe, "pip install -e . installs the fleetsync command"


def test_usage_errors_are_one_line(tmp_path):
    assert "command" in one_line_error(fleetsync()).lower()
    assert "--src" in one_line_error(fleetsync("run", "--dest", str(tmp_path)))
    assert "--bogus" in one_line_error(fleetsync("status", "--bogus"))


def small_tree(tmp_path, files: int = 12, size: int = 1) -> str:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(files):
        (src / "d" / f"f{i}").write_bytes(b"x" * (size * i))
    return str(src)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> str:
    """The ledger of a migration that ran to its end."""
    tmp = tmp_path_factory.mktemp("finished")
    ledger = str(tmp / "l.db")
    r = fleetsync("run", "--no-api", "--src", small_tree(tmp), "--dest", str(tmp / "dest"),
                  "--ledger", ledger, "--batch-files", "5")
    assert r.returncode == 0, r.stderr.decode()
    return ledger


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}
                                 if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def url_in(line: bytes) -> str:
    m = re.search(rb"http://127\.0\.0\.1:(\d+)", line)
    assert m, line
    assert int(m.group(1)) > 0
    return m.group(0).decode()


def test_status_of_a_finished_migration_shows_no_rate(finished):
    st = json.loads(fleetsync("status", "--json", "--ledger", finished).stdout)
    assert st["status"]["total_batches"] == st["status"]["completed_batches"] == 3
    assert st["throughput"]["files_processed"] == 12
    line = fleetsync("status", "--ledger", finished).stdout.decode()
    assert "finished after" in line
    assert "ETA" not in line and "/s" not in line, line


def test_serve_prints_its_url_answers_and_exits_130_on_sigint(finished):
    """--port 0 takes a free port: the line printed at start says which."""
    p = popen("serve", "--ledger", finished, "--port", "0")
    try:
        first = p.stdout.readline()
        assert first.startswith(b"fleetsync: serving the API of "), first
        status, body = get(url_in(first) + "/status")
        st = json.loads(fleetsync("status", "--json", "--ledger", finished).stdout)
        assert status == 200 and json.loads(body) == st["status"]
        p.send_signal(signal.SIGINT)
        assert p.wait(60) == 130
        assert b"Traceback" not in p.stderr.read()
    finally:
        p.kill()
        p.wait()


def test_serve_exits_143_on_sigterm(finished):
    p = popen("serve", "--ledger", finished, "--port", "0")
    try:
        url_in(p.stdout.readline())
        p.terminate()
        assert p.wait(60) == 143
    finally:
        p.kill()
        p.wait()


def _no_token_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != cli.TOKEN_ENV}


def test_an_api_others_can_reach_needs_a_token(tmp_path, finished):
    """Issue 27, item 4: an address other than loopback without a token is one line,
    exit 2, for serve and for run (no ledger created)."""
    bind = "0.0.0.0"
    r = fleetsync("serve", "--ledger", finished, "--bind", bind, "--port", "0",
                  env=_no_token_env())
    assert "--no-token" in one_line_error(r)
    ledger = tmp_path / "new.db"
    r = fleetsync("run", "--src", small_tree(tmp_path), "--dest", str(tmp_path / "dest"),
                  "--ledger", str(ledger), "--bind", bind, "--port", "0", env=_no_token_env())
    assert "--no-token" in one_line_error(r)
    assert not ledger.exists() and not (tmp_path / "dest").exists()


@pytest.mark.parametrize("guard", ["--no-token", "--token-file"])
def test_an_open_address_serves_with_a_token_or_no_token_said(tmp_path, finished, guard):
    """--no-token serves the open address (and says so); a token file serves it too,
    and the first line says a token is required."""
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    extra = ["--no-token"] if guard == "--no-token" else ["--token-file", str(token)]
    p = popen("serve", "--ledger", finished, "--bind", "0.0.0.0", "--port", "0", *extra,
              env=_no_token_env())
    try:
        first = p.stdout.readline()
        m = re.search(rb":(\d+) \((.*)\)$", first.strip())
        assert m, first
        url = f"http://127.0.0.1:{int(m.group(1))}/status"
        if guard == "--no-token":
            assert m.group(2).startswith(b"no token"), first
            assert get(url)[0] == 200
        else:
            assert m.group(2) == b"a token required", first
            assert get(url)[0] == 401 and get(url, "s3cret")[0] == 200
    finally:
        p.kill()
        p.wait()


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


# 192.0.2.1 is TEST-NET-1 (RFC 5737): never an address of this machine. Binding to it
# fails at once, and no packet is sent.
BAD_API = [(["--port", "-1"], "0 to 65535"), (["--port", "70000"], "0 to 65535"),
           (["--port", "eighty"], "0 to 65535"), (["--port", "BUSY"], "already in use"),
           (["--bind", "192.0.2.1", "--port", "0"], "not an address of this machine")]


@pytest.mark.parametrize("args, says", BAD_API)
def test_serve_with_a_bad_port_or_address_is_one_line(finished, busy_port, args, says):
    args = [str(busy_port) if a == "BUSY" else a for a in args]
    assert says in one_line_error(fleetsync("serve", "--ledger", finished, *args))


@pytest.mark.parametrize("args, says", BAD_API)
def test_run_with_a_bad_port_or_address_creates_nothing(tmp_path, busy_port, args, says):
    args = [str(busy_port) if a == "BUSY" else a for a in args]
    ledger, dest = tmp_path / "l.db", tmp_path / "dest"
    r = fleetsync("run", "--src", small_tree(tmp_path), "--dest", str(dest),
                  "--ledger", str(ledger), *args)
    assert says in one_line_error(r)
    assert not ledger.exists() and not dest.exists()


def test_run_prints_the_api_url_and_exits_130_on_sigint(tmp_path):
    """The files are sent at 40 KiB/s for the whole fleet (30 s at least), so the run
    is still going when the signal comes; the batches in hand are finished first."""
    src = small_tree(tmp_path, files=30, size=2000)
    ledger = str(tmp_path / "l.db")
    p = popen("run", "--src", src, "--dest", str(tmp_path / "dest"), "--ledger", ledger,
              "--port", "0", "--batch-files", "1", "--bwlimit", "40KiB")
    try:
        line = p.stderr.readline()
        while line and b"API at" not in line:
            line = p.stderr.readline()
        url = url_in(line)
        assert get(url + "/healthz")[0] == 200
        # The dispatcher runs (its signal handlers too) once a batch has succeeded.
        eventually(lambda: _succeeded(ledger) > 0, "a batch succeeded", 240, p)
        p.send_signal(signal.SIGINT)
        assert p.wait(240) == 130
        out = p.stdout.read().decode()
        assert "(stopped)" in out and "batches succeeded" in out, out
    finally:
        p.kill()
        p.wait()
    line = fleetsync("status", "--ledger", ledger).stdout.decode()
    assert "stopped" in line and "ETA" not in line and "/s" not in line, line


def _checked(ledger: str) -> dict[str, int]:
    if not os.path.exists(ledger):
        return {}
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=60) as c:
        try:
            return dict(c.execute("SELECT state, batches FROM verify_counts").fetchall())
        except sqlite3.OperationalError:   # tables not created yet
            return {}


def _freeze_children(pid: int, sig: int) -> None:
    """SIGSTOP or SIGCONT every process below pid (its ansible-playbook runs and rsyncs)."""
    kids, todo = processes.children(), list(processes.children().get(pid, []))
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("command", ["run --verify", "verify"])
def test_ctrl_c_stops_the_checks_and_exits_130(tmp_path, command):
    """The first Ctrl-C stops the dispatcher that runs then, the checks too (they are
    a dispatcher of their own, after the copy's). The checks are frozen (SIGSTOP) once
    the first is done, so the signal surely comes while most still wait."""
    src = small_tree(tmp_path, files=200)
    ledger = str(tmp_path / "l.db")
    args = ["--src", src, "--dest", str(tmp_path / "dest"), "--ledger", ledger, "--no-api",
            "--batch-files", "1"]
    if command == "verify":
        assert fleetsync("run", *args).returncode == 0
        p = popen("verify", "--ledger", ledger)
    else:
        p = popen("run", *args, "--verify")
    try:
        eventually(lambda: _checked(ledger).get("verified", 0) > 0, "a batch verified", 240, p)
        _freeze_children(p.pid, signal.SIGSTOP)
        p.send_signal(signal.SIGINT)
        _freeze_children(p.pid, signal.SIGCONT)
        out, err = p.communicate(timeout=240)
    finally:
        _freeze_children(p.pid, signal.SIGCONT)
        p.kill()
        p.wait()
    assert p.returncode == 130, err.decode()[-2000:]
    assert "(stopped)" in out.decode(), out
    left = _checked(ledger)
    assert left.get("pending", 0) > 0, left
    assert f"verify --resume` checks the {left['pending']} left".encode() in err, err
    # Issue 20, item 6: --resume checks only what the stopped verify left, and keeps
    # the verdicts it had (their times too).
    before = _verdict_times(ledger)
    r = fleetsync("verify", "--ledger", ledger, "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (f"this verify checked {left['pending']}, {left.get('verified', 0)} verdicts kept"
            .encode()) in r.stdout, (left, r.stdout)
    after = _verdict_times(ledger)
    assert {t: after[t] for t in before} == before
    assert {k: n for k, n in _checked(ledger).items() if n} == {"verified": sum(left.values())}


def _verdict_times(ledger: str) -> dict[int, float]:
    """When each batch got its verdict."""
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=60) as c:
        return dict(c.execute("SELECT task_id, checked_ts FROM verifications "
                              "WHERE checked_ts IS NOT NULL").fetchall())


def _count(ledger: str, sql: str) -> int:
    """count(*) of sql on the ledger; 0 until the ledger and its tables are made."""
    if not os.path.exists(ledger):
        return 0
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=60) as c:
        try:
            return c.execute(sql).fetchone()[0]
        except sqlite3.OperationalError:   # tables not created yet
            return 0


def _succeeded(ledger: str) -> int:
    return _count(ledger, "SELECT count(*) FROM attempts WHERE status = 'success'")


def serving(*args: str, env: dict | None = None) -> tuple[str, subprocess.Popen]:
    p = popen("serve", "--port", "0", *args, env=env)
    line = p.stdout.readline()
    if not line:
        p.wait(60)
        return "", p
    return url_in(line), p


def stop(p: subprocess.Popen) -> bytes:
    p.send_signal(signal.SIGINT)
    p.wait(60)
    return p.stderr.read()


def test_token_from_a_file_or_the_environment(finished, tmp_path):
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    url, p = serving("--ledger", finished, "--token-file", str(secret))
    try:
        assert get(url + "/status")[0] == 401
        assert get(url + "/status", "s3cret")[0] == 200
    finally:
        assert b"warning" not in stop(p)
    url, p = serving("--ledger", finished, env={**os.environ, "FLEETSYNC_TOKEN": "fromenv"})
    try:
        assert get(url + "/status")[0] == 401 and get(url + "/status", "fromenv")[0] == 200
    finally:
        stop(p)


def test_token_on_the_command_line_works_with_a_warning(finished):
    url, p = serving("--ledger", finished, "--token", "visible")
    try:
        assert get(url + "/status", "visible")[0] == 200
    finally:
        err = stop(p).decode()
    assert "visible to every user" in err and "--token-file" in err


def test_bad_tokens_are_one_line(finished, tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for args, says in ((["--token", ""], "--token is empty"),
                       (["--token-file", str(tmp_path / "none")], "No such file"),
                       (["--token-file", str(empty)], "is empty"),
                       (["--token", "a", "--token-file", str(empty)], "not allowed with")):
        assert says in one_line_error(fleetsync("serve", "--ledger", finished, "--port", "0",
                                                *args))


def test_status_and_serve_without_a_ledger_are_one_line(tmp_path):
    for args in (["status"], ["serve", "--port", "0"]):
        assert "no ledger" in one_line_error(fleetsync(*args, "--ledger",
                                                       str(tmp_path / "none.db")))
        assert not (tmp_path / "none.db").exists()


# -- the run's state and its estimate, on ledgers of real runs (issue 20, items 8, 9) --

def _running_batches(ledger: str) -> int:
    return _count(ledger, "SELECT count(*) FROM batches WHERE state = 'running'")


def _slow_run(tmp_path, *extra: str) -> tuple[subprocess.Popen, str, str]:
    """A run of one 4 MiB file at 32 KiB/s (two minutes at least), on one slot, with its
    API on a free port, waited for until its batch runs: (process, ledger, API url)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(4 << 20))
    ledger = str(tmp_path / "l.db")
    p = popen("run", "--src", str(src), "--dest", str(tmp_path / "dest"), "--ledger", ledger,
              "--port", "0", "--slots", "1", "--bwlimit", "32KiB", *extra)
    line = p.stderr.readline()
    while line and b"API at" not in line:
        line = p.stderr.readline()
    url = url_in(line)
    eventually(lambda: _running_batches(ledger) > 0, "its batch running", 240, p)
    return p, ledger, url


def _finish(ledger: str, tmp_path) -> None:
    """Run the migration to its end without the cap (this also stops what a killed run
    left behind)."""
    assert fleetsync("bwlimit", "--ledger", ledger, "off").returncode == 0
    r = fleetsync("run", "--no-api", "--src", str(tmp_path / "src"), "--dest",
                  str(tmp_path / "dest"), "--ledger", ledger, "--slots", "1")
    assert r.returncode == 0, r.stderr.decode()


def _status(ledger: str) -> tuple[str, dict]:
    """(the progress line, `status --json`): the line is checked first, /run's numbers
    (`run` of --json) after."""
    line = fleetsync("status", "--ledger", ledger).stdout.decode()
    return line, json.loads(fleetsync("status", "--json", "--ledger", ledger).stdout)


def test_a_capped_run_shows_a_rate_and_an_eta_before_its_first_batch_ends(tmp_path):
    """--bwlimit: no result lands for minutes, yet the terminal, `status` and the API
    show the bytes in flight, the rate and an ETA (once "0 B/s ETA ?")."""
    p, ledger, url = _slow_run(tmp_path)
    try:
        line, st = _status(ledger)
        assert re.search(r"32 KiB/s  ETA \d+:\d\d:\d\d$", line.splitlines()[0]), line
        run = st["run"]
        assert run["state"] == "running" and run["batches_done"] == 0
        assert run["bytes_per_sec"] == 32 * 1024 and run["eta_sec"] is not None, run
        status, body = get(url + "/run")
        api = json.loads(body)
        assert status == 200 and api["state"] == "running" and api["eta_sec"] is not None
        assert api["bytes_per_sec"] == 32 * 1024 and api["bytes_total"] == 4 << 20
        # the API document's routes keep their fields
        assert set(json.loads(get(url + "/progress")[1])) == {
            "total", "completed", "failed", "pending"}
    finally:
        p.kill()
        p.wait()
    _finish(ledger, tmp_path)


def test_status_after_kill_9_says_crashed_at_once(tmp_path):
    """kill -9: the ledger still says a run is open, but its lock is free: `status` and
    a `serve` of the ledger say it is not running, with no rate or ETA, at once (not
    only once its heartbeat is old)."""
    p, ledger, _ = _slow_run(tmp_path)
    try:
        p.kill()
        p.wait()
        line, st = _status(ledger)
        assert "not running (crashed" in line and "last heard" in line, line
        assert "ETA" not in line and "/s" not in line, line
        run = st["run"]
        assert (run["state"], run["bytes_per_sec"], run["eta_sec"], run["bytes_in_flight"]) \
            == ("crashed", None, None, 0), run
        s = popen("serve", "--ledger", ledger, "--port", "0")
        try:
            status, body = get(url_in(s.stdout.readline()) + "/run")
            assert status == 200 and json.loads(body)["state"] == "crashed", body
        finally:
            s.kill()
            s.wait()
    finally:
        p.kill()
        p.wait()
    _finish(ledger, tmp_path)


def test_status_after_a_double_ctrl_c_says_not_running(tmp_path):
    p, ledger, _ = _slow_run(tmp_path)
    try:
        p.send_signal(signal.SIGINT)
        line = p.stderr.readline()
        while line and b"stopping" not in line:
            line = p.stderr.readline()
        p.send_signal(signal.SIGINT)        # a second one: stop now
        assert p.wait(240) == 130
    finally:
        p.kill()
        p.wait()
    line, st = _status(ledger)
    assert "not running" in line and "ETA" not in line and "/s" not in line, line
    run = st["run"]
    assert "stopped" in line, line
    assert run["state"] == "stopped" and run["eta_sec"] is None, run
    _finish(ledger, tmp_path)


def test_status_after_verify_requeue_says_work_waits(tmp_path):
    """A finished migration whose verify put a batch back in the queue is not finished."""
    src = small_tree(tmp_path, files=6, size=100)
    ledger, dest = str(tmp_path / "l.db"), tmp_path / "dest"
    r = fleetsync("run", "--no-api", "--src", src, "--dest", str(dest), "--ledger", ledger,
                  "--batch-files", "3")
    assert r.returncode == 0, r.stderr.decode()
    assert "finished after" in _status(ledger)[0]
    victim = dest / "d" / "f5"
    st = victim.stat()
    victim.write_bytes(b"y" * st.st_size)              # same size, same mtime
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = fleetsync("verify", "--ledger", ledger, "--requeue")
    assert r.returncode == 1, r.stderr.decode()
    line, st = _status(ledger)
    assert "finished" not in line and "waiting; `fleetsync run` copies" in line, line
    assert "ETA" not in line and "/s" not in line, line
    run = st["run"]
    assert run["state"] == "waiting" and run["batches_waiting"] >= 1, run


# -- issue 20, item 10: mistakes that exited 0 ---------------------------------------------
@pytest.mark.parametrize("args, says", [
    (["--max-delete", "150%"], "--max-delete 150%: a percentage of DEST's entries is at most"),
    (["--delete", "--max-delete", "100.5%"], "at most 100%"),
    (["--max-delete", "-5"], "--max-delete -5: give a count"),
    (["--heartbeat-timeout", "0"], "argument --heartbeat-timeout: give a number of seconds"),
    (["--heartbeat-timeout", "-30"], "argument --heartbeat-timeout"),
    (["--heartbeat-timeout", "nan"], "argument --heartbeat-timeout"),
    (["--items-per-run", "0"], "argument --items-per-run: give a whole number, 1 or more"),
    (["--items-per-run", "-3"], "argument --items-per-run"),
    (["--slots", "0"], "argument --slots"),
    (["--bwlimit", "0"], "--bwlimit 0: bad size"),
    (["--batch-bytes", "0"], "--batch-bytes 0: bad size"),
])
def test_numbers_an_operator_would_call_a_mistake_are_one_line(tmp_path, args, says):
    src = small_tree(tmp_path, files=2)
    r = fleetsync("run", "--no-api", "--src", src, "--dest", str(tmp_path / "dest"),
                  "--ledger", str(tmp_path / "l.db"), *args)
    assert says in one_line_error(r)
    assert not (tmp_path / "l.db").exists() and not (tmp_path / "dest").exists()


def test_verify_refuses_the_same_numbers(finished):
    for args in (["--heartbeat-timeout", "0"], ["--slots", "-1"], ["--items-per-run", "0"]):
        assert "argument --" in one_line_error(fleetsync("verify", "--ledger", finished, *args))


def test_retry_of_a_batch_the_ledger_does_not_have_is_one_line(finished):
    for tasks, says in ((["99"], "no batch 99 in"), (["1", "0", "99"], "no batches 0, 99 in")):
        r = fleetsync("retry", "--ledger", finished, *[a for t in tasks for a in ("--task", t)])
        err = one_line_error(r)
        assert says in err and "nothing was requeued" in err, err
    assert query(finished, "SELECT count(*) FROM attempts WHERE status = 'requeued'") == [(0,)]
