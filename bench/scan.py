"""`fleetsync scan` next to `fpart -L`, each timed as a whole process, on one tree.

    .venv/bin/python bench/scan.py [--tree DIR] [--runs 3]

The tree is bench/walk.py's (made once under bench/out/: 1000 directories x 100
empty files, 101,111 entries). Warm cache (one `find` first). Each round runs, one
after the other, `fpart -L -f 500 -o /dev/null TREE` (Debian fpart: one lstat per
entry, partitions of 500 files written as they are found) and `fleetsync scan --src
TREE --ledger NEW --json` (the producers, the census, the interpreter's start and
imports: all of it), into a fresh ledger each time (removed before, untimed).
Medians of --runs rounds, the ratio scan / fpart, the 1-minute load average at the
start and the end, and the scan ledger's bytes per entry.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)

import walk as walk_bench  # noqa: E402  (bench/walk.py: the same tree)

FLEETSYNC = os.path.join(os.path.dirname(sys.executable), "fleetsync")


def timed(argv: list[str]) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{argv[0]} exited {r.returncode}")
    return took, r.stdout


def fresh(ledger: str) -> None:
    for suffix in ("", "-wal", "-shm", ".lock"):
        if os.path.exists(ledger + suffix):
            os.unlink(ledger + suffix)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", default=os.path.join(walk_bench.OUT, "tree100k"))
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    os.makedirs(walk_bench.OUT, exist_ok=True)
    tree = os.path.abspath(args.tree)
    entries = walk_bench.make_tree(tree)
    ledger = os.path.join(walk_bench.OUT, "scan-bench.db")
    subprocess.run(["find", tree], stdout=subprocess.DEVNULL, check=True)   # warm the cache
    load = os.getloadavg()[0]
    fpart, scan = [], []
    census = {}
    for _ in range(args.runs):
        fpart.append(timed(["fpart", "-L", "-f", "500", "-o", "/dev/null", tree])[0])
        fresh(ledger)
        took, out = timed([FLEETSYNC, "scan", "--src", tree, "--ledger", ledger, "--json"])
        scan.append(took)
        census = json.loads(out)
    assert census["entries"] == entries, (census["entries"], entries)
    size = os.path.getsize(ledger)
    print(f"tree {tree}: {entries:,} entries; {args.runs} rounds, interleaved, warm cache; "
          f"each a whole process")
    print(f"1-minute load average: {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the "
          f"end (on {os.cpu_count()} CPUs)")
    print(f"{'':34} {'median s':>9} {'entries/s':>11} {'runs s':>24}")
    for name, ts in (("fpart -L -f 500", fpart), ("fleetsync scan --json", scan)):
        med = statistics.median(ts)
        print(f"{name:34} {med:9.3f} {entries / med:11,.0f} "
              f"{' '.join(f'{t:.3f}' for t in ts):>24}")
    print(f"scan / fpart: {statistics.median(scan) / statistics.median(fpart):.2f}x; "
          f"scan ledger {size / entries:.1f} bytes/entry (after the scan's checkpoint)")


if __name__ == "__main__":
    main()
