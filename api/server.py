"""Running the API on waitress: in the foreground (`fleetsync serve`, or

    python -m fleetsync.api.server --ledger PATH [--bind 127.0.0.1] [--port 8000] [--threads 4]

) or in a background thread (ServerThread: `serve`, the API process of a run,
tests). The process of its own that a run serves it from, and its lifeline to
the controller, are the controller's (controller/api_process.py): the API
imports nothing of the controller.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading

import waitress
from waitress import wasyncore
from waitress.task import ThreadedTaskDispatcher

from .defaults import HOST as DEFAULT_HOST, PORT as DEFAULT_PORT, THREADS as DEFAULT_THREADS
from .defaults import TOKEN_ENV

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
    answers without waiting (LedgerApp.inline_paths, api/app.py; any other WSGI app
    has none)."""
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
        snapshots = getattr(self._app, "snapshots", None)     # a LedgerApp's (api/app.py)
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


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0: a free port), as waitress would open it."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family, backlog=1024)


def main(argv: list[str] | None = None) -> None:
    from .app import make_app

    parser = argparse.ArgumentParser(prog="python -m fleetsync.api.server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--bind", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    args = parser.parse_args(argv)
    serve(make_app(args.ledger, token=os.environ.get(TOKEN_ENV)), args.bind, args.port,
          args.threads)


if __name__ == "__main__":
    main()
