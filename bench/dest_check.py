"""bench/dest_check: what the look at DEST after a failed batch costs (issue 27, item 2).

    flock /tmp/fleetsync-bench.lock .venv/bin/python bench/dest_check.py [--files 10000] \
        [--size 4096] [--runs 5]

One batch of --files files (odd names among them) of --size bytes, on this machine's
local disk. Interleaved, --runs rounds of:

- copy: the batch's own rsync into an empty DEST (what a batch costs anyway);
- look, all there: controller/rsync.py's _dest_check, the exact shell the worker
  runs, over a DEST that holds every entry (nothing printed);
- look, none there: the same over an empty DEST (a line per entry: the most it prints).

Medians in seconds, and the look's cost as a share of the copy's. The look runs
only for a batch that failed as a whole, so it adds nothing to a healthy run.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

from fleetsync.controller import rsync


def _tree(src: str, files: int, size: int) -> list[bytes]:
    names = []
    for i in range(files):
        d = b"d%03d" % (i // 1000)
        os.makedirs(os.path.join(os.fsencode(src), d), exist_ok=True)
        name = d + (b"/f%05d" % i if i % 100 else b"/odd\n\xff%05d" % i)
        with open(os.path.join(os.fsencode(src), name), "wb") as f:
            f.write(b"x" * size)
        names.append(name)
    return sorted({os.path.dirname(n) for n in names}) + names


def _timed(cmd: str, env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(["/bin/sh", "-c", cmd], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="fleetsync-dest-check.")
    try:
        src, full, empty = (os.path.join(work, n) for n in ("src", "full", "empty"))
        names = _tree(src, a.files, a.size)
        lst = os.path.join(work, "lst")
        with open(lst, "wb") as f:
            f.write(b"".join(n + b"\0" for n in names))
        env = dict(os.environ, L=lst, O=os.path.join(work, "out"))
        job = rsync.Job(1, 1, names, rsync.DEFAULT_RSYNC_OPTIONS, 0)
        copy = (f"rsync {' '.join(rsync.DEFAULT_RSYNC_OPTIONS)} --from0 --files-from=\"$L\" "
                f"{src}/ {os.path.join(work, 'copy')}/")
        subprocess.run(["/bin/sh", "-c", copy.replace("/copy/", "/full/")], env=env, check=True)
        os.mkdir(empty)
        looks = {dest: rsync._dest_check(job, src, dest, "m", '"$L"', '"$O"', 900)
                 for dest in (full, empty)}
        times = {"copy": [], "look, all there": [], "look, none there": []}
        for _ in range(a.runs):
            shutil.rmtree(os.path.join(work, "copy"), ignore_errors=True)
            times["copy"].append(_timed(copy, env))
            times["look, all there"].append(_timed(looks[full], env))
            times["look, none there"].append(_timed(looks[empty], env))
        base = statistics.median(times["copy"])
        print(f"{a.files} files of {a.size} B, {a.runs} runs, medians; "
              f"load average {os.getloadavg()[0]:.2f}")
        for what, ts in times.items():
            m = statistics.median(ts)
            print(f"  {what:18} {m:7.3f} s  ({100 * m / base:5.1f} % of the copy)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
