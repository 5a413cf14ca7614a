"""The API's listening socket, bound before the command creates anything.

`fleetsync run` and `fleetsync serve` bind the socket first: a busy port, an
address this machine does not have or a name that does not resolve is then one
line and exit 2 before a ledger is created (the app itself needs the ledger, so
it is handed over later, with start()). Until then no request is accepted:
waitress accepts connections only in the serving thread, and the kernel keeps
early clients in the listen backlog.
"""
from __future__ import annotations

import errno
import socket

from .errors import UsageError


def url(host: str, port: int) -> str:
    """http://HOST:PORT, with an IPv6 address in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Listener:
    def __init__(self, host: str, port: int) -> None:
        from fleetsync.api.server import ServerThread

        self.app = None
        address = _resolve(host, port)
        try:
            self.server = ServerThread(self._call, address, port)
        except OSError as e:
            raise UsageError(f"cannot serve the API on {url(host, port)}: "
                             f"{e.strerror or e}{_hint(e)}") from None
        self.url = url(self.server.host, self.server.port)   # the real port, also for --port 0
        self._stopped = False

    def _call(self, environ, start_response):
        return self.app(environ, start_response)

    def start(self, app) -> str:
        """Serve app from a background thread; returns the URL it answers on."""
        self.app = app
        self.server.start()
        return self.url

    def stop(self) -> None:
        """Finish the requests in flight and close the socket (once; safe to repeat)."""
        if not self._stopped:
            self._stopped = True
            self.server.stop()


def _resolve(host: str, port: int) -> str:
    """One numeric address for host: waitress would open one socket per address a
    name resolves to, and say only "Invalid host/port specified" for a bad name."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"cannot serve the API on {host}: {e.strerror} (--bind)") from None
    return infos[0][4][0]


def _hint(e: OSError) -> str:
    return {errno.EADDRINUSE: " (another --port, or 0 for any free one)",
            errno.EADDRNOTAVAIL: " (not an address of this machine: --bind)",
            errno.EACCES: " (ports below 1024 need root: another --port)"}.get(e.errno, "")
