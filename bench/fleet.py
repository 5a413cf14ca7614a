"""bench/fleet: the controller's cost per batch, its memory per host, how late results
land, and how soon the first rsync starts; fleetsync over ssh on lab hosts (real sshd
in network namespaces).

    flock /tmp/fleetsync-bench.lock .venv/bin/python bench/fleet.py \\
        [--runs 3] [--hosts 1,4,16] [--files 40000] [--file-size 100] [--batch-files 20] \\
        [--slots 2] [--old /work/wt/fleet-old] [--out bench/out]

Needs root (the lab of tests/lab.py: a bridge, one network namespace per host, sshd
in each). SRC is a tree of --files files of --file-size bytes (100 per directory);
DEST a directory of the same filesystem, which every lab host sees (data movers that
mount both sides). For each fleet size, --runs times, interleaved with the same run
of the code at --old (another checkout, e.g. a worktree of an earlier commit): DEST
and the ledger are removed, `fleetsync run` migrates the tree over ssh
(ControlPersist, pipelining; --slots per host), the copy is checked against SRC.

Measured per run:
  wall       start of `fleetsync run` to its exit
  ctl CPU    user+system CPU of every process the run starts on this machine:
             fleetsync, its walkers, ansible-playbook and its workers, ssh clients
             (os.wait4 of the fleetsync process: every descendant it waited for; the
             ssh ControlMasters, which ssh daemonizes, are reaped by fleetsync, a
             subreaper, or, for code that leaves them running, read from /proc
             before the bench ends them). The rsyncs are not in it: they run under
             the hosts' sshd, in the hosts' namespaces.
  per batch  ctl CPU / succeeded batches
  PSS peak   the largest sum, over samples every 0.25 s, of the proportional set
             size (smaps_rollup) of fleetsync's process tree and the lab's ssh
             masters; and that per host
  latency    attempts.received_ts - end_ts (the rsync's end on the host to the
             result in the ledger), median and max over the run's batches
  first      the first attempt's start_ts (the rsync's start on the host) minus the
             time the bench launched `fleetsync run`
Prints one line per run and a table of medians per fleet size and code.
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
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from fleetsync.controller import processes  # noqa: E402
from tests.lab import Lab, lab_or_skip  # noqa: E402



def make_tree(root: str, files: int, size: int) -> None:
    """files of `size` bytes, 100 per directory (made once, kept)."""
    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return
    shutil.rmtree(root, ignore_errors=True)
    for i in range(files):
        d = os.path.join(root, f"d{i // 100:04d}")
        if i % 100 == 0:
            os.makedirs(d)
        with open(os.path.join(d, f"f{i % 100:02d}"), "wb") as f:
            f.write(os.urandom(size))
    open(done, "w").close()


def same(src: str, dest: str) -> bool:
    r = subprocess.run(["rsync", "-a", "--dry-run", "--itemize-changes", "--exclude=/.complete",
                        src + "/", dest + "/"], capture_output=True, text=True)
    return r.returncode == 0 and not [ln for ln in r.stdout.splitlines()
                                      if not ln.startswith(".d..t")]


def tree(root: int) -> list[int]:
    kids, out, todo = processes.children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def masters(cp_dir: str) -> list[int]:
    """ssh ControlMaster processes of the lab's control directory (code that leaves its
    masters there; fleetsync's own masters are in its process tree)."""
    return [pid for pid in processes.matching(cp_dir.encode())
            if (cmd := processes.command_line(pid) or b"").startswith(b"ssh: ") and b"[mux]" in cmd]


class Sampler(threading.Thread):
    """The PSS peak of a process tree and the ssh masters, sampled every `every` s."""

    def __init__(self, root: int, cp_dir: str, every: float = 0.25):
        super().__init__(daemon=True)
        self.root, self.cp_dir, self.every = root, cp_dir, every
        self.peak, self.stop = 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            pids = set(tree(self.root)) | set(masters(self.cp_dir))
            self.peak = max(self.peak, sum(processes.memory_kib(p, "Pss") for p in pids))


