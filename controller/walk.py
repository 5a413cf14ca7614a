"""The walk of SRC: P producer processes started, watched, replaced, joined.

Producers are forked children that die with the controller (PDEATHSIG), so a
controller killed with -9 leaves no producer writing into the ledger while the
next run lists the same directories again.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import traceback

from fleetsync.ledger import db, hardlinks, logbook, migration, producers, space, walkqueue
from fleetsync.ledger.states import Compare, LogLevel

from . import processes
from .filters import Filters
from .producer import Limits, Producer

MAX_RESTARTS = 3      # producers replaced in one run before the walk is given up
LEDGER_FULL = 4       # a producer's exit status when the ledger's disk is full
LEDGER_DAMAGED = 5    # ... when the ledger's file is damaged


def _produce(ledger_path: str, src: bytes, producer_id: int, count: int, limits: Limits,
             rescan: bool, threads: int | None, parent_pid: int,
             filters: Filters | None) -> None:
    if not processes.die_with(parent_pid, signal.SIGKILL):
        os._exit(1)
    try:
        with db.connect(ledger_path) as conn:
            _walk_part(conn, src, producer_id, count, limits, rescan, threads, filters)
    except Exception as e:
        # Nothing can be written, not even the log: the controller says it, once.
        if space.full(e):
            os._exit(LEDGER_FULL)
        if db.damaged(e):
            os._exit(LEDGER_DAMAGED)
        raise


def _walk_part(conn, src: bytes, producer_id: int, count: int, limits: Limits,
               rescan: bool, threads: int | None, filters: Filters | None) -> None:
    """One producer's part of the walk, its end recorded; a crash (but a full or
    damaged ledger, which the caller handles) is logged and its directories released."""
    try:
        Producer(conn, src, producer_id, limits, count, rescan, threads, filters).run()
        producers.finish(conn, producer_id)
    except Exception as e:
        if space.full(e) or db.damaged(e):
            raise
        traceback.print_exc(file=sys.stderr)
        # Its directories go back to the queue, from their offsets, so the other
        # producers neither wait for them forever nor skip what was not enqueued.
        walkqueue.release_claims(conn, producer_id)
        logbook.add(conn, LogLevel.ERROR, f"producer {producer_id} crashed: "
                    + traceback.format_exc().strip().splitlines()[-1])
        os._exit(3)


class Walk:
    """P producer processes walking SRC into the ledger; each starts up to `threads`
    stat threads when SRC turns out to be a slow mount (None: defaults.WALK_THREADS,
    0: never); filters: the rules that leave entries out (controller/filters.py)."""

    def __init__(self, ledger_path: str, src: str, count: int, limits: Limits,
                 rescan: bool = False, threads: int | None = None,
                 filters: Filters | None = None):
        self.ledger_path, self.src, self.count, self.limits = ledger_path, src, count, limits
        self.rescan, self.threads, self.filters = rescan, threads, filters
        self.compare = False        # this walk compares with the last one (a cutover pass)
        self.procs: list[multiprocessing.Process] = []
        self.restarts = 0

    def start(self) -> None:
        with db.connect(self.ledger_path) as conn:
            # a rescan, begun now or resumed: compare with the last walk's fingerprints
            self.compare = migration.begin_walk(conn, self.rescan)
            walkqueue.reset_claimed(conn)
            walkqueue.seed(conn)
            producers.start(conn, self.count)
        self.procs = [self._spawn(pid) for pid in range(1, self.count + 1)]

    def _spawn(self, producer_id: int) -> multiprocessing.Process:
        p = multiprocessing.get_context("fork").Process(
            target=_produce, name=f"fleetsync-producer-{producer_id}", daemon=True,
            args=(self.ledger_path, os.fsencode(self.src), producer_id, self.count, self.limits,
                  self.compare, self.threads, os.getpid(), self.filters))
        p.start()
        return p

    def watch(self) -> None:
        """A producer killed from outside (the OOM killer, kill -9) can release nothing:
        its directories go back to the queue and a new producer takes its place. One
        that found the ledger's disk full, or its file damaged, stops the walk in one
        line: a new one would find the same."""
        ended = {p.exitcode for p in self.procs}
        if LEDGER_FULL in ended:
            raise space.full_error(self.ledger_path)
        if LEDGER_DAMAGED in ended:
            raise db.damaged_error(self.ledger_path, ["a walker read a damaged page"])
        for i, p in enumerate(self.procs):
            if p.is_alive() or p.exitcode == 0 or self.restarts >= MAX_RESTARTS:
                continue
            self.restarts += 1
            with db.connect(self.ledger_path) as conn:
                walkqueue.release_claims(conn, i + 1)
                logbook.add(conn, LogLevel.WARNING, f"producer {i + 1} ended with exit {p.exitcode}; "
                            "a new one lists its directories again")
            self.procs[i] = self._spawn(i + 1)

    def running(self) -> bool:
        return any(p.is_alive() for p in self.procs)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the producers; True when every one ended well and the walk is complete."""
        for p in self.procs:
            p.join(timeout)
        if self.running() or not all(p.exitcode == 0 for p in self.procs):
            return False
        with db.connect(self.ledger_path) as conn:
            if not walkqueue.walk_finished(conn):
                return False
            self._finish(conn)
        return True

    def _finish(self, conn) -> None:
        """The walk is complete: the last walk's fingerprints go, the hard links are cut
        into batches (by inode, now that every link is seen), the walk is marked done."""
        walkqueue.drop_old_prints(conn)
        hardlinks.cut_batches(conn, self.limits,
                              Compare.ALWAYS if self.compare else Compare.QUICK)
        migration.set_walk_done(conn)

    def stop(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
        for p in self.procs:
            p.join()
