"""A run's window on real rsync (controller/window.py): --max-duration stops claiming
and the run exits 3; the resume copies no succeeded batch twice; --cutoff hard puts
the running batches back (attempts of their own, no retry) and leaves no rsync
temporary file in DEST; a timetable's cap reaches the rsyncs the lookups start,
on a clock moved by FLEETSYNC_CLOCK_OFFSET; bad input is one line, nothing created;
the playbook's variables and its Outcome for exit 3. No test waits for a time of day:
the windows are durations from the launch, or the clock is moved."""
from __future__ import annotations

import datetime as dt
import os
import re
import signal

import pytest

from fleetsync.controller import processes

from .support import error_line, eventually, fleetsync, ok, popen, query, run_tree
from .test_playbook import local_inventory, outcome, playbook

# rsync's temporary file beside the file it receives: .NAME.XXXXXX
TEMP = re.compile(r"^\..+\.[A-Za-z0-9]{6}$")


def tree(root, files: int, size: int) -> None:
    (root / "d").mkdir(parents=True)
    for i in range(files):
        (root / "d" / f"f{i:02}").write_bytes(os.urandom(size))


def same(a, b) -> bool:
    return sorted(os.listdir(a / "d")) == sorted(os.listdir(b / "d")) and all(
        (a / "d" / n).read_bytes() == (b / "d" / n).read_bytes() for n in os.listdir(a / "d"))


def test_max_duration_stops_with_exit_3_and_the_resume_copies_no_batch_twice(tmp_path):
    # 2.4 MB at 400 KiB/s for the fleet cannot arrive within the 3 s window.
    tree(tmp_path / "src", 12, 200_000)
    r = run_tree(tmp_path, "--batch-files", "2", "--bwlimit", "400k", "--max-duration", "3s")
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 3, out + err
    assert "the run's window closed (--max-duration 3s: its end, " in err
    assert re.search(r"stopped by its window \(--max-duration 3s: its end, .*\); \d+ batches "
                     r"\(.*\) left, and the directory pass; run again to resume", out), out
    ledger = tmp_path / "l.db"
    first = dict(query(ledger, "SELECT task_id, count(*) FROM attempts GROUP BY task_id"))
    done = {t for (t,) in query(ledger, "SELECT task_id FROM batches WHERE state='succeeded'")}
    assert len(done) < 6                                  # the window stopped the copy
    assert query(ledger, "SELECT dirs_pass_done_ts, finished_ts FROM migration") == [
        (None, None)]                                     # no directory pass: not finished
    assert query(ledger, "SELECT count(*) FROM attempts WHERE status != 'success'") == [(0,)]

    ok(run_tree(tmp_path, "--bwlimit", "off"))            # the resume: no window
    assert same(tmp_path / "src", tmp_path / "dest")
    assert query(ledger, "SELECT task_id FROM attempts WHERE status = 'success' "
                         "GROUP BY task_id HAVING count(*) > 1") == []
    after = dict(query(ledger, "SELECT task_id, count(*) FROM attempts GROUP BY task_id"))
    assert {t: after[t] for t in done} == {t: first[t] for t in done}   # not tried again
    assert query(ledger, "SELECT count(*) FROM batches WHERE state != 'succeeded'") == [(0,)]


def test_a_hard_cutoff_stops_the_rsyncs_and_leaves_no_temporary_file(tmp_path):
    # One 1 MB file a batch at 100 KiB/s an rsync: each runs ~10 s, far past the window.
    tree(tmp_path / "src", 4, 1_000_000)
    r = run_tree(tmp_path, "--batch-files", "1", "--bwlimit", "200k", "--max-duration", "2s",
                 "--cutoff", "hard")
    assert r.returncode == 3, r.stdout.decode() + r.stderr.decode()
    assert "stopping the batches running (--cutoff hard)" in r.stderr.decode()
    ledger = tmp_path / "l.db"
    stopped = query(ledger, "SELECT task_id, retry_count, errors FROM attempts "
                            "WHERE status = 'stopped'")
    assert stopped, query(ledger, "SELECT * FROM attempts")
    assert {(retry, errors) for _, retry, errors in stopped} == {
        (0, '["stopped by its run\'s window (--cutoff hard)"]')}
    for task_id, *_ in stopped:     # back in the queue, no retry used
        assert query(ledger, "SELECT state, retry_count FROM batches WHERE task_id = ?",
                     task_id) == [("pending", 0)]
    left = [name for _, _, names in os.walk(tmp_path / "dest") for name in names
            if TEMP.match(name)]
    assert left == []
    ok(run_tree(tmp_path))                                 # the resume finishes the copy
    assert same(tmp_path / "src", tmp_path / "dest")