def one_run(lab: Lab, n: int, src: str, work: str, code: str, batch_files: int,
            slots: int) -> dict:
    dest, ledger, inv = (os.path.join(work, x) for x in ("dest", "fleetsync.db", f"inv{n}.ini"))
    shutil.rmtree(dest, ignore_errors=True)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(ledger + suffix):
            os.unlink(ledger + suffix)
    lab.inventory(inv, lab.hosts[:n], fleetsync_slots=slots)
    env = lab.env()
    if code != REPO:     # the other checkout's package first (see old_package)
        env["PYTHONPATH"] = old_package(code)
    t0 = time.perf_counter()
    launched = time.time()
    p = subprocess.Popen([sys.executable, "-m", "fleetsync.controller.cli", "run", "--src", src,
                          "--dest", dest, "--ledger", ledger, "--inventory", inv, "--port", "0",
                          "--batch-files", str(batch_files)],
                         cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampler = Sampler(p.pid, lab.cp_dir)
    sampler.start()
    try:
        _, status, ru = os.wait4(p.pid, 0)
    except BaseException:          # interrupted: the controller goes with the bench
        p.kill()
        p.wait()
        raise
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    left = masters(lab.cp_dir)
    ssh = sum(processes.cpu_seconds(pid) or 0.0 for pid in left)    # masters the run left
    for pid in left:           # the next run starts without masters, as a new run would
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    err = p.stderr.read().decode()
    if p.returncode != 0:
        raise SystemExit(f"fleetsync failed (rc {p.returncode}) on {n} hosts: {err[-2000:]}")
    db = sqlite3.connect(ledger)
    ok = db.execute("SELECT count(*), min(start_ts) FROM attempts WHERE status='success'").fetchone()
    lat = [r[0] for r in db.execute("SELECT received_ts - end_ts FROM attempts "
                                    "WHERE status='success' AND end_ts IS NOT NULL")]
    hosts = db.execute("SELECT count(DISTINCT worker_id) FROM attempts").fetchone()[0]
    db.close()
    ctl = ru.ru_utime + ru.ru_stime + ssh
    return {"wall": wall, "ctl": ctl, "ssh": ssh, "batches": ok[0], "workers": hosts,
            "per_batch_ms": 1000 * ctl / max(1, ok[0]), "pss_mib": sampler.peak / 1024,
            "pss_host_mib": sampler.peak / 1024 / n, "lat_med": statistics.median(lat),
            "lat_max": max(lat), "first": ok[1] - launched, "ok": same(src, dest)}


def old_package(code: str) -> str:
    """A directory putting the checkout at `code` first on PYTHONPATH as `fleetsync`
    (its folders mapped like setup.cfg's package_dir), ahead of this venv's editable
    install of this checkout."""
    base = os.path.join("/tmp", f"fleetsync-bench-pkg-{abs(hash(code)) % 10**8}")
    pkg = os.path.join(base, "fleetsync")
    os.makedirs(pkg, exist_ok=True)
    for d in ("controller", "ledger", "api", "playbooks", "inventory"):
        link = os.path.join(pkg, d)
        if not os.path.islink(link):
            os.symlink(os.path.join(code, d), link)
    return base


KEYS = ("wall", "ctl", "per_batch_ms", "pss_mib", "pss_host_mib", "lat_med", "lat_max",
        "first", "batches")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--files", type=int, default=40_000)
    ap.add_argument("--file-size", type=int, default=100)
    ap.add_argument("--batch-files", type=int, default=20)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--hosts", default="1,4,16")
    ap.add_argument("--old", help="another checkout to run interleaved (the design before)")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # the lab is removed at exit
    why = lab_or_skip()
    if why:
        raise SystemExit(f"bench/fleet: cannot run the lab here: {why}")
    sizes = [int(x) for x in args.hosts.split(",")]
    codes = [REPO] + ([os.path.abspath(args.old)] if args.old else [])
    src = os.path.join(args.out, f"fleet-src-{args.files}x{args.file_size}")
    work = os.path.join(args.out, "fleet-work")
    os.makedirs(work, exist_ok=True)
    make_tree(src, args.files, args.file_size)
    print(f"tree: {args.files} files of {args.file_size} bytes in {src}; --batch-files "
          f"{args.batch_files}, {args.slots} slots per host; {os.cpu_count()} cores; "
          f"load {open('/proc/loadavg').read().split()[:3]}", flush=True)
    lab = Lab()
    results: dict[tuple[str, int], list[dict]] = {(c, n): [] for c in codes for n in sizes}
    try:
        lab.add(max(sizes))
        for i in range(args.runs):
            for n in sizes:
                for code in codes:
                    r = one_run(lab, n, src, work, code, args.batch_files, args.slots)
                    results[(code, n)].append(r)
                    print(f"run {i + 1} {os.path.basename(code):10} hosts={n:2} wall {r['wall']:6.2f} s "
                          f"ctl {r['ctl']:6.2f} s = {r['per_batch_ms']:5.1f} ms/batch  "
                          f"PSS {r['pss_mib']:6.0f} MiB ({r['pss_host_mib']:5.1f}/host)  "
                          f"latency {r['lat_med']:.2f}/{r['lat_max']:.2f} s  first {r['first']:.2f} s  "
                          f"{r['batches']} batches on {r['workers']} workers  "
                          f"{'ok' if r['ok'] else 'DIFFERS'}  load "
                          f"{open('/proc/loadavg').read().split()[0]}", flush=True)
    finally:
        lab.close()
    print(f"\nmedians of {args.runs} runs ({os.cpu_count()} cores, shared; controller and hosts "
          "share them):")
    print("| code | hosts | wall s | controller CPU s | per batch ms | PSS peak MiB | per host MiB "
          "| result latency median / max s | first rsync s | batches |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (code, n), rs in results.items():
        m = {k: statistics.median(r[k] for r in rs) for k in KEYS}
        print(f"| {os.path.basename(code)} | {n} | {m['wall']:.1f} | {m['ctl']:.1f} "
              f"| {m['per_batch_ms']:.1f} | {m['pss_mib']:.0f} | {m['pss_host_mib']:.1f} "
              f"| {m['lat_med']:.2f} / {max(r['lat_max'] for r in rs):.2f} | {m['first']:.2f} "
              f"| {m['batches']:.0f} |")


if __name__ == "__main__":
    main()
