"""The read-only status API: `make_app(ledger_path)` and the waitress server that runs it
(in the foreground, or in a thread; controller/api_process.py runs it in a process of
its own beside a run).

Its names are imported when first used (PEP 562): `fleetsync.api.defaults` alone,
which the command line reads, must not cost the web stack's ~0.2 s of imports."""
from __future__ import annotations

import importlib

_NAMES = {"make_app": "app", "serve": "server", "start_in_thread": "server",
          "ServerThread": "server"}

__all__ = list(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    if name in ("app", "server", "metrics", "dashboard", "snapshot", "openapi", "params",
                "errors", "defaults"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
