"""Benchmark of the status API next to a floor, at a million batches, while a writer
moves batches through the ledger.

    .venv/bin/python bench/api.py                   # 1,000,000 batches, 1,000 workers, 5 rounds
    .venv/bin/python bench/api.py --batches 100000 --seconds 1 --rounds 1   # a quick look

The ledger is built once and kept in bench/out/ (rebuilt when --batches or
--workers change, or with --rebuild). Two servers run side by side, each in
its own process, on waitress with the same threads and settings: the floor (a
trivial Bottle route returning a 5-key dict) and `python -m
fleetsync.api.server`. 16 keep-alive HTTP clients (threads, in one process and
then spread over two) hammer one URL at a time on 127.0.0.1, the floor and
every endpoint in turn within each round, interleaved as floor, A, floor, B,
floor..., while a writer process claims and reports about 200 batches a second
through ledger/batches.py. Each endpoint's req/s and p99 are reported as a
ratio to the mean of the floor runs just before and after it (median over the
rounds), with its server CPU per request. Then: how old /status is when a
batch has succeeded (freshness), and one bare GET /results (every retained
result, streamed): time, size and server memory.
"""
from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sqlalchemy import text  # noqa: E402

from fleetsync.api.server import DEFAULT_THREADS  # noqa: E402
from fleetsync.controller import processes  # noqa: E402
from fleetsync.controller.processes import cpu_seconds  # noqa: E402
from fleetsync.ledger import batches, db, migration, schema  # noqa: E402

OUT = os.path.join(ROOT, "bench", "out")
HOST = "127.0.0.1"   # the bench only ever talks to this machine


def build_ledger(path: str, n: int, workers: int = 1000) -> None:
    """n batches (mostly succeeded, some failed, the rest pending), one attempt each for
    the finished ones, a few entries, `workers` workers, producers and log lines."""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    engine = db.writer(path)
    migration.open_or_create(engine, "/bench/src", "/bench/dest", {"bench": True})
    now = time.time()
    done, failed = int(n * 0.6), int(n * 0.01)
    with engine.connect() as conn, conn.begin():
        # One INSERT ... SELECT each: the triggers keep batch_counts exact as they go.
        conn.execute(text("""
            WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < :n)
            INSERT INTO batches(task_id, state, file_count, directory_count, estimated_bytes,
                                worker_id, producer_id, created_ts, claim)
            SELECT i, CASE WHEN i <= :done THEN 'succeeded'
                           WHEN i <= :done + :failed THEN 'failed' ELSE 'pending' END,
                   100 + i % 400, 1 + i % 7, 1048576 * (1 + i % 50),
                   CASE WHEN i <= :done + :failed THEN 'worker-' || (i % 32) END,
                   1 + i % 4, :now, CASE WHEN i <= :done + :failed THEN 1 ELSE 0 END
            FROM seq"""), dict(n=n, done=done, failed=failed, now=now))
        conn.execute(text("""
            INSERT INTO attempts(task_id, claim, retry_count, worker_id, status,
                                 rsync_exit_code, bytes_sent, bytes_received, start_ts,
                                 end_ts, received_ts, errors)
            SELECT task_id, 1, 0, worker_id,
                   CASE state WHEN 'succeeded' THEN 'success' ELSE 'failed' END,
                   CASE state WHEN 'succeeded' THEN 0 ELSE 2 END,
                   estimated_bytes, 4096, :now, :now + 2.0, :now + 2.1,
                   CASE state WHEN 'succeeded' THEN '[]' ELSE '["protocol error"]' END
            FROM batches WHERE state IN ('succeeded', 'failed') ORDER BY task_id"""),
            dict(now=now))
        conn.execute(text("""
            WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < 2000)
            INSERT INTO batch_files(task_id, path, is_dir, size)
            SELECT 1 + i / 100, CAST('dir/file-' || i AS BLOB), 0, 1048576 FROM seq"""))
        conn.execute(text("""
            WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < :w)
            INSERT INTO workers(worker_id, host, state, heartbeat_ts, slots)
            SELECT 'worker-' || i, 'host-' || i, 'up', :now - i % 60, 4 FROM seq"""),
            dict(now=now, w=workers - 1))
        conn.execute(text("""
            WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < 4)
            INSERT INTO producers(producer_id, state) SELECT i, 'done' FROM seq"""))
        conn.execute(text("""
            WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < 10000)
            INSERT INTO log(ts, level, task_id, message)
            SELECT :now, CASE WHEN i % 10 THEN 'warning' ELSE 'error' END, i,
                   'task ' || i || ' retry 1 exit=23' FROM seq"""), dict(now=now))
    with engine.connect() as conn:
        migration.start_run(conn)
    engine.dispose()


