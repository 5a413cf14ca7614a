"""`make demo`: a sample tree migrated on this machine while the API runs.

    python -m fleetsync.controller.demo [--dir demo] [--files 3000] [--port 8000]

Makes DIR/src (odd names included), runs `fleetsync run` with the local
inventory, polls the API while it runs, then serves the finished ledger and
prints every endpoint, and checks DIR/dest against DIR/src with rsync.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

ENDPOINTS = ["/status", "/progress", "/throughput", "/workers", "/logs", "/results?limit=2"]


def make_tree(root: str, files: int) -> None:
    shutil.rmtree(root, ignore_errors=True)
    for i in range(files):
        d = os.path.join(root, f"dir{i % 30:02d}", f"sub{i % 7}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"file{i:05d}.txt"), "wb") as f:
            f.write(os.urandom(512 + (i % 16) * 1024))
    odd = os.fsencode(os.path.join(root, "odd"))
    os.makedirs(odd)
    for name in (b"new\nline", b"\xff\xfenot-utf8", b"-leading-dash", b"with space", b"tab\there"):
        with open(os.path.join(odd, name), "wb") as f:
            f.write(name)
    os.makedirs(os.path.join(root, "empty", "dir"))
    os.symlink("../dir00", os.path.join(root, "odd", "link-to-dir00"))


def get(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.load(r)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_api(port: int, proc: subprocess.Popen) -> bool:
    for _ in range(100):
        if proc.poll() is not None:
            return False
        try:
            get(port, "/healthz")
            return True
        except OSError:
            time.sleep(0.1)
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dir", default="demo")
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    args = ap.parse_args()
    root = os.path.abspath(args.dir)
    src, dest, ledger = (os.path.join(root, n) for n in ("src", "dest", "fleetsync.db"))
    os.makedirs(root, exist_ok=True)
    for p in (dest, ledger, ledger + "-wal", ledger + "-shm"):
        shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else (
            os.path.exists(p) and os.unlink(p))
    make_tree(src, args.files)
    port = args.port or free_port()
    cmd = [sys.executable, "-m", "fleetsync.controller.cli", "run", "--src", src, "--dest", dest,
           "--ledger", ledger, "--port", str(port)]
    print("$ fleetsync", " ".join(cmd[3:]), flush=True)
    t = time.time()
    proc = subprocess.Popen(cmd)
    if wait_api(port, proc):
        while proc.poll() is None:
            try:
                p = get(port, "/progress")
                print(f"  {time.time() - t:5.1f} s  progress {json.dumps(p)}", flush=True)
            except OSError as e:     # the run may be ending: said, and the loop goes on
                print(f"  {time.time() - t:5.1f} s  /progress did not answer: {e}", flush=True)
            time.sleep(1)
    rc = proc.wait()
    print(f"fleetsync run exited {rc} after {time.time() - t:.1f} s")
    # The finished ledger on the run's own port, so the excerpt reads as one session.
    serve = subprocess.Popen([sys.executable, "-m", "fleetsync.controller.cli", "serve", "--ledger",
                              ledger, "--port", str(port)])
    try:
        if wait_api(port, serve):
            for path in ENDPOINTS:
                print(f"\n$ curl -s http://127.0.0.1:{port}{path}")
                print(json.dumps(get(port, path), indent=2, ensure_ascii=False))
    finally:
        serve.terminate()
        serve.wait()
    diff = subprocess.run(["rsync", "-ani", "--delete", src + "/", dest + "/"],
                          capture_output=True, text=True, errors="replace").stdout.split("\n")
    changed = [line for line in diff if line and not line.startswith(".d")]
    print(f"\nsource and destination {'are equal' if not changed else 'DIFFER'}; "
          f"audit with: sqlite3 {ledger} 'SELECT * FROM batches LIMIT 5'")
    return rc or (1 if changed else 0)


if __name__ == "__main__":
    sys.exit(main())
