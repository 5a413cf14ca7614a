"""What the hosts' preflights said in one dispatch: the worker each host runs as,
and why a host cannot work (its preflight failed, it was unreachable before one
passed, or its dispatch ended first). When every host has such a reason and none is
trying, the run cannot go on (Preflights.hopeless)."""
from __future__ import annotations


class Preflights:
    def __init__(self) -> None:
        self._why_not: dict[str, str] = {}       # host -> why it cannot work
        self._worker_of: dict[str, str] = {}     # host -> its worker_id, once it passed

    def passed(self, name: str, worker_id: str) -> None:
        """The host passed its preflight as worker_id: whatever it failed before is over."""
        self._worker_of[name] = worker_id
        self._why_not.pop(name, None)

    def worker_of(self, name: str) -> str | None:
        """The worker_id the host last passed its preflight as (None: never)."""
        return self._worker_of.get(name)

    def failed(self, name: str, why: str) -> bool:
        """The host failed its preflight: why replaces any earlier reason. Returns
        whether this is news (the host had no reason before): worth a log row."""
        new = name not in self._why_not
        self._why_not[name] = why
        return new

    def note(self, name: str, why: str) -> bool:
        """The host cannot work for why, unless it already has a reason (the first
        one says most). Returns whether why was recorded."""
        if name in self._why_not:
            return False
        self._why_not[name] = why
        return True

    def why_not(self, name: str) -> str | None:
        return self._why_not.get(name)

    def hopeless(self, hosts, running) -> tuple[str, str] | None:
        """(host, why) of the first host, when every host of hosts has a reason and
        none of them is running; else None."""
        if hosts and not running and set(hosts) <= set(self._why_not):
            return sorted(self._why_not.items())[0]
        return None
