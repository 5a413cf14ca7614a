"""The processes of this machine, as /proc shows them (Linux).

One place reads /proc for the controller (leftovers of dead runs, its ssh masters,
whether the controller of a dispatch still runs), and for the lab and benches that
look for the processes a run left. A process that ends while it is read is skipped:
it is not there any more, which is what every caller asks.
"""
from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator

PR_SET_PDEATHSIG = 1


def pids() -> Iterator[int]:
    """Every process but this one."""
    me = os.getpid()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me:
            yield int(name)


def command_line(pid: int) -> bytes | None:
    """Its command line, NUL-separated; None when it has ended."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return None


def argv(pid: int) -> list[bytes] | None:
    """Its command line as words; None when it has ended."""
    cmd = command_line(pid)
    return cmd.rstrip(b"\0").split(b"\0") if cmd is not None else None


def matching(*marks: bytes) -> list[int]:
    """Processes (but this one) whose command line holds one of marks."""
    return [pid for pid in pids()
            if any(m in (command_line(pid) or b"") for m in marks)]


def stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first, so the
    parent is [1] and the start time in clock ticks [19]); None when it has ended.
    The name is cut at its last ')': it may hold spaces and parentheses."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children() -> dict[int, list[int]]:
    """Each parent's children, of every process but this one."""
    kids: dict[int, list[int]] = {}
    for pid in pids():
        fields = stat(pid)
        if fields:
            kids.setdefault(int(fields[1]), []).append(pid)
    return kids


def with_children(pid: int) -> list[int]:
    """pid and its direct children: one small file (of its main thread), where
    children() reads all of /proc; children of other threads are not in it."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [pid, *(int(p) for p in f.read().split())]
    except OSError:
        return [pid]


def memory_kib(pid: int, field: str) -> int:
    """One memory figure of a process, in KiB: Pss from smaps_rollup, or a line of
    status (VmRSS, VmHWM...); 0 when it has ended."""
    name = "smaps_rollup" if field == "Pss" else "status"
    try:
        with open(f"/proc/{pid}/{name}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
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


def die_with(parent_pid: int, sig: int) -> bool:
    """Have the kernel send this process sig when its parent ends (PR_SET_PDEATHSIG).
    False when the parent has ended already, before the request took effect: nobody
    would send sig then, and the caller should end now."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    return os.getppid() == parent_pid


def controller_alive(controller: str | None) -> bool:
    """Whether the `fleetsync run` that started a dispatch still runs ("PID:START",
    START its start time in clock ticks: a reused pid is another process). A slot of
    a dead controller stops claiming: nothing would record what it ran. Here, not in
    slot.py: a run's first task waits on it before the claim code is imported."""
    if not controller:
        return True
    pid, _, start = controller.partition(":")
    return pid.isdigit() and start_time(int(pid)) == start
