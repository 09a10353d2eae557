"""How a policy sees one range level of a table (the table itself, or each list/hash branch of a
two-level one): its partitions with bounds evaluated in the key's type, its period, the horizon
premake keeps ahead, the retention cutoff and the ranges past it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from psycopg import sql

from . import schemes
from .catalog import Partition, Partitioning, TableInfo
from .connection import Connection
from .names import QualifiedName, child_name
from .policy import Policy


# -- how a policy sees one range level ---------------------------------------------------------
@dataclass
class RangePart:
    """A range partition with its bounds as Python values (None: MINVALUE / MAXVALUE)."""

    part: Partition
    lo: Any
    hi: Any

    def covers(self, lo: Any, hi: Any) -> bool:
        return (self.lo is None or self.lo <= lo) and (self.hi is None or hi <= self.hi)


@dataclass
class Level:
    """One range-partitioned parent governed by the policy's interval: the table itself, or
    one branch of a two-level table."""

    parent: QualifiedName
    partitioning: Partitioning
    key: str
    key_type: str
    kind: schemes.KeyKind
    interval: schemes.Interval
    tz: str
    parts: list[RangePart]  # ordered by bounds
    default: Partition | None
    nullable: bool = True
    branch_values: list[str] | None = None  # for a branch: its list values (SQL literals)

    @property
    def pending(self) -> list[Partition]:
        return [p for p in self.partitioning.partitions if p.detach_pending]

    def overlaps(self, lo: Any, hi: Any) -> list[RangePart]:
        return [rp for rp in self.parts
                if (rp.lo is None or rp.lo < hi) and (rp.hi is None or lo < rp.hi)]

    def gaps(self, lo: Any, hi: Any) -> list[tuple[Any, Any]]:
        """The parts of ``[lo, hi)`` no existing partition covers (clipped to neighbours)."""
        out: list[tuple[Any, Any]] = []
        cur = lo
        for rp in sorted(self.overlaps(lo, hi), key=lambda r: (r.lo is not None, r.lo)):
            start = rp.lo if rp.lo is not None else cur
            if cur < start:
                out.append((cur, min(start, hi)))
            if rp.hi is None:
                return out
            cur = max(cur, rp.hi)
            if cur >= hi:
                return out
        if cur < hi:
            out.append((cur, hi))
        return out

    def period(self, value: Any) -> Any:
        return schemes.floor(value, self.interval, self.tz)

    def periods(self, start: Any, end: Any) -> list[tuple[Any, Any]]:
        """Aligned periods from the one holding ``start`` up to ``end`` (exclusive)."""
        out = []
        lo = self.period(start)
        while lo < end:
            hi = schemes.add(lo, self.interval)
            out.append((lo, hi))
            lo = hi
        return out

    def horizon(self, now: Any) -> Any:
        """End of the contiguous coverage starting at the period holding ``now``: rows up to
        this value have a partition waiting for them (None: unbounded)."""
        cur = self.period(now)
        while True:
            nxt = next((rp for rp in self.parts if rp.covers(cur, _next_instant(cur))), None)
            if nxt is None:
                return cur
            if nxt.hi is None:
                return None
            cur = nxt.hi

    def name_for(self, lo: Any, taken: set[str]) -> str:
        base = self.parent.name
        name = child_name(base, schemes.suffix(lo, self.interval))
        n = 1
        while name in taken:
            name = child_name(base, f"{schemes.suffix(lo, self.interval)}_{n}")
            n += 1
        taken.add(name)
        return name

    def bound_sql(self, lo: Any, hi: Any) -> sql.Composable:
        return sql.SQL("FOR VALUES FROM ({}) TO ({})").format(
            schemes.literal(lo if lo is not None else "MINVALUE"),
            schemes.literal(hi if hi is not None else "MAXVALUE"))

    def range_cond(self, lo: Any, hi: Any, prefix: str = "") -> sql.Composable:
        """``key >= lo AND key < hi`` (NULL-free), optionally on ``NEW.``/``OLD.``."""
        col = _col(prefix, self.key)
        parts: list[sql.Composable] = [sql.SQL("{} IS NOT NULL").format(col)]
        if lo is not None:
            parts.append(sql.SQL("{} >= {}").format(col, schemes.literal(lo)))
        if hi is not None:
            parts.append(sql.SQL("{} < {}").format(col, schemes.literal(hi)))
        return sql.SQL("({})").format(sql.SQL(" AND ").join(parts))


def _col(prefix: str, name: str) -> sql.Composable:
    return sql.SQL(prefix + "{}").format(sql.Identifier(name)) if prefix else sql.Identifier(name)


def _next_instant(v: Any) -> Any:
    if isinstance(v, datetime):
        from datetime import timedelta
        return v + timedelta(microseconds=1)
    if isinstance(v, date):
        from datetime import timedelta
        return v + timedelta(days=1)
    if isinstance(v, Decimal):
        return v + Decimal("0.000001")
    return v + 1


def evaluate_bounds(conn: Connection, partitioning: Partitioning) -> list[RangePart]:
    """Range bounds as values of the key's type, computed by the server (so a timestamptz
    literal deparsed in the session's TimeZone means the same instant here)."""
    typ = partitioning.key_types[0]
    bounded = [p for p in partitioning.partitions
               if not p.is_default and p.lower is not None and p.upper is not None]
    if not bounded:
        return []
    rows: list[sql.Composable] = []
    for i, p in enumerate(bounded):
        assert p.lower is not None and p.upper is not None
        lo, hi = p.lower[0], p.upper[0]
        rows.append(sql.SQL("({}, {}, {})").format(
            sql.Literal(i),
            sql.SQL("NULL::{}").format(sql.SQL(typ)) if lo.upper() in ("MINVALUE", "MAXVALUE")
            else sql.SQL("({})::{}").format(sql.SQL(lo), sql.SQL(typ)),
            sql.SQL("NULL::{}").format(sql.SQL(typ)) if hi.upper() in ("MINVALUE", "MAXVALUE")
            else sql.SQL("({})::{}").format(sql.SQL(hi), sql.SQL(typ))))
    vals = {int(r[0]): (r[1], r[2]) for r in conn.execute(
        sql.SQL("SELECT * FROM (VALUES {}) v(i, lo, hi)").format(sql.SQL(", ").join(rows)))}
    out = []
    for i, p in enumerate(bounded):
        lo, hi = vals[i]
        assert p.lower is not None and p.upper is not None
        if p.lower[0].upper() == "MAXVALUE" or p.upper[0].upper() == "MINVALUE":
            continue  # empty degenerate range; never produced by PostgreSQL for one column
        out.append(RangePart(p, lo, hi))
    return out


