"""Partition schemes: intervals, bound arithmetic and naming. Pure functions, property-tested.

Bounds never depend on when or where pgcleave runs: they are computed from the key's values
only. For ``timestamptz`` keys, calendar boundaries (midnight, the first of the month) are taken
in an explicit time zone (UTC unless the policy says otherwise) and rendered with their UTC
offset, so the session's ``TimeZone`` cannot shift them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

from psycopg import sql

from .errors import Refused

KeyKind = Literal["date", "timestamp", "timestamptz", "integer", "numeric", "text", "uuid",
                  "other"]

_WORDS = {
    "daily": (0, 1), "day": (0, 1), "days": (0, 1),
    "weekly": (0, 7), "week": (0, 7), "weeks": (0, 7),
    "monthly": (1, 0), "month": (1, 0), "months": (1, 0), "mon": (1, 0), "mons": (1, 0),
    "quarterly": (3, 0), "quarter": (3, 0), "quarters": (3, 0),
    "yearly": (12, 0), "year": (12, 0), "years": (12, 0),
}

EPOCH = date(1970, 1, 1)  # a Thursday; weeks are aligned to ISO Mondays instead


@dataclass(frozen=True)
class Interval:
    """A partition width: calendar months, days, or a plain number for numeric keys."""

    months: int = 0
    days: int = 0
    number: int | Decimal | None = None

    @property
    def is_time(self) -> bool:
        return self.number is None

    @classmethod
    def parse(cls, text: str | int) -> Interval:
        """'1 day', '1 week', '1 month', '3 months', '1 quarter', '1 year', 'monthly', or a
        number ('100000') for integer keys."""
        if isinstance(text, int):
            text = str(text)
        t = text.strip().lower()
        if re.fullmatch(r"\d+", t):
            n = int(t)
            if n <= 0:
                raise Refused(f"interval must be positive, got {text!r}")
            return cls(number=n)
        if re.fullmatch(r"\d+\.\d+", t):
            return cls(number=Decimal(t))
        m = re.fullmatch(r"(\d+)?\s*([a-z]+)", t)
        if not m or m.group(2) not in _WORDS:
            raise Refused(f"unknown interval {text!r}",
                          hint="use '1 day', '1 week', '1 month', '3 months', '1 year' or a "
                               "number for integer keys")
        k = int(m.group(1) or 1)
        months, days = _WORDS[m.group(2)]
        if k <= 0:
            raise Refused(f"interval must be positive, got {text!r}")
        return cls(months=months * k, days=days * k)

    def __str__(self) -> str:
        if self.number is not None:
            return str(self.number)
        if self.months:
            if self.months % 12 == 0:
                n = self.months // 12
                return f"{n} year" + ("s" if n > 1 else "")
            return f"{self.months} month" + ("s" if self.months > 1 else "")
        if self.days % 7 == 0:
            n = self.days // 7
            return f"{n} week" + ("s" if n > 1 else "")
        return f"{self.days} day" + ("s" if self.days > 1 else "")

    def as_postgres(self) -> str:
        """The interval as PostgreSQL ``interval`` text (for policies and SQL arithmetic)."""
        if self.number is not None:
            return str(self.number)
        return f"{self.months} mons {self.days} days"


def key_kind(type_name: str) -> KeyKind:
    """Classify a column type as ``format_type`` prints it."""
    t = type_name.lower()
    if t == "date":
        return "date"
    if t.startswith("timestamp") and "with time zone" in t:
        return "timestamptz"
    if t.startswith("timestamp"):
        return "timestamp"
    if t in ("smallint", "integer", "bigint"):
        return "integer"
    if t.startswith("numeric"):
        return "numeric"
    if t in ("text", "name") or t.startswith(("character varying", "character", "varchar",
                                                 "citext")):
        return "text"
    if t == "uuid":
        return "uuid"
    return "other"


def check_fits(kind: KeyKind, interval: Interval, column: str, type_name: str) -> None:
    """Refuse an interval that does not fit the key's type."""
    if interval.is_time and kind not in ("date", "timestamp", "timestamptz"):
        raise Refused(f"column {column} is {type_name}: a time interval ({interval}) needs a "
                      "date or timestamp key",
                      hint="give a number as --interval for integer keys, or use explicit bounds")
    if not interval.is_time and kind not in ("integer", "numeric"):
        raise Refused(f"column {column} is {type_name}: a numeric interval ({interval}) needs "
                      "an integer or numeric key",
                      hint="use '1 day', '1 month', ... for time keys")
    if kind == "integer" and isinstance(interval.number, Decimal):
        raise Refused(f"column {column} is {type_name}: the interval must be a whole number")


Value = date | datetime | int | Decimal


def time_zone_info(tz: str) -> timezone | ZoneInfo:
    return UTC if tz.upper() in ("UTC", "Z", "GMT") else ZoneInfo(tz)


