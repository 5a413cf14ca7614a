"""Selection time of a change list next to a full rescan of the same tree.

    .venv/bin/python bench/changelist.py [--entries 1000000] [--per-dir 100] [--listed 10000]
                                         [--runs 5] [--producers 2] [--tree DIR]

Makes (or reuses) a tree under bench/out/ of --entries empty files, --per-dir in
each leaf directory, the leaves 10 to a directory above them (the shape of
bench/walk.py's tree: 1,000,000 files are 10 x 10 x 10 x 10 directories of 100); walks it once into a base ledger (the
default excludes as rules, as a new ledger has them); then changes --listed files
spread over the tree (their mtime, so a rescan finds them) and writes their paths,
absolute, as `find SRC -newer` would, to a list.

Then, interleaved --runs times, each into a fresh copy of the base ledger, as a
whole `python` process (interpreter start and imports included, as an operator
launches a run): the rescan (Walk(rescan=True) with P producers, start to join:
every directory listed again, what differs queued) and the change list
(changelist.read then changelist.queue: the list read, checked and stat-ed, its
entries queued). Both end when every entry to copy is in the ledger; neither
copies (the copy after it is the same for both). Prints the medians, their ratio
(the goal: the list at most 1/20 of the rescan), what each queued, and the load
average (`uptime`) before and after.
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.walk import OUT, fresh_ledger, make_tree  # noqa: E402

# Each script prints its own seconds after its imports (the selection alone).
RULES = "import time\nfrom fleetsync.controller.filters import Filters, default_rules\n"
START = "T0 = time.perf_counter()\n"
DONE = "\nprint(time.perf_counter() - T0)\n"

RESCAN = RULES + """
import sys
from fleetsync.controller.walk import Walk
from fleetsync.controller.producer import Limits
""" + START + """
walk = Walk(sys.argv[1], sys.argv[2], int(sys.argv[3]), Limits(), rescan=True,
            filters=Filters(default_rules()))
walk.start()
if not walk.join():
    sys.exit(1)
""" + DONE

CHANGE_LIST = RULES + """
import sys
from fleetsync.controller import changelist
from fleetsync.controller.producer import Limits
from fleetsync.ledger import db, migration
""" + START + """
listed = changelist.read(sys.argv[4], False, sys.argv[2])
with db.connect(sys.argv[1]) as conn:
    migration.pass_after_copied(conn)
    changelist.queue(conn, sys.argv[2], listed, Limits(), Filters(default_rules()), False)
""" + DONE

FIRST_WALK = RULES + """
import sys
from fleetsync.controller.walk import Walk
from fleetsync.controller.producer import Limits
walk = Walk(sys.argv[1], sys.argv[2], int(sys.argv[3]), Limits(),
            filters=Filters(default_rules()))
walk.start()
sys.exit(0 if walk.join() else 1)
"""


def _python(script: str, *args: str) -> tuple[float, float]:
    """(wall seconds of the whole process, the seconds it printed: after its imports)."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return time.perf_counter() - t0, float(out.split()[-1]) if out.strip() else 0.0


def _copy(base: str, to: str) -> str:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(to + suffix):
            os.unlink(to + suffix)
    shutil.copyfile(base, to)
    return to


def _queued(ledger: str) -> tuple[int, int]:
    """(batches, entries) made after the base walk's (task_id above `before`)."""
    con = sqlite3.connect(ledger)
    try:
        return con.execute("SELECT count(DISTINCT task_id), count(*) FROM batch_files "
                           "WHERE task_id > (SELECT value FROM bench_base)").fetchone()
    finally:
        con.close()


def prepare(tree: str, entries: int, per_dir: int, listed: int,
            producers: int) -> tuple[str, str]:
    """The tree, its base ledger (walked, checkpointed) and the list of changed files."""
    files = per_dir
    levels = max(1, round(math.log10(max(1, entries // per_dir))))
    t0 = time.perf_counter()
    count = make_tree(tree, 10, levels, files)
    print(f"tree {tree}: {count:,} entries ({time.perf_counter() - t0:.0f} s to make or find)",
          flush=True)
    base = os.path.join(OUT, f"changelist-base-{os.path.basename(tree)}.db")
    if not os.path.exists(base):
        fresh_ledger(base + ".tmp", tree)
        secs, _ = _python(FIRST_WALK, base + ".tmp", tree, str(producers))
        con = sqlite3.connect(base + ".tmp")
        con.execute("CREATE TABLE bench_base AS SELECT max(task_id) AS value FROM batches")
        con.commit()
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("PRAGMA journal_mode = DELETE")
        con.close()
        os.rename(base + ".tmp", base)
        print(f"base walk: {secs:.1f} s", flush=True)
    # the changes: --listed files spread over the tree, newer than the base walk
    rng = random.Random(22)
    leaves = sorted(os.path.join(tree, *(f"d{i}" for i in digits))
                    for digits in itertools.product(range(10), repeat=levels))
    picked = sorted({(rng.choice(leaves), rng.randrange(files)) for _ in range(listed * 2)})
    picked = rng.sample(picked, listed)
    now = time.time() + 5
    list_path = os.path.join(OUT, f"changelist-{listed}.txt")
    with open(list_path, "w") as f:
        for leaf, j in sorted(picked):
            path = os.path.join(leaf, f"f{j}")
            os.utime(path, (now, now))
            f.write(path + "\n")
    return base, list_path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--per-dir", type=int, default=100)
    ap.add_argument("--listed", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--producers", type=int, default=2)
    ap.add_argument("--tree")
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    tree = a.tree or os.path.join(OUT, f"tree-{a.entries // 1000}k-files-{a.per_dir}")
    base, list_path = prepare(tree, a.entries, a.per_dir, a.listed, a.producers)
    load0 = os.getloadavg()
    ledger = os.path.join(OUT, "changelist-run.db")
    times: dict[str, list[float]] = {"rescan": [], "list": []}
    inner: dict[str, list[float]] = {"rescan": [], "list": []}
    queued = {}
    for run in range(a.runs):
        for name in (("rescan", "list") if run % 2 == 0 else ("list", "rescan")):
            _copy(base, ledger)
            if name == "rescan":
                secs, own = _python(RESCAN, ledger, tree, str(a.producers))
            else:
                secs, own = _python(CHANGE_LIST, ledger, tree, str(a.producers), list_path)
            times[name].append(secs)
            inner[name].append(own)
            queued[name] = _queued(ledger)
            print(f"run {run + 1} {name}: {secs:.3f} s ({own:.3f} s after imports)",
                  flush=True)
    load1 = os.getloadavg()
    med = {k: statistics.median(v) for k, v in times.items()}
    imed = {k: statistics.median(v) for k, v in inner.items()}
    print(f"\n{a.listed:,} listed paths, tree of {a.entries:,} files ({a.per_dir} a "
          f"directory), P={a.producers}, "
          f"median of {a.runs}, whole processes:")
    for name, label in (("rescan", "rescan (walk of the tree)"), ("list", "change list")):
        b, e = queued[name]
        print(f"  {label:28} median {med[name]:7.3f} s  min {min(times[name]):7.3f} s  "
              f"(after imports {imed[name]:6.3f} s)  queued {e:,} entries in {b:,} batches")
    print(f"  ratio list/rescan: 1/{med['rescan'] / med['list']:.1f} whole processes, "
          f"1/{imed['rescan'] / imed['list']:.1f} after imports (goal: at most 1/20)")
    print(f"  load average: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} at the start, "
          f"{load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} at the end ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
