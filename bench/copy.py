"""bench/copy: an end-to-end migration next to its peers, on the same tree, in the same run.

    flock /tmp/fleetsync-bench.lock .venv/bin/python bench/copy.py [--runs 3] [--files 20000] \
        [--old /work/wt/fleet-old] [--out bench/out]

Generates (once, cached) a tree of ~20,000 files, mostly 1-64 KiB with a few of
several MiB (~0.85 GiB), then times, interleaved and --runs times each:
plain `rsync -a`, `fpsync -n 2` (Debian's fpart), `xargs -P 4` running rsync
over 500-entry file lists, and `fleetsync run` with the local inventory (API
served on a free port, as in real use). DEST is removed before each run and
every copy is checked against SRC. Prints the median wall time of each tool,
the ratios, fleetsync's Ansible overhead per batch from its ledger, and how soon
its first rsync started (the first attempt's start_ts, taken on the worker, minus
the launch of `fleetsync run`). --old adds `fleetsync-old`: the same command run
from another checkout (e.g. a worktree of an earlier commit), interleaved;
`--only fleetsync-md5` is fleetsync recording md5 rather than xxh128 (issue 23).
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FLEETSYNC = [sys.executable, "-m", "fleetsync.controller.cli"]


def make_tree(root: str, files: int, seed: int = 7) -> None:
    if os.path.exists(os.path.join(root, ".complete")):
        return
    shutil.rmtree(root, ignore_errors=True)
    rnd = random.Random(seed)
    block = os.urandom(1 << 20)
    for i in range(files):
        d = os.path.join(root, f"d{i % 40:02d}", f"e{(i // 40) % 25:02d}")
        os.makedirs(d, exist_ok=True)
        size = rnd.randint(2 << 20, 8 << 20) if i % 400 == 0 else rnd.randint(1 << 10, 64 << 10)
        with open(os.path.join(d, f"f{i:06d}.dat"), "wb") as f:
            while size > 0:
                f.write(block[: min(size, len(block))])
                size -= len(block)
    open(os.path.join(root, ".complete"), "w").close()


def tree_bytes(root: str) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(root) for f in fs)


def same(src: str, dest: str) -> bool:
    r = subprocess.run(["rsync", "-an", "--itemize-changes", "--exclude=.complete",
                        src + "/", dest + "/"], capture_output=True, text=True)
    changed = [line for line in r.stdout.splitlines() if line and not line.startswith(".d")]
    return r.returncode == 0 and not changed


def run_rsync(src, dest, work):
    subprocess.run(["rsync", "-a", src + "/", dest + "/"], check=True)


def run_fpsync(src, dest, work):
    subprocess.run(["fpsync", "-n", "2", "-t", os.path.join(work, "fpsync"), src + "/",
                    dest + "/"], check=True, stdout=subprocess.DEVNULL)


def run_xargs(src, dest, work):
    lists = os.path.join(work, "lists")
    shutil.rmtree(lists, ignore_errors=True)
    os.makedirs(lists)
    subprocess.run(f"cd {src} && find . -print0 | split -t '\\0' -l 500 - {lists}/l && "
                   f"ls {lists}/l* | xargs -P 4 -I{{}} rsync -a --from0 --files-from={{}} "
                   f"{src}/ {dest}/", shell=True, check=True)


FIRST: dict[str, list[float]] = {}
OLD: list[str] = []


def run_fleetsync(src, dest, work, name="fleetsync", env=None, extra=()):
    ledger = os.path.join(work, "fleetsync.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(ledger + suffix):
            os.unlink(ledger + suffix)
    launched = time.time()
    subprocess.run([*FLEETSYNC, "run", "--src", src, "--dest", dest, "--ledger", ledger,
                    "--port", "0", *extra], check=True, cwd=REPO, stdout=subprocess.DEVNULL,
                   env=env)
    db = sqlite3.connect(ledger)
    first = db.execute("SELECT min(start_ts) FROM attempts").fetchone()[0]
    db.close()
    FIRST.setdefault(name, []).append(first - launched)


def run_fleetsync_old(src, dest, work):
    """The checkout at --old, as a `fleetsync` package first on PYTHONPATH."""
    base = os.path.join("/tmp", f"fleetsync-bench-pkg-{abs(hash(OLD[0])) % 10**8}")
    pkg = os.path.join(base, "fleetsync")
    os.makedirs(pkg, exist_ok=True)
    for d in ("controller", "ledger", "api", "playbooks", "inventory"):
        if not os.path.islink(os.path.join(pkg, d)):
            os.symlink(os.path.join(OLD[0], d), os.path.join(pkg, d))
    run_fleetsync(src, dest, work, "fleetsync-old", dict(os.environ, PYTHONPATH=base))


def run_fleetsync_md5(src, dest, work):
    """fleetsync recording md5 instead of rsync's own xxh128 (issue 23's figures)."""
    run_fleetsync(src, dest, work, "fleetsync-md5", extra=("--checksum-choice", "md5"))


PEERS = {"rsync -a": run_rsync, "fpsync -n 2": run_fpsync, "xargs -P 4": run_xargs,
         "fleetsync": run_fleetsync, "fleetsync-old": run_fleetsync_old,
         "fleetsync-md5": run_fleetsync_md5}


def overhead(ledger: str) -> dict[str, float]:
    """Per batch, from the ledger of the last fleetsync run: rsync time (measured on the
    worker), Ansible's share (claim in the lookup -> command starts, plus rsync end ->
    result in the ledger) and the result latency (rsync end -> ledger)."""
    db = sqlite3.connect(ledger)
    rows = db.execute("SELECT b.claimed_ts, a.start_ts, a.end_ts, a.received_ts FROM attempts a "
                      "JOIN batches b USING (task_id) WHERE a.status = 'success'").fetchall()
    rsync = [e - s for _, s, e, _ in rows]
    ansible = [(s - c) + (r - e) for c, s, e, r in rows]
    latency = [r - e for _, _, e, r in rows]
    return {"batches": len(rows), "rsync": statistics.median(rsync),
            "ansible": statistics.median(ansible), "latency": statistics.median(latency),
            "latency_max": max(latency)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--only", action="append", help="run only these tools")
    ap.add_argument("--old", help="another checkout to run as fleetsync-old")
    args = ap.parse_args()
    if args.old:
        OLD.append(os.path.abspath(args.old))
    src = os.path.join(args.out, f"copy-src-{args.files}")
    dest = os.path.join(args.out, "copy-dest")
    work = os.path.join(args.out, "copy-work")
    os.makedirs(work, exist_ok=True)
    make_tree(src, args.files)
    print(f"tree: {args.files} files, {tree_bytes(src) / 2**30:.2f} GiB in {src}")
    times: dict[str, list[float]] = {name: [] for name in PEERS if (not args.only or name in args.only)
                                     and (args.old or name != "fleetsync-old")}
    for i in range(args.runs):
        for name in times:
            shutil.rmtree(dest, ignore_errors=True)
            t = time.perf_counter()
            PEERS[name](src, dest, work)
            dt = time.perf_counter() - t
            ok = same(src, dest)
            times[name].append(dt)
            first = f"  first rsync {FIRST[name][-1]:.2f} s" if name in FIRST else ""
            print(f"run {i + 1} {name:13s} {dt:6.2f} s {'ok' if ok else 'DIFFERS'}{first}  load "
                  f"{open('/proc/loadavg').read().split()[0]}", flush=True)
    print("\nmedians of", args.runs, "runs:")
    med = {name: statistics.median(v) for name, v in times.items()}
    for name, m in med.items():
        first = (f"  (first rsync {statistics.median(FIRST[name]):.2f} s after launch)"
                 if name in FIRST else "")
        print(f"  {name:13s} {m:6.2f} s{first}")
    if "fleetsync" in med:
        for peer in ("fpsync -n 2", "xargs -P 4", "rsync -a", "fleetsync-old", "fleetsync-md5"):
            if peer in med:
                print(f"  fleetsync / {peer}: {med['fleetsync'] / med[peer]:.2f}")
        o = overhead(os.path.join(work, "fleetsync.db"))
        print(f"  last fleetsync run: {o['batches']} batches; per batch (medians): rsync "
              f"{o['rsync']:.3f} s, Ansible {o['ansible'] * 1000:.0f} ms "
              f"({o['ansible'] / o['rsync']:.1%} of rsync); result in the ledger "
              f"{o['latency'] * 1000:.0f} ms after rsync ends (max {o['latency_max']:.2f} s)")


if __name__ == "__main__":
    main()
