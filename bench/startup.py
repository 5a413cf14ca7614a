"""bench/startup: where the time goes from `fleetsync run`'s launch to its first rsync.

    .venv/bin/python bench/startup.py [--runs 5] [--files 200] [--lab 4] [--old DIR]

A small tree (--files files of 4 KiB, made once), a fresh ledger and DEST each
round, the API on a free port as in real use. Interleaved in every round, each
timed from its own launch:

- `fleetsync run` (local inventory, or --lab N: N lab hosts of tests/lab.py over
  ssh; needs root): a timeline of when each step began, from the processes the
  run starts (their start time in /proc, 10 ms ticks, sampled every 5 ms) and
  from the ledger's own timestamps: `ansible-inventory` and `ansible-playbook`
  started (and ended), the ledger's migration begun (run_started_ts), the walk's
  first batch enqueued, the first host's preflight passed, the first batch
  claimed, the first rsync started (its attempt's start_ts, taken on the worker);
- the peer: a bare `ansible-playbook` of one `raw` task (`date`) on the same
  inventory, launch to the task's command running on the host, and its wall time;
- the floor: a plain `rsync -a` of the same tree, launch to its exit;
- with --old DIR: `fleetsync-old`, the same `fleetsync run` from another version (DIR
  holds it as a package `fleetsync`, e.g. `git archive COMMIT controller ledger api
  playbooks inventory | tar -x -C DIR/fleetsync` and an empty `__init__.py`), first
  on PYTHONPATH.

Prints every round and the medians, with the load average before and after.
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)                      # tests.lab, for --lab
BIN = os.path.dirname(sys.executable)
FLEETSYNC = [sys.executable, "-m", "fleetsync.controller.cli"]
LOCAL = os.path.join(REPO, "inventory", "local.ini")
TICK = os.sysconf("SC_CLK_TCK")

PLAY = """- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.raw: "date +%s.%N >> {marks}"
"""


def make_tree(root: str, files: int) -> None:
    if os.path.exists(os.path.join(root, ".complete")):
        return
    for i in range(files):
        d = os.path.join(root, f"d{i % 10}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
            f.write(os.urandom(4096))
    open(os.path.join(root, ".complete"), "w").close()


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class Sampler(threading.Thread):
    """The first start (and last sighting) of each process under `root` whose command
    line holds one of `names` (CLOCK_BOOTTIME seconds). The machine is shared: other
    processes of the same names are not this run's."""

    def __init__(self, names: list[str], root: int):
        super().__init__(daemon=True)
        self.names, self.root = names, root
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.mine = {root}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            now = boottime()
            for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    if pid not in self.mine:
                        if int(fields[1]) not in self.mine:
                            continue
                        self.mine.add(pid)
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                start = int(fields[19]) / TICK
                for name in self.names:
                    if name in cmd:
                        self.first[name] = min(self.first.get(name, start), start)
                        self.last[name] = now
            time.sleep(0.005)


def fresh(*paths: str) -> None:
    for p in paths:
        subprocess.run(["rm", "-rf", p], check=True)


def fleetsync_round(src: str, dest: str, work: str, inv: str, env: dict) -> dict[str, float]:
    """One `fleetsync run`, its timeline: seconds after launch."""
    ledger = os.path.join(work, "startup.db")
    fresh(dest, ledger, ledger + "-wal", ledger + "-shm")
    names = ["ansible-inventory", "ansible-playbook", "rsync --archive"]
    t0, b0 = time.time(), boottime()
    t = time.perf_counter()
    p = subprocess.Popen([*FLEETSYNC, "run", "--src", src, "--dest", dest, "--ledger", ledger,
                          "--inventory", inv, "--port", "0"], cwd=work, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampler = Sampler(names, p.pid)
    sampler.start()
    err = p.communicate()[1]
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"fleetsync run exited {p.returncode}: {err.decode()[-2000:]}")
    sampler.done.set()
    sampler.join()
    marks = {f"{n.split()[0]} started": v - b0 for n, v in sampler.first.items()}
    if "ansible-inventory" in sampler.last:
        marks["ansible-inventory ended"] = sampler.last["ansible-inventory"] - b0
    db = sqlite3.connect(ledger)
    for what, sql in (("ledger: run begun", "SELECT run_started_ts FROM migration"),
                      ("ledger: first batch enqueued", "SELECT min(created_ts) FROM batches"),
                      ("ledger: first preflight passed", "SELECT min(first_seen_ts) FROM workers"),
                      ("ledger: first batch claimed", "SELECT min(claimed_ts) FROM batches"),
                      ("first rsync started", "SELECT min(start_ts) FROM attempts")):
        value = db.execute(sql).fetchone()[0]
        if value is not None:
            marks[what] = value - t0
    db.close()
    marks["exit"] = wall
    return marks


