"""The processes of this machine, as /proc shows them (Linux).

One place reads /proc for the controller (leftovers of dead runs, its ssh masters,
whether the controller of a dispatch still runs), and for the lab and benches that
look for the processes a run left. A process that ends while it is read (ENOENT,
ESRCH) is skipped: it is not there any more, which is what every caller asks. One
that /proc will not let this user read (EACCES, EPERM: /proc mounted with
hidepid=1, another user's process) has not ended: its readers raise PermissionError,
and matching() and children(), which cannot know it, leave it out. With hidepid=2
another user's processes are not even listed, and look ended: hiding() reads /proc's
mount options and says so, for a run to warn at its start.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
from collections.abc import Iterator

PR_SET_PDEATHSIG = 1


def pids() -> Iterator[int]:
    """Every process but this one."""
    me = os.getpid()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me:
            yield int(name)


# What /proc answers for a process that has ended (or is ending): gone. Any other
# error, PermissionError first, is raised: that process may still run.
_ENDED = (FileNotFoundError, ProcessLookupError)
# The mount options of /proc that hide other users' processes (hidepid=1, 2 or 4
# in the names the kernel shows since 5.8): 0 and off hide nothing.
_HIDING = {"1", "2", "4", "noaccess", "invisible", "ptraceable"}
MOUNTINFO = "/proc/self/mountinfo"


def command_line(pid: int) -> bytes | None:
    """Its command line, NUL-separated; None when it has ended (PermissionError when
    it cannot be read)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except _ENDED:
        return None


def argv(pid: int) -> list[bytes] | None:
    """Its command line as words; None when it has ended."""
    cmd = command_line(pid)
    return cmd.rstrip(b"\0").split(b"\0") if cmd is not None else None


def matching(*marks: bytes) -> list[int]:
    """Processes (but this one) whose command line holds one of marks; those this
    user cannot read are left out (it could not signal them either)."""
    return [pid for pid in pids()
            if any(m in (_readable_command_line(pid) or b"") for m in marks)]


def _readable_command_line(pid: int) -> bytes | None:
    try:
        return command_line(pid)
    except PermissionError:      # another user's, behind hidepid: hiding() says so
        return None


def stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first, so the
    parent is [1] and the start time in clock ticks [19]); None when it has ended.
    The name is cut at its last ')': it may hold spaces and parentheses.
    PermissionError when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (*_ENDED, IndexError):      # IndexError: read empty, as it ended
        return None


def children() -> dict[int, list[int]]:
    """Each parent's children, of every process but this one."""
    kids: dict[int, list[int]] = {}
    for pid in pids():
        try:
            fields = stat(pid)
        except PermissionError:      # another user's, behind hidepid: hiding() says so
            continue
        if fields:
            kids.setdefault(int(fields[1]), []).append(pid)
    return kids


def with_children(pid: int) -> list[int]:
    """pid and its direct children: one small file (of its main thread), where
    children() reads all of /proc; children of other threads are not in it."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [pid, *(int(p) for p in f.read().split())]
    except _ENDED:
        return [pid]


def memory_kib(pid: int, field: str) -> int:
    """One memory figure of a process, in KiB: Pss from smaps_rollup, or a line of
    status (VmRSS, VmHWM...); 0 when it has ended (PermissionError when it cannot
    be read)."""
    name = "smaps_rollup" if field == "Pss" else "status"
    try:
        with open(f"/proc/{pid}/{name}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except _ENDED:
        pass
    return 0


def start_time(pid: int) -> str | None:
    """When it started, in clock ticks since boot: with its pid, a key that a reused
    pid does not match. None when it has ended."""
    fields = stat(pid)
    return fields[19] if fields else None


def cpu_seconds(pid: int) -> float | None:
    """The CPU time it has used (user and system); None when it has ended."""
    fields = stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else None


def proc_options(mountinfo: str) -> dict[str, str]:
    """The options of the last mount on /proc (the one this process sees) in
    mountinfo, the text of /proc/self/mountinfo: the mount's own and (after the ' - ',
    where the kernel shows hidepid and gid since 5.8) its filesystem's."""
    options: dict[str, str] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[4] != "/proc":
            continue
        words = fields[5].split(",")
        if "-" in fields[6:]:
            words += ",".join(fields[fields.index("-", 6) + 3:]).split(",")
        options = dict(w.partition("=")[::2] for w in words if w)
    return options


def hiding(mountinfo: str | None = None) -> str | None:
    """Why this process may not see every process of the machine, in a line; None
    when it sees them all (/proc hides none, or it runs as root, or it is in the
    group that /proc's gid= option exempts)."""
    if mountinfo is None:
        with open(MOUNTINFO) as f:
            mountinfo = f.read()
    options = proc_options(mountinfo)
    value = options.get("hidepid")
    if value not in _HIDING or os.geteuid() == 0:
        return None
    gid = options.get("gid", "")
    if gid.isdigit() and int(gid) in {*os.getgroups(), os.getegid()}:
        return None
    hidden = "not listed" if value in ("2", "invisible") else "listed but cannot be read"
    return (f"/proc is mounted with hidepid={value}: other users' processes are {hidden} "
            f"for uid {os.geteuid()}, so leftovers of an earlier run under another user "
            "go unseen and unstopped (run as root, or as a member of the group of "
            "/proc's gid= option)")


def die_with(parent_pid: int, sig: int) -> bool:
    """Have the kernel send this process sig when its parent ends (PR_SET_PDEATHSIG).
    False when the parent has ended already, before the request took effect: nobody
    would send sig then, and the caller should end now."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    return os.getppid() == parent_pid


def end_parent_run() -> bool:
    """SIGTERM to the ansible-playbook that forked this worker (it passes the signal
    on to its other workers), but only while it is still this process's parent.
    Once it has ended, os.getppid() names whoever adopted this process: init or a
    subreaper, which must never get it (this machine's PID 1 ends every job it runs
    on SIGTERM). The pidfd pins the process that is checked to the one signalled.
    False when there was no such parent to signal."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return False
    try:
        fd = os.pidfd_open(parent.pid)
    except ProcessLookupError:   # ended and reaped already
        return False
    try:
        if os.getppid() != parent.pid:   # ended: this process was adopted
            return False
        signal.pidfd_send_signal(fd, signal.SIGTERM)
        return True
    except ProcessLookupError:   # it ended between the two
        return False
    finally:
        os.close(fd)


def controller_alive(controller: str | None) -> bool:
    """Whether the `fleetsync run` that started a dispatch still runs ("PID:START",
    START its start time in clock ticks: a reused pid is another process). A slot of
    a dead controller stops claiming: nothing would record what it ran. Here, not in
    slot.py: a run's first task waits on it before the claim code is imported."""
    if not controller:
        return True
    pid, _, start = controller.partition(":")
    if not pid.isdigit():
        return False
    try:
        return start_time(int(pid)) == start
    except PermissionError:
        # Behind hidepid=1 (a controller of another user): it has not ended, and only
        # an ended one stops the claims; the ledger still counts each batch once.
        return True
