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
import ipaddress
import os
import socket
import sys

from .errors import UsageError


def url_file(ledger_path: str) -> str:
    """Where a run's API says its URL while it serves: `LEDGER.api`. An operator of
    the playbook sees a task's output only when the task ends, hours later; with
    --port 0 this file is how they find the API of the run in progress."""
    return os.path.abspath(ledger_path) + ".api"


def url(host: str, port: int) -> str:
    """http://HOST:PORT, with an IPv6 address in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Listener:
    """A bound socket, served later: by a thread of this process (start, for `serve`)
    or by the API process of a run (start_process, controller/api_process.py)."""

    def __init__(self, host: str, port: int) -> None:
        from fleetsync.api.server import listen

        address = _resolve(host, port)
        try:
            self.sock = listen(address, port)
        except OSError as e:
            raise UsageError(f"cannot serve the API on {url(host, port)}: "
                             f"{e.strerror or e}{_hint(e)}") from None
        bound_host, bound_port = self.sock.getsockname()[:2]
        self.url = url(bound_host, bound_port)   # the real port, also for --port 0
        # reachable from other machines (anything but loopback): it needs a token
        self.open = not ipaddress.ip_address(bound_host.split("%")[0]).is_loopback
        self.server = None
        self.url_path: str | None = None         # url_file() while a run's API serves

    def says(self, token: str | None) -> str:
        """The URL and its guard, for the line that gives it at start."""
        if token:
            return f"{self.url} (a token required)"
        return f"{self.url} (no token: " + ("open to whoever reaches it)" if self.open
                                             else "this machine alone reaches it)")

    def start(self, app) -> str:
        """Serve app from a background thread; returns the URL it answers on."""
        from fleetsync.api.server import ServerThread

        self.server = ServerThread(app, sock=self.sock).start()
        return self.url

    def start_process(self, ledger_path: str, token: str | None) -> str:
        """Serve the ledger's API from a process of its own (it shares no GIL with the
        dispatcher, and dies with this process); returns the URL it answers on."""
        from .api_process import ServerProcess

        self.server = ServerProcess(ledger_path, token=token, sock=self.sock)
        self._write_url(url_file(ledger_path))
        return self.url

    def _write_url(self, path: str) -> None:
        """The URL in `path` (written whole, then renamed: never read half-written),
        removed again by stop(). A ledger's directory this user cannot write costs
        the file, not the run: the URL is also on stderr."""
        tmp = f"{path}.{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                f.write(self.url + "\n")
            os.replace(tmp, path)
            self.url_path = path
        except OSError as e:
            print(f"fleetsync: warning: cannot write the API's URL to {path}: "
                  f"{e.strerror or e}", file=sys.stderr)

    def stop(self) -> None:
        """Finish the requests in flight and close the socket (once; safe to repeat)."""
        server, self.server = self.server, None
        path, self.url_path = self.url_path, None
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        if server is not None:
            server.stop()
        elif self.sock.fileno() >= 0:    # bound, never served
            self.sock.close()


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