def playbook_round(inv: str, work: str, env: dict) -> dict[str, float]:
    marks = os.path.join(work, "startup-marks")
    play = os.path.join(work, "startup-play.yml")
    with open(play, "w") as f:
        f.write(PLAY.format(marks=marks))
    fresh(marks)
    t0 = time.time()
    t = time.perf_counter()
    subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", inv, play], check=True,
                   env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    with open(marks) as f:
        first = min(float(line) for line in f if line.strip())
    return {"raw task ran": first - t0, "exit": wall}


def rsync_round(src: str, dest: str) -> dict[str, float]:
    fresh(dest)
    t = time.perf_counter()
    subprocess.run(["rsync", "-a", src + "/", dest + "/"], check=True)
    return {"exit": time.perf_counter() - t}


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--lab", type=int, default=0, help="N lab hosts over ssh (root)")
    ap.add_argument("--old", help="a directory holding another version as package fleetsync")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    args = ap.parse_args()
    src = os.path.join(args.out, f"startup-src-{args.files}")
    dest = os.path.join(args.out, "startup-dest")
    work = os.path.join(args.out, "startup-work")
    os.makedirs(work, exist_ok=True)
    make_tree(src, args.files)
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""),
               ANSIBLE_LOCALHOST_WARNING="False")
    inv, lab = LOCAL, None
    if args.lab:
        from tests.lab import Lab, lab_or_skip
        why = lab_or_skip()
        if why:
            raise SystemExit(f"bench/startup: no lab here: {why}")
        lab = Lab()
        hosts = lab.add(args.lab)
        inv = os.path.join(work, "lab.ini")
        lab.inventory(inv, hosts, fleetsync_slots=2)
        env = dict(env, **lab.env())
    print(f"load before: {load()}; inventory {inv}; {args.files} files", flush=True)
    tools = {"fleetsync": lambda: fleetsync_round(src, dest, work, inv, env),
             "ansible-playbook": lambda: playbook_round(inv, work, env),
             "rsync -a": lambda: rsync_round(src, dest)}
    if args.old:
        old_env = dict(env, PYTHONPATH=os.path.abspath(args.old))
        tools["fleetsync-old"] = lambda: fleetsync_round(src, dest, work, inv, old_env)
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in tools}
    try:
        for i in range(args.runs):
            for name, fn in tools.items():
                marks = fn()
                rounds[name].append(marks)
                shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(marks.items(),
                                                                      key=lambda kv: kv[1]))
                print(f"round {i + 1} {name}: {shown}  (load {load()})", flush=True)
    finally:
        if lab is not None:
            lab.close()
    print(f"\nmedians of {args.runs} interleaved rounds, seconds after launch "
          f"(load after: {load()}):")
    for name, runs in rounds.items():
        print(f"  {name}:")
        keys = {k for r in runs for k in r}
        meds = {k: statistics.median([r[k] for r in runs if k in r]) for k in keys}
        for k, v in sorted(meds.items(), key=lambda kv: kv[1]):
            print(f"    {v:6.3f}  {k}")


if __name__ == "__main__":
    main()
