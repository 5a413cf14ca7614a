"""The fleet's bandwidth timetable, in rclone's form: what `--bwlimit` and
`fleetsync bwlimit` take, and the cap it puts in force at a given time.

    100MiB                               a constant cap (a bare number: bytes/s)
    off                                  no cap
    08:00,512k 19:00,10M 23:00,off       every day: from 08:00 512 KiB/s, ...
    Mon-08:00,100MiB Sat-00:00,off       every week: from Monday 08:00 ...

Entries are space-separated `HH:MM,RATE`, in order of time (of the day, or of the
week from Monday when every entry names a weekday: all do or none); an entry is in
force from its time until the next one's, and the last one's runs on to the first
one's, next day or next week. Times are local. RATE is a size as the options write
it (ledger/sizes.py) per second, or `off`.

parse() checks the text (TimetableError names the fault); rate_at() is a pure
function of a parsed timetable and a time, so both the lookups that claim work
(the share of the rsyncs they start) and the API (the cap in force) ask it.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from . import sizes
from .errors import FleetsyncError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DAY, WEEK = 24 * 60, 7 * 24 * 60       # minutes
_ENTRY = re.compile(r"(?:([A-Za-z]+)-)?(\d{1,2}):(\d{2}),(.+)")


class TimetableError(FleetsyncError, ValueError):
    pass


@dataclass(frozen=True)
class Entry:
    minute: int               # of the day (daily) or of the week from Monday 00:00
    rate: int | None          # bytes per second, None: no cap


@dataclass(frozen=True)
class Timetable:
    text: str                 # as the operator gave it (what the ledger keeps)
    entries: tuple[Entry, ...]
    period: int = DAY         # DAY or WEEK (minutes); a constant cap: one entry

    @property
    def constant(self) -> bool:
        return len(self.entries) == 1

    def lowest(self) -> int | None:
        """The lowest cap it ever sets (None: it never caps)."""
        rates = [e.rate for e in self.entries if e.rate]
        return min(rates) if rates else None


def rate(text: str) -> int | None:
    """A rate: `off` is None, else a size per second (bytes)."""
    if text.strip().lower() == "off":
        return None
    return sizes.parse(text)


def constant(bytes_per_sec: int | None) -> Timetable:
    """A cap in force at every time (None: no cap)."""
    return Timetable("off" if bytes_per_sec is None else str(bytes_per_sec),
                     (Entry(0, bytes_per_sec),))


def parse(text: str) -> Timetable:
    """The timetable of `--bwlimit` / `fleetsync bwlimit`; TimetableError names the fault."""
    words = str(text).split()
    if not words:
        raise TimetableError("the bandwidth cap is empty: give a rate (100MiB), 'off' "
                             "or a timetable ('08:00,512k 19:00,off')")
    if len(words) == 1 and "," not in words[0]:
        try:
            return Timetable(words[0], (Entry(0, rate(words[0])),))
        except sizes.SizeError as e:     # a constant: said as a size, as before timetables
            raise TimetableError(str(e)) from None
    entries = [_entry(w) for w in words]
    weekly = {day is not None for day, _ in entries}
    if len(weekly) > 1:
        raise TimetableError("give a weekday to every entry or to none")
    period = WEEK if weekly == {True} else DAY
    minutes = [(day or 0) * DAY + e.minute for day, e in entries]
    for (before, after, word) in zip(minutes, minutes[1:], words[1:]):
        if after <= before:
            raise TimetableError(f"entry {word!r} is not later than the one before it "
                                 "(give the entries in order of time)")
    return Timetable(" ".join(words), tuple(Entry(m, e.rate) for m, (_, e) in
                                            zip(minutes, entries)), period)


def _entry(word: str) -> tuple[int | None, Entry]:
    """(weekday index or None, the entry with its minute of the day)."""
    m = _ENTRY.fullmatch(word)
    if not m:
        raise TimetableError(f"bad timetable entry {word!r}: write HH:MM,RATE or "
                             "Day-HH:MM,RATE (e.g. 08:00,512k or Mon-08:00,100MiB)")
    day = None
    if m[1] is not None:
        name = m[1].lower()
        if name not in WEEKDAYS and name not in _FULL:
            raise TimetableError(f"unknown weekday {m[1]!r} in {word!r}: use Mon Tue Wed "
                                 "Thu Fri Sat Sun")
        day = WEEKDAYS.index(name[:3])
    hour, minute = int(m[2]), int(m[3])
    if hour > 23 or minute > 59:
        raise TimetableError(f"bad time {m[2]}:{m[3]} in {word!r}: from 00:00 to 23:59")
    try:
        cap = rate(m[4])
    except sizes.SizeError as e:
        raise TimetableError(f"bad rate {m[4]!r} in {word!r}: {_why(e)}") from None
    return day, Entry(hour * 60 + minute, cap)


def _why(e: sizes.SizeError) -> str:
    return str(e).split(": ", 1)[-1]


def rate_at(timetable: Timetable, when: float) -> tuple[int | None, float | None]:
    """(the cap in force at `when`, seconds since the epoch; None: no cap, and when the
    cap next changes; None: never). Local time; a pure function of its arguments."""
    entries = timetable.entries
    if len({e.rate for e in entries}) == 1:
        return entries[0].rate, None
    local = dt.datetime.fromtimestamp(when)
    start = local.replace(second=0, microsecond=0) - dt.timedelta(
        minutes=local.hour * 60 + local.minute
        + (local.weekday() * DAY if timetable.period == WEEK else 0))
    here = (local - start).total_seconds() / 60          # minutes into the period
    i = max((k for k, e in enumerate(entries) if e.minute <= here), default=len(entries) - 1)
    current = entries[i].rate
    for step in range(1, len(entries) + 1):
        k = (i + step) % len(entries)
        if entries[k].rate != current:
            # Before the period's first entry, the one in force began a period ago.
            laps = (i + step) // len(entries) - (1 if entries[i].minute > here else 0)
            at = start + dt.timedelta(minutes=entries[k].minute + laps * timetable.period)
            return current, at.timestamp()
    return current, None     # unreachable: rates differ


def shown(bytes_per_sec: int | None) -> str:
    """A rate for a person: off, or bytes/s in binary units."""
    return "off" if bytes_per_sec is None else sizes.show(bytes_per_sec) + "/s"
