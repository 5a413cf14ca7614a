"""fleetsync next to find, fpart and fpsync on a slow mount it makes itself.

    flock /tmp/fleetsync-bench.lock .venv/bin/python bench/slowmount.py   # make bench installs fuse3, python3-fusepy
        [--latency-ms 0,1] [--runs 3] [--files 10000] [--slots 4,8] [--only walk,copy,cutover]

Makes (once) bench/out/slow-src-N: N files of 200 random bytes in 200 directories
(20 top directories, each with 9 subdirectories, N/200 files in each of the 200).
For each latency it mounts bench/slowfs.py over it (read-only FUSE, the latency
added to every metadata call and read, kernel attribute and entry caches off), then,
interleaved, --runs times each, on the same mount:

- walk: `find MNT`, `fpart -L -f 500 -o /dev/null MNT`, and the fleetsync walk with
  its default flags (P = defaults.PRODUCERS, threads as it decides), as a whole
  `python -c` process (interpreter start and imports included), into a fresh ledger;
  then one untimed walk per P in --mem-producers for the peak PSS of every walk
  process (parent, producers and their threads);
- copy: the first full copy, `fpsync -n 4 -f 500 MNT/ DEST/` against `fleetsync run`
  (local inventory with --slots slots per host, API off), DEST emptied before each;
- cutover: after a first copy by each tool, 5 files change in SRC (new contents, same
  size), then `fpsync -n 4 -f 500` again against `fleetsync run --rescan` on the ledger
  of that first copy; DEST is checked equal to SRC after each (rsync -n -i on the source).

Prints medians (and every run), ratios, and the load average before and after.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
OUT = os.path.join(REPO, "bench", "out")
SLOWFS = os.path.join(REPO, "bench", "slowfs.py")

from fleetsync.controller import defaults, processes  # noqa: E402

WALK_PROCESS = """
import sys
from fleetsync.controller.walk import Walk
from fleetsync.controller.producer import Limits
from fleetsync.ledger import db, migration
ledger, src, producers = sys.argv[1], sys.argv[2], int(sys.argv[3])
engine = db.writer(ledger)
migration.open_or_create(engine, src, ledger + '.dest', {})
engine.dispose()
walk = Walk(ledger, src, producers, Limits())
walk.start()
sys.exit(0 if walk.join() else 1)
"""


def make_tree(root: str, files: int) -> None:
    if os.path.isdir(root):
        return
    tmp = root + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    per = files // 200
    for t in range(20):
        top = os.path.join(tmp, f"t{t:02d}")
        for d in [top] + [os.path.join(top, f"s{s}") for s in range(9)]:
            os.makedirs(d, exist_ok=True)
            for f in range(per):
                with open(os.path.join(d, f"f{f:04d}"), "wb") as fh:
                    fh.write(os.urandom(200))
    os.rename(tmp, root)


class Mount:
    def __init__(self, src: str, mnt: str, latency_ms: float):
        self.src, self.mnt, self.latency = src, mnt, latency_ms

    def __enter__(self):
        os.makedirs(self.mnt, exist_ok=True)
        if os.path.ismount(self.mnt):
            subprocess.run(["umount", self.mnt], check=False)
        self.proc = subprocess.Popen(["/usr/bin/python3", SLOWFS, "--latency-ms",
                                      str(self.latency), self.src, self.mnt])
        deadline = time.time() + 20
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit("slowfs did not mount (make bench installs fuse3 and "
                                 "python3-fusepy; /dev/fuse and root are needed)")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        subprocess.run(["umount", self.mnt], check=False)
        self.proc.wait(timeout=30)


def timed(argv: list[str], **kw) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, **kw)
    return time.perf_counter() - t0


def remove(*paths: str) -> None:
    for p in paths:
        if os.path.isdir(p):
            shutil.rmtree(p)
        else:
            for s in ("", "-wal", "-shm"):
                if os.path.exists(p + s):
                    os.unlink(p + s)


def walk_once(ledger: str, mnt: str, producers: int) -> float:
    remove(ledger)
    t = timed([sys.executable, "-c", WALK_PROCESS, ledger, mnt, str(producers)], cwd=REPO)
    n = sqlite3.connect(ledger).execute("SELECT count(*) FROM batch_files").fetchone()[0]
    assert n > 0, "the walk listed nothing"
    return t


def peak_pss_mib(ledger: str, mnt: str, producers: int) -> tuple[float, float]:
    """Peak summed PSS of the walk process and its producers (threads share their
    process's memory), polled every 5 ms; and the walk's time meanwhile."""
    remove(ledger)
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", WALK_PROCESS, ledger, mnt, str(producers)],
                             cwd=REPO)
    pss = 0
    while child.poll() is None:
        pss = max(pss, sum(processes.memory_kib(p, "Pss")
                           for p in processes.with_children(child.pid)))
        time.sleep(0.005)
    return pss / 1024, time.perf_counter() - t0


def same_tree(src: str, dest: str) -> bool:
    out = subprocess.run(["rsync", "-a", "-n", "-i", "--delete", src + "/", dest + "/"],
                         capture_output=True, check=True).stdout
    return not [line for line in out.splitlines() if not line.startswith(b".d..t")]


def fpsync(mnt: str, dest: str) -> float:
    work = tempfile.mkdtemp(prefix="fpsync-", dir=OUT)
    try:
        return timed(["fpsync", "-n", "4", "-f", "500", "-t", work, mnt + "/", dest + "/"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fleetsync(mnt: str, dest: str, ledger: str, inventory: str, *extra: str) -> float:
    return timed([sys.executable, "-m", "fleetsync.controller.cli", "run", "--src", mnt,
                  "--dest", dest, "--ledger", ledger, "--no-api", "--inventory", inventory,
                  *extra], cwd=REPO)


def inventory_with(slots: int) -> str:
    path = os.path.join(OUT, f"slow-inventory-{slots}.ini")
    with open(path, "w") as f:
        f.write(f"localhost ansible_connection=local ansible_python_interpreter="
                f"{sys.executable} fleetsync_slots={slots}\n")
    return path


def change_five(src: str, round_no: int) -> None:
    for i in range(5):
        p = os.path.join(src, f"t{i * 4:02d}", f"s{i}", "f0001")
        with open(p, "wb") as f:
            f.write(os.urandom(200))
        os.utime(p, (time.time() + round_no, time.time() + round_no))


def show(title: str, rows: list[tuple[str, list[float]]], peer: str) -> None:
    print(f"\n{title}")
    base = statistics.median(dict(rows)[peer]) if peer in dict(rows) else None
    print(f"{'':40} {'median s':>9} {'x ' + peer:>14}  runs")
    for name, ts in rows:
        med = statistics.median(ts)
        ratio = f"{base / med:13.2f}x" if base else ""
        print(f"{name:40} {med:9.2f} {ratio:>14}  {' '.join(f'{t:.2f}' for t in ts)}")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-ms", default="0,1")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--slots", default="4,8")
    ap.add_argument("--mem-producers", default="1,2,4")
    ap.add_argument("--only", default="walk,copy,cutover")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    src = os.path.join(OUT, f"slow-src-{args.files}")
    make_tree(src, args.files)
    parts = args.only.split(",")
    slots = [int(s) for s in args.slots.split(",")]
    print(f"tree {src}: {args.files} files of 200 bytes in 200 directories; {os.cpu_count()} "
          f"CPUs, shared; fleetsync defaults: --producers {defaults.PRODUCERS}, up to "
          f"{defaults.WALK_THREADS} stat threads per producer")
    for lat in [float(x) for x in args.latency_ms.split(",")]:
        mnt = os.path.join(OUT, "slowmnt")
        ledger = os.path.join(OUT, "slow-walk.db")
        with Mount(src, mnt, lat):
            print(f"\n=== latency {lat:g} ms; load average {open('/proc/loadavg').read().strip()}")
            if "walk" in parts:
                rows = {"find": [], "fpart -L -f 500": [],
                        f"fleetsync walk (defaults, P={defaults.PRODUCERS})": []}
                for _ in range(args.runs):
                    rows["find"].append(timed(["find", mnt]))
                    rows["fpart -L -f 500"].append(
                        timed(["fpart", "-L", "-f", "500", "-o", "/dev/null", mnt]))
                    rows[f"fleetsync walk (defaults, P={defaults.PRODUCERS})"].append(
                        walk_once(ledger, mnt, defaults.PRODUCERS))
                show(f"walk, {lat:g} ms", list(rows.items()), "fpart -L -f 500")
                for p in [int(x) for x in args.mem_producers.split(",")]:
                    pss, t = peak_pss_mib(ledger, mnt, p)
                    print(f"  walk P={p}: peak PSS {pss:.1f} MiB (every walk process), "
                          f"{t:.2f} s while polled")
                print(f"  load average {open('/proc/loadavg').read().strip()}")
            if "copy" in parts or "cutover" in parts:
                rows = {"fpsync -n 4 -f 500": []}
                cut = {"fpsync -n 4 -f 500 again": []}
                for s in slots:
                    rows[f"fleetsync run, {s} slots"] = []
                    cut[f"fleetsync run --rescan, {s} slots"] = []
                for r in range(args.runs):
                    dest = os.path.join(OUT, "slow-dest")
                    remove(dest)
                    os.makedirs(dest)
                    rows["fpsync -n 4 -f 500"].append(fpsync(mnt, dest))
                    assert same_tree(src, dest), "fpsync left DEST different"
                    if "cutover" in parts:
                        change_five(src, r * 10 + 1)
                        cut["fpsync -n 4 -f 500 again"].append(fpsync(mnt, dest))
                        assert same_tree(src, dest), "fpsync's cutover left DEST different"
                    for s in slots:
                        remove(dest, ledger)
                        os.makedirs(dest)
                        inv = inventory_with(s)
                        rows[f"fleetsync run, {s} slots"].append(
                            fleetsync(mnt, dest, ledger, inv))
                        assert same_tree(src, dest), "fleetsync left DEST different"
                        if "cutover" in parts:
                            change_five(src, r * 10 + 2 + s)
                            cut[f"fleetsync run --rescan, {s} slots"].append(
                                fleetsync(mnt, dest, ledger, inv, "--rescan"))
                            assert same_tree(src, dest), "fleetsync's cutover left DEST different"
                if "copy" in parts:
                    show(f"first full copy, {lat:g} ms", list(rows.items()), "fpsync -n 4 -f 500")
                if "cutover" in parts:
                    show(f"cutover (5 files changed), {lat:g} ms", list(cut.items()),
                         "fpsync -n 4 -f 500 again")
                print(f"  load average {open('/proc/loadavg').read().strip()}")
                remove(os.path.join(OUT, "slow-dest"), ledger)


if __name__ == "__main__":
    main()
