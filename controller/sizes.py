"""Sizes as operators write them (100MiB, 1G, 512k, 1048576) and read them (1.5 GiB)."""
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


def show(n: float) -> str:
    """A size for a terminal line: `512 B`, `1.5 KiB` ... `2.0 TiB`."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return ""
