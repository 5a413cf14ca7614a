"""bench/custody: what recording checksums costs the controller and the ledger, and
verify by file against rsync's checksum dry run (issue 23's figures).

    flock /tmp/fleetsync-bench.lock .venv/bin/python bench/custody.py [--batches 200] \
        [--runs 3] [--files 20000] [--out bench/out] [--skip-verify] [--skip-controller]

1. The controller's work per batch for its result, on one core, in this process:
   parsing a 500-file batch's framed output (controller/outcome.py) and recording it
   in a real ledger (controller/file_outcomes.record_batch: the batch's transition,
   its attempt, its checksums), without checksum lines (as before issue 23) and
   with them, in the two transports tried: `@@C HEX NAME` (the name as rsync prints
   it; what fleetsync does) and `@@C POS HEX` (the entry's position in the batch's
   list: the controller maps it back through the list it sent). Interleaved, medians
   of --runs rounds of --batches batches each; and the bytes each output carries.
2. The ledger's bytes per entry before and after (checksums NULL, then recorded),
   from the same ledgers (page count after VACUUM), extrapolated to 10M entries.
3. `fleetsync verify` (hashes DEST alone, by file) against `rsync -a -c --dry-run
   SRC/ DEST/` (reads both sides), on bench/copy.py's tree copied by fleetsync,
   interleaved, --runs each.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

from fleetsync.controller import file_outcomes, outcome, protocol
from fleetsync.controller.policy import Policy
from fleetsync.ledger import batches, db, migration


def _bench_copy():
    """bench/copy.py (its tree), loaded by path: its name is the standard library's."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_copy", os.path.join(HERE, "copy.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

FILES = 500
FLEETSYNC = [sys.executable, "-m", "fleetsync.controller.cli"]


