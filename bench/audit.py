"""Path lookups on a big ledger: "which batch carried path X", with and without the
batch_files_path_text index, and what the index costs the walk's inserts.

    flock /tmp/fleetsync-bench.lock .venv/bin/python bench/audit.py [--entries 10000000]

Builds (once, in bench/out/) a ledger of N entries in batches of 500 with the real
schema and plain sqlite3 executemany: A without the path index, B a copy of A with
the index created afterwards (timed: what an existing ledger pays once when a newer
fleetsync opens it). Then:

- lookups: `SELECT task_id, state FROM entries WHERE path_text = ?` for paths that
  exist, a few on A (each a scan), many on B; medians;
- inserts: rounds of batches written as the walk writes them (one transaction per
  batch of 500 entries, multi-row INSERTs of 100 rows, WAL, synchronous=NORMAL),
  each batch in a new directory at a random place of the tree, so that the
  index's inserts land all over it as a real walk's do; A and B interleaved,
  round by round; medians per batch and the ratio B/A.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fleetsync.ledger import db, schema  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
PER_BATCH = 500
PER_INSERT = 100
INDEX = "batch_files_path_text"
LOOKUP = "SELECT task_id, state FROM entries WHERE path_text = ?"
# The alternative: an index on the bytes themselves (smaller: the path is stored once,
# as it is already the table's key), which only `path = CAST(? AS BLOB)` can use.
BLOB_INDEX = "CREATE INDEX batch_files_path ON batch_files(path)"
BLOB_LOOKUP = "SELECT task_id, state FROM entries WHERE path = CAST(? AS BLOB)"


def path_of(i: int) -> bytes:
    """Entry i of a tree of 100 projects x 100 dirs x 20 subdirs (~40 bytes a path)."""
    return (f"proj{i % 100:02d}/dir{i // 100 % 100:03d}/sub{i // 10_000 % 20:02d}/"
            f"file{i:09d}.dat").encode()


def build(path: str, entries: int) -> float:
    """Ledger A: the real schema without the path index, filled with plain sqlite3."""
    for p in (path, path + "-wal", path + "-shm"):
        if os.path.exists(p):
            os.unlink(p)
    engine = db.writer(path)
    schema.create(engine)
    engine.dispose()
    t = time.perf_counter()
    con = sqlite3.connect(path)
    con.execute(f"DROP INDEX {INDEX}")
    con.execute("PRAGMA synchronous = OFF")
    chunk = 200_000
    for start in range(0, entries, chunk):
        n = min(chunk, entries - start)
        ids = range(start // PER_BATCH + 1, (start + n - 1) // PER_BATCH + 2)
        con.executemany("INSERT OR IGNORE INTO batches(task_id, state, file_count, "
                        "directory_count, estimated_bytes, created_ts) "
                        "VALUES (?, 'succeeded', 500, 0, 512000, 0)", ((i,) for i in ids))
        con.executemany("INSERT INTO batch_files(task_id, path, is_dir, size) VALUES (?, ?, 0, 1024)",
                        ((i // PER_BATCH + 1, path_of(i)) for i in range(start, start + n)))
        con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return time.perf_counter() - t


def lookups(path: str, entries: int, count: int, sql: str = LOOKUP) -> list[float]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rng = random.Random(7)
    times = []
    for _ in range(count):
        want = path_of(rng.randrange(entries)).decode()
        t = time.perf_counter()
        rows = con.execute(sql, (want,)).fetchall()
        times.append(time.perf_counter() - t)
        assert len(rows) == 1, (want, rows)
    con.close()
    return times


def insert_round(path: str, first_task: int, batches: int, seed: int) -> list[float]:
    """`batches` batches written as the walk writes them; seconds per batch."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA synchronous = NORMAL")
    rng = random.Random(seed)
    many = "INSERT INTO batch_files(task_id, path, is_dir, size) VALUES " + ", ".join(
        ["(?, ?, 0, 1024)"] * PER_INSERT)
    times = []
    for b in range(batches):
        task = first_task + b
        top = f"proj{rng.randrange(100):02d}/dir{rng.randrange(100):03d}/new{seed}-{b}/"
        names = [f"{top}f{rng.getrandbits(40):011x}".encode() for _ in range(PER_BATCH)]
        t = time.perf_counter()
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO batches(task_id, state, file_count, directory_count, "
                    "estimated_bytes, created_ts) VALUES (?, 'pending', 500, 0, 512000, 0)",
                    (task,))
        for i in range(0, PER_BATCH, PER_INSERT):
            con.execute(many, [v for n in names[i:i + PER_INSERT] for v in (task, n)])
        con.execute("COMMIT")
        times.append(time.perf_counter() - t)
    con.close()
    return times


