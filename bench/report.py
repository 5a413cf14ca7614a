"""`fleetsync report` of a big ledger (issue 23): time and peak memory, next to a floor.

    flock /tmp/fleetsync-bench.lock .venv/bin/python bench/report.py [--entries 100000,1000000]

Builds (once per size, in bench/out/) a ledger of N entries with the real schema
(ledger/schema.create, its indexes and views) and plain sqlite3 executemany: batches
of 500 entries, all succeeded, each with its attempt and a worker; every entry with
its type, mtime, blocks, a 16-byte checksum and a verdict, as custody records them;
0.1 % of the entries named by an open entry_outcomes row (so missing_entries is read
for real), and 1,000 pruned entries. Then, per round, interleaved:

- `fleetsync report --format csv -o FILE` (and its sidecar);
- `fleetsync report --format html -o FILE --csv FILE2` (the CSV in the same pass);
- the floor: the sqlite3 shell dumping the same table joined with its batches as
  CSV (`sqlite3 -csv`), no order, no outcome, no escaping: what reading the rows costs.

Each as a child process; its wall time, its CPU time and its peak resident memory
(GNU time's %U %S %M). Medians, the ratio to the floor, rows/s, the load average. Memory
that stays flat from 100,000 to 1,000,000 entries is the streaming's proof.
"""
from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from fleetsync.ledger import db, schema  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
PER_BATCH = 500
PRUNED = 1000
WORKER = "bench-00000000-0000-0000-0000-000000000000"
FLOOR_SQL = ("SELECT f.path, f.type, f.size, f.mtime, b.state, hex(f.checksum), f.verified, "
             "b.worker_id, f.task_id FROM batch_files f JOIN batches b USING (task_id)")


def path_of(i: int) -> bytes:
    """Entry i of a tree of 100 projects x 100 dirs x 20 subdirs (~40 bytes a path)."""
    return (f"proj{i % 100:02d}/dir{i // 100 % 100:03d}/sub{i // 10_000 % 20:02d}/"
            f"file{i:09d}.dat").encode()


