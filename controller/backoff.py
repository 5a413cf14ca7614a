"""Back-off: how long a lost or failing host rests before the dispatcher starts it
again (controller/defaults.py says why BACKOFF_FIRST and BACKOFF_MAX)."""
from __future__ import annotations

import time

from . import defaults


class Backoff:
    """Per host: when it may start again, and how often it was lost in this run
    (each loss doubles its rest, from BACKOFF_FIRST up to BACKOFF_MAX)."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._losses: dict[str, int] = {}

    def ready(self, name: str, now: float) -> bool:
        """Whether the host has rested enough to start again."""
        return self._until.get(name, 0) <= now

    def after_loss(self, name: str) -> float:
        """Count one more loss of the host; it rests twice as long as after the last
        one. Returns the rest, in seconds."""
        lost_before = self._losses.get(name, 0)
        self._losses[name] = lost_before + 1
        wait = min(defaults.BACKOFF_MAX, defaults.BACKOFF_FIRST * 2 ** lost_before)
        self._until[name] = time.time() + wait
        return wait

    def after_failure(self, name: str) -> None:
        """A host that cannot work (its preflight failed, say) rests at least
        BACKOFF_FIRST before it tries again."""
        self._until[name] = max(self._until.get(name, 0), time.time() + defaults.BACKOFF_FIRST)
