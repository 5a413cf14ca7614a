"""Walk + enqueue speed next to `find` and `fpart`, on one tree, warm cache.

    .venv/bin/python bench/walk.py [--tree DIR] [--runs 5] [--producers 1,2]
    .venv/bin/python bench/walk.py --flat 1000000       # one flat directory instead

Makes (or reuses) a tree of 1000 directories x 100 empty files (101,111
entries with the directories and the top) under bench/out/, then times, median
of --runs each: `find TREE`, `fpart -L -f 500 -o /dev/null TREE`, and the walk
(P producers into a fresh ledger, from Walk.start() to walk_done), also as a
whole `python -c` process (interpreter start and imports included). Then one
more untimed walk per P for the peak RSS (parent + producers, summed, from
/proc) and the ledger's bytes per entry after a checkpoint.

--flat N: one directory of N empty files (bench/out/flat-N) instead of the tree:
fpart and the walk (P = --producers), the batches it cut, the peak PSS.

--old DIR: instead, this checkout's walk against another's, interleaved, --runs
rounds: DIR holds that version as a package (`DIR/fleetsync/{controller,ledger,api}`,
e.g. from `git archive COMMIT controller ledger api playbooks inventory`), put first
on PYTHONPATH. Each walk runs in a `python -c` of its version into a fresh ledger
that version made (untimed), and reports its own time from Walk.start() to join()
and its CPU (parent + producers); then the ledger's bytes per entry of each.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from fleetsync.controller import processes  # noqa: E402
from fleetsync.controller.walk import Walk  # noqa: E402
from fleetsync.controller.producer import Limits  # noqa: E402
from fleetsync.ledger import db, migration  # noqa: E402

OUT = os.path.join(REPO, "bench", "out")

WALK_PROCESS = """
import sys
from fleetsync.controller.walk import Walk
from fleetsync.controller.producer import Limits
walk = Walk(sys.argv[1], sys.argv[2], int(sys.argv[3]), Limits())
walk.start()
sys.exit(0 if walk.join() else 1)
"""


AB_PROCESS = """
import os, resource, sys, time
from fleetsync.controller.walk import Walk
from fleetsync.controller.producer import Limits
from fleetsync.ledger import db, migration
engine = db.writer(sys.argv[1])
migration.open_or_create(engine, sys.argv[2], sys.argv[2] + ".dest", {})
engine.dispose()
c0 = sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
         for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
t0 = time.perf_counter()
walk = Walk(sys.argv[1], sys.argv[2], int(sys.argv[3]), Limits())
walk.start()
assert walk.join()
took = time.perf_counter() - t0
c1 = sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
         for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
