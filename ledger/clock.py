"""The clock that decides windows: the timetable's cap in force and a run's stop.

It is the system's clock, moved by FLEETSYNC_CLOCK_OFFSET seconds when that is set:
the tests put a run at any hour of the week without waiting for it. Every process
that decides reads it here (the controller, the lookups that claim work inside
Ansible, which inherit the variable through controller/environment.py, the API);
times that are only recorded (attempts, heartbeats) keep the plain clock.
"""
from __future__ import annotations

import os
import time

OFFSET_ENV = "FLEETSYNC_CLOCK_OFFSET"


def offset() -> float:
    """The offset in seconds (0 unless FLEETSYNC_CLOCK_OFFSET holds a number)."""
    try:
        return float(os.environ.get(OFFSET_ENV, "0") or 0)
    except ValueError:
        return 0.0


def now() -> float:
    """Seconds since the epoch, as the windows see them."""
    return time.time() + offset()