def load() -> str:
    return open("/proc/loadavg").read().split()[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batches", type=int, default=100, help="batches per insert round")
    ap.add_argument("--scans", type=int, default=3, help="lookups without the index")
    ap.add_argument("--keep", action="store_true", help="keep the ledgers in bench/out")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    a, b, c = (os.path.join(OUT, f"audit-{args.entries}-{n}.db")
               for n in ("plain", "indexed", "blob"))
    print(f"load {load()} at start; {args.entries:,} entries in batches of {PER_BATCH}",
          flush=True)
    print(f"build A (no path index): {build(a, args.entries):.1f} s, "
          f"{os.path.getsize(a) / 2**20:,.0f} MiB", flush=True)
    for path, ddl, name in ((b, schema_index(), "B (the schema's index on the text)"),
                            (c, BLOB_INDEX, "C (an index on the bytes)")):
        shutil.copyfile(a, path)
        t = time.perf_counter()
        con = sqlite3.connect(path)
        con.execute(ddl)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        print(f"CREATE INDEX on {name}, once on an existing ledger: "
              f"{time.perf_counter() - t:.1f} s; {os.path.getsize(path) / 2**20:,.0f} MiB",
              flush=True)

    scan = lookups(a, args.entries, args.scans)
    seek = lookups(b, args.entries, 1000)
    blob = lookups(c, args.entries, 1000, BLOB_LOOKUP)
    print(f"lookup: A (scan) median {statistics.median(scan) * 1000:,.0f} ms "
          f"({args.scans} lookups); B median {statistics.median(seek) * 1e6:,.0f} us, "
          f"C median {statistics.median(blob) * 1e6:,.0f} us (1000 lookups each); "
          f"load {load()}", flush=True)

    per = {a: [], b: [], c: []}
    task = args.entries // PER_BATCH + 10
    for r in range(args.rounds):
        order = [a, b, c] if r % 2 == 0 else [c, b, a]      # interleaved, order alternating
        for path in order:
            per[path].append(statistics.median(insert_round(path, task, args.batches, r)))
        task += args.batches
        print(f"  round {r + 1}: A {per[a][-1] * 1000:.2f}, B {per[b][-1] * 1000:.2f}, "
              f"C {per[c][-1] * 1000:.2f} ms/batch, load {load()}", flush=True)
    ma, mb, mc = (statistics.median(per[p]) for p in (a, b, c))
    print(f"insert of a 500-entry batch, median: A (no index) {ma * 1000:.2f} ms, "
          f"B {mb * 1000:.2f} ms ({mb / ma:.2f}x A), C {mc * 1000:.2f} ms ({mc / ma:.2f}x A); "
          f"load {load()} at end")
    if not args.keep:
        for path in (a, b, c):
            for p in (path, path + "-wal", path + "-shm"):
                if os.path.exists(p):
                    os.unlink(p)
    return 0


def schema_index() -> str:
    """The index as the schema creates it."""
    [ddl] = [d for d in schema._EXTRA_DDL if INDEX in d]
    return ddl


if __name__ == "__main__":
    sys.exit(main())