def level_for(conn: Connection, parent: QualifiedName, partitioning: Partitioning,
              info: TableInfo, key: str, interval: str, tz: str,
              branch_values: list[str] | None = None) -> Level:
    col = info.column(key)
    return Level(parent=parent, partitioning=partitioning, key=key, key_type=col.type,
                 kind=schemes.key_kind(col.type), interval=schemes.Interval.parse(interval),
                 tz=tz, parts=evaluate_bounds(conn, partitioning),
                 default=partitioning.default, nullable=not col.not_null,
                 branch_values=branch_values)


def levels(conn: Connection, policy: Policy, info: TableInfo) -> list[Level]:
    """Every range level the policy governs: the table, or each list/hash branch."""
    p = info.partitioning
    assert p is not None
    if policy.strategy == "range":
        assert policy.interval
        return [level_for(conn, info.name, p, info, policy.key_column, policy.interval,
                          policy.time_zone)]
    if policy.sub_strategy != "range":
        return []
    assert policy.sub_key_column and policy.sub_interval
    out = []
    for part in p.partitions:
        if part.is_default or part.partitioning is None:
            continue
        out.append(level_for(conn, part.name, part.partitioning, info, policy.sub_key_column,
                             policy.sub_interval, policy.time_zone, part.values))
    return out


def now_value(conn: Connection, level_kind: schemes.KeyKind, tz: str, now: datetime | None,
              max_key: Any = None) -> Any:
    """"Now" in the key's kind: an aware instant for timestamptz, the wall-clock time in the
    policy's zone for timestamp, the date for date keys; for number keys, the largest key."""
    if level_kind in ("integer", "numeric"):
        return max_key
    if now is None:
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        now = row[0]
    assert now is not None
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if level_kind == "timestamptz":
        return now
    local = now.astimezone(schemes.time_zone_info(tz)).replace(tzinfo=None)
    return local if level_kind == "timestamp" else local.date()


