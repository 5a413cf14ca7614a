"""controller/processes.py on this machine's real /proc: the reader the leftover
killer, the dead-controller check and the lab all rest on."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

from fleetsync.controller import processes

SLEEP = "import time; time.sleep(600)"


def test_a_marked_process_is_found_read_and_gone_once_reaped():
    mark = f"fleetsync-test:{uuid.uuid4().hex}"
    # A process with no child: a shell's child, between fork and exec, would look
    # like the shell (and match as well).
    child = subprocess.Popen([sys.executable, "-c", SLEEP, mark])
    try:
        deadline = time.monotonic() + 120   # its exec may still be under way: a guard
        while mark.encode() not in (processes.command_line(child.pid) or b""):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert processes.matching(mark.encode()) == [child.pid]
        assert processes.argv(child.pid) == [sys.executable.encode(), b"-c", SLEEP.encode(),
                                             mark.encode()]
        assert child.pid in processes.children()[os.getpid()]
        assert child.pid in processes.with_children(os.getpid())
        assert int(processes.stat(child.pid)[1]) == os.getpid()      # its parent
        start = processes.start_time(child.pid)
        assert start is not None and start == processes.start_time(child.pid)
        assert processes.cpu_seconds(child.pid) is not None
        assert processes.memory_kib(child.pid, "VmRSS") > 0
        assert os.getpid() not in processes.pids()                    # never this one
    finally:
        child.kill()
        child.wait()
    assert processes.matching(mark.encode()) == []
    assert processes.command_line(child.pid) is None and processes.stat(child.pid) is None
    assert processes.start_time(child.pid) is None and processes.memory_kib(child.pid, "Pss") == 0


def test_a_process_that_asked_dies_with_its_parent(tmp_path):
    """A middle process starts a grandchild that calls die_with(middle, SIGKILL), then
    is killed: the grandchild goes too (the walk's producers and the API process)."""
    ready = tmp_path / "ready"
    grandchild = (f"import os, signal, sys, time; from fleetsync.controller import processes; "
                  f"assert processes.die_with(os.getppid(), signal.SIGKILL); "
                  f"open({str(ready)!r}, 'w').write(str(os.getpid())); time.sleep(600)")
    middle = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys, time; "
                               "subprocess.Popen([sys.executable, '-c', sys.argv[1]]); "
                               "time.sleep(600)", grandchild])
    try:
        deadline = time.monotonic() + 120          # a guard against a hang, not a bound
        while not ready.exists() or not ready.read_text():     # the grandchild has asked
            assert middle.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        pid = int(ready.read_text())
        assert pid in processes.children()[middle.pid]
        os.kill(middle.pid, signal.SIGKILL)
        middle.wait()
        while processes.stat(pid) is not None and processes.stat(pid)[0] != "Z":
            assert time.monotonic() < deadline + 120, "it outlived its parent"
            time.sleep(0.01)
    finally:
        middle.kill()
        middle.wait()
    assert (processes.stat(pid) or ["Z"])[0] == "Z"
