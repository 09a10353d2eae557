"""Bound arithmetic: ranges tile with no gap or overlap, and do not depend on the hour or the
time zone of the run (property tests)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgcleave.errors import Refused
from pgcleave.schemes import Interval, add, check_fits, floor, key_kind, parse_value, ranges, suffix

TIME_INTERVALS = ["1 day", "1 week", "1 month", "3 months", "1 quarter", "1 year", "2 weeks",
                  "monthly", "daily", "yearly"]
intervals = st.sampled_from([Interval.parse(t) for t in TIME_INTERVALS])
dates = st.dates(min_value=date(1900, 1, 1), max_value=date(2200, 12, 31))
naive = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 12, 31))
zones = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata",
                         "Australia/Lord_Howe", "Pacific/Chatham"])


def test_parse() -> None:
    assert Interval.parse("1 month") == Interval(months=1)
    assert Interval.parse("3 months") == Interval(months=3)
    assert Interval.parse("quarterly") == Interval(months=3)
    assert Interval.parse("1 week") == Interval(days=7)
    assert Interval.parse("1 year") == Interval(months=12)
    assert Interval.parse("100000") == Interval(number=100000)
    for bad in ("", "1 fortnight", "0 days", "-3", "month-ish"):
        with pytest.raises(Refused):
            Interval.parse(bad)


def test_fits() -> None:
    check_fits("timestamptz", Interval.parse("1 month"), "c", "timestamptz")
    with pytest.raises(Refused, match="time interval"):
        check_fits("text", Interval.parse("1 month"), "tenant", "text")
    with pytest.raises(Refused, match="numeric interval"):
        check_fits("date", Interval.parse("1000"), "d", "date")
    assert key_kind("timestamp with time zone") == "timestamptz"
    assert key_kind("timestamp(3) without time zone") == "timestamp"
    assert key_kind("character varying(20)") == "text"


def test_names_and_known_bounds() -> None:
    m = Interval.parse("1 month")
    assert floor(date(2024, 2, 29), m) == date(2024, 2, 1)
    assert add(date(2024, 12, 1), m) == date(2025, 1, 1)
    assert suffix(date(2024, 9, 1), m) == "p2024_09"
    assert suffix(date(2024, 1, 1), Interval.parse("1 year")) == "p2024"
    assert floor(date(2024, 8, 15), Interval.parse("1 quarter")) == date(2024, 7, 1)
    assert floor(date(2024, 11, 20), Interval.parse("1 week")) == date(2024, 11, 18)  # Monday
    assert floor(-5, Interval.parse("10")) == -10
    assert suffix(-10, Interval.parse("10")) == "pm10"
    assert floor(Decimal("-0.5"), Interval(number=Decimal("1.0"))) == Decimal("-1.0")


@given(dates, intervals)
def test_dates_tile(d: date, iv: Interval) -> None:
    lo = floor(d, iv)
    hi = add(lo, iv)
    assert lo <= d < hi
    assert floor(lo, iv) == lo  # idempotent: bounds are aligned
    assert floor(hi, iv) == hi  # the next range starts exactly where this one ends
    assert floor(hi - timedelta(days=1), iv) == lo  # no gap: the day before hi is in this range


@given(naive, intervals)
def test_timestamps_do_not_depend_on_hour(ts: datetime, iv: Interval) -> None:
    lo = floor(ts, iv)
    assert lo <= ts < add(lo, iv)
    assert lo.time() == datetime.min.time()
    assert floor(ts.replace(hour=0, minute=0, second=0, microsecond=0), iv) == lo


@given(naive, intervals, zones, zones)
def test_timestamptz_independent_of_input_zone(ts: datetime, iv: Interval, zone: str,
                                               seen_in: str) -> None:
    instant = ts.replace(tzinfo=UTC)
    a = floor(instant, iv, tz=zone)
    b = floor(instant.astimezone(ZoneInfo(seen_in)), iv, tz=zone)
    assert a == b  # same instant, same partition, whatever zone the value came in
    assert a <= instant < add(a, iv)


@given(dates, intervals, st.integers(min_value=1, max_value=40))
def test_ranges_tile(d: date, iv: Interval, n: int) -> None:
    rs = ranges(floor(d, iv), n, iv)
    assert all(a < b for a, b in rs)
    assert all(rs[i][1] == rs[i + 1][0] for i in range(len(rs) - 1))
    assert len({suffix(lo, iv) for lo, _ in rs}) == n  # names are unique


@given(st.integers(min_value=-10**12, max_value=10**12), st.integers(min_value=1, max_value=10**7))
def test_numbers_tile(v: int, n: int) -> None:
    iv = Interval(number=n)
    lo = floor(v, iv)
    assert lo <= v < add(lo, iv)
    assert lo % n == 0


def test_parse_value() -> None:
    assert parse_value("2024-01-01", "date") == date(2024, 1, 1)
    assert parse_value("2024-01-01", "timestamptz").tzinfo is not None
    assert parse_value("MINVALUE", "integer") == "MINVALUE"
    with pytest.raises(Refused):
        parse_value("yesterday", "date")
    assert parse_value("2024-01-01T00:00:00+02:00", "timestamptz").utcoffset() == timezone(
        timedelta(hours=2)).utcoffset(None)