def names(task_id: int) -> list[bytes]:
    """Names shaped like bench/copy.py's tree (`dNN/eNN/fNNNNNN.dat`)."""
    return [b"d%02d/e%02d/f%06d.dat" % (k % 40, (k // 40) % 25, task_id * FILES + k)
            for k in range(FILES)]


def output(task_id: int, paths: list[bytes], style: str) -> str:
    """One batch's framed output as the worker's cap leaves it."""
    lines = [f"@@fleetsync begin task={task_id} claim=1 kind=copy start=1.0"]
    for k, p in enumerate(paths):
        digest = os.urandom(16).hex()
        if style == "name":
            lines.append(f"{protocol.SUM}{digest} {p.decode()}")
        elif style == "position":
            lines.append(f"{protocol.SUM}{k} {digest}")
    lines += ["Total bytes sent: 1,234,567", "Total bytes received: 12,345",
              f"@@fleetsync end task={task_id} claim=1 rc=0 end=2.0", ""]
    return "\n".join(lines)


_POS = re.compile(rf"^{protocol.SUM}(\d+) ([0-9a-f]+)$", re.M)


def parse_position(text: str, paths: list[bytes]) -> outcome.Outcome:
    """The position-keyed transport's reading: the same Outcome, names from the list."""
    out = outcome.parse_all("\n".join(line for line in text.split("\n")
                                      if not line.startswith(protocol.SUM)))[0]
    out.sums = {paths[int(m[1])]: bytes.fromhex(m[2]) for m in _POS.finditer(text)}
    return out


def ledger(path: str, count: int) -> list[list[bytes]]:
    engine = db.writer(path)
    migration.open_or_create(engine, "/src", "/dest", {})
    made = []
    with engine.connect() as conn, conn.begin():
        for t in range(1, count + 1):
            paths = names(t)
            batches.create(conn, [(p, 0, 30000, 0, 1_700_000_000, 64) for p in paths],
                           FILES, 0, FILES * 30000, 0, time.time())
            made.append(paths)
    return made


def controller_cost(batches_n: int, runs: int, workdir: str) -> None:
    styles = ["none", "name", "position"]
    ms = {s: [] for s in styles}
    size = {s: 0 for s in styles}
    ledgers = {}
    for s in styles:
        path = os.path.join(workdir, f"{s}.db")
        ledgers[s] = (path, ledger(path, batches_n * runs))
    policy = Policy()
    for r in range(runs):
        for s in styles:          # interleaved: one round of each, in turn
            path, lists = ledgers[s]
            engine = db.writer(path)
            with engine.connect() as conn:
                claims = batches.claim(conn, "w", batches_n)
                texts = [(c.task_id, output(c.task_id, lists[c.task_id - 1], s))
                         for c in claims]
                size[s] = len(texts[0][1])
                t0 = time.process_time()
                for task_id, text in texts:
                    out = (parse_position(text, lists[task_id - 1]) if s == "position"
                           else outcome.parse_all(text)[0])
                    out.claim_no = [c.claim_no for c in claims if c.task_id == task_id][0]
                    file_outcomes.record_batch(conn, out, "w", policy, "/src", "/dest")
                ms[s].append((time.process_time() - t0) * 1000 / batches_n)
            engine.dispose()
    print(f"controller CPU per {FILES}-file batch (parse + record), medians of {runs} "
          f"rounds of {batches_n} batches, interleaved:")
    for s in styles:
        print(f"  {s:9s} {statistics.median(ms[s]):6.2f} ms  output {size[s]:7d} bytes "
              f"({size[s] / FILES:.0f} per file)")
    for s in styles:
        path = ledgers[s][0]
        con = sqlite3.connect(path)
        con.execute("VACUUM")
        entries = con.execute("SELECT count(*) FROM batch_files").fetchone()[0]
        recorded = con.execute("SELECT count(*) FROM batch_files WHERE checksum IS NOT NULL"
                               ).fetchone()[0]
        con.close()
        per = os.path.getsize(path) / entries
        print(f"  ledger ({s}): {per:.1f} bytes per entry ({recorded} of {entries} with a "
              f"checksum): {per * 10e6 / 2**30:.2f} GiB at 10M entries")


def verify_vs_rsync(files: int, runs: int, out: str) -> None:
    src = os.path.join(out, f"copy-src-{files}")
    _bench_copy().make_tree(src, files)
    dest = os.path.join(out, "custody-dest")
    led = os.path.join(out, "custody.db")
    shutil.rmtree(dest, ignore_errors=True)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(led + suffix):
            os.unlink(led + suffix)
    subprocess.run([*FLEETSYNC, "run", "--src", src, "--dest", dest, "--ledger", led,
                    "--no-api"], check=True, cwd=REPO, capture_output=True)
    times = {"fleetsync verify": [], "rsync -c --dry-run": []}
    for i in range(runs):
        for name in times:
            t = time.perf_counter()
            if name == "fleetsync verify":
                r = subprocess.run([*FLEETSYNC, "verify", "--ledger", led], cwd=REPO,
                                   capture_output=True)
                ok = r.returncode == 0
            else:
                r = subprocess.run(["rsync", "-a", "-c", "-n", "-i", "--exclude=.complete",
                                    src + "/", dest + "/"], capture_output=True, text=True)
                ok = r.returncode == 0 and not [x for x in r.stdout.splitlines()
                                                if not x.startswith(".d")]
            times[name].append(time.perf_counter() - t)
            print(f"run {i + 1} {name:20s} {times[name][-1]:6.2f} s {'ok' if ok else 'FAILED'}"
                  f"  load {open('/proc/loadavg').read().split()[0]}", flush=True)
    med = {n: statistics.median(v) for n, v in times.items()}
    print(f"verify of {files} files, medians of {runs}: "
          + ", ".join(f"{n} {m:.2f} s" for n, m in med.items())
          + f"; verify / rsync: {med['fleetsync verify'] / med['rsync -c --dry-run']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--skip-verify", action="store_true")
    ap.add_argument("--skip-controller", action="store_true")
    args = ap.parse_args()
    print(f"load: {open('/proc/loadavg').read().strip()}")
    if not args.skip_controller:
        with tempfile.TemporaryDirectory() as work:
            controller_cost(args.batches, args.runs, work)
    if not args.skip_verify:
        verify_vs_rsync(args.files, args.runs, args.out)
    print(f"load: {open('/proc/loadavg').read().strip()}")


if __name__ == "__main__":
    main()
