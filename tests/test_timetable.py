"""The bandwidth timetable (ledger/timetable.py): what parse accepts and refuses, the
cap rate_at puts in force and its next change; the ledger keeping it
(ledger/bandwidth.py) and the API's /status/window showing it, with the clock moved
by FLEETSYNC_CLOCK_OFFSET (ledger/clock.py)."""
from __future__ import annotations

import datetime as dt

import pytest

from fleetsync.api import make_app
from fleetsync.ledger import bandwidth, clock, db, sizes, timetable
from fleetsync.ledger.timetable import TimetableError

from .test_api import call

K, M = 1024, 1024 * 1024


def at(day: int, hour: int, minute: int = 0) -> float:
    """A local time in the week of Monday 2026-12-07 (day 7 is a Monday)."""
    return dt.datetime(2026, 12, day, hour, minute).timestamp()


DAILY = "08:00,512k 19:00,10M 23:00,off"


@pytest.mark.parametrize("when, cap, change", [
    (at(7, 3), None, at(7, 8)),            # before the first entry: the last one's, since 23:00
    (at(7, 8), 512 * K, at(7, 19)),        # at an entry's minute, that entry
    (at(7, 12, 30), 512 * K, at(7, 19)),
    (at(7, 20), 10 * M, at(7, 23)),
    (at(7, 23, 59), None, at(8, 8)),       # the next change is tomorrow's first entry
])
def test_a_daily_timetable(when, cap, change):
    assert timetable.rate_at(timetable.parse(DAILY), when) == (cap, change)


@pytest.mark.parametrize("when, cap, change", [
    (at(7, 10), 100 * M, at(12, 0)),       # Monday after 08:00
    (at(7, 7), None, at(7, 8)),            # Monday before 08:00: Saturday's, a week on
    (at(12, 10), None, at(14, 8)),         # Saturday: off until the next Monday 08:00
    (at(13, 23), None, at(14, 8)),         # Sunday
    (at(10, 0), 100 * M, at(12, 0)),       # Thursday
])
def test_a_weekly_timetable(when, cap, change):
    assert timetable.rate_at(timetable.parse("Mon-08:00,100MiB Sat-00:00,off"), when) == (
        cap, change)


def test_entries_with_the_same_rate_are_no_change():
    table = timetable.parse("06:00,1M 12:00,1M 18:00,off")
    assert timetable.rate_at(table, at(7, 7)) == (M, at(7, 18))
    assert timetable.rate_at(timetable.parse("08:00,1M"), at(7, 3)) == (M, None)


@pytest.mark.parametrize("text, cap", [("100MiB", 100 * M), ("1048576", M), ("off", None),
                                        ("OFF", None), ("1.5k", 1536)])
def test_a_constant_cap(text, cap):
    table = timetable.parse(text)
    assert table.constant and timetable.rate_at(table, at(7, 12)) == (cap, None)


@pytest.mark.parametrize("text, fault", [
    ("10:00,1M 09:00,off", "entry '09:00,off' is not later than the one before it"),
    ("10:00,1M 10:00,off", "entry '10:00,off' is not later"),
    ("Tue-08:00,1M Mon-09:00,off", "entry 'Mon-09:00,off' is not later"),
    ("08:00,fast", "bad rate 'fast' in '08:00,fast'"),
    ("08:00,0", "bad rate '0' in '08:00,0': must be at least 1 byte"),
    ("08:00,-1M", "bad rate '-1M'"),
    ("Mun-08:00,1M", "unknown weekday 'Mun'"),
    ("24:00,1M", "bad time 24:00"),
    ("08:60,1M", "bad time 08:60"),
    ("8h,1M", "bad timetable entry '8h,1M'"),
    ("08:00,1M Mon-09:00,off", "give a weekday to every entry or to none"),
    ("0", "bad size '0': must be at least 1 byte"),
    ("-5M", "bad size '-5M'"),
    ("  ", "the bandwidth cap is empty"),
])
def test_a_malformed_timetable_names_its_fault(text, fault):
    with pytest.raises(TimetableError) as e:
        timetable.parse(text)
    assert fault in str(e.value) and "\n" not in str(e.value)


def test_the_ledger_keeps_a_timetable_or_a_constant(tmp_path, make_ledger):
    path = make_ledger(str(tmp_path))
    engine = db.writer(path)
    with engine.connect() as conn:
        with conn.begin():
            assert bandwidth.load(conn).text == "off"       # a new ledger: no cap
        bandwidth.store(conn, timetable.parse(DAILY))
        with conn.begin():
            assert bandwidth.load(conn).text == DAILY
            assert bandwidth.cap_at(conn, at(7, 12)) == 512 * K
            assert conn.exec_driver_sql("SELECT bwlimit FROM migration").scalar() is None
        bandwidth.set_cap(conn, 5 * M)                      # `fleetsync bwlimit 5MiB`
        with conn.begin():
            assert bandwidth.cap_at(conn, at(7, 12)) == 5 * M
            assert conn.exec_driver_sql("SELECT count(*) FROM bandwidth").scalar() == 0
            assert conn.exec_driver_sql("SELECT bwlimit FROM migration").scalar() == 5 * M
    engine.dispose()


def test_status_window_shows_the_cap_in_force_on_the_moved_clock(tmp_path, make_ledger,
                                                                  monkeypatch):
    path = make_ledger(str(tmp_path))
    engine = db.writer(path)
    with engine.connect() as conn:
        bandwidth.store(conn, timetable.parse(DAILY))
    engine.dispose()
    app = make_app(path)
    # The clock moved to 12:30 next Monday, whatever the time now.
    monkeypatch.setenv(clock.OFFSET_ENV, str(at(7, 12, 30) - clock.now() + clock.offset()))
    body = call(app, "/status/window").json
    assert body["bwlimit"] == DAILY
    assert (body["cap_bytes_per_sec"], body["cap"]) == (512 * K, "512 KiB/s")
    assert body["next_change_ts"] == at(7, 19) and body["next_change"] == "2026-12-07 19:00:00"
    assert (body["next_cap_bytes_per_sec"], body["next_cap"]) == (10 * M, "10 MiB/s")
    monkeypatch.setenv(clock.OFFSET_ENV, str(at(7, 23, 30) - clock.now() + clock.offset()))
    body = call(make_app(path), "/status/window").json
    assert (body["cap_bytes_per_sec"], body["next_cap_bytes_per_sec"]) == (None, 512 * K)
    assert not {"bwlimit", "cap"} & call(app, "/status").json.keys()  # /status as it was


def test_sizes_show():
    assert [sizes.show(n) for n in (512, 1536, 10 * M)] == ["512 B", "1.5 KiB", "10 MiB"]