def max_key(conn: Connection, table: QualifiedName, key: str) -> Any:
    row = conn.execute(sql.SQL("SELECT max({}) FROM {}").format(
        sql.Identifier(key), table.ident)).fetchone()
    return row[0] if row else None


def cutoff(level: Level, now: Any, retention: str | None) -> Any:
    """Partitions whose upper bound is at or before this are past retention (None: keep all).
    Computed from the period ``now`` falls in, so it does not move within a period."""
    if not retention or now is None:
        return None
    ret = schemes.Interval.parse(retention)
    cur = level.period(now)
    if ret.number is not None:
        return cur - ret.number
    d = cur.date() if isinstance(cur, datetime) else cur
    total = d.year * 12 + (d.month - 1) - ret.months
    y, m = divmod(total, 12)
    import calendar
    day = min(d.day, calendar.monthrange(y, m + 1)[1])
    from datetime import timedelta
    nd = date(y, m + 1, day) - timedelta(days=ret.days)
    if isinstance(cur, datetime):
        return datetime.combine(nd, time(), tzinfo=cur.tzinfo)
    return nd


def retired(level: Level, cut: Any) -> list[RangePart]:
    """Partitions past retention, oldest first (by bounds, never by name)."""
    if cut is None:
        return []
    return [rp for rp in level.parts if rp.hi is not None and rp.hi <= cut
            and rp.part.partitioning is None]


def default_periods(conn: Connection, level: Level) -> dict[Any, int]:
    """Rows in the level's DEFAULT partition per aligned period (NULL keys under None)."""
    if level.default is None:
        return {}
    d = level.default.name.ident
    k = sql.Identifier(level.key)
    if level.kind in ("integer", "numeric"):
        n = level.interval.number
        q = sql.SQL("SELECT floor({k} / {n}::numeric) * {n}, count(*) FROM ONLY {d} "
                    "GROUP BY 1").format(k=k, n=sql.Literal(str(n)), d=d)
        out: dict[Any, int] = {}
        for num, c in conn.execute(q):
            key = None if num is None else (int(num) if level.kind == "integer" else Decimal(num))
            key = None if key is None else level.period(key)
            out[key] = out.get(key, 0) + int(c)
        return out
    if level.kind == "timestamptz":
        expr = sql.SQL("({} AT TIME ZONE {})::date").format(k, sql.Literal(level.tz))
    else:
        expr = sql.SQL("{}::date").format(k)
    q = sql.SQL("SELECT {e}, count(*) FROM ONLY {d} GROUP BY 1").format(e=expr, d=d)
    out = {}
    for day, c in conn.execute(q):
        if day is None:
            out[None] = out.get(None, 0) + int(c)
            continue
        if level.kind == "timestamptz":
            v: Any = datetime.combine(day, time(), tzinfo=schemes.time_zone_info(level.tz))
        elif level.kind == "timestamp":
            v = datetime.combine(day, time())
        else:
            v = day
        key = level.period(v)
        out[key] = out.get(key, 0) + int(c)
    return out


def relation_names(conn: Connection, schema: str) -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s", [schema])}


def infer_interval(level_parts: list[RangePart], kind: schemes.KeyKind) -> str | None:
    """Guess the interval of an adopted table from its newest bounded partitions."""
    widths: list[str] = []
    for rp in level_parts:
        if rp.lo is None or rp.hi is None:
            continue
        lo, hi = rp.lo, rp.hi
        if kind in ("integer", "numeric"):
            widths.append(str(hi - lo))
            continue
        dlo = lo.date() if isinstance(lo, datetime) else lo
        dhi = hi.date() if isinstance(hi, datetime) else hi
        if dlo.day == 1 and dhi.day == 1:
            months = (dhi.year - dlo.year) * 12 + dhi.month - dlo.month
            widths.append(f"{months} months" if months != 12 else "1 year")
        else:
            widths.append(f"{(dhi - dlo).days} days")
    if not widths:
        return None
    tail = widths[-3:]
    return str(schemes.Interval.parse(max(set(tail), key=tail.count)))