def floor(value: Any, interval: Interval, tz: str = "UTC") -> Any:
    """The lower bound of the partition that holds ``value``.

    Months align to the calendar (quarters start in January, April, July, October; years in
    January), weeks to ISO Mondays, days to midnight; other day counts to 1970-01-01.
    Numbers align to multiples of the interval.
    """
    if interval.number is not None:
        n = interval.number
        if isinstance(value, Decimal) or isinstance(n, Decimal):
            # Decimal's % keeps the dividend's sign; step down once more for negatives.
            v, d = Decimal(value), Decimal(n)
            r = v % d
            return v - r if r >= 0 else v - r - d
        return (int(value) // int(n)) * int(n)
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            zone = time_zone_info(tz)
            local = value.astimezone(zone).replace(tzinfo=None)
            return _localize(_floor_date(local.date(), interval), zone)
        return datetime.combine(_floor_date(value.date(), interval), time())
    if isinstance(value, date):
        return _floor_date(value, interval)
    raise TypeError(f"cannot floor {value!r} by a time interval")


def _floor_date(d: date, interval: Interval) -> date:
    if interval.months:
        total = d.year * 12 + (d.month - 1)
        total -= total % interval.months
        return date(total // 12, total % 12 + 1, 1)
    if interval.days % 7 == 0:
        monday = d - timedelta(days=d.weekday())
        weeks = (monday - date(1970, 1, 5)).days // 7  # 1970-01-05 was a Monday
        step = interval.days // 7
        return date(1970, 1, 5) + timedelta(weeks=weeks - weeks % step)
    days = (d - EPOCH).days
    return EPOCH + timedelta(days=days - days % interval.days)


def _localize(d: date, zone: timezone | ZoneInfo) -> datetime:
    return datetime.combine(d, time(), tzinfo=zone)


def add(bound: Any, interval: Interval, k: int = 1) -> Any:
    """``bound`` moved by ``k`` intervals (``bound`` must be aligned, as ``floor`` returns)."""
    if interval.number is not None:
        return bound + interval.number * k
    if isinstance(bound, datetime):
        d = _add_date(bound.date(), interval, k)
        return datetime.combine(d, time(), tzinfo=bound.tzinfo)
    if isinstance(bound, date):
        return _add_date(bound, interval, k)
    raise TypeError(f"cannot add a time interval to {bound!r}")


def _add_date(d: date, interval: Interval, k: int) -> date:
    if interval.months:
        total = d.year * 12 + (d.month - 1) + interval.months * k
        return date(total // 12, total % 12 + 1, d.day)
    return d + timedelta(days=interval.days * k)


def ranges(start: Any, count: int, interval: Interval) -> list[tuple[Any, Any]]:
    """``count`` consecutive ``[lower, upper)`` ranges from the aligned ``start``."""
    out = []
    lo = start
    for _ in range(count):
        hi = add(lo, interval)
        out.append((lo, hi))
        lo = hi
    return out


def suffix(lower: Any, interval: Interval) -> str:
    """Partition name suffix: p2024 (years), p2024_09 (months), p2024_09_15 (days, weeks),
    p1000000 (numbers; negatives as pm5)."""
    if interval.number is not None:
        text = str(lower).replace(".", "_")
        return "pm" + text[1:] if text.startswith("-") else "p" + text
    d = lower.date() if isinstance(lower, datetime) else lower
    if interval.months and interval.months % 12 == 0 and d.month == 1:
        return f"p{d.year:04d}"
    if interval.months:
        return f"p{d.year:04d}_{d.month:02d}"
    return f"p{d.year:04d}_{d.month:02d}_{d.day:02d}"


def literal(value: Any) -> sql.Composable:
    """A bound as an SQL literal that means the same instant whatever the session TimeZone."""
    if value is None:
        return sql.SQL("NULL")
    if isinstance(value, str) and value.upper() in ("MINVALUE", "MAXVALUE"):
        return sql.SQL(value.upper())
    if isinstance(value, datetime):
        # An aware value carries its UTC offset, so the session TimeZone cannot shift it.
        return sql.Literal(value.isoformat(sep=" "))
    if isinstance(value, date):
        return sql.Literal(value.isoformat())
    if isinstance(value, (int, Decimal)):
        return sql.Literal(str(value))
    return sql.Literal(value)


def parse_value(text: str, kind: KeyKind, tz: str = "UTC") -> Any:
    """A user-given bound (``--from 2024-01-01``) as a Python value of the key's kind."""
    t = text.strip()
    if t.upper() in ("MINVALUE", "MAXVALUE"):
        return t.upper()
    try:
        if kind == "date":
            return date.fromisoformat(t)
        if kind == "timestamp":
            return datetime.fromisoformat(t).replace(tzinfo=None)
        if kind == "timestamptz":
            dt = datetime.fromisoformat(t)
            return dt if dt.tzinfo else dt.replace(tzinfo=time_zone_info(tz))
        if kind == "integer":
            return int(t)
        if kind == "numeric":
            return Decimal(t)
    except ValueError:
        raise Refused(f"{text!r} is not a valid {kind} value") from None
    return t


def as_key_value(instant: datetime, kind: KeyKind, tz: str = "UTC") -> Any:
    """An aware instant (``now()`` on the server) as a value of a time key, taken in the explicit
    zone ``tz`` and never the session's, so "the current partition" does not depend on where or
    in which TimeZone pgcleave runs: the date for ``date``, the wall time for ``timestamp``, the
    instant itself for ``timestamptz``."""
    if instant.tzinfo is None:
        raise ValueError("as_key_value needs an aware datetime")
    local = instant.astimezone(time_zone_info(tz))
    if kind == "date":
        return local.date()
    if kind == "timestamp":
        return local.replace(tzinfo=None)
    return instant
