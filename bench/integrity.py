"""What the ledger's integrity check costs: `PRAGMA quick_check` (ledger/db.py's
check_integrity, which `run` does beside its start and `status`, `verify` before
they read) per GiB of ledger, next to its floor, reading the file (`cat > /dev/null`).

    .venv/bin/python bench/integrity.py [--entries 4000000] [--runs 3]

Makes (once) bench/out/integrity-N.db: a real ledger (`fleetsync scan` of a small
tree) grown to N entries by inserting rows into batch_files with paths of ordinary
length (~55 bytes: projects/gNN/uNNN/set-NNNN/file-NNNNNNN.dat), the shape a
ledger of N entries has. Warm cache (one read first). Each round runs the read and
the check one after the other; medians of --runs rounds, seconds per GiB of each,
and the 1-minute load average at the start and the end (`uptime`'s first figure).
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(BENCH, "out")
FLEETSYNC = os.path.join(os.path.dirname(sys.executable), "fleetsync")
GIB = 1024 ** 3


def make(entries: int) -> str:
    path = os.path.join(OUT, f"integrity-{entries}.db")
    if os.path.exists(path):
        return path
    tree = os.path.join(OUT, "integrity-tree")
    os.makedirs(os.path.join(tree, "d"), exist_ok=True)
    subprocess.run([FLEETSYNC, "scan", "--src", tree, "--ledger", path + ".tmp"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    con = sqlite3.connect(path + ".tmp")
    con.execute("PRAGMA journal_mode = OFF")
    con.execute(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        "INSERT INTO batch_files (task_id, path, is_dir, size, type, mtime, blocks) "
        "SELECT 1000 + i / 500, CAST(printf('projects/g%02d/u%03d/set-%04d/file-%07d.dat', "
        "i % 97, i % 991, i / 500, i) AS BLOB), 0, i % 100000, 0, 1700000000 + i, 8 FROM n",
        (entries - 1,))
    con.commit()
    con.close()
    os.replace(path + ".tmp", path)
    return path


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def read(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass


def load() -> float:
    return os.getloadavg()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=4_000_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    from fleetsync.ledger import db
    path = make(args.entries)
    size = os.path.getsize(path)
    read(path)              # warm
    start_load = load()
    floor, check = [], []
    for _ in range(args.runs):
        floor.append(timed(lambda: read(path)))
        check.append(timed(lambda: db.check_integrity(path)))
    f, c = statistics.median(floor), statistics.median(check)
    gib = size / GIB
    print(f"ledger: {args.entries:,} entries, {size / 2**20:.0f} MiB "
          f"({size / args.entries:.0f} bytes per entry); {args.runs} rounds, warm cache, "
          f"load {start_load:.2f}-{load():.2f} on {os.cpu_count()} CPUs")
    print(f"read the file (floor):  median {f:.2f} s, {f / gib:.2f} s per GiB")
    print(f"PRAGMA quick_check:     median {c:.2f} s, {c / gib:.2f} s per GiB "
          f"({c / f:.1f}x the read)")


if __name__ == "__main__":
    main()
