"""controller/processes.py on this machine's real /proc: the reader the leftover
killer, the dead-controller check and the lab all rest on."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from fleetsync.controller import processes
from .support import private_mounts

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


# -- issue 27, item 5: a /proc that hides processes (hidepid) ---------------------------
MOUNTINFO = (
    "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n"
    "30 22 0:40 / /proc/sys/fs/binfmt_misc rw,relatime - binfmt_misc binfmt_misc rw\n"
    "41 1 0:44 / /mnt/other rw - tmpfs tmpfs rw,hidepid=2\n")


@pytest.mark.parametrize("line, hidepid, gid", [
    ("", None, None),                                                      # hides nothing
    ("88 22 0:73 / /proc rw,relatime - proc proc rw,hidepid=2,gid=27\n", "2", "27"),  # < 5.8
    ("88 22 0:73 / /proc rw,relatime - proc proc rw,hidepid=invisible\n", "invisible", None),
    ("88 22 0:73 / /proc rw,hidepid=1 - proc proc rw\n", "1", None),      # a mount option
    ("88 22 0:73 / /proc rw,relatime - proc proc rw,hidepid=2\n"
     "89 88 0:74 / /proc rw,relatime - proc proc rw\n", None, None),      # the last mount is seen
])
def test_procs_mount_options_are_read_from_mountinfo(line, hidepid, gid):
    """The parser at its boundary: the options of the last mount on /proc, the kernel's
    old numbers and new names; another mount's hidepid is not /proc's."""
    options = processes.proc_options(MOUNTINFO + line)
    assert (options.get("hidepid"), options.get("gid")) == (hidepid, gid)


HIDDEN_SCRIPT = """
import json, os, subprocess, sys, time
sys.path.insert(0, sys.argv[3])
import processes
root_pid, mark = int(sys.argv[1]), sys.argv[2]
out = {"uid": os.geteuid(), "hiding": processes.hiding(), "listed": root_pid in processes.pids()}
try:
    out["root"] = processes.command_line(root_pid)
    out["root"] = out["root"] and out["root"].decode(errors="replace")
except PermissionError as e:
    out["root"] = f"PermissionError {e.errno}"
ended = subprocess.Popen(["true"]); ended.wait()
out["ended"] = processes.command_line(ended.pid)
# Its own, with the mark, and no child (`read`, a builtin, waits on the pipe): a
# shell's child between fork and exec would carry the mark as well.
own = subprocess.Popen(["sh", "-c", "read x", mark], stdin=subprocess.PIPE)
while mark.encode() not in (processes.command_line(own.pid) or b""):
    time.sleep(0.01)
out["own"] = processes.matching(mark.encode()) == [own.pid]
out["root_matched"] = processes.matching(b"pytest")
out["children"] = own.pid in processes.children()[os.getpid()]
own.kill(); own.wait()
print(json.dumps(out))
"""


@pytest.mark.parametrize("option", ["hidepid=1", "hidepid=2", "hidepid=2,gid=65534"])
def test_a_hidden_process_is_told_from_one_that_ended_on_a_real_hidepid_proc(option):
    """A private mount namespace (unshare -m) with its own /proc mounted with hidepid;
    a process of uid nobody reads it: a warning from the mount options (none in the
    exempt group), PermissionError for a live process of root's (hidepid=1), not
    listed at all (hidepid=2), None for one that ended; its own are found."""
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv (a process of uid nobody)")
    mark = f"fleetsync-test:{uuid.uuid4().hex}"
    shell = (f"mount -t proc -o {option} proc /proc && exec setpriv --reuid=65534 "
             f"--regid=65534 --init-groups \"$@\"")
    # A copy of processes.py that uid nobody can read: a checkout under /root (0700)
    # is not, and neither is the venv's site-packages there.
    readable = tempfile.mkdtemp()
    os.chmod(readable, 0o755)
    shutil.copy(processes.__file__, readable)
    try:
        r = subprocess.run([*private_mounts(shell, "/proc"), sys.executable, "-c",
                            HIDDEN_SCRIPT, str(os.getpid()), mark, readable],
                           capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(readable)
    if r.returncode != 0 and "mount" in r.stderr:
        pytest.skip(f"cannot mount a private /proc here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["uid"] == 65534
    assert got["ended"] is None and got["own"] and got["children"]
    if option == "hidepid=2,gid=65534":        # nobody's group sees everything
        assert got["hiding"] is None and got["listed"] and "pytest" in got["root"]
        assert os.getpid() in got["root_matched"]
        return
    assert got["root_matched"] == []           # left out, and no error
    if option == "hidepid=1":
        assert got["listed"] and got["root"] == f"PermissionError {errno.EPERM}"
        assert got["hiding"].startswith("/proc is mounted with hidepid=noaccess: other "
                                         "users' processes are listed but cannot be read"), got
    else:
        assert not got["listed"]
        assert "hidepid=invisible: other users' processes are not listed" in got["hiding"]


# A worker (forked as Ansible forks its workers) ends its run through its parent,
# and never signals whoever adopted it once that parent has ended: here a
# subreaper that counts the SIGTERMs it gets, as this machine's PID 1 would get them.
ADOPTED = r"""
import ctypes, multiprocessing, os, signal, sys, time
from fleetsync.controller import processes
adopted = sys.argv[1] == "adopted"
got = []
signal.signal(signal.SIGTERM, lambda *_: got.append("TERM"))
assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0       # PR_SET_CHILD_SUBREAPER
me, (r, w) = os.getpid(), os.pipe()
fork = multiprocessing.get_context("fork")

def worker():
    if adopted:
        while os.getppid() != me:      # its parent has ended: adopted by `me`
            time.sleep(0.01)
    os.write(w, b"T" if processes.end_parent_run() else b"F")

def playbook():
    signal.signal(signal.SIGTERM, lambda *_: (os.write(w, b"+"), os._exit(0)))
    fork.Process(target=worker).start()
    if adopted:
        os._exit(0)
    signal.pause()

fork.Process(target=playbook).start()
answer = os.read(r, 1) + (b"" if adopted else os.read(r, 1))
while True:        # reap all: the adopted worker too
    try:
        os.wait()
    except ChildProcessError:
        break
print("".join(sorted(answer.decode())), len(got))   # "+" and "T" come in either order
"""


@pytest.mark.parametrize("case, printed", [("adopted", "F 0"), ("parent", "+T 0")])
def test_a_worker_signals_its_own_parent_never_the_one_that_adopted_it(case, printed):
    r = subprocess.run([sys.executable, "-c", ADOPTED, case], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == printed.split()
