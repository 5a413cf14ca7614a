"""Running the API on waitress: in the foreground (`fleetsync serve`) or in a
background thread beside the controller (`fleetsync run`) and in tests.

    python -m fleetsync.api.server --ledger PATH [--bind 127.0.0.1] [--port 8000] [--threads 4]
"""
from __future__ import annotations

import argparse
import logging
import threading

import waitress
from waitress import wasyncore

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


def serve(app, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          threads: int = DEFAULT_THREADS) -> None:
    """Serve app until interrupted (Ctrl-C / SIGINT)."""
    waitress.serve(app, host=host, port=port, threads=threads, **_SETTINGS)


class ServerThread:
    """The app served from a daemon thread; `port=0` picks a free port (see .port)."""

    def __init__(self, app, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 threads: int = DEFAULT_THREADS) -> None:
        # Binding happens here, in the caller's thread: a busy port fails at once.
        self._server = waitress.create_server(app, host=host, port=port, threads=threads,
                                              **_SETTINGS)
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
        while not self._stopping.is_set():
            wasyncore.loop(timeout=0.2, map=socket_map, use_poll=True, count=1)
        self._close()

    def _close(self) -> None:
        self._server.task_dispatcher.shutdown(timeout=5)   # let requests in flight finish
        for channel in list(self._server._map.values()):   # listener, trigger, clients
            channel.close()

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


def main(argv: list[str] | None = None) -> None:
    from .app import make_app

    parser = argparse.ArgumentParser(prog="python -m fleetsync.api.server", description=__doc__)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--bind", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    args = parser.parse_args(argv)
    serve(make_app(args.ledger), args.bind, args.port, args.threads)


if __name__ == "__main__":
    main()
