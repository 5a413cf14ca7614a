"""bench/chaos: a soak of mixed faults during a real migration over lab hosts (issue 27,
item 6). A seeded random schedule of faults hits `fleetsync run` while it copies a
hostile tree over 4 lab hosts (tests/lab.py: real sshd in network namespaces); the
run ends with `fleetsync run --rescan` and then DEST, the ledger and the machine are
checked.

    flock /tmp/fleetsync-bench.lock .venv/bin/python bench/chaos.py \\
        [--seeds 1,2,3 | --seed 7] [--entries 100000] [--faults 8] [--hosts 4] \\
        [--batch-files 200] [--large-mib 16] [--delete] [--verify] [--keep]

Needs root (the lab). The tree (made from the seed): tests/support.make_odd_tree's
hostile names (newlines, non-UTF-8 bytes, leading dashes, a fifo, symlinks, a 32 MiB
sparse file), --entries entries in directories of 100 with a hostile name every
37th, hard links across directories, sparse files and 3 large files. SRC is in /tmp;
DEST on a tmpfs of its own (mounted before the lab starts, so every host sees it),
which the `dest_full` fault fills with a file beside DEST and then frees.

Faults (one at a time, each triggered when the ledger shows N succeeded batches, N
drawn from the seed; what ends a fault is a state of the ledger too, so a seed makes
the same schedule every time; the timeouts only bound a wait that a state never ends):
  controller_kill  kill -9 of `fleetsync run`, then the same command again (resume)
  host_kill        every process of a host killed; restarted once it is declared lost
  host_freeze      a host SIGSTOPped until it is declared lost (> --heartbeat-timeout), SIGCONT
  host_cut         a host's veth down until it is declared lost, then up
  dest_full        DEST's filesystem filled until an attempt fails, then freed
  src_churn        SRC files changed in place, removed, added (a hostile name, a hard link)
  inventory_edit   a host removed from the inventory until the run says it left and
                   more batches succeeded, then added back
A run that ends with failed batches (DEST was full) is resumed as the README says:
`fleetsync retry --failed`, then `fleetsync run`.

Checks, after `run --rescan` [--delete] [and `fleetsync verify` with --verify]:
  - DEST equals SRC: every entry, type, mode, size, mtime, contents
    (tests/support.snapshot) and hard links (the same groups of names share an inode);
    without --delete DEST may also hold the entries the bench removed from SRC, nothing else
  - the ledger: every batch succeeded, once; no entry of missing_entries is at DEST;
    every entry of SRC is in a batch
  - nothing left: no process with the migration's marker (controller/processes.matching),
    no process but sshd on a host, no fleetsync temporary file of this tree in /tmp,
    no item directory, and after the lab's teardown no namespace or link of it
Prints the seed, each fault (when: batches succeeded and seconds since start; which
host; what ended it) and the result; exits 1 on any mismatch, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from fleetsync.controller import processes  # noqa: E402
from tests.lab import Lab, lab_or_skip  # noqa: E402
from tests.support import free_port, ledger_query, make_odd_tree, snapshot  # noqa: E402

KINDS = ["controller_kill", "host_kill", "host_freeze", "host_cut", "dest_full", "src_churn",
         "inventory_edit"]
HOSTILE = [b"-dash%d", b"nl\n%d", b"\xff\xfe%d", b" sp %d", b"--opt=%d", b"q'\"$%d"]
PER_DIR = 100


class Failed(Exception):
    """A check of the soak failed (the bench's result, not an error of the bench)."""


# -- the tree -------------------------------------------------------------------------------
def make_tree(src: bytes, entries: int, rng: random.Random, tag: bytes, large_kib: int,
              paced: bool = False) -> None:
    """SRC: the odd tree, then small files up to `entries` entries, hard links, sparse
    and large files. Every directory name carries `tag` (see Soak.ours). paced: the
    odd tree's 32 MiB sparse file is made --large-kib long (rsync sends its holes as
    zeros: at a paced rsync's rate 32 MiB would last minutes)."""
    make_odd_tree(os.path.join(src, b"odd-" + tag))
    if paced:
        sparse = os.path.join(src, b"odd-" + tag, b"sparse")
        st = os.stat(sparse)
        os.truncate(sparse, large_kib << 10)
        with open(sparse, "r+b") as f:
            f.seek((large_kib << 10) - 3)
            f.write(b"end")
        os.utime(sparse, ns=(st.st_atime_ns, st.st_mtime_ns))
    made, d = len(snapshot(src)), None
    i = 0
    while made < entries:
        if i % PER_DIR == 0:
            d = os.path.join(src, b"k%s-%04d" % (tag, i // PER_DIR))
            os.mkdir(d)
            made += 1
        name = (rng.choice(HOSTILE) if i % 37 == 5 else b"f%d") % i
        with open(os.path.join(d, name), "wb") as f:
            f.write(rng.randbytes(rng.randrange(0, 2048)))
        if i % 500 == 250 and i > PER_DIR:       # a link in the directory before
            os.link(os.path.join(d, name), os.path.join(src, b"k%s-%04d" % (tag, i // PER_DIR - 1),
                                                       b"hl-%d" % i))
            made += 1
        made, i = made + 1, i + 1
    special = os.path.join(src, b"special-" + tag)
    os.mkdir(special)
    for n in range(3):
        with open(os.path.join(special, b"sparse%d" % n), "wb") as f:
            for off in (0, large_kib << 8, large_kib << 9):    # holes between
                f.seek((off << 2) + n)
                f.write(rng.randbytes(4096))
        with open(os.path.join(special, b"large%d" % n), "wb") as f:
            for _ in range(large_kib):
                f.write(rng.randbytes(1 << 10))


def tree_bytes(root: bytes) -> int:
    """What a copy of root may take on a tmpfs: every entry a page at least, regular
    files their apparent size in pages (holes and all: a batch may write them out)."""
    total = 0
    for d, dirs, files in os.walk(root):
        for f in files + dirs:
            st = os.lstat(os.path.join(d, f))
            total += max(4096, -(-st.st_size // 4096) * 4096) if stat.S_ISREG(st.st_mode) \
                else 4096
    return total


def fill(path: str) -> None:
    """A file that takes its filesystem's free space; the copy running beside may take
    some first (ENOSPC): then half as much is asked, until less than 64 KiB is free."""
    with open(path, "wb") as out:
        want = None
        while True:
            st = os.statvfs(os.path.dirname(path))
            free = st.f_bavail * st.f_frsize
            if free < 64 << 10:
                return
            want = min(want or free, free)
            try:
                os.posix_fallocate(out.fileno(), os.fstat(out.fileno()).st_size, want)
                want = None
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                want //= 2


def regular_files(root: bytes) -> list[bytes]:
    out = []
    for d, _, files in os.walk(root):
        out += [os.path.join(d, f) for f in files if stat.S_ISREG(os.lstat(os.path.join(d, f)).st_mode)]
    return sorted(out)


def churn(src: bytes, rng: random.Random, n: int, removed: set[bytes]) -> str:
    """SRC changes while it is copied: n files rewritten in place (new size and
    contents, hard links kept), n removed, n added (one with a hostile name, one a new
    link of an existing file). Returns what it did, for the schedule's print."""
    files = [p for p in regular_files(src) if b"/odd-" not in p]
    picked = rng.sample(files, min(len(files), 2 * n))
    for p in picked[:n]:
        with open(p, "r+b") as f:
            f.truncate(0)
            f.write(rng.randbytes(rng.randrange(1, 4096)))
    for p in picked[n:]:
        os.unlink(p)
        removed.add(os.path.relpath(p, src))
    for k in range(n):
        d = os.path.dirname(rng.choice(files))
        name = (rng.choice(HOSTILE) if k == 0 else b"new-%d") % rng.randrange(10 ** 6)
        with open(os.path.join(d, b"added-" + name), "wb") as f:
            f.write(rng.randbytes(rng.randrange(0, 2048)))
    target = next(p for p in picked[:n] if os.path.exists(p)) if n else None
    if target:
        os.link(target, os.path.join(os.path.dirname(rng.choice(files)),
                                     b"added-link-%d" % rng.randrange(10 ** 6)))
    return f"{n} changed, {len(picked[n:])} removed, {n} added, 1 new hard link"


# -- the ledger -------------------------------------------------------------------------------
q = ledger_query


def one(ledger: str, sql: str, *args, default=0):
    rows = q(ledger, sql, *args)
    return rows[0][0] if rows and rows[0][0] is not None else default


def succeeded(ledger: str) -> int:
    return one(ledger, "SELECT count(*) FROM batches WHERE state='succeeded'")


# -- the schedule ---------------------------------------------------------------------------
def schedule(rng: random.Random, faults: int, batches: int, hosts: int) -> list[dict]:
    """`faults` faults, every kind once before any twice, each at a number of succeeded
    batches spread over the first 70 % of the run's expected batches."""
    kinds = []
    while len(kinds) < faults:
        kinds += rng.sample(KINDS, len(KINDS))
    kinds = kinds[:faults]
    marks = sorted(rng.sample(range(max(2, batches // 20), max(faults + 3, batches * 7 // 10)),
                              faults))
    return [{"kind": k, "at_batches": m, "host": f"h{rng.randrange(hosts) + 1}"}
            for k, m in zip(kinds, marks)]


# -- the run and its faults -----------------------------------------------------------------
class Soak:
    """One seed: the lab, the tree, the controller, the faults, the checks."""

    def __init__(self, args, seed: int, lab: Lab, work: str, destfs: str):
        self.args, self.seed, self.lab, self.work = args, seed, lab, work
        self.rng = random.Random(seed)
        self.tag = b"%d" % seed
        self.src = os.path.join(work, "src")
        self.dest, self.filler = os.path.join(destfs, "dest"), os.path.join(destfs, "filler")
        self.ledger, self.inv = os.path.join(work, "ledger.db"), os.path.join(work, "inv.ini")
        self.removed: set[bytes] = set()
        self.events: list[dict] = []
        self.proc: subprocess.Popen | None = None
        self.t0 = time.monotonic()
        self.runs = []            # (command, exit status) of every fleetsync the bench ran
        self.ended: set[int] = set()     # pids of the runs counted in self.runs

    def run_args(self, *extra: str) -> list[str]:
        a = self.args
        return ["run", "--src", self.src, "--dest", self.dest, "--ledger", self.ledger,
                "--inventory", self.inv, "--bind", self.lab.controller_ip, "--no-token",
                "--port", str(free_port()), "--batch-files", str(a.batch_files),
                "--heartbeat-timeout", str(a.heartbeat_timeout), "--slots", "2",
                *(["--bwlimit", a.bwlimit] if a.bwlimit else []),
                *([f"--rsync-option=--bwlimit={a.pace}"] if a.pace else []), *extra]

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fleetsync.controller.cli", *self.run_args()], cwd=REPO,
            env=self.lab.env(), stdout=subprocess.DEVNULL, stderr=open(
                os.path.join(self.work, "run.err"), "ab"))

    def fleetsync(self, *args: str, timeout: float = 3600) -> int:
        """A fleetsync command to its end (its output in WORK/commands.log)."""
        with open(os.path.join(self.work, "commands.log"), "ab") as log:
            rc = subprocess.run([sys.executable, "-m", "fleetsync.controller.cli", *args],
                                cwd=REPO, env=self.lab.env(), stdout=log, stderr=log,
                                timeout=timeout).returncode
        self.runs.append((args[0] + (" --rescan" if "--rescan" in args else ""), rc))
        return rc

    def elapsed(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def wait(self, cond, timeout: float) -> bool:
        """Poll cond (a state of the ledger or the lab) until it holds; a controller
        that ends meanwhile is resumed as an operator would (ensure_running). False when
        the timeout passed or the run is complete without it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            if not self.ensure_running():
                return bool(cond())
            time.sleep(0.1)
        return False

    def ensure_running(self) -> bool:
        """The controller runs (restarted after failed batches: `retry --failed`);
        False when it ended with the migration complete."""
        rc = self.proc.poll()
        if rc is None:
            return True
        if self.proc.pid not in self.ended:
            self.ended.add(self.proc.pid)
            self.runs.append(("run", rc))
        failed = one(self.ledger, "SELECT count(*) FROM batches WHERE state='failed'")
        if rc == 0 and not failed:
            return False
        if len(self.runs) > 40:
            raise Failed(f"the run keeps ending (exit {rc}): see {self.work}/run.err")
        if failed:
            self.fleetsync("retry", "--ledger", self.ledger, "--failed")
        self.start()
        return True

    def lost_since(self, host: str, t: float) -> bool:
        return bool(q(self.ledger, "SELECT 1 FROM log WHERE ts > ? AND message LIKE ?", t,
                      f"host {host} lost: %"))

    def holding(self, host: str) -> bool:
        return bool(q(self.ledger, "SELECT 1 FROM batches WHERE state='running' AND "
                      "worker_id LIKE ?", f"{host}-%"))

    def host(self, name: str):
        return next(h for h in self.lab.hosts if h.name == name)

    # -- each fault: inject, then wait for the state that ends it -------------------------
    def controller_kill(self, f: dict) -> str:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.ended.add(self.proc.pid)
        self.runs.append(("run (killed)", self.proc.returncode))
        self.start()
        return "resumed"

    def _host_fault(self, f: dict, hurt, heal) -> str:
        """Break the host while it holds a batch; heal it once the run declared it lost
        (which needs longer than the heartbeat timeout), or after a bound."""
        h = self.host(f["host"])
        held = self.wait(lambda: self.holding(h.name), 60)
        t = time.time()
        hurt(h)
        try:
            lost = self.wait(lambda: self.lost_since(h.name, t), 4 * self.args.heartbeat_timeout + 60)
        finally:
            heal(h)
        return (f"{'held a batch' if held else 'held no batch'}; "
                f"{'declared lost' if lost else 'NOT declared lost'} after {time.time() - t:.0f} s")

    def host_kill(self, f: dict) -> str:
        return self._host_fault(f, self.lab.kill, self.lab.restart)

    def host_freeze(self, f: dict) -> str:
        return self._host_fault(f, self.lab.freeze, self.lab.thaw)

    def host_cut(self, f: dict) -> str:
        return self._host_fault(f, lambda h: self.lab.link(h, False),
                                lambda h: self.lab.link(h, True))

    def dest_full(self, f: dict) -> str:
        """Fill DEST's filesystem (a file beside DEST) until an attempt fails, then free it."""
        t = time.time()
        fill(self.filler)
        try:
            hit = self.wait(lambda: q(self.ledger, "SELECT 1 FROM attempts WHERE status IN "
                                      "('retry', 'failed') AND end_ts > ?", t), 90)
        finally:
            os.unlink(self.filler)
        return f"{'an attempt failed' if hit else 'NO attempt failed'} after {time.time() - t:.0f} s"

    def src_churn(self, f: dict) -> str:
        return churn(os.fsencode(self.src), self.rng, self.args.churn, self.removed)

    def inventory_edit(self, f: dict) -> str:
        """The host leaves the inventory until the run said so and more batches
        succeeded; then it is added back."""
        h, t = self.host(f["host"]), time.time()
        self.lab.inventory(self.inv, [x for x in self.lab.hosts if x is not h])
        left = self.wait(lambda: q(self.ledger, "SELECT 1 FROM log WHERE ts > ? AND message "
                                   "LIKE ?", t, f"host {h.name} left the inventory%"), 60)
        done = succeeded(self.ledger)
        self.wait(lambda: succeeded(self.ledger) >= done + 3, 60)
        self.lab.inventory(self.inv, self.lab.hosts)
        return f"{'left' if left else 'did NOT leave'}; added back after {time.time() - t:.0f} s"

    def inject(self, f: dict) -> None:
        reached = self.wait(lambda: succeeded(self.ledger) >= f["at_batches"], 3600)
        f.update(t=self.elapsed(), batches=succeeded(self.ledger))
        if not reached:
            f["result"] = "not reached: the run ended first"
        else:
            f["result"] = getattr(self, f["kind"])(f)
        print(f"  {f['t']:7.1f} s  {f['batches']:5d} batches  {f['kind']:<15} {f['host']}: "
              f"{f['result']}", flush=True)

    def finish(self) -> None:
        """The run to its end, failed batches retried; then the cutover pass."""
        while self.proc.poll() is None or self.ensure_running():
            time.sleep(0.5)
        self.fleetsync(*self.run_args("--rescan", *(["--delete"] if self.args.delete else [])))
        if self.args.verify:
            self.fleetsync("verify", "--ledger", self.ledger, "--inventory", self.inv)

    # -- the checks ------------------------------------------------------------------------
    def check_commands(self) -> list[str]:
        bad = [f"`fleetsync {cmd}` exited {rc}" for cmd, rc in self.runs[-2:]
               if rc != 0 and cmd != "run (killed)"]
        return bad + self.verify_named() if bad else bad

    def verify_named(self) -> list[str]:
        """The files the last verify named, each said deleted when --delete removed it
        (verify still expects those: tests/test_custody.py's xfail)."""
        try:
            with open(os.path.join(self.work, "commands.log"), "rb") as f:
                out = f.read().rsplit(b" batches verified, ", 1)[-1]
        except OSError:
            return []
        deleted = {p for (p,) in q(self.ledger, "SELECT path FROM deletions WHERE dry_run = 0")}
        named = re.findall(rb"^  (missing|differs|unrecorded): (.*)$", out, re.M)
        return [f"verify: {kind.decode()} {path.decode(errors='replace')}"
                + (" (removed from SRC, deleted by --delete)" if path.decode(
                    errors="replace") in deleted else "") for kind, path in named]

    def check_dest(self) -> list[str]:
        """DEST equals SRC: every entry (snapshot) and the hard links' groups."""
        src, dest = os.fsencode(self.src), os.fsencode(self.dest)
        want, got = snapshot(src), snapshot(dest)
        extra = set(got) - set(want)
        if not self.args.delete:
            extra -= self.removed
        bad = [f"missing at DEST: {p!r}" for p in sorted(set(want) - set(got))[:5]]
        bad += [f"extra at DEST: {p!r}" for p in sorted(extra)[:5]]
        bad += [f"differs: {p!r} {want[p]} != {got[p]}" for p in sorted(want)
                if p in got and want[p] != got[p]][:5]
        return bad + self.check_links(src, dest)

    @staticmethod
    def check_links(src: bytes, dest: bytes) -> list[str]:
        groups: dict[tuple, list[bytes]] = {}
        for d, _, files in os.walk(src):
            for name in files:
                st = os.lstat(os.path.join(d, name))
                if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                    groups.setdefault((st.st_dev, st.st_ino), []).append(
                        os.path.relpath(os.path.join(d, name), src))
        bad = []
        for names in groups.values():
            inodes = set()
            for n in names:
                try:
                    inodes.add(os.lstat(os.path.join(dest, n)).st_ino)
                except OSError:
                    inodes.add(None)
            if len(inodes) != 1:
                bad.append(f"hard links not kept at DEST: {sorted(names)!r}")
        return bad[:5] + ([f"... {len(bad)} groups in all"] if len(bad) > 5 else [])

    def check_ledger(self) -> list[str]:
        """Every batch succeeded once, nothing missing is at DEST, every entry batched."""
        L, bad = self.ledger, []
        states = dict(q(L, "SELECT state, count(*) FROM batches GROUP BY state"))
        total = sum(states.values())
        if states.get("succeeded", 0) != total:
            bad.append(f"batches not all succeeded: {states}")
        ones = q(L, "SELECT count(*) FROM (SELECT task_id FROM batches b WHERE (SELECT count(*) "
                 "FROM attempts a WHERE a.task_id = b.task_id AND a.status='success') != 1)")
        if ones[0][0]:
            bad.append(f"{ones[0][0]} batches without exactly one successful attempt")
        for path, cls, reason in q(L, "SELECT path, class, reason FROM missing_entries"):
            if os.path.lexists(os.path.join(os.fsencode(self.dest), path)):
                bad.append(f"missing_entries names {path!r} ({cls}: {reason}), which is at DEST")
        batched = {p for (p,) in q(L, "SELECT DISTINCT path FROM batch_files")}
        unbatched = set(snapshot(os.fsencode(self.src))) - batched
        if unbatched:
            bad.append(f"{len(unbatched)} entries of SRC in no batch: {sorted(unbatched)[:5]!r}")
        return bad[:12]

    def check_left(self) -> list[str]:
        """No process of the migration here or on a host, no temporary file of it."""
        mid = one(self.ledger, "SELECT migration_id FROM migration", default="?")
        bad = [f"process left: {p} {processes.command_line(p)!r}"
               for p in processes.matching(f"fleetsync:{mid}:".encode())]
        for h in self.lab.hosts:
            for pid in self.lab.pids(h):
                cmd = processes.command_line(pid) or b""
                if not cmd.startswith((b"/usr/sbin/sshd\0-D", b"sshd", b"unshare\0")):
                    bad.append(f"process left on {h.name}: {pid} {cmd!r}")
        tmp = tempfile.gettempdir()
        for name in os.listdir(tmp):
            p = os.path.join(tmp, name)
            if name.startswith(f"fleetsync:{mid}:"):
                bad.append(f"temporary directory left: {p}")
            elif name.startswith("fleetsync.") and self.ours(p):
                bad.append(f"temporary file list left: {p}")
        return bad

    def ours(self, path: str) -> bool:
        """A file list of this tree (its directory names carry the seed's tag)."""
        try:
            with open(path, "rb") as f:
                return b"k" + self.tag + b"-" in f.read(1 << 20)
        except OSError:
            return False


# -- one seed, many seeds -------------------------------------------------------------------
def soak(args, seed: int) -> dict:
    """One seed from an empty directory to the teardown; its result as a dict."""
    work = tempfile.mkdtemp(prefix=f"fslchaos{seed}-", dir="/tmp")
    destfs = os.path.join(work, "destfs")
    t0, lab, mounted = time.monotonic(), None, False
    try:
        rng = random.Random(seed)
        make_tree(os.fsencode(os.path.join(work, "src")), args.entries, rng, b"%d" % seed,
                  args.large_kib, paced=bool(args.pace))
        os.mkdir(destfs)
        size = 2 * tree_bytes(os.fsencode(os.path.join(work, "src"))) + (64 << 20)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "fslchaos", destfs],
                       check=True)
        mounted = True
        lab = Lab()                     # after the mount: every host sees DEST's tmpfs
        lab.add(args.hosts)
        s = Soak(args, seed, lab, work, destfs)
        return run_soak(args, s, rng, time.monotonic() - t0)
    finally:
        if lab is not None:
            lab.close()
        if mounted:
            subprocess.run(["umount", destfs], check=False)
        if not args.keep:
            subprocess.run(["rm", "-rf", work], check=False)


def run_soak(args, s: Soak, rng: random.Random, setup: float) -> dict:
    entries = len(snapshot(os.fsencode(s.src)))
    plan = schedule(rng, args.faults, max(1, entries // args.batch_files), args.hosts)
    print(f"seed {s.seed}: {entries} entries, {args.hosts} hosts, {len(plan)} faults "
          f"(tree made in {setup:.0f} s); work dir {s.work}", flush=True)
    s.lab.inventory(s.inv, s.lab.hosts)
    s.t0 = time.monotonic()
    s.start()
    problems = []
    try:
        for f in plan:
            s.inject(f)
        s.finish()
    except Failed as e:
        problems.append(str(e))
    finally:
        if s.proc and s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()
    duration = s.elapsed()
    problems += s.check_commands() + s.check_dest() + s.check_ledger() + s.check_left()
    problems += [f"fault {f['kind']}: {f['result']}" for f in plan if "NOT" in f["result"]
                 or f["result"].startswith("not reached")]
    s.lab.close()
    problems += [f"lab left: {x}" for x in s.lab.leftovers()]
    result = {"seed": s.seed, "entries": entries, "faults": plan, "seconds": duration,
              "runs": s.runs, "problems": problems, "load": os.getloadavg()}
    print(f"seed {s.seed}: {'OK' if not problems else 'FAILED'} in {duration:.0f} s "
          f"(fleetsync commands: {len(s.runs)}; load {os.getloadavg()[0]:.2f})", flush=True)
    for p in problems:
        print(f"  problem: {p}", flush=True)
    return result


def parse(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, help="one seed (default: random, printed)")
    p.add_argument("--seeds", help="seeds, comma-separated, run one after another")
    p.add_argument("--entries", type=int, default=100_000, help="entries of SRC at least")
    p.add_argument("--faults", type=int, default=8, help="faults per seed")
    p.add_argument("--hosts", type=int, default=4)
    p.add_argument("--batch-files", type=int, default=200)
    p.add_argument("--heartbeat-timeout", type=float, default=15)
    p.add_argument("--bwlimit", help="fleet bandwidth cap of the runs (paces a small tree)")
    p.add_argument("--churn", type=int, default=5, help="files changed/removed/added per src_churn")
    p.add_argument("--large-kib", type=int, default=16384,
                   help="KiB of each of the 3 large files (and with --pace of the odd "
                   "tree's sparse file, 32 MiB otherwise)")
    p.add_argument("--pace", type=int, help="KiB/s of each rsync (its --bwlimit): batches of "
                   "a small tree last long enough for the faults")
    p.add_argument("--delete", action="store_true", help="end with run --rescan --delete")
    p.add_argument("--verify", action="store_true", help="and then fleetsync verify")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args(argv)
    if a.seed is not None and a.seeds:
        p.error("--seed or --seeds, not both")
    try:
        a.seed_list = ([int(x) for x in a.seeds.split(",")] if a.seeds else
                       [a.seed if a.seed is not None else random.randrange(10 ** 6)])
    except ValueError:
        p.error(f"--seeds: not a list of integers: {a.seeds}")
    if a.entries < 100 or a.faults < 0 or a.hosts < 2 or a.batch_files < 1:
        p.error("--entries >= 100, --faults >= 0, --hosts >= 2, --batch-files >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    why = lab_or_skip()
    if why:
        print(f"chaos: cannot run: {why}", file=sys.stderr)
        return 2
    results = [soak(args, seed) for seed in args.seed_list]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1, default=repr)
    bad = [r["seed"] for r in results if r["problems"]]
    print(f"chaos: {len(results) - len(bad)} of {len(results)} seeds OK"
          + (f"; failed: {bad}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
