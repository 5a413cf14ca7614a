"""Sizes as operators write them (100MiB, 1G, 512k, 1048576) and read them (1.5 GiB):
the options, the bandwidth timetable the ledger keeps, the census (so here, where
the ledger and the API read them)."""
from __future__ import annotations

import re

from fleetsync.ledger.errors import FleetsyncError

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class SizeError(FleetsyncError, ValueError):
    pass


def parse(text: str) -> int:
    """Binary units (k = KiB); the optional 'iB' or 'B' suffix changes nothing."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.I)
    if not m:
        raise SizeError(f"bad size {text!r}: use a number with an optional unit, e.g. 100MiB")
    value = int(float(m[1]) * _UNITS[m[2].lower()])
    if value < 1:
        raise SizeError(f"bad size {text!r}: must be at least 1 byte")
    return value


def show(count: float) -> str:
    """A size for a person, in binary units: 512 B, 1.5 MiB, 32 KiB (the progress line,
    the scan's census, the caps of a timetable)."""
    value, unit = float(count), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.4g} {unit}" if value < 10000 else f"{value:.0f} {unit}"   # no 1e+04
