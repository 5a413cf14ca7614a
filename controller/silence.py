"""Silence: when a host that holds a batch has been quiet too long to be alive.

Its items beat while they run, however slowly a cap makes them copy; a host whose
beats cannot be heard (hostrun._UNCOUNTED) is given its batch's bytes at the rate
its rsync may go, on top of the heartbeat timeout."""
from __future__ import annotations

from sqlalchemy import Connection

from fleetsync.ledger import bandwidth, batches

from . import defaults, rsync, slot
from .hostrun import HostRun


class Silence:
    """Judges the hosts' silence on the dispatcher's connection."""

    def __init__(self, conn: Connection, heartbeat_timeout: float,
                 rsync_options: list[str]) -> None:
        self.conn, self.timeout, self.rsync_options = conn, heartbeat_timeout, rsync_options

    def why_lost(self, run: HostRun, now: float) -> str | None:
        """Why the host of run counts as lost at now (None: it does not)."""
        if run.lost or not run.worker_id:
            return None
        if now - run.last_event <= self.timeout:
            return None        # not silent long enough to matter, whatever it holds
        held = batches.held_bytes(self.conn, run.worker_id)
        if held is None:
            return None
        limit = self.timeout
        if not run.audible:
            limit += held / self.stall_rate()
        if now - run.last_event > limit:
            return f"silent for {now - run.last_event:.0f} s while holding a batch"
        return None

    def stall_rate(self) -> int:
        """The slowest pace a healthy rsync may keep: STALL_RATE, or its cap under it."""
        with self.conn.begin():     # the lowest cap of a timetable: a batch may start under it
            lowest = bandwidth.load(self.conn).lowest()
        capped = rsync.capped_rate(self.rsync_options
                                   + slot.bwlimit_options(self.conn, lowest))
        return min(defaults.STALL_RATE, capped or defaults.STALL_RATE)