def same_schema(path: str) -> bool:
    """The cached ledger has every table and column of today's ledger/schema.py."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return all({c.name for c in table.columns}
                   <= {r[1] for r in conn.execute(f"PRAGMA table_info({name})")}
                   for name, table in schema.metadata.tables.items())
    finally:
        conn.close()


def ledger_path(n: int, workers: int, rebuild: bool) -> str:
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"api-{n}-w{workers}.db")
    if rebuild or not os.path.exists(path) or not same_schema(path):
        t0 = time.perf_counter()
        build_ledger(path, n, workers)
        print(f"built {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def writer(path: str, stop: mp.Event, rate: float, counter: mp.Value) -> None:
    """Claims batches 4 at a time and reports them succeeded (90%), retried (7%) or
    failed (3%), like a busy controller: `rate` batches a second (0: flat out)."""
    engine = db.writer(path)
    rng = random.Random(1)
    n = 0
    with engine.connect() as conn:
        migration.start_run(conn)
        next_beat = 0.0
        while not stop.is_set():
            t0 = time.perf_counter()
            for c in batches.claim(conn, f"worker-{rng.randrange(32)}", 4):
                report = batches.Report(c.task_id, c.claim_no, "bench-writer", 0,
                                        start_ts=time.time(), end_ts=time.time())
                roll = rng.random()
                if roll < 0.9:
                    batches.succeed(conn, report)
                elif roll < 0.97:
                    report.rsync_exit_code = 23
                    batches.retry(conn, report, c.retry_count + 1)
                else:
                    report.rsync_exit_code = 2
                    batches.fail(conn, report, c.retry_count)
                n += 1
            if time.monotonic() > next_beat:
                migration.heartbeat(conn)
                next_beat = time.monotonic() + 1.0
            counter.value = n
            if rate:
                time.sleep(max(0.0, 4 / rate - (time.perf_counter() - t0)))
    engine.dispose()


def floor_server(port: int, threads: int) -> None:
    """The floor: a trivial Bottle route on waitress, with fleetsync's settings and threads."""
    import bottle
    import waitress

    from fleetsync.api import server

    app = bottle.Bottle()

    @app.route("/floor")
    def floor() -> dict:
        return {"total_batches": 120, "completed_batches": 95, "failed_batches": 2,
                "queue_depth": 10, "producers_done": 4}

    waitress.serve(app, host=HOST, port=port, threads=threads, **server._SETTINGS)


def client(port: int, path: str, threads: int, seconds: float, out: mp.Queue) -> None:
    """`threads` keep-alive connections, each sending GET path in a loop."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    deadline = time.perf_counter() + seconds

    def loop(i: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        lat = latencies[i]
        while True:
            t0 = time.perf_counter()
            if t0 >= deadline:
                break
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            lat.append(time.perf_counter() - t0)
            if resp.status != 200:
                errors[i] += 1
        conn.close()

    pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put(([x for lat in latencies for x in lat], sum(errors), time.process_time()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_ready(port: int, path: str = "/healthz", timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=1)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the server on port {port} did not start")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, KiB."""
    return {k: processes.memory_kib(pid, k) for k in ("VmRSS", "VmHWM")}


def one_run(port: int, path: str, clients: int, procs: int, seconds: float) -> dict:
    out: mp.Queue = mp.Queue()
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    workers = [mp.Process(target=client, args=(port, path, k, seconds, out)) for k in per]
    for w in workers:
        w.start()
    lat: list[float] = []
    errors, client_cpu = 0, 0.0
    for _ in workers:
        got, bad, cpu = out.get()
        lat += got
        errors += bad
        client_cpu += cpu
    for w in workers:
        w.join()
    lat.sort()
    return dict(rps=len(lat) / seconds, p50=lat[len(lat) // 2] * 1000,
                p99=lat[int(len(lat) * 0.99)] * 1000, errors=errors,
                client_cpu_us=client_cpu * 1e6 / max(1, len(lat)))


def succeeded(path: str) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT batches FROM batch_counts WHERE state = 'succeeded'"
                            ).fetchone()[0]
    finally:
        conn.close()


