"""bench/fleet_cost: the controller's cost separated (issue 26, item 1): per host and
second with the hosts idle or paced, per Ansible loop item, per batch; by process.

    flock /tmp/fleetsync-bench.lock .venv/bin/python bench/fleet_cost.py \\
        [--hosts 1,4,16] [--modes idle,paced,busy] [--runs 1] [--seconds 30] \\
        [--rate 128] [--files 10000] [--local] [--old CHECKOUT] [--out bench/out]

Needs root (the lab of tests/lab.py, as bench/fleet.py). Three shapes of run, each a
`fleetsync run` over ssh on N lab hosts with 2 slots each, interleaved per run:

  idle   SRC is one file that rsync copies at --rate KiB/s (its own --bwlimit, through
         --rsync-option) for about --seconds: one slot of one host works, the other
         N-1 hosts have nothing to claim (their lookups poll the ledger, an idle item
         every 5 s).
  paced  SRC holds 4N such files of half the size, one batch each: every slot of
         every host runs one paced rsync at a time (an item per two batches, each
         item lasting --seconds / 2; beats every 5 s).
  busy   bench/fleet.py's shape, smaller: --files files of 100 B, --batch-files 20,
         unpaced (the hosts' rsyncs share the machine's 2 cores with the controller).

The controller's CPU is sampled every 0.5 s from /proc: for every process of the
run's tree (fleetsync, its API process and walkers, ansible-playbook, its worker per
host, the ssh masters, which fleetsync reaps as subreaper) its own user+system CPU
plus what its waited-for children used (cutime+cstime: an item's ssh client is
counted in its worker's). The rate is taken over the steady window: from 2 s after
the last host joined (workers.first_seen_ts) to the first host's last rsync end (no
host ran out of work yet; idle: to the long batch's end), and split by process kind. Items are counted as the
distinct (worker, claimed_ts) of the batches claimed in the window (one claim per
item), batches by their rsync's end. PSS is the peak of the tree's sum, and per kind.

With --local the hosts are --hosts aliases of this machine (ansible_connection=local,
each with its own fleetsync_state_dir, so its own worker identity): no root, no sshd,
no ssh masters; what a host costs Ansible and fleetsync alone (idle and paced shapes;
the paced rsyncs then run on this machine).

With --old, each run is followed by the same run of another checkout (e.g. `git
archive` of an earlier commit), its package put first on PYTHONPATH.

Prints per run: CPU rate of the tree (cores) in the window and per kind, per host and
second, items/s and batches/s, ms per item and per batch (busy), and the PSS.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from fleet import make_tree, old_package, same, tree  # noqa: E402
from fleetsync.controller import processes  # noqa: E402
from tests.lab import Lab, lab_or_skip  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
KINDS = ("fleetsync", "api+walk", "playbook main", "ansible workers", "item ssh clients",
         "ssh masters", "other")


def make_files(root: str, count: int, size: int) -> None:
    """count files of `size` random bytes in one directory (made once, kept)."""
    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(os.path.join(root, "d"))
    for i in range(count):
        with open(os.path.join(root, "d", f"f{i:04d}"), "wb") as f:
            f.write(os.urandom(size))
    open(done, "w").close()


def local_inventory(path: str, n: int, work: str) -> None:
    """n aliases of this machine (local connection, a worker identity each): the
    controller's per-host cost without ssh, sshd or a lab (--local)."""
    with open(path, "w") as f:
        f.write("[movers]\n" + "".join(
            f"h{i} ansible_connection=local fleetsync_slots=2 "
            f"fleetsync_state_dir={work}/state/h{i}\n" for i in range(1, n + 1)))


def kind(pid: int, root: int, parent: int, cmd: bytes, parent_cmd: bytes) -> str:
    if pid == root:
        return "fleetsync"
    if cmd.startswith(b"ssh: ") and b"[mux]" in cmd:
        return "ssh masters"
    if b"ansible-playbook" in cmd:
        return "ansible workers" if b"ansible-playbook" in parent_cmd else "playbook main"
    if cmd.startswith(b"ssh"):
        return "item ssh clients"
    if parent == root:
        return "api+walk"
    return "other"


