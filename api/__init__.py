"""The read-only status API: `make_app(ledger_path)` and the waitress server that runs it
(in the foreground, in a process of its own, or in a thread)."""
from .app import make_app
from .server import ServerProcess, ServerThread, serve, start_in_thread

__all__ = ["make_app", "serve", "start_in_thread", "ServerThread", "ServerProcess"]
