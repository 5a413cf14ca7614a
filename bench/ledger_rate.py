"""The ledger's share of a fleet: how many batch results per second one SQLite ledger
records, and what each costs, with the real claim and record paths (issue 26, item 3).

    flock /tmp/fleetsync-bench.lock .venv/bin/python bench/ledger_rate.py \
        [--batches 20000] [--entries 20] [--writers 1,4,16] [--rounds 3]

A ledger of N batches of E entries is enqueued as the walk does (WalkQueue.sync). Then
W processes each loop: claim one batch (batches.claim, as a slot's lookup does in
Ansible's worker processes) and record its success (file_outcomes.record_batch, as
the dispatcher does), every call its own transaction on its own connection, as in a
run. A reader process polls the API's hot reads (queries.status, progress, throughput)
all the while, as a dashboard would. Each round runs every W in turn, on a fresh copy
of the ledger, interleaved; the figures are medians over rounds:

- results/s: batches claimed and recorded per second by all W together (the ceiling
  of the fleet's result rate on this disk: 1,000 hosts x 2 slots at one batch per 10 s
  each would ask 200/s);
- CPU ms per result: the writers' CPU (user + sys) per batch, the controller's share
  of a result that the ledger costs;
- the floor beside it: the same number of bare single-row UPDATE transactions on the
  same file and connection settings, one writer (what SQLite alone costs per commit).

Nothing here is Ansible's: bench/fleet.py measures the whole controller.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import resource
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fleetsync.controller import outcome  # noqa: E402
from fleetsync.controller.file_outcomes import record_batch  # noqa: E402
from fleetsync.controller.policy import Policy  # noqa: E402
from fleetsync.ledger import batches, db, migration, queries  # noqa: E402
from fleetsync.ledger.walkqueue import Cut, WalkQueue  # noqa: E402


def build(path: str, n: int, per: int) -> None:
    """A ledger of n batches of `per` files each (one directory, files of 100 B)."""
    engine = db.writer(path)
    migration.open_or_create(engine, "/src", "/dest", {})
    with engine.connect() as conn:
        queue = WalkQueue(conn, 1, 1)
        for start in range(0, n, 1000):
            cuts = []
            for i in range(start, min(n, start + 1000)):
                entries = [(b"d%d" % i, 1, 0, 1, 1000, 8)] + [
                    (bytearray(b"d%d/f%d" % (i, j)), 0, 100, 0, 1000, 8) for j in range(per)]
                cuts.append(Cut(entries, per, 1, 100 * per, [], None))
            queue.sync([], cuts, 0)
    engine.dispose()


def _output(task_id: int, claim: int) -> str:
    """A successful batch's output as controller/rsync.py frames it, with --stats."""
    return "\n".join([f"@@fleetsync begin task={task_id} claim={claim} kind=copy start=1.0",
                      "Total bytes sent: 2,345", "Total bytes received: 67",
                      f"@@fleetsync end task={task_id} claim={claim} rc=0 end=2.0"])


def writer(path: str, name: str, stop_at: int, counts) -> None:
    """Claim and record until the ledger has no pending batch (or stop_at done)."""
    engine = db.writer(path)
    policy, done = Policy(max_retries=3), 0
    with engine.connect() as conn:
        while done < stop_at:
            claimed = batches.claim(conn, name, 1)
            if not claimed:
                break
            c = claimed[0]
            record_batch(conn, outcome.parse(_output(c.task_id, c.claim_no)), name, policy,
                         "/src", "/dest")
            done += 1
    ru = resource.getrusage(resource.RUSAGE_SELF)
    counts.put((done, ru.ru_utime + ru.ru_stime))
    engine.dispose()


def reader(path: str, stop) -> None:
    """The API's hot reads in a loop, as a dashboard polling it would."""
    engine = db.reader(path)
    with engine.connect() as conn:
        while not stop.is_set():
            with conn.begin():
                queries.status(conn)
                queries.progress(conn)
                queries.throughput(conn)
            time.sleep(0.05)
    engine.dispose()


def one(template: str, workdir: str, writers: int, limit: int) -> tuple[float, float]:
    """(results per second, writers' CPU ms per result) of one round at W writers."""
    path = os.path.join(workdir, f"w{writers}.db")
    _remove(path)      # a WAL left by the last round would be replayed into the copy
    shutil.copy(template, path)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(template + suffix):
            shutil.copy(template + suffix, path + suffix)
    counts, stop = mp.Queue(), mp.Event()
    watch = mp.Process(target=reader, args=(path, stop))
    watch.start()
    procs = [mp.Process(target=writer, args=(path, f"w{i}", limit // writers, counts))
             for i in range(writers)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = []
    while len(results) < len(procs):
        try:
            results.append(counts.get(timeout=1))
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in procs):   # a writer died: say so
                stop.set()
                raise SystemExit(f"bench/ledger_rate: a writer failed at W={writers}")
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    stop.set()
    watch.join()
    _remove(path)
    done = sum(r[0] for r in results)
    return done / wall, 1000 * sum(r[1] for r in results) / max(done, 1)


def _remove(path: str) -> None:
    """A ledger copy and its -wal and -shm (the API reader, read-only, closes last and
    cannot remove the WAL)."""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)


def floor(template: str, workdir: str, n: int) -> float:
    """Bare commits per second: one single-row UPDATE per transaction, one writer."""
    path = os.path.join(workdir, "floor.db")
    _remove(path)
    shutil.copy(template, path)
    engine = db.writer(path)
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        t0 = time.perf_counter()
        for i in range(1, n + 1):
            raw.execute("BEGIN IMMEDIATE")
            raw.execute("UPDATE batches SET claimed_ts = ? WHERE task_id = ?", (time.time(), i))
            raw.execute("COMMIT")
        rate = n / (time.perf_counter() - t0)
    engine.dispose()
    _remove(path)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=20000)
    ap.add_argument("--entries", type=int, default=20)
    ap.add_argument("--writers", default="1,4,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-round", type=int, default=4000, help="results recorded per round")
    args = ap.parse_args()
    widths = [int(w) for w in args.writers.split(",")]
    work = tempfile.mkdtemp(prefix="fleetsync-rate-")
    template = os.path.join(work, "template.db")
    build(template, args.batches, args.entries)
    print(f"load average before: {os.getloadavg()}; ledger {args.batches} batches x "
          f"{args.entries} entries, {args.per_round} results a round")
    rates: dict[str, list[tuple[float, float]]] = {str(w): [] for w in widths}
    floors = []
    for r in range(args.rounds):
        for w in widths:
            rates[str(w)].append(one(template, work, w, args.per_round))
        floors.append(floor(template, work, args.per_round))
        print(f"round {r + 1}: " + ", ".join(
            f"W={w} {rates[str(w)][-1][0]:.0f}/s {rates[str(w)][-1][1]:.2f} ms" for w in widths)
            + f"; floor {floors[-1]:.0f} commits/s", flush=True)
    for w in widths:
        rate = statistics.median(x[0] for x in rates[str(w)])
        cpu = statistics.median(x[1] for x in rates[str(w)])
        print(f"W={w}: median {rate:.0f} results/s, {cpu:.2f} ms CPU per result "
              f"(claim + record), {rate / statistics.median(floors):.2f} of the floor")
    print(f"floor: median {statistics.median(floors):.0f} bare commits/s")
    print(f"load average after: {os.getloadavg()}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