def _hh_mm(when: dt.datetime) -> str:
    return when.strftime("%H:%M")


def test_the_timetable_on_a_moved_clock_caps_the_rsyncs_the_lookups_start(tmp_path):
    """The cap in force 6 h from now is 8 KiB/s, off now: the run's clock, moved 6 h on,
    reaches the lookups inside Ansible, which give each of the 2 rsyncs 4 KiB/s."""
    tree(tmp_path / "src", 4, 200_000)
    now = dt.datetime.now()
    slow, fast = now + dt.timedelta(hours=6), now + dt.timedelta(hours=12)
    entries = sorted([(_hh_mm(slow), "8k"), (_hh_mm(fast), "off")])
    table = " ".join(f"{t},{rate}" for t, rate in entries)
    env = dict(os.environ, FLEETSYNC_CLOCK_OFFSET=str(6 * 3600 + 60))
    proc = popen("run", "--src", str(tmp_path / "src"), "--dest", str(tmp_path / "dest"),
                 "--ledger", str(tmp_path / "l.db"), "--no-api", "--slots", "2",
                 "--bwlimit", table, env=env)
    try:
        def capped_rsync():
            return [pid for pid in processes.matching(b"fleetsync:")
                    if (processes.argv(pid) or [b""])[0].endswith(b"rsync")
                    and b"--bwlimit=4" in (processes.argv(pid) or [])]
        eventually(capped_rsync, "an rsync at 4 KiB/s (8k over 2 slots)", proc=proc)
        r = fleetsync("status", "--ledger", str(tmp_path / "l.db"), env=env)
        assert "bandwidth cap 8 KiB per second until " in r.stdout.decode()
        assert "(then off)" in r.stdout.decode()
    finally:
        # Ctrl-C until it has ended: a second one, once the first is handled, stops at once.
        eventually(lambda: proc.poll() is not None or proc.send_signal(signal.SIGINT),
                   "the run to end on Ctrl-C", every=0.5)
        proc.communicate(timeout=120)
    # Without the offset, the same ledger says the cap is off now.
    assert "bandwidth cap off until " in fleetsync(
        "status", "--ledger", str(tmp_path / "l.db")).stdout.decode()


@pytest.mark.parametrize("option, value, fault", [
    ("--bwlimit", "10:00,1M 09:00,off", "entry '09:00,off' is not later than the one before"),
    ("--bwlimit", "08:00,lots", "bad rate 'lots'"),
    ("--bwlimit", "Mun-08:00,1M", "unknown weekday 'Mun'"),
    ("--max-duration", "0", "--max-duration 0: must be more than 0"),
    ("--max-duration", "-5m", "--max-duration -5m: write a duration"),
    ("--max-transfer", "0", "--max-transfer 0: bad size '0': must be at least 1 byte"),
    ("--max-transfer", "-1G", "--max-transfer -1G: bad size"),
    ("--stop-at", "24:10", "--stop-at 24:10: write a local time HH:MM"),
])
def test_bad_window_input_is_one_line_and_creates_nothing(tmp_path, option, value, fault):
    tree(tmp_path / "src", 1, 10)
    line = error_line(run_tree(tmp_path, f"{option}={value}"))   # -5m is not an option
    assert fault in line, line
    assert not (tmp_path / "l.db").exists() and not (tmp_path / "dest").exists()


