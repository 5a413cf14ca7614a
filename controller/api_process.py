"""The API process of `fleetsync run`: the read-only API (api/) served from a process
of its own beside the controller, tied to the controller's life.

Why a process of its own: the dispatcher's threads and the API's would share one
GIL, so a dashboard polling hard would slow the migration. The controller binds
the port itself (controller/listener.py: a busy port is one clear line at once)
and hands the listening socket to the child, which dies with the controller
however the controller ends: it watches a pipe whose other end only the
controller holds (EOF when it exits, even by kill -9) and asks the kernel for
SIGTERM when its parent dies (PR_SET_PDEATHSIG, controller/processes.py).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading

from fleetsync.api.defaults import HOST, PORT, THREADS, TOKEN_ENV
from fleetsync.api.server import ServerThread, listen

from . import processes

_CHILD_MAIN = ("import sys; from fleetsync.controller.api_process import child_main; "
               "child_main(sys.argv[1:])")
# The API process of `fleetsync run` runs at this nice level: when the CPU is short,
# the dispatcher, Ansible and rsync (nice 0) go first and the dashboards wait
# (bench/api_crowd.py: measured with and without it).
API_NICE = 10


class ServerProcess:
    """The API in a child process, serving a socket bound here: OSError at once when
    host:port cannot be bound; .stop() to end it."""

    def __init__(self, ledger_path: str, host: str = HOST, port: int = PORT,
                 token: str | None = None, threads: int = THREADS,
                 nice: int = API_NICE, sock: socket.socket | None = None) -> None:
        sock = sock if sock is not None else listen(host, port)
        self.host, self.port = sock.getsockname()[:2]
        watched, self._lifeline = os.pipe()     # both ends close on exec: no other child gets it
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        if token:
            env[TOKEN_ENV] = token
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_MAIN, "--ledger", ledger_path,
                 "--socket-fd", str(sock.fileno()), "--parent-fd", str(watched),
                 "--parent-pid", str(os.getpid()), "--threads", str(threads),
                 "--nice", str(nice)],
                pass_fds=(sock.fileno(), watched), env=env, stdin=subprocess.DEVNULL)
        except BaseException:
            os.close(self._lifeline)
            raise
        finally:
            # The child holds its own copies: connections queue in the socket's backlog
            # until it accepts them, so there is no window in which the port is closed.
            sock.close()
            os.close(watched)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> int:
        """Close the lifeline (the child finishes the requests in flight and exits);
        killed after timeout. Returns the child's exit status."""
        early = self._proc.poll()
        if early is not None:   # it ended before being asked: its traceback is on stderr
            print(f"fleetsync: warning: the API process had exited with status {early}",
                  file=sys.stderr)
        if self._lifeline >= 0:
            os.close(self._lifeline)
            self._lifeline = -1
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"fleetsync: warning: the API process {self._proc.pid} did not stop in "
                  f"{timeout:.0f} s: killed", file=sys.stderr)
            self._proc.kill()
            return self._proc.wait()


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM from the kernel when the parent dies; exit now if it is gone already."""
    try:
        alive = processes.die_with(parent_pid, signal.SIGTERM)
    except OSError as e:
        logging.getLogger("fleetsync.api").warning(
            "fleetsync: %s (errno %d); the lifeline pipe remains", e.strerror, e.errno)
        alive = os.getppid() == parent_pid
    if not alive:    # died before prctl: nobody would send the signal
        sys.exit(0)


def _child(args) -> None:
    """The API process of `fleetsync run`: serve until the controller ends or says stop."""
    _die_with_parent(args.parent_pid)
    if args.nice:
        # Before the imports (~0.3 s of CPU): they do not compete with the way to the
        # run's first rsync (its Ansible, its walk), which starts at the same time.
        os.nice(args.nice)
    from fleetsync.api.app import make_app

    stop = threading.Event()
    # Ctrl-C reaches the whole process group; the controller then finishes its batches
    # in hand (the API should show them) and closes the lifeline when it is done.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def watch() -> None:
        while os.read(args.parent_fd, 4096):   # b"": every writer is gone
            pass
        stop.set()
    threading.Thread(target=watch, name="fleetsync-lifeline", daemon=True).start()

    sock = socket.socket(fileno=args.socket_fd)
    server = ServerThread(make_app(args.ledger, token=os.environ.get(TOKEN_ENV)),
                          threads=args.threads, sock=sock).start()
    while not stop.wait(0.2):   # a signal handler runs between two waits
        pass
    server.stop()


def child_main(argv: list[str]) -> None:
    """The child's command line, set by ServerProcess alone."""
    parser = argparse.ArgumentParser(prog="fleetsync API process")
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--socket-fd", type=int, required=True)
    parser.add_argument("--parent-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--nice", type=int, default=0)
    _child(parser.parse_args(argv))
