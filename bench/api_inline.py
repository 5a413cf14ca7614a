"""bench/api_inline: the server's CPU per request with and without the inline dispatcher
(api/server.py), next to the floor, under the dashboards of bench/api_crowd.py.

    .venv/bin/python bench/api_inline.py        # needs bench/out/api-1000000-w1000.db (bench/api.py)

Three servers on 4 waitress threads: the floor (a bare Bottle route), the API with its
snapshot routes served inline by the loop thread (`on`, as shipped), and the same app
with inline serving off (`off`). For 16 dashboards polling 10 times a second, then
flat out: 3 interleaved rounds of 6 s each; prints req/s and server CPU per request.
"""
import importlib.util, multiprocessing as mp, os, statistics, subprocess, sys, time
def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); return m
HERE = os.path.dirname(os.path.abspath(__file__))
b = load("bapi", os.path.join(HERE, "api.py")); c = load("bcrowd", os.path.join(HERE, "api_crowd.py"))
PY = sys.executable
ledger = os.path.join(HERE, "out", "api-1000000-w1000.db")
launch = """
import sys
from fleetsync.api import server, app as A
app = A.make_app(sys.argv[1])
if sys.argv[3] == "off": del app.inline_paths
server.serve(app, "127.0.0.1", int(sys.argv[2]), 4)
"""
ports = {k: b.free_port() for k in ("floor", "off", "on")}
procs = {"floor": subprocess.Popen([PY, os.path.join(HERE, "api.py"), "--floor-server", str(ports["floor"]), "--threads", "4"], stderr=subprocess.DEVNULL)}
for k in ("off", "on"):
    procs[k] = subprocess.Popen([PY, "-c", launch, ledger, str(ports[k]), k], stderr=subprocess.DEVNULL)
b.wait_ready(ports["floor"], "/floor"); b.wait_ready(ports["off"]); b.wait_ready(ports["on"])
c.ROUTES = ("/status", "/progress", "/throughput")
res = {}
for period in (0.1, 0.0):
  for r in range(3):
    for k in procs:
        if k == "floor": c.ROUTES = ("/floor",) * 3
        else: c.ROUTES = ("/status", "/progress", "/throughput")
        stop, served = mp.Event(), mp.Value("l", 0)
        cl = [mp.Process(target=c.crowd, args=(ports[k], 8, period, stop, served)) for _ in range(2)]
        cpu0 = b.cpu_seconds(procs[k].pid)
        for p in cl: p.start()
        time.sleep(6); stop.set()
        for p in cl: p.join()
        cpu = b.cpu_seconds(procs[k].pid) - cpu0
        us = cpu * 1e6 / max(1, served.value)
        res.setdefault((period, k), []).append(us)
        print(period, r, k, served.value / 6, "req/s", f"{us:.0f} us/req", flush=True)
for key, v in res.items(): print(key, "median us/req", round(statistics.median(v)))
for p in procs.values(): p.terminate()
print(open("/proc/loadavg").read())