def test_fleetsync_bwlimit_takes_a_timetable_and_refuses_a_bad_one(tmp_path):
    tree(tmp_path / "src", 2, 10)
    ok(run_tree(tmp_path))
    ledger = str(tmp_path / "l.db")
    said = ok(fleetsync("bwlimit", "--ledger", ledger, "Mon-08:00,100MiB Sat-00:00,off"))
    assert "timetable Mon-08:00,100MiB Sat-00:00,off" in said
    assert query(tmp_path / "l.db", "SELECT timetable FROM bandwidth") == [
        ("Mon-08:00,100MiB Sat-00:00,off",)]
    before = (tmp_path / "l.db").read_bytes()
    line = error_line(fleetsync("bwlimit", "--ledger", ledger, "Sat-08:00,1M Mon-00:00,off"))
    assert "entry 'Mon-00:00,off' is not later than the one before it" in line
    assert (tmp_path / "l.db").read_bytes() == before
    assert "bandwidth cap 2 MiB per second" in ok(fleetsync("bwlimit", "--ledger", ledger, "2MiB"))
    assert query(tmp_path / "l.db", "SELECT count(*) FROM bandwidth") == [(0,)]


def test_rsyncs_own_time_limits_are_pointed_to_fleetsyncs(tmp_path):
    tree(tmp_path / "src", 1, 10)
    r = run_tree(tmp_path, "--rsync-option=--stop-after=5")
    assert "fleetsync: warning: --rsync-option=--stop-after=5: rsync ends its batches " \
           "with exit 30" in r.stderr.decode()
    assert "--max-duration" in r.stderr.decode()


def test_the_playbook_passes_the_window_and_exit_3_is_not_a_failed_play(tmp_path):
    inv = local_inventory(tmp_path)
    r = playbook(inv, "-e", "src=/s", "-e", "dest=/d", "-e", "fleetsync_stop_at=06:30",
                 "-e", "fleetsync_max_duration=6h", "-e", "fleetsync_max_transfer=2T",
                 "-e", "fleetsync_cutoff=hard", check=True)
    assert r.returncode == 0, r.stdout[-3000:]
    assert ("--stop-at 06:30 --max-duration 6h --max-transfer 2T --cutoff hard"
            in outcome(r)), outcome(r)
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    tree(src, 6, 300_000)
    r = playbook(inv, "-e", f"src={src}", "-e", f"dest={dest}", "-e", f"fleetsync_ledger={ledger}",
                 "-e", "fleetsync_no_api=true", "-e", "fleetsync_bwlimit=100k",
                 "-e", "fleetsync_batch_files=1", "-e", "fleetsync_max_duration=2s")
    assert r.returncode == 0, r.stdout[-3000:]
    assert outcome(r).startswith("fleetsync exit 3, stopped by its window: fleetsync: stopped "
                                 "by its window (--max-duration 2s: its end, "), outcome(r)
    assert outcome(r).endswith("(run the playbook again to resume)")


def test_stop_at_on_a_moved_clock_and_max_transfer_stop_the_run(tmp_path):
    """--stop-at HH:MM, the clock moved to 3 s before it; --max-transfer, once the first
    batches have sent more than it: each closes the window, exit 3, then a resume."""
    tree(tmp_path / "src", 8, 200_000)
    now = dt.datetime.now().replace(microsecond=0)
    stop = (now + dt.timedelta(minutes=2)).replace(second=0)
    env = dict(os.environ, FLEETSYNC_CLOCK_OFFSET=str((stop - now).total_seconds() - 3))
    r = fleetsync("run", "--src", str(tmp_path / "src"), "--dest", str(tmp_path / "dest"),
                  "--ledger", str(tmp_path / "l.db"), "--no-api", "--batch-files", "1",
                  "--bwlimit", "200k", "--stop-at", stop.strftime("%H:%M"), env=env)
    assert r.returncode == 3, r.stdout.decode() + r.stderr.decode()
    assert f"stopped by its window (--stop-at {stop:%H:%M}: its end, " in r.stdout.decode()
    before = query(tmp_path / "l.db", "SELECT count(*) FROM attempts")[0][0]
    r = run_tree(tmp_path, "--max-transfer", "300k")
    assert r.returncode == 3, r.stdout.decode() + r.stderr.decode()
    assert re.search(r"stopped by its window \(--max-transfer 300k: [\d.]+ KiB sent\)",
                     r.stdout.decode()), r.stdout.decode()
    sent = query(tmp_path / "l.db", "SELECT sum(bytes_sent) FROM attempts "
                                    "WHERE attempt_id > ?", before)[0][0]
    assert sent >= 300 * 1024
    ok(run_tree(tmp_path))
    assert same(tmp_path / "src", tmp_path / "dest")