def freshness(port: int, path: str, samples: int) -> list[float]:
    """Seconds from a count read in the ledger to /status showing at least that count."""
    import json
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    lags = []
    for _ in range(samples):
        time.sleep(random.uniform(0.05, 0.15))
        target, t0 = succeeded(path), time.monotonic()
        while True:
            conn.request("GET", "/status")
            if json.loads(conn.getresponse().read())["completed_batches"] >= target:
                break
            time.sleep(0.001)
        lags.append(time.monotonic() - t0)
    conn.close()
    return lags


def bare_results(port: int, pid: int) -> dict:
    """One bare GET /results: seconds, bytes, results, retained_count, server memory."""
    import json
    before = memory_kib(pid)
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    t0 = time.perf_counter()
    conn.request("GET", "/results")
    resp = conn.getresponse()
    first = resp.read(1)
    t_first = time.perf_counter() - t0
    body = first + resp.read()
    seconds = time.perf_counter() - t0
    conn.close()
    after = memory_kib(pid)
    doc = json.loads(body)
    return dict(seconds=seconds, first_byte=t_first, bytes=len(body),
                results=len(doc["results"]), retained_count=doc["retained_count"],
                chunked=resp.getheader("Transfer-Encoding"), rss_before=before["VmRSS"],
                rss_after=after["VmRSS"], peak_before=before["VmHWM"], peak_after=after["VmHWM"])


def measure(target: tuple, servers: dict, moved, writer_proc, args, procs: int,
            r: int) -> dict:
    """One run of the clients on one URL, with the writer's pace and the server's CPU."""
    name, port, url = target
    pid = servers[name.split()[0] if name.split()[0] in servers else "api"].pid
    before, cpu = moved.value, cpu_seconds(pid)
    res = one_run(port, url, args.clients, procs, args.seconds)
    if not writer_proc.is_alive():
        raise SystemExit("the writer died: the numbers would be for an idle ledger")
    res["writes"] = (moved.value - before) / args.seconds
    res["cpu_us"] = (cpu_seconds(pid) - cpu) * 1e6 / max(1.0, res["rps"] * args.seconds)
    print(f"  {procs} proc round {r + 1} {name:32s} {res['rps']:6.0f} req/s "
          f"p50 {res['p50']:6.2f} ms p99 {res['p99']:6.2f} ms errors {res['errors']} "
          f"writer {res['writes']:.0f} batches/s server CPU {res['cpu_us']:.0f} us/req",
          flush=True)
    return res