def build(path: str, entries: int) -> float:
    if os.path.exists(path):
        return 0.0
    engine = db.writer(path + ".part")
    schema.create(engine)
    engine.dispose()
    t = time.perf_counter()
    con = sqlite3.connect(path + ".part")
    con.execute("PRAGMA synchronous = OFF")
    now = time.time() - 3600
    batches = (entries + PER_BATCH - 1) // PER_BATCH
    con.execute("INSERT INTO migration(id, migration_id, schema_version, src, dest, options, "
                "created_ts, elapsed_before, finished_ts) VALUES (1, 'bench', 1, '/src', "
                "'/dest', '{\"checksum_choice\": \"xxh128\"}', ?, 3600, ?)", (now, now + 3600))
    con.execute("INSERT INTO workers(worker_id, host, state) VALUES (?, 'bench', 'up')", (WORKER,))
    con.executemany("INSERT INTO batches(task_id, state, file_count, directory_count, "
                    "estimated_bytes, created_ts, worker_id) VALUES (?, 'succeeded', 500, 0, "
                    "512000, 0, ?)", ((i, WORKER) for i in range(1, batches + 1)))
    con.executemany("INSERT INTO attempts(task_id, claim, retry_count, worker_id, status, "
                    "start_ts, end_ts, received_ts) VALUES (?, 1, 0, ?, 'success', ?, ?, ?)",
                    ((i, WORKER, now + i * 3600 / batches, now + (i + 1) * 3600 / batches,
                      now + (i + 1) * 3600 / batches) for i in range(1, batches + 1)))
    rng = random.Random(7)
    chunk = 200_000
    for start in range(0, entries, chunk):
        n = min(chunk, entries - start)
        con.executemany(
            "INSERT INTO batch_files(task_id, path, is_dir, size, type, mtime, blocks, "
            "checksum, verified) VALUES (?, ?, 0, 1024, 0, 1700000000, 8, ?, 0)",
            ((i // PER_BATCH + 1, path_of(i), rng.randbytes(16)) for i in range(start, start + n)))
        con.commit()
    con.executemany("INSERT INTO entry_outcomes(task_id, source, path, class, reason, "
                    "rest_arrived, ts) VALUES (?, 'rsync', ?, 'permanent', "
                    "'send_files failed to open: Permission denied (13)', 1, 0)",
                    ((i // PER_BATCH + 1, path_of(i)) for i in range(0, entries, 1000)))
    con.executemany("INSERT INTO pruned(path, is_dir, rule, ts) VALUES (?, 0, '- *.tmp', 0)",
                    ((f"proj{i % 100:02d}/x{i}.tmp".encode(),) for i in range(PRUNED)))
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    os.rename(path + ".part", path)
    for side in ("-wal", "-shm"):
        if os.path.exists(path + ".part" + side):
            os.unlink(path + ".part" + side)
    return time.perf_counter() - t


def measure(argv: list[str], stdout=subprocess.DEVNULL) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MiB) of one child process, by GNU time
    (%U %S %M): os.wait4 on a child of this process would report this process's own
    peak too (Linux keeps the peak of the memory a child had before its exec, ours).
    CPU time is what a loaded machine changes least."""
    t = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "%U %S %M", *argv], stdout=stdout,
                       stderr=subprocess.PIPE, cwd=REPO)
    wall = time.perf_counter() - t
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode == 0, (argv, err)
    user, system, peak = err[-1].split()
    return wall, float(user) + float(system), int(peak) / 1024


def load() -> str:
    return open("/proc/loadavg").read().split()[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", default="100000,1000000", help="sizes, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    cli = [sys.executable, "-m", "fleetsync.controller.cli", "report"]
    for entries in [int(n) for n in args.entries.split(",")]:
        ledger = os.path.join(OUT, f"report-{entries}.db")
        built = build(ledger, entries)
        print(f"{entries:,} entries: ledger {os.path.getsize(ledger) / 2**20:,.0f} MiB"
              + (f", built in {built:.1f} s" if built else " (built before)"), flush=True)
        csv_file, html_file = os.path.join(OUT, "r.csv"), os.path.join(OUT, "r.html")
        kinds = {
            "report csv": lambda: measure([*cli, "--ledger", ledger, "-o", csv_file]),
            "report html+csv": lambda: measure([*cli, "--ledger", ledger, "--format", "html",
                                                "-o", html_file, "--csv", csv_file]),
            "floor sqlite3 -csv": lambda: measure(["sqlite3", "-csv", ledger, FLOOR_SQL]),
        }
        got = {k: [] for k in kinds}
        loads = []
        for r in range(args.rounds):
            order = list(kinds) if r % 2 == 0 else list(reversed(kinds))
            for k in order:
                got[k].append(kinds[k]())
            loads.append(load())
        with open(csv_file, "rb") as f:
            rows = sum(1 for _ in f) - 1
        assert rows == entries + PRUNED, rows
        floor = statistics.median(w for w, _, _ in got["floor sqlite3 -csv"])
        for k, runs in got.items():
            wall = statistics.median(w for w, _, _ in runs)
            cpu = statistics.median(c for _, c, _ in runs)
            rss = max(m for _, _, m in runs)
            print(f"  {k:20s} wall {wall:6.2f} s ({rows / wall:>9,.0f} rows/s, "
                  f"x{wall / floor:4.1f} the floor)  CPU {cpu:6.2f} s "
                  f"({rows / cpu:>9,.0f} rows/s)  peak RSS "
                  f"{rss:6.1f} MiB  (walls: {', '.join(f'{w:.2f}' for w, _, _ in runs)})",
                  flush=True)
        print(f"  load average after each round: {', '.join(loads)}; CSV {rows:,} rows, "
              f"{os.path.getsize(csv_file) / 2**20:,.0f} MiB; HTML "
              f"{os.path.getsize(html_file) / 2**20:,.1f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
