"""Migration windows measured at DEST (issue 24): a cap changed mid-run, and a run
stopped by --max-duration, soft and hard.

    .venv/bin/python bench/window.py [--files 160] [--size 1MiB] [--cap 4MiB]
                                     [--new-cap 2MiB] [--change-after 20] [--runs 3]
                                     [--duration 15]

Local inventory, every slot busy (batches of 2 files, so a batch lasts about a
second at the cap and each slot always has one), `--no-api`.

A. The cap changed by command: `fleetsync run --bwlimit CAP`, then `fleetsync
   bwlimit NEW_CAP` --change-after seconds in. DEST's bytes (temporary files
   included: what has arrived) are sampled every 0.25 s. The rate over each 10 s
   window is compared with the cap in force: before the change, and after it from
   the moment the batches started before the change have ended (the attempts'
   end_ts; a batch that started under the old share keeps it). The peer in the
   same run is the cap itself: the goal is every window within 10 % of it.
B. `--max-duration D` (soft, then `--cutoff hard`): how long after the deadline the
   run exits (the goal: within one item soft, within 2 s hard), then a resume
   without limits finishes, and no batch has two succeeded attempts.

Prints each run's windows, the medians over --runs and the load average before and
after (`uptime`): the machine is shared.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.walk import OUT  # noqa: E402
from fleetsync.ledger import sizes  # noqa: E402

FLEETSYNC = [sys.executable, "-m", "fleetsync.controller.cli"]
WINDOW = 10.0          # seconds a rate is taken over
SAMPLE = 0.25          # seconds between two looks at DEST


def make_src(root: str, files: int, size: int) -> None:
    if os.path.isdir(root) and len(os.listdir(root)) == files:
        return
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    for i in range(files):
        with open(os.path.join(root, f"f{i:05d}"), "wb") as f:
            f.write(os.urandom(size))          # incompressible, as rsync sees it


def dest_bytes(dest: str) -> int:
    total = 0
    for top, _dirs, names in os.walk(dest):
        for n in names:
            try:
                total += os.lstat(os.path.join(top, n)).st_size
            except FileNotFoundError:
                pass               # a temporary file renamed as we looked
    return total


class Sampler(threading.Thread):
    """(time, bytes at DEST) every SAMPLE seconds until stopped."""

    def __init__(self, dest: str) -> None:
        super().__init__(daemon=True)
        self.dest, self.points, self.done = dest, [], threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE):
            self.points.append((time.time(), dest_bytes(self.dest)))

    def rate(self, start: float, end: float) -> float | None:
        inside = [(t, b) for t, b in self.points if start <= t <= end]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < WINDOW * 0.9:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def fresh(work: str) -> tuple[str, str]:
    dest, ledger = os.path.join(work, "dest"), os.path.join(work, "ledger.db")
    shutil.rmtree(dest, ignore_errors=True)
    for p in (ledger, ledger + "-wal", ledger + "-shm"):
        if os.path.exists(p):
            os.unlink(p)
    return dest, ledger


def run_args(src: str, dest: str, ledger: str, *extra: str) -> list[str]:
    return [*FLEETSYNC, "run", "--src", src, "--dest", dest, "--ledger", ledger, "--no-api",
            "--batch-files", "2", *extra]


def windows(sampler: Sampler, start: float, end: float) -> list[float]:
    out, t = [], start
    while t + WINDOW <= end:
        r = sampler.rate(t, t + WINDOW)
        if r is not None:
            out.append(r)
        t += WINDOW
    return out


def cap_change(src: str, work: str, cap: int, new_cap: int, after: float) -> dict:
    dest, ledger = fresh(work)
    os.makedirs(dest)
    sampler = Sampler(dest)
    sampler.start()
    launched = time.time()
    proc = subprocess.Popen(run_args(src, dest, ledger, "--bwlimit", str(cap)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(after)
    changed = time.time()
    subprocess.run([*FLEETSYNC, "bwlimit", "--ledger", ledger, str(new_cap)], check=True,
                   capture_output=True)
    proc.wait(timeout=3600)
    ended = time.time()
    sampler.done.set()
    sampler.join()
    con = sqlite3.connect(ledger)
    settled = con.execute("SELECT max(end_ts) FROM attempts WHERE start_ts < ?",
                          (changed,)).fetchone()[0] or changed
    first = con.execute("SELECT min(start_ts) FROM attempts").fetchone()[0] or launched
    con.close()
    # the last seconds hold the run's tail (fewer batches than slots): left out
    return {"before": [r / cap for r in windows(sampler, first, changed)],
            "after": [r / new_cap for r in windows(sampler, settled, ended - 3)],
            "settle_s": settled - changed, "rc": proc.returncode}


def stop_by_duration(src: str, work: str, cap: int, duration: float, cutoff: str) -> dict:
    dest, ledger = fresh(work)
    launched = time.time()
    r = subprocess.run(run_args(src, dest, ledger, "--bwlimit", str(cap), "--max-duration",
                                f"{int(duration)}s", "--cutoff", cutoff),
                       capture_output=True, timeout=3600)
    late = time.time() - launched - duration
    resumed = subprocess.run(run_args(src, dest, ledger), capture_output=True, timeout=3600)
    con = sqlite3.connect(ledger)
    twice = con.execute("SELECT count(*) FROM (SELECT task_id FROM attempts WHERE status = "
                        "'success' GROUP BY task_id HAVING count(*) > 1)").fetchone()[0]
    con.close()
    exact = subprocess.run(["diff", "-r", "-q", src, dest], capture_output=True).returncode == 0
    return {"rc": r.returncode, "late_s": late, "resume_rc": resumed.returncode,
            "succeeded_twice": twice, "exact": exact}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=160)
    ap.add_argument("--size", default="1MiB")
    ap.add_argument("--cap", default="4MiB")
    ap.add_argument("--new-cap", default="2MiB")
    ap.add_argument("--change-after", type=float, default=20.0)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    size, cap, new_cap = sizes.parse(a.size), sizes.parse(a.cap), sizes.parse(a.new_cap)
    work = os.path.join(OUT, "window")
    src = os.path.join(work, "src")
    make_src(src, a.files, size)
    print("load before:", os.getloadavg())
    changes, softs, hards = [], [], []
    for i in range(a.runs):            # interleaved: A, soft, hard, A, soft, hard, ...
        changes.append(cap_change(src, work, cap, new_cap, a.change_after))
        print(f"run {i + 1} cap change:", {k: ([round(x, 3) for x in v] if isinstance(v, list)
                                                else round(v, 2)) for k, v in changes[-1].items()})
        softs.append(stop_by_duration(src, work, cap, a.duration, "soft"))
        print(f"run {i + 1} --max-duration soft:", softs[-1])
        hards.append(stop_by_duration(src, work, cap, a.duration, "hard"))
        print(f"run {i + 1} --max-duration hard:", hards[-1])
    worst = [max(abs(x - 1) for x in c["before"] + c["after"]) for c in changes
             if c["before"] + c["after"]]
    print(f"cap {sizes.show(cap)}/s -> {sizes.show(new_cap)}/s: median of each run's worst "
          f"10 s window {statistics.median(worst) * 100:.1f} % off the cap "
          f"(goal <= 10 %); median settle after the change "
          f"{statistics.median(c['settle_s'] for c in changes):.2f} s")
    print(f"--max-duration {a.duration:.0f}s: exit after the deadline, median soft "
          f"{statistics.median(s['late_s'] for s in softs):.2f} s, hard "
          f"{statistics.median(h['late_s'] for h in hards):.2f} s; succeeded twice: "
          f"{sum(x['succeeded_twice'] for x in softs + hards)}; all exact after resume: "
          f"{all(x['exact'] for x in softs + hards)}")
    print("load after:", os.getloadavg())


if __name__ == "__main__":
    main()