ENDPOINTS = ("/status,/progress,/throughput,/workers,/logs,/results?limit=100,"
             "/results?after=600000&limit=100,/batches/1?limit=100")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=1000, help="workers with a heartbeat")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--layouts", default="1,2", help="client processes, one layout each")
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                    help="waitress threads, of both servers")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--writer-rate", type=float, default=200.0,
                    help="batches claimed and reported per second (0: as fast as it can)")
    ap.add_argument("--endpoints", default=ENDPOINTS)
    ap.add_argument("--freshness", type=int, default=50, help="freshness samples (0: none)")
    ap.add_argument("--no-bare", action="store_true", help="skip the bare GET /results")
    ap.add_argument("--before", metavar="PYTHONPATH",
                    help="also serve the hot endpoints from the fleetsync package found on "
                         "this PYTHONPATH (an older version, e.g. from git archive)")
    ap.add_argument("--floor-server", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.floor_server:
        floor_server(args.floor_server, args.threads)
        return

    path = ledger_path(args.batches, args.workers, args.rebuild)
    api_port, floor_port = free_port(), free_port()
    # waitress warns at every queued request under this load: keep that out of the report.
    server_log = open(os.path.join(OUT, "api-server.log"), "w")
    servers = {
        "api": subprocess.Popen([sys.executable, "-m", "fleetsync.api.server", "--ledger", path,
                                 "--bind", HOST, "--port", str(api_port),
                                 "--threads", str(args.threads)], cwd=ROOT,
                                stdout=server_log, stderr=subprocess.STDOUT),
        "floor": subprocess.Popen([sys.executable, os.path.abspath(__file__),
                                   "--floor-server", str(floor_port),
                                   "--threads", str(args.threads)], cwd=ROOT,
                                  stdout=server_log, stderr=subprocess.STDOUT),
    }
    targets = [("floor", floor_port, "/floor")] + [
        (e, api_port, e) for e in args.endpoints.split(",")]
    if args.before:
        before_port = free_port()
        servers["before"] = subprocess.Popen(
            [sys.executable, "-m", "fleetsync.api.server", "--ledger", path, "--bind", HOST,
             "--port", str(before_port), "--threads", str(args.threads)], cwd="/",
            env=dict(os.environ, PYTHONPATH=args.before), stdout=server_log,
            stderr=subprocess.STDOUT)
        targets += [(f"before {e}", before_port, e) for e in ("/status", "/progress",
                                                               "/throughput")]
    stop = mp.Event()
    moved = mp.Value("l", 0)
    writer_proc = mp.Process(target=writer, args=(path, stop, args.writer_rate, moved))
    try:
        for _, port, _ in targets:
            wait_ready(port, "/floor" if port == floor_port else "/healthz")
        writer_proc.start()
        print(f"{args.batches} batches, {args.workers} workers, {args.clients} clients, "
              f"{args.threads} waitress threads, writer at {args.writer_rate or 'full'} "
              f"batches/s, {args.rounds} rounds x {args.seconds} s per URL; "
              f"{os.cpu_count()} CPUs, load average {open('/proc/loadavg').read().strip()}",
              flush=True)
        for procs in (int(x) for x in args.layouts.split(",")):
            runs: dict[str, list[dict]] = {name: [] for name, _, _ in targets}
            ratios: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in targets}
            for name, port, url in targets:
                one_run(port, url, args.clients, procs, 0.5)   # warm-up
            for r in range(args.rounds):
                # floor, A, floor, B, floor...: each URL is compared with the floor runs
                # just before and after it (the load of a shared machine moves fast).
                floor_before = measure(targets[0], servers, moved, writer_proc, args, procs, r)
                runs["floor"].append(floor_before)
                for target in targets[1:]:
                    res = measure(target, servers, moved, writer_proc, args, procs, r)
                    floor_after = measure(targets[0], servers, moved, writer_proc, args,
                                          procs, r)
                    runs[target[0]].append(res)
                    runs["floor"].append(floor_after)
                    ratios[target[0]].append((
                        res["rps"] * 2 / (floor_before["rps"] + floor_after["rps"]),
                        res["p99"] * 2 / (floor_before["p99"] + floor_after["p99"])))
                    floor_before = floor_after
            print(f"\n16 clients in {procs} process(es): medians of {args.rounds} rounds; "
                  f"each URL against the mean of the floor runs just before and after it; "
                  f"load average {open('/proc/loadavg').read().strip()}")
            print("| URL | req/s | x floor | p50 ms | p99 ms | p99 x floor | server CPU us/req |")
            print("|---|---|---|---|---|---|---|")
            for name, _, _ in targets:
                got = runs[name]
                med = {k: statistics.median(x[k] for x in got) for k in got[0]}
                pairs = ratios[name] or [(1.0, 1.0)]          # the floor against itself
                rps_x = statistics.median(x[0] for x in pairs)
                p99_x = statistics.median(x[1] for x in pairs)
                print(f"| {name} | {med['rps']:.0f} | {rps_x:.2f} | {med['p50']:.2f} | "
                      f"{med['p99']:.2f} | {p99_x:.2f} | {med['cpu_us']:.0f} |", flush=True)
        if args.freshness:
            lags = sorted(freshness(api_port, path, args.freshness))
            print(f"\nfreshness ({len(lags)} samples, writer running): a count read in the "
                  f"ledger shows in /status after median {statistics.median(lags) * 1000:.0f} ms,"
                  f" p90 {lags[int(len(lags) * 0.9)] * 1000:.0f} ms, max {lags[-1] * 1000:.0f} ms")
        if not args.no_bare:
            b = bare_results(api_port, servers["api"].pid)
            print(f"\nbare GET /results: {b['results']} results (retained_count "
                  f"{b['retained_count']}), {b['bytes'] / 2**20:.1f} MiB in {b['seconds']:.2f} s "
                  f"(first byte {b['first_byte'] * 1000:.0f} ms, Transfer-Encoding "
                  f"{b['chunked']}); server RSS {b['rss_before'] / 1024:.1f} -> "
                  f"{b['rss_after'] / 1024:.1f} MiB, peak {b['peak_before'] / 1024:.1f} -> "
                  f"{b['peak_after'] / 1024:.1f} MiB")
        # Other work on the machine shows here: compare it with the CPU count above.
        print(f"load average at the end {open('/proc/loadavg').read().strip()}")
    finally:
        stop.set()
        if writer_proc.pid is not None:
            writer_proc.join(10)
        for server in servers.values():
            server.terminate()
            server.wait(10)
        server_log.close()


if __name__ == "__main__":
    main()
