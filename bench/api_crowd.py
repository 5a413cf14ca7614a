"""bench/api_crowd: does API load slow the migration? The 20,000-file copy of
bench/copy.py by `fleetsync run`, alone and with a crowd of dashboards polling
its API, interleaved.

    .venv/bin/python bench/api_crowd.py [--runs 5] [--files 20000] [--modes none,crowd,flat]

Modes, one `fleetsync run` each per round (DEST removed before, checked equal
to SRC after):
- none:  nobody calls the API;
- crowd: 16 clients, each polling /status, /progress and /throughput 10 times
  a second over a keep-alive connection (480 requests/s in all);
- flat:  the same 16 clients as fast as they can go.
The clients run in 2 processes of their own, start before the run and retry
until the API answers. Prints each run's wall time and the requests the crowd
got answered, the CPU time of the whole run (controller, API process, Ansible,
rsync) and of its API process alone, then the medians and their ratios to
`none`. CPU moves much less than wall time on a shared machine.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _bench_copy():
    """bench/copy.py (its tree, its check), loaded by path: `copy` is a stdlib module."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_copy", os.path.join(HERE, "copy.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_copy = _bench_copy()
sys.path.insert(0, _copy.REPO)
from fleetsync.controller import processes  # noqa: E402
from tests.support import api_processes, free_port  # noqa: E402

FLEETSYNC, REPO, make_tree, same = _copy.FLEETSYNC, _copy.REPO, _copy.make_tree, _copy.same

HOST = "127.0.0.1"
ROUTES = ("/status", "/progress", "/throughput")


def _get(sock, request: bytes, buf: bytearray) -> None:
    """One keep-alive GET on a raw socket, its answer read to the end (Content-Length).

    Not http.client: at ~150 us of client CPU a request, 480 requests/s of the
    bench's own clients would cost this machine more than the server does; real
    dashboards run elsewhere.
    """
    sock.sendall(request)
    while True:
        head = buf.find(b"\r\n\r\n")
        if head >= 0:
            at = buf.find(b"Content-Length: ", 0, head)
            if at < 0:
                raise OSError("an answer without Content-Length")
            length = int(buf[at + 16:buf.find(b"\r\n", at)])
            if len(buf) >= head + 4 + length:
                if not buf.startswith(b"HTTP/1.1 200"):
                    raise OSError(bytes(buf[:40]).decode("latin-1"))
                del buf[:head + 4 + length]
                return
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("closed")
        buf += chunk


def crowd(port: int, threads: int, period: float, stop: mp.Event, served: mp.Value) -> None:
    """`threads` dashboards: every `period` seconds (0: flat out) GET the three routes."""
    import socket
    counts = [0] * threads
    requests = [f"GET {r} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode() for r in ROUTES]

    def dashboard(i: int) -> None:
        sock = None
        buf = bytearray()
        next_poll = time.monotonic()
        while not stop.is_set():
            try:
                if sock is None:
                    sock = socket.create_connection((HOST, port), timeout=10)
                    buf.clear()
                for request in requests:
                    _get(sock, request, buf)
                    counts[i] += 1
            except OSError:           # not up yet, or going away: try again
                if sock is not None:
                    sock.close()
                sock = None
                time.sleep(0.05)
                next_poll = time.monotonic()   # no burst to catch up once it answers
                continue
            if period:
                next_poll += period
                time.sleep(max(0.0, next_poll - time.monotonic()))
        if sock is not None:
            sock.close()

    pool = [threading.Thread(target=dashboard, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    with served.get_lock():
        served.value += sum(counts)


def run_fleetsync(src: str, dest: str, work: str, port: int) -> tuple[float, float]:
    """Runs the copy; (CPU seconds of the whole run, of its API process alone)."""
    ledger = os.path.join(work, "fleetsync.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(ledger + suffix):
            os.unlink(ledger + suffix)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.Popen([*FLEETSYNC, "run", "--src", src, "--dest", dest, "--ledger", ledger,
                            "--port", str(port)], cwd=REPO, stdout=subprocess.DEVNULL)
    api, api_cpu = None, 0.0
    while run.poll() is None:          # the API's CPU, read until it ends with the run
        api = api or next(iter(api_processes(run.pid)), None)
        if api:
            api_cpu = processes.cpu_seconds(api) or api_cpu
        time.sleep(0.2)
    if run.returncode:
        raise SystemExit(f"fleetsync run exited {run.returncode}")
    # Reaped by the controller, the API process and every rsync and Ansible count here
    # (the crowd's processes are joined only later).
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return total, api_cpu


def one(mode: str, src: str, dest: str, work: str, clients: int) -> tuple[float, int, float, float]:
    """(wall seconds of the run, requests the crowd got answered, CPU seconds of the run,
    of its API process)."""
    port = free_port()
    stop, served = mp.Event(), mp.Value("l", 0)
    procs = []
    if mode != "none":
        period = 0.1 if mode == "crowd" else 0.0
        procs = [mp.Process(target=crowd, args=(port, k, period, stop, served))
                 for k in (clients // 2, clients - clients // 2)]
        for p in procs:
            p.start()
    shutil.rmtree(dest, ignore_errors=True)
    t = time.perf_counter()
    try:
        cpu, api_cpu = run_fleetsync(src, dest, work, port)
        dt = time.perf_counter() - t
    finally:
        stop.set()
        for p in procs:
            p.join(30)
    if not same(src, dest):
        raise SystemExit(f"{mode}: DEST differs from SRC")
    return dt, served.value, cpu, api_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--modes", default="none,crowd,flat")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    args = ap.parse_args()
    src = os.path.join(args.out, f"copy-src-{args.files}")
    dest = os.path.join(args.out, "crowd-dest")
    work = os.path.join(args.out, "crowd-work")
    os.makedirs(work, exist_ok=True)
    make_tree(src, args.files)
    modes = args.modes.split(",")
    print(f"{args.files} files, {args.clients} clients, {args.runs} rounds of {modes}; "
          f"{os.cpu_count()} CPUs, load {open('/proc/loadavg').read().strip()}", flush=True)
    times: dict[str, list[float]] = {m: [] for m in modes}
    rates: dict[str, list[float]] = {m: [] for m in modes}
    cpus: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for i in range(args.runs):
        for mode in modes:
            dt, served, cpu, api_cpu = one(mode, src, dest, work, args.clients)
            times[mode].append(dt)
            rates[mode].append(served / dt)
            cpus[mode].append((cpu, api_cpu))
            print(f"round {i + 1} {mode:6s} {dt:6.2f} s  crowd answered {served} requests "
                  f"({served / dt:.0f}/s)  CPU of the run {cpu:.2f} s, of its API "
                  f"{api_cpu:.2f} s ({api_cpu * 1e6 / max(1, served):.0f} us/request)  load "
                  f"{open('/proc/loadavg').read().split()[0]}", flush=True)
    print(f"\nmedians of {args.runs} rounds (load at the end "
          f"{open('/proc/loadavg').read().strip()}):")
    base = statistics.median(times[modes[0]])
    for mode in modes:
        med = statistics.median(times[mode])
        print(f"  {mode:6s} {med:6.2f} s  x{med / base:.3f} of {modes[0]}  "
              f"(min {min(times[mode]):.2f}, max {max(times[mode]):.2f}; crowd "
              f"{statistics.median(rates[mode]):.0f} req/s; CPU of the run "
              f"{statistics.median(c for c, _ in cpus[mode]):.2f} s, of its API "
              f"{statistics.median(a for _, a in cpus[mode]):.2f} s)")


if __name__ == "__main__":
    main()