class CpuSampler(threading.Thread):
    """Every `every` s: (time, {kind: cumulative CPU s}, {kind: PSS KiB}) of the tree."""

    def __init__(self, root: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.root, self.every = root, every
        self.samples: list[tuple[float, dict, dict]] = []
        self.peak, self.peak_kinds, self.stop = 0, {}, threading.Event()

    def sample(self) -> None:
        cpu, pss = dict.fromkeys(KINDS, 0.0), dict.fromkeys(KINDS, 0)
        cmds: dict[int, bytes] = {}
        for pid in tree(self.root):
            fields = processes.stat(pid)
            if not fields:
                continue
            cmds[pid] = processes.command_line(pid) or b""
            parent = int(fields[1])
            k = kind(pid, self.root, parent, cmds[pid],
                     cmds.get(parent) or processes.command_line(parent) or b"")
            own = (int(fields[11]) + int(fields[12])) / TICK
            reaped = (int(fields[13]) + int(fields[14])) / TICK
            cpu[k] += own
            # a worker's reaped children are its items' ssh clients
            cpu["item ssh clients" if k == "ansible workers" else k] += reaped
            pss[k] += processes.memory_kib(pid, "Pss")
        self.samples.append((time.time(), cpu, pss))
        total = sum(pss.values())
        if total > self.peak:
            self.peak, self.peak_kinds = total, pss

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.sample()


def window(db: sqlite3.Connection, mode: str) -> tuple[float, float]:
    joined = db.execute("SELECT max(first_seen_ts) FROM workers").fetchone()[0]
    if mode == "idle":     # until the one long batch ends
        return joined + 2.0, db.execute("SELECT max(end_ts) FROM attempts").fetchone()[0] - 0.5
    ends = db.execute("SELECT min(last) FROM (SELECT max(end_ts) AS last FROM attempts "
                      "WHERE status='success' GROUP BY worker_id)").fetchone()[0]
    return joined + 2.0, ends - 0.5


def rate(samples, t0: float, t1: float) -> tuple[float, dict[str, float]]:
    inside = [s for s in samples if t0 <= s[0] <= t1]
    if len(inside) < 2:
        return 0.0, {}
    (a, ca, _), (b, cb, _) = inside[0], inside[-1]
    per = {k: (cb[k] - ca[k]) / (b - a) for k in KINDS}
    return b - a, per


def one_run(lab: Lab, n: int, mode: str, src: str, work: str, args, code: str = REPO) -> dict:
    dest, ledger, inv = (os.path.join(work, x) for x in ("dest", "cost.db", f"inv{n}.ini"))
    shutil.rmtree(dest, ignore_errors=True)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(ledger + suffix):
            os.unlink(ledger + suffix)
    if lab is None:
        local_inventory(inv, n, work)
    else:
        lab.inventory(inv, lab.hosts[:n], fleetsync_slots=2)
    cmd = [sys.executable, "-m", "fleetsync.controller.cli", "run", "--src", src, "--dest", dest,
           "--ledger", ledger, "--inventory", inv, "--port", "0"]
    if mode == "busy":
        cmd += ["--batch-files", "20"]
    else:
        cmd += ["--batch-files", "1", f"--rsync-option=--bwlimit={args.rate}"]
    env = lab.env() if lab else dict(os.environ)
    if code != REPO:     # the other checkout's package first (bench/fleet.py's old_package)
        env["PYTHONPATH"] = old_package(code)
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    sampler = CpuSampler(p.pid)
    sampler.start()
    _, status, ru = os.wait4(p.pid, 0)
    sampler.stop.set()
    sampler.join()
    for pid in lab.ssh_masters() if lab else []:     # the next run starts without masters
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    err = p.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"fleetsync failed on {n} hosts ({mode}): {err[-2000:]}")
    db = sqlite3.connect(ledger)
    t0, t1 = window(db, mode)
    span, per = rate(sampler.samples, t0, t1)
    batches = db.execute("SELECT count(*) FROM attempts WHERE status='success' AND end_ts "
                         "BETWEEN ? AND ?", (t0, t1)).fetchone()[0]
    items = db.execute("SELECT count(*) FROM (SELECT DISTINCT worker_id, claimed_ts FROM "
                       "batches WHERE claimed_ts BETWEEN ? AND ?)", (t0, t1)).fetchone()[0]
    total_batches = db.execute("SELECT count(*) FROM attempts WHERE status='success'").fetchone()[0]
    db.close()
    cores = sum(per.values())
    return {"code": os.path.basename(code), "mode": mode, "hosts": n, "span": span, "cores": cores, "per": per,
            "per_host_ms": 1000 * cores / n, "items_s": items / max(span, 1e-9),
            "batches_s": batches / max(span, 1e-9), "total_cpu": ru.ru_utime + ru.ru_stime,
            "total_batches": total_batches, "pss": sampler.peak / 1024,
            "pss_kinds": {k: v / 1024 for k, v in sampler.peak_kinds.items()},
            "ok": same(src, dest), "load": open("/proc/loadavg").read().split()[0]}