print(took, c1 - c0)
"""


def ab(old: str, tree: str, entries: int, producers: int, runs: int) -> None:
    """This checkout's walk against the one in `old`, interleaved (see --old)."""
    versions = {"old": dict(os.environ, PYTHONPATH=os.path.abspath(old)), "new": None}
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in versions}
    load = os.getloadavg()[0]
    for _ in range(runs):
        for name, env in versions.items():
            ledger = os.path.join(OUT, f"walk-ab-{name}.db")
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(ledger + suffix):
                    os.unlink(ledger + suffix)
            out = subprocess.run([sys.executable, "-c", AB_PROCESS, ledger, tree,
                                  str(producers)], env=env, check=True,
                                 capture_output=True, text=True).stdout.split()
            times[name].append((float(out[0]), float(out[1])))
    print(f"tree {tree}: {entries:,} entries; P={producers}; {runs} rounds, old and new "
          f"interleaved; load {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    for name in versions:
        wall = statistics.median(t for t, _ in times[name])
        cpu = statistics.median(c for _, c in times[name])
        per = bytes_per_entry(os.path.join(OUT, f"walk-ab-{name}.db"))[1]
        print(f"{name}: walk median {wall:.3f} s (min {min(t for t, _ in times[name]):.3f}), "
              f"CPU median {cpu:.3f} s; ledger {per:.1f} bytes/entry after a checkpoint")
    ratio = (statistics.median(t for t, _ in times["new"])
             / statistics.median(t for t, _ in times["old"]))
    cpu_ratio = (statistics.median(c for _, c in times["new"])
                 / statistics.median(c for _, c in times["old"]))
    print(f"new / old: wall {ratio:.2f}x, CPU {cpu_ratio:.2f}x")


def make_tree(root: str, fanout: int = 10, levels: int = 3, files: int = 100) -> int:
    """fanout**levels leaf directories of `files` empty files each (the shape of
    /tmp/fs/tree100k); returns the number of entries, the top included."""
    if not os.path.isdir(root):
        tmp = root + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        dirs = [tmp]
        for _ in range(levels):
            dirs = [os.path.join(d, f"d{i}") for d in dirs for i in range(fanout)]
            for d in dirs:
                os.makedirs(d)
        for d in dirs:
            for j in range(files):
                open(os.path.join(d, f"f{j}"), "wb").close()
        os.rename(tmp, root)
    return 1 + sum(len(ds) + len(fs) for _, ds, fs in os.walk(root))


def make_flat(root: str, n: int) -> int:
    if not os.path.isdir(root):
        tmp = root + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for j in range(n):
            open(os.path.join(tmp, f"f{j:07d}"), "wb").close()
        os.rename(tmp, root)
    return n + 1


def fresh_ledger(path: str, tree: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    engine = db.writer(path)
    migration.open_or_create(engine, tree, os.path.join(OUT, "dest"), {})
    engine.dispose()


def _cpu() -> float:
    """CPU seconds used so far by this process and its waited-for children."""
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                   resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, runs: int) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds) of each run. CPU time barely moves when other
    jobs load the machine, so it still compares tools when wall time cannot."""
    walls, cpus = [], []
    for _ in range(runs):
        c0 = _cpu()
        walls.append(fn())
        cpus.append(_cpu() - c0)
    return walls, cpus


def run_command(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def walk_in_process(ledger: str, tree: str, producers: int) -> float:
    fresh_ledger(ledger, tree)
    t0 = time.perf_counter()
    walk = Walk(ledger, tree, producers, Limits())
    walk.start()
    assert walk.join(), "walk failed"
    return time.perf_counter() - t0


def walk_as_process(ledger: str, tree: str, producers: int) -> float:
    fresh_ledger(ledger, tree)
    return run_command([sys.executable, "-c", WALK_PROCESS, ledger, tree, str(producers)])


def peak_memory_kib(ledger: str, tree: str, producers: int) -> tuple[int, int]:
    """Peaks of the summed RSS and PSS of the parent and every producer, polled
    from /proc every 2 ms, with the walk in a `python -c` child so that the
    parent is a real one. RSS counts the pages forked producers share with the
    parent once per process; PSS splits them."""
    fresh_ledger(ledger, tree)
    child = subprocess.Popen([sys.executable, "-c", WALK_PROCESS, ledger, tree,
                              str(producers)])
    rss = pss = 0
    while child.poll() is None:
        pids = processes.with_children(child.pid)
        rss = max(rss, sum(processes.memory_kib(p, "VmRSS") for p in pids))
        pss = max(pss, sum(processes.memory_kib(p, "Pss") for p in pids))
        time.sleep(0.002)
    return rss, pss


def bytes_per_entry(ledger: str) -> tuple[int, float]:
    conn = sqlite3.connect(ledger)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    entries = conn.execute("SELECT count(*) FROM batch_files").fetchone()[0]
    conn.close()
    return entries, os.path.getsize(ledger) / entries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", default=os.path.join(OUT, "tree100k"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--producers", default="1,2")
    ap.add_argument("--flat", type=int, default=0, metavar="N")
    ap.add_argument("--old", metavar="DIR")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if args.flat:
        tree = os.path.join(OUT, f"flat-{args.flat}")
        entries = make_flat(tree, args.flat)
    else:
        tree = os.path.abspath(args.tree)
        entries = make_tree(tree)
    ledger = os.path.join(OUT, "walk-bench.db")
    counts = [int(p) for p in args.producers.split(",")]
    if args.old:
        run_command(["find", tree])                  # warm the cache
        for p in counts:
            ab(args.old, tree, entries, p, args.runs)
        return
    load = os.getloadavg()[0]
    run_command(["find", tree])                      # warm the cache
    walk_in_process(ledger, tree, 1)                 # and the ledger's directory

    rows = [("find", timed(lambda: run_command(["find", tree]), args.runs)),
            ("fpart -L -f 500", timed(lambda: run_command(
                ["fpart", "-L", "-f", "500", "-o", "/dev/null", tree]), args.runs))]
    for p in counts:
        rows.append((f"fleetsync walk P={p}",
                     timed(lambda: walk_in_process(ledger, tree, p), args.runs)))
    for p in counts:
        rows.append((f"  same, whole python -c P={p}",
                     timed(lambda: walk_as_process(ledger, tree, p), args.runs)))

    print(f"tree {tree}: {entries:,} entries; median of {args.runs} runs, warm cache; "
          f"CPU s = user + sys of every process, median")
    print(f"1-minute load average at the start: {load:.2f} (on {os.cpu_count()} CPUs)")
    print(f"{'':32} {'median s':>9} {'entries/s':>11} {'min s':>7} {'max s':>7} {'CPU s':>7}")
    for name, (ts, cpu) in rows:
        med = statistics.median(ts)
        print(f"{name:32} {med:9.3f} {entries / med:11,.0f} {min(ts):7.3f} {max(ts):7.3f} "
              f"{statistics.median(cpu):7.3f}")
    for p in counts:
        rss, pss = peak_memory_kib(ledger, tree, p)
        listed, per_entry = bytes_per_entry(ledger)
        assert listed == entries, (listed, entries)
        batches = sqlite3.connect(ledger).execute("SELECT count(*) FROM batches").fetchone()[0]
        print(f"P={p}: peak RSS {rss / 1024:.1f} MiB, PSS {pss / 1024:.1f} MiB "
              f"(parent + producers); ledger {per_entry:.1f} bytes/entry after a checkpoint; "
              f"{batches} batches")


if __name__ == "__main__":
    main()
