"""Benchmark of the status API at a million batches while the ledger is being written.

    .venv/bin/python bench/api.py                  # 1,000,000 batches, 16 clients, 3 x 10 s
    .venv/bin/python bench/api.py --batches 100000 --seconds 3 --runs 1   # a quick look

The ledger is built once and kept in bench/out/ (rebuilt when --batches
changes or with --rebuild). The API runs on waitress in its own process;
16 keep-alive HTTP clients (threads, spread over client processes) hammer one
endpoint at a time on 127.0.0.1 while a writer process moves batches through
ledger/batches.py transitions. Prints req/s, p50 and p99 per endpoint: the
median over the runs.
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
from fleetsync.ledger import batches, db, migration, schema  # noqa: E402

OUT = os.path.join(ROOT, "bench", "out")
HOST = "127.0.0.1"   # the bench only ever talks to this machine


def build_ledger(path: str, n: int) -> None:
    """n batches (mostly succeeded, some failed, the rest pending), one attempt each for
    the finished ones, a few entries, workers, producers and log lines."""
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
            WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < 31)
            INSERT INTO workers(worker_id, host, state, heartbeat_ts, slots)
            SELECT 'worker-' || i, 'host-' || i, 'up', :now, 4 FROM seq"""), dict(now=now))
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


def ledger_path(n: int, rebuild: bool) -> str:
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"api-{n}.db")
    if rebuild or not os.path.exists(path) or not same_schema(path):
        t0 = time.perf_counter()
        build_ledger(path, n)
        print(f"built {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def writer(path: str, stop: mp.Event, rate: float, counter: mp.Value) -> None:
    """Claims batches and reports them succeeded, retried or failed, like a busy controller."""
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
                n += 2   # the claim and the report
            if time.monotonic() > next_beat:
                migration.heartbeat(conn)
                next_beat = time.monotonic() + 1.0
            counter.value = n
            if rate:
                time.sleep(max(0.0, 8 / rate - (time.perf_counter() - t0)))
    engine.dispose()


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


def wait_ready(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the API did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=1_000_000)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--client-procs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="waitress threads")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--writer-rate", type=float, default=200.0,
                    help="ledger transitions per second (0: as fast as it can)")
    ap.add_argument("--endpoints", default="/status,/progress")
    args = ap.parse_args()

    path = ledger_path(args.batches, args.rebuild)
    port = free_port()
    # waitress warns at every queued request under this load: keep that out of the report.
    server_log = open(os.path.join(OUT, "api-server.log"), "w")
    server = subprocess.Popen([sys.executable, "-m", "fleetsync.api.server", "--ledger", path,
                               "--bind", HOST, "--port", str(port),
                               "--threads", str(args.threads)], cwd=ROOT,
                              stdout=server_log, stderr=subprocess.STDOUT)
    stop = mp.Event()
    moved = mp.Value("l", 0)
    writer_proc = mp.Process(target=writer, args=(path, stop, args.writer_rate, moved))
    try:
        wait_ready(port)
        writer_proc.start()
        print(f"{args.batches} batches, {args.clients} clients in {args.client_procs} "
              f"processes, {args.threads} waitress threads, writer at "
              f"{args.writer_rate or 'full'} transitions/s, {args.runs} x {args.seconds} s; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
        for endpoint in args.endpoints.split(","):
            one_run(port, endpoint, args.clients, args.client_procs, 1.0)   # warm-up
            runs = []
            for r in range(args.runs):
                before, cpu = moved.value, cpu_seconds(server.pid)
                res = one_run(port, endpoint, args.clients, args.client_procs, args.seconds)
                if not writer_proc.is_alive():
                    raise SystemExit("the writer died: the numbers would be for an idle ledger")
                res["writes"] = (moved.value - before) / args.seconds
                res["cpu_us"] = ((cpu_seconds(server.pid) - cpu) * 1e6
                                 / max(1.0, res["rps"] * args.seconds))
                runs.append(res)
                print(f"  {endpoint} run {r + 1}: {res['rps']:.0f} req/s  "
                      f"p50 {res['p50']:.2f} ms  p99 {res['p99']:.2f} ms  "
                      f"errors {res['errors']}  writes {res['writes']:.0f}/s  "
                      f"CPU per request: server {res['cpu_us']:.0f} us, "
                      f"clients {res['client_cpu_us']:.0f} us", flush=True)
            med = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
            print(f"{endpoint:10s} median: {med['rps']:.0f} req/s  p50 {med['p50']:.2f} ms  "
                  f"p99 {med['p99']:.2f} ms  (writer {med['writes']:.0f} transitions/s, "
                  f"server CPU {med['cpu_us']:.0f} us/req)",
                  flush=True)
        # Other work on the machine shows here: compare it with the CPU count above.
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        stop.set()
        if writer_proc.pid is not None:
            writer_proc.join(10)
        server.terminate()
        server.wait(10)
        server_log.close()


if __name__ == "__main__":
    main()