def show(r: dict) -> None:
    per = ", ".join(f"{k} {1000 * v:.1f}" for k, v in r["per"].items() if v)
    mem = ", ".join(f"{k} {v:.0f}" for k, v in r["pss_kinds"].items() if v)
    print(f"{r['code'][:12]:12} {r['mode']:5} hosts={r['hosts']:2} window {r['span']:5.1f} s: {1000 * r['cores']:6.1f} "
          f"ms CPU/s = {r['per_host_ms']:5.2f} ms/s per host; {r['items_s']:.2f} items/s, "
          f"{r['batches_s']:.2f} batches/s [{per}] | whole run {r['total_cpu']:.1f} CPU s, "
          f"{r['total_batches']} batches | PSS peak {r['pss']:.0f} MiB "
          f"({r['pss'] / r['hosts']:.1f}/host) [{mem}] | {'ok' if r['ok'] else 'DIFFERS'} "
          f"load {r['load']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--hosts", default="1,4,16")
    ap.add_argument("--modes", default="idle,paced,busy")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=30.0, help="a paced slot's work")
    ap.add_argument("--rate", type=int, default=128, help="a paced rsync's KiB/s")
    ap.add_argument("--files", type=int, default=10_000, help="busy: files of 100 B")
    ap.add_argument("--local", action="store_true",
                    help="hosts are aliases of this machine (local connection), no lab")
    ap.add_argument("--old", help="another checkout run interleaved (the code before)")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # the lab is removed at exit
    why = None if args.local else lab_or_skip()
    if why:
        raise SystemExit(f"bench/fleet_cost: cannot run the lab here: {why}")
    sizes = [int(x) for x in args.hosts.split(",")]
    modes = args.modes.split(",")
    work = os.path.join(args.out, "fleetcost-work")
    os.makedirs(work, exist_ok=True)
    size = int(args.rate * 1024 * args.seconds)
    srcs = {("busy", n): os.path.join(args.out, f"fleet-src-{args.files}x100") for n in sizes}
    for n in sizes:
        srcs[("idle", n)] = os.path.join(args.out, f"fleetcost-idle-{size}")
        srcs[("paced", n)] = os.path.join(args.out, f"fleetcost-paced-{4 * n}x{size // 2}")
    for (mode, n), src in srcs.items():
        if mode in modes:
            if mode == "busy":
                make_tree(src, args.files, 100)
            else:
                make_files(src, 1 if mode == "idle" else 4 * n, size if mode == "idle" else size // 2)
    print(f"{os.cpu_count()} cores, load {open('/proc/loadavg').read().split()[:3]}; paced "
          f"rsyncs at {args.rate} KiB/s, {args.seconds:.0f} s of work per slot", flush=True)
    lab = None if args.local else Lab()
    try:
        if lab:
            lab.add(max(sizes))
        for _ in range(args.runs):
            for n in sizes:
                for mode in modes:
                    for code in [REPO] + ([os.path.abspath(args.old)] if args.old else []):
                        show(one_run(lab, n, mode, srcs[(mode, n)], work, args, code))
    finally:
        if lab:
            lab.close()


if __name__ == "__main__":
    main()
