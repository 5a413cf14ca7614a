"""Running the API on waitress: in the foreground (`fleetsync serve`), in a
process of its own beside the controller (`fleetsync run`: ServerProcess), or in
a background thread (tests).

    python -m fleetsync.api.server --ledger PATH [--bind 127.0.0.1] [--port 8000] [--threads 4]

Why a process of its own during a run: the dispatcher's threads and the API's
would share one GIL, so a dashboard polling hard would slow the migration.
The controller binds the port itself (a busy port is one clear warning at
once, as before) and hands the listening socket to the child, which dies
with the controller however the controller ends: it watches a pipe whose
other end only the controller holds (EOF when it exits, even by kill -9) and
asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG).
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

import waitress
from waitress import wasyncore
from waitress.task import ThreadedTaskDispatcher

from fleetsync.controller import processes
from fleetsync.controller.defaults import API_HOST, API_PORT, API_THREADS

# Threads share one GIL: in bench/api.py (16 clients, 2 cores) 4 threads served
# about twice the requests of 8, with a third of the p99; 2 were too few.
DEFAULT_HOST, DEFAULT_PORT, DEFAULT_THREADS = API_HOST, API_PORT, API_THREADS

# Waitress settings shared by both ways of running: no version in the Server header,
# no traceback to the client.
_SETTINGS = dict(ident="fleetsync", expose_tracebacks=False)

# waitress logs a warning for every request that waits for a free thread: under a
# burst of polling that is thousands of lines a second (and 7% of the server's time
# in bench/api.py), while the clients are served a few milliseconds later anyway.
logging.getLogger("waitress.queue").setLevel(logging.ERROR)


class _Dispatcher(ThreadedTaskDispatcher):
    """waitress's thread pool, except for a lone request to one of `inline` (the routes
    answered with a snapshot's bytes, ~20 us of Python): that one is served by the
    loop thread that read it (ServerThread's loop calls run_inline() after each
    poll), without the handoff to a worker thread and back.

    Why: at 10 polls a second per client, a request costs waitress ~0.4 ms of CPU,
    much of it waking a worker thread and then the loop again. Safe because such
    a request never waits (no SQLite, no lock held for long), and served inline
    only while its connection holds that one request and little output (with
    more, waitress may wait for the loop to drain the output: the loop itself).
    add_task runs under the channel's lock, hence the queue of channels to serve.
    """

    def __init__(self, inline: frozenset[str], threads: int) -> None:
        super().__init__()
        self._inline = inline
        self._ready: list = []
        self.set_thread_count(threads)

    def _cheap(self, channel) -> bool:
        requests = channel.requests
        return (len(requests) == 1 and channel.total_outbufs_len < 65536
                and not requests[0].error and requests[0].command in ("GET", "HEAD")
                and requests[0].path in self._inline and not requests[0].query)

    def add_task(self, channel) -> None:
        if self._cheap(channel):
            self._ready.append(channel)
        else:
            super().add_task(channel)

    def run_inline(self) -> None:
        """Serve the channels add_task kept (call from the loop thread, between polls)."""
        while self._ready:
            channel = self._ready.pop(0)
            if not self._cheap(channel):      # more arrived meanwhile: the pool serves it
                super().add_task(channel)
                continue
            try:
                channel.service()
            except BaseException:   # as waitress's own worker threads do
                self.logger.exception("Exception when servicing %r", channel)


def _create(app, **adjustments):
    """waitress.create_server, with the inline dispatcher when the app names routes it
    answers without waiting (app.inline_paths, see api/app.py)."""
    inline = getattr(app, "inline_paths", frozenset())
    threads = adjustments.get("threads", DEFAULT_THREADS)
    dispatcher = _Dispatcher(inline, threads) if inline else None
    return waitress.create_server(app, _dispatcher=dispatcher, **adjustments)


def serve(app, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          threads: int = DEFAULT_THREADS) -> None:
    """Serve app until interrupted (Ctrl-C / SIGINT)."""
    server = ServerThread(app, host, port, threads)
    print(f"fleetsync: serving {server.url}", file=sys.stderr)
    try:
        server._run()
    except KeyboardInterrupt:
        server.stop()


class ServerThread:
    """The app served from a daemon thread; `port=0` picks a free port (see .port).
    sock: a listening socket to serve on instead of binding host:port."""

    def __init__(self, app, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 threads: int = DEFAULT_THREADS, sock: socket.socket | None = None) -> None:
        # Binding happens here, in the caller's thread: a busy port fails at once.
        where = dict(sockets=[sock]) if sock is not None else dict(host=host, port=port)
        self._server = _create(app, threads=threads, **where, **_SETTINGS)
        self._app = app
        self.host = self._server.effective_host
        self.port = int(self._server.effective_port)   # waitress gives a string
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetsync-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        return self

    def _run(self) -> None:
        # waitress's own run() loops until the process ends; this loop checks for stop().
        socket_map = self._server._map
        run_inline = getattr(self._server.task_dispatcher, "run_inline", lambda: None)
        while not self._stopping.is_set():
            wasyncore.loop(timeout=0.2, map=socket_map, use_poll=True, count=1)
            run_inline()
        self._close()

    def _close(self) -> None:
        # Requests still queued when the server stops are dropped (their clients see
        # the connection close); waitress would say so at the end of every busy run.
        logging.getLogger("waitress").setLevel(logging.ERROR)
        self._server.task_dispatcher.shutdown(timeout=5)   # let requests in flight finish
        for channel in list(self._server._map.values()):   # listener, trigger, clients
            channel.close()
        snapshots = getattr(self._app, "snapshots", None)
        if snapshots is not None:
            snapshots.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, finish the requests in flight, close every connection."""
        self._stopping.set()
        if self._thread.is_alive():
            self._server.pull_trigger()   # wake the loop now rather than at its timeout
            self._thread.join(timeout)
        elif self._thread.ident is None:  # never started: its worker threads still run
            self._close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start_in_thread(app, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                    threads: int = DEFAULT_THREADS) -> ServerThread:
    """Start serving app in a background thread; call .stop() on the result to end it."""
    return ServerThread(app, host, port, threads).start()


