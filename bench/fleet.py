"""bench/fleet: fleetsync over ssh on 1, 2 and 3 lab hosts (real sshd in network namespaces).

    .venv/bin/python bench/fleet.py [--runs 3] [--files 20000] [--hosts 1,2,3] [--out bench/out]

Needs root (the lab of tests/lab.py: a bridge, one network namespace per host,
sshd in each). Uses the ~20,000-file tree of bench/copy.py (same generator, same
cache) as SRC and a directory of the same filesystem as DEST, which every lab
host sees (data movers that mount both sides). For each fleet size, --runs
times, interleaved: DEST and the ledger are removed, `fleetsync run` migrates
the tree over ssh (ControlPersist, pipelining; 2 slots per host), the copy is
checked against SRC.

Measured per run:
  wall         start of `fleetsync run` to its exit
  ctl CPU      user+system CPU of the controller's process tree: fleetsync, its
               walkers, ansible-playbook and its workers, the lookup that claims
               batches (os.wait4 of the fleetsync process: every descendant it
               waited for). The rsyncs are not in it: they are children of the
               hosts' sshd, in the hosts' namespaces.
  ssh CPU      the ssh ControlMaster processes of the run (controller side, but
               daemonized out of the tree): read from /proc before they are closed
  host CPU     everything else this machine spent meanwhile (/proc/stat delta
               minus the two above): sshd sessions, shells and rsyncs on the hosts
Prints medians per fleet size, and per batch: controller CPU / succeeded batches.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import importlib.util  # noqa: E402

# bench/copy.py (its name shadows the stdlib's `copy`: load it by path)
_spec = importlib.util.spec_from_file_location("bench_copy", os.path.join(HERE, "copy.py"))
bench_copy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_copy)
make_tree, same, tree_bytes = bench_copy.make_tree, bench_copy.same, bench_copy.tree_bytes

from tests.lab import Lab, lab_or_skip  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def machine_cpu() -> float:
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / TICK


def proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return 0.0


def one_run(lab: Lab, n: int, src: str, work: str) -> dict:
    dest, ledger, inv = (os.path.join(work, x) for x in ("dest", "fleetsync.db", f"inv{n}.ini"))
    shutil.rmtree(dest, ignore_errors=True)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(ledger + suffix):
            os.unlink(ledger + suffix)
    lab.inventory(inv, lab.hosts[:n])
    cpu0, t0 = machine_cpu(), time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "fleetsync.controller.cli", "run", "--src", src,
                          "--dest", dest, "--ledger", ledger, "--inventory", inv, "--port", "0"],
                         cwd=REPO, env=lab.env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    try:
        _, status, ru = os.wait4(p.pid, 0)
    except BaseException:          # interrupted: the controller goes with the bench
        p.kill()
        p.wait()
        raise
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    masters = lab.ssh_masters()
    ssh = sum(proc_cpu(pid) for pid in masters)
    total = machine_cpu() - cpu0
    for pid in masters:           # the next run starts without masters, as a new run would
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    err = p.stderr.read().decode()
    if p.returncode != 0:
        raise SystemExit(f"fleetsync failed (rc {p.returncode}) on {n} hosts: {err[-2000:]}")
    db = sqlite3.connect(ledger)
    batches = db.execute("SELECT count(*) FROM attempts WHERE status='success'").fetchone()[0]
    hosts = db.execute("SELECT count(DISTINCT worker_id) FROM attempts").fetchone()[0]
    db.close()
    ctl = ru.ru_utime + ru.ru_stime
    return {"wall": wall, "ctl": ctl, "ssh": ssh, "host": max(0.0, total - ctl - ssh),
            "batches": batches, "workers": hosts, "ok": same(src, dest)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--hosts", default="1,2,3")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # the lab is removed at exit
    why = lab_or_skip()
    if why:
        raise SystemExit(f"bench/fleet: cannot run the lab here: {why}")
    sizes = [int(x) for x in args.hosts.split(",")]
    src = os.path.join(args.out, f"copy-src-{args.files}")
    work = os.path.join(args.out, "fleet-work")
    os.makedirs(work, exist_ok=True)
    make_tree(src, args.files)
    print(f"tree: {args.files} files, {tree_bytes(src) / 2**30:.2f} GiB in {src}; "
          f"{os.cpu_count()} cores", flush=True)
    lab = Lab()
    try:
        lab.add(max(sizes))
        results: dict[int, list[dict]] = {n: [] for n in sizes}
        for i in range(args.runs):
            for n in sizes:
                r = one_run(lab, n, src, work)
                results[n].append(r)
                print(f"run {i + 1} hosts={n} wall {r['wall']:6.2f} s  ctl CPU {r['ctl']:6.2f} s  "
                      f"ssh {r['ssh']:5.2f} s  hosts {r['host']:6.2f} s  {r['batches']} batches "
                      f"on {r['workers']} workers  {'ok' if r['ok'] else 'DIFFERS'}", flush=True)
    finally:
        lab.close()
    print(f"\nmedians of {args.runs} runs ({os.cpu_count()} cores; controller and hosts share them):")
    print("| hosts | wall s | controller CPU s | per batch ms | ssh masters CPU s "
          "| hosts' CPU s (sshd, sh, rsync) | batches |")
    print("|---|---|---|---|---|---|---|")
    for n, rs in results.items():
        m = {k: statistics.median(r[k] for r in rs) for k in ("wall", "ctl", "ssh", "host", "batches")}
        print(f"| {n} | {m['wall']:.1f} | {m['ctl']:.1f} | {1000 * m['ctl'] / m['batches']:.0f} "
              f"| {m['ssh']:.2f} | {m['host']:.1f} | {m['batches']:.0f} |")


if __name__ == "__main__":
    main()