_CHILD_MAIN = "import sys; from fleetsync.api.server import main; main(sys.argv[1:])"
# The API process of `fleetsync run` runs at this nice level: when the CPU is short,
# the dispatcher, Ansible and rsync (nice 0) go first and the dashboards wait
# (bench/api_crowd.py: measured with and without it).
API_NICE = 10
TOKEN_ENV = "FLEETSYNC_API_TOKEN"   # how ServerProcess hands the token over (not argv: ps shows it)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0: a free port), as waitress would open it."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family, backlog=1024)


class ServerProcess:
    """The API in a child process (`python -m fleetsync.api.server`), serving a socket
    bound here: OSError at once when host:port cannot be bound; .stop() to end it."""

    def __init__(self, ledger_path: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 token: str | None = None, threads: int = DEFAULT_THREADS,
                 nice: int = API_NICE, sock: socket.socket | None = None) -> None:
        sock = sock if sock is not None else listen(host, port)
        self.host, self.port = sock.getsockname()[:2]
        watched, self._lifeline = os.pipe()     # both ends close on exec: no other child gets it
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        if token:
            env[TOKEN_ENV] = token
        try:
            self._proc = subprocess.Popen(
                # -c, not -m: fleetsync.api imports this module, and runpy warns about that.
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
    from .app import make_app

    _die_with_parent(args.parent_pid)
    if args.nice:
        os.nice(args.nice)
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


def main(argv: list[str] | None = None) -> None:
    from .app import make_app

    parser = argparse.ArgumentParser(prog="python -m fleetsync.api.server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--bind", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    # Set by ServerProcess only:
    parser.add_argument("--socket-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--parent-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--nice", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.socket_fd is not None:
        _child(args)
        return
    serve(make_app(args.ledger, token=os.environ.get(TOKEN_ENV)), args.bind, args.port,
          args.threads)


if __name__ == "__main__":
    main()
