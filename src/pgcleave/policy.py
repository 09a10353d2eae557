"""Per-table partitioning policy, stored in ``pgcleave.policies``: the one source of truth that
every machine running ``maintain`` shares. ``partition`` writes it; ``config`` changes it or
adopts a table partitioned by hand or by another tool; ``maintain``, ``check`` and ``status``
read it.

The second half of this module is how a policy *sees* a table: the range partitions of one
level with their bounds evaluated by the server into Python values (so they compare in the key's
own type, whatever the partitions are called), the period "now" falls in, the premake horizon,
the retention cutoff and the periods for which the DEFAULT partition holds rows. ``maintain``
and ``check`` both read the table through it, so they always agree.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from . import schemes
from .catalog import Partition, Partitioning, TableInfo
from .connection import Connection
from .errors import Refused
from .journal import schema_exists
from .names import QualifiedName, child_name

RETENTION_ACTIONS = ("detach", "archive", "drop")
ARCHIVE_FORMATS = ("copy", "pg_dump")


@dataclass
class Policy:
    """What maintenance keeps true for one table.

    ``interval``/``premake`` govern the range level (the top level, or the second level when
    ``sub_strategy`` is 'range' under a list/hash top level). ``retention`` ('24 months', or a
    number for integer keys) retires range partitions whose upper bound is at or before
    ``floor(now) - retention``; ``retention_action`` says how: detach and keep the table,
    archive it to ``archive_dir`` then drop it, or drop it.
    """

    table: QualifiedName
    strategy: str
    key_column: str
    interval: str | None = None
    premake: int = 3
    retention: str | None = None
    retention_action: str = "detach"
    archive_dir: str | None = None
    time_zone: str = "UTC"
    sub_strategy: str | None = None
    sub_key_column: str | None = None
    sub_interval: str | None = None
    placement: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    archive_format: str = "copy"

    _COLUMNS = ("strategy", "key_column", "interval", "premake", "retention",
                "retention_action", "archive_dir", "time_zone", "sub_strategy",
                "sub_key_column", "sub_interval", "placement", "options", "archive_format")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["table"] = self.table.quoted
        return d

    def summary(self) -> str:
        """One line for ``status`` and plan notes."""
        parts = [f"{self.strategy} ({self.key_column})"]
        if self.sub_strategy:
            parts.append(f"then {self.sub_strategy} ({self.sub_key_column})")
        if self.range_interval:
            parts.append(f"every {self.range_interval}")
            parts.append(f"premake {self.premake}")
        if self.retention:
            what = self.retention_action
            if what == "archive":
                what += f" ({self.archive_format}) to {self.archive_dir}"
            parts.append(f"retention {self.retention} then {what}")
        else:
            parts.append("no retention")
        for rule in self.placement:
            parts.append(f"place {rule_text(rule)}")
        return ", ".join(parts)

    # -- which level is the range level -----------------------------------------------------
    @property
    def range_interval(self) -> str | None:
        return self.sub_interval if self.sub_strategy == "range" else (
            self.interval if self.strategy == "range" else None)

    @property
    def range_key(self) -> str | None:
        if self.sub_strategy == "range":
            return self.sub_key_column
        return self.key_column if self.strategy == "range" else None

    def upsert(self) -> sql.Composed:
        """The statement that stores this policy: a plan step runs it, so the policy changes
        in the same transaction as the partitioning it describes."""
        values = [getattr(self, c) for c in self._COLUMNS]
        lits = [sql.Literal(Jsonb(v)) if c in ("placement", "options") else sql.Literal(v)
                for c, v in zip(self._COLUMNS, values, strict=True)]
        cols = sql.SQL(", ").join(map(sql.Identifier, self._COLUMNS))
        return sql.SQL(
            "INSERT INTO pgcleave.policies (table_schema, table_name, {cols}) VALUES ({s}, {n}, "
            "{vals}) ON CONFLICT (table_schema, table_name) DO UPDATE SET ({cols}, updated_at) = "
            "({excluded}, now())").format(
            cols=cols, s=sql.Literal(self.table.schema), n=sql.Literal(self.table.name),
            vals=sql.SQL(", ").join(lits),
            excluded=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c))
                                        for c in self._COLUMNS))

    @staticmethod
    def delete(table: QualifiedName) -> sql.Composed:
        return sql.SQL("DELETE FROM pgcleave.policies WHERE table_schema = {} AND table_name = {}"
                       ).format(sql.Literal(table.schema), sql.Literal(table.name))


def load(conn: Connection, table: QualifiedName) -> Policy | None:
    if not schema_exists(conn) or not _has_table(conn):
        return None
    cols = sql.SQL(", ").join(map(sql.Identifier, Policy._COLUMNS))
    row = conn.execute(sql.SQL("SELECT {} FROM pgcleave.policies WHERE table_schema = %s AND "
                               "table_name = %s").format(cols), [table.schema, table.name]
                       ).fetchone()
    if row is None:
        return None
    return Policy(table, **dict(zip(Policy._COLUMNS, row, strict=True)))


def load_all(conn: Connection) -> list[Policy]:
    if not schema_exists(conn) or not _has_table(conn):
        return []
    cols = sql.SQL(", ").join(map(sql.Identifier, Policy._COLUMNS))
    rows = conn.execute(sql.SQL("SELECT table_schema, table_name, {} FROM pgcleave.policies "
                                "ORDER BY 1, 2").format(cols)).fetchall()
    return [Policy(QualifiedName(r[0], r[1]), **dict(zip(Policy._COLUMNS, r[2:], strict=True)))
            for r in rows]


def _has_table(conn: Connection) -> bool:
    row = conn.execute("SELECT to_regclass('pgcleave.policies') IS NOT NULL").fetchone()
    return bool(row and row[0])


# -- validation --------------------------------------------------------------------------------
def validate(policy: Policy, info: TableInfo) -> None:
    """Refuse a policy that does not fit the table as the catalog shows it."""
    p = info.partitioning
    if p is None:
        raise Refused(f"{info.name} is not partitioned",
                      hint=f"partition it first: pgcleave partition {info.name} ...")
    if len(p.key_columns) != 1 or p.key_columns[0] == "(expression)":
        raise Refused(f"{info.name} is partitioned by {p.key}: maintenance handles one plain "
                      "key column per level")
    if policy.strategy != p.strategy or policy.key_column != p.key_columns[0]:
        raise Refused(f"the policy says {policy.strategy} ({policy.key_column}) but {info.name}"
                      f" is partitioned by {p.key}")
    if policy.premake < 0:
        raise Refused("--premake must be 0 or more")
    if policy.retention_action not in RETENTION_ACTIONS:
        raise Refused(f"unknown retention action {policy.retention_action!r}",
                      hint="use detach, archive or drop")
    if policy.archive_format not in ARCHIVE_FORMATS:
        raise Refused(f"unknown archive format {policy.archive_format!r}",
                      hint="use copy or pg_dump")
    if policy.retention_action == "archive" and policy.retention and not policy.archive_dir:
        raise Refused("retention action 'archive' needs an archive directory",
                      hint="add --archive-dir DIR")
    if policy.strategy == "range":
        if not policy.interval:
            raise Refused("a range-partitioned table needs an interval", hint="add --interval")
        if policy.sub_strategy:
            raise Refused("two levels are supported as list/hash then range",
                          hint="e.g. --by 'list(country)' --then 'range(scheduled_at)'")
    elif policy.sub_strategy is not None:
        if policy.sub_strategy != "range" or not policy.sub_key_column or not policy.sub_interval:
            raise Refused("the second level must be range with an interval",
                          hint="--then 'range(column)' --interval '1 month'")
        info.column(policy.sub_key_column)
        for part in p.partitions:
            sp = part.partitioning
            if part.is_default or sp is None:
                continue
            if sp.strategy != "range" or sp.key_columns != [policy.sub_key_column]:
                raise Refused(f"partition {part.name} is partitioned by {sp.key}, not by "
                              f"range ({policy.sub_key_column})")
    if policy.retention and not policy.range_key:
        raise Refused("retention needs a range level (by time or number)")
    key = policy.range_key
    if key is not None:
        col = info.column(key)
        kind = schemes.key_kind(col.type)
        iv = schemes.Interval.parse(policy.range_interval or "")
        schemes.check_fits(kind, iv, key, col.type)
        if policy.retention:
            ret = schemes.Interval.parse(policy.retention)
            if ret.is_time != iv.is_time:
                raise Refused(f"retention {policy.retention!r} does not fit interval {iv}",
                              hint="a time key takes '24 months'; a number key a number")
    try:
        schemes._zone(policy.time_zone)
    except Exception:
        raise Refused(f"unknown time zone {policy.time_zone!r}") from None


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
    local = now.astimezone(schemes._zone(tz)).replace(tzinfo=None)
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
            v: Any = datetime.combine(day, time(), tzinfo=schemes._zone(level.tz))
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


# -- config: change a policy, or adopt a table partitioned elsewhere ---------------------------
_THEN_RE = re.compile(r"^\s*(range|list|hash)\s*\(\s*(.+?)\s*\)\s*$", re.I)


def parse_then(text: str) -> tuple[str, str]:
    """``range(scheduled_at)`` -> ('range', 'scheduled_at'); quoted names keep their case."""
    m = _THEN_RE.match(text)
    if not m:
        raise Refused(f"cannot read {text!r}", hint="write it as 'range(column)'")
    col = m.group(2)
    if col.startswith('"') and col.endswith('"'):
        col = col[1:-1].replace('""', '"')
    return m.group(1).lower(), col


def plan_config(conn: Connection, table: str, *, interval: str | None = None,
                premake: int | None = None, retention: str | None = None,
                no_retention: bool = False, retention_action: str | None = None,
                archive_dir: str | None = None, archive_format: str | None = None,
                time_zone: str | None = None, then: str | None = None,
                place: list[str] | None = None, no_place: bool = False) -> tuple[Any, Policy]:
    """The plan that stores the changed (or adopted) policy, and that policy."""
    from .catalog import snapshot
    from .plan import Plan, Step

    info = snapshot(conn, table)
    p = info.partitioning
    if p is None:
        raise Refused(f"{info.name} is not partitioned",
                      hint=f"partition it with `pgcleave partition {info.name} ...` (which "
                           "stores the policy), then adjust it here")
    current = load(conn, info.name)
    notes: list[str] = []
    if current is None:
        current = Policy(info.name, p.strategy, p.key_columns[0])
        branch = next((x for x in p.partitions if x.partitioning is not None), None)
        if p.strategy != "range" and branch is not None and branch.partitioning is not None:
            bp = branch.partitioning
            current.sub_strategy, current.sub_key_column = bp.strategy, bp.key_columns[0]
        key = current.range_key
        if key is not None and interval is None:
            src = p if current.strategy == "range" else (
                branch.partitioning if branch is not None else None)
            if src is not None:
                kind = schemes.key_kind(info.column(key).type)
                guessed = infer_interval(evaluate_bounds(conn, src), kind)
                if guessed:
                    interval = guessed
                    notes.append(f"interval {guessed} inferred from the existing partitions")
        notes.append(f"adopting {info.name} ({len(p.leaves())} partitions, whatever their "
                     "names: pgcleave orders them by their bounds)")
    pol_ = Policy(**{**current.__dict__})
    if then is not None:
        pol_.sub_strategy, pol_.sub_key_column = parse_then(then)
    if interval is not None:
        schemes.Interval.parse(interval)
        if pol_.sub_strategy is not None:
            pol_.sub_interval = interval
        else:
            pol_.interval = interval
    if premake is not None:
        pol_.premake = premake
    if no_retention:
        pol_.retention = None
    elif retention is not None:
        schemes.Interval.parse(retention)
        pol_.retention = retention
    if retention_action is not None:
        pol_.retention_action = retention_action
    if archive_dir is not None:
        import os
        pol_.archive_dir = os.path.abspath(archive_dir)
    if archive_format is not None:
        pol_.archive_format = archive_format
    if time_zone is not None:
        pol_.time_zone = time_zone
    validate(pol_, info)
    warnings: list[str] = []
    if no_place:
        pol_.placement = []
    if place:
        # added to the rules already there (--no-place --place ... replaces them)
        pol_.placement = parse_placement(
            conn, pol_, info, [rule_text(r) for r in pol_.placement] + list(place))
        if not any(leaf.kind == "f" for leaf in p.leaves()):
            from .ddl.shards import first_move_warnings
            warnings += first_move_warnings(info)
        notes.append("existing partitions stay where they are (`pgcleave move PARTITION --to "
                     "SERVER` moves one); maintain creates new partitions inside a rule's "
                     "range on its server")
    step = Step.sql("policy", f"store the policy of {info.name}: {pol_.summary()}",
                    [pol_.upsert()], ddl=False)
    plan = Plan("config", info.name.quoted, {"policy": pol_.to_json()}, [step], notes=notes,
                warnings=warnings)
    return plan, pol_


# -- placement: which server new partitions go to ----------------------------------------------
_PLACE_RE = re.compile(r"^\s*(range|list)\s*\((.*)\)\s*=\s*(\S+?)\s*$", re.I | re.S)


def _split_values(text: str) -> list[str]:
    """``a, 'b,c', "d"`` -> ['a', 'b,c', 'd'] (single quotes: a value; '' inside is one ')."""
    out: list[str] = []
    cur, quoted, i = "", False, 0
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == "'" and text[i + 1:i + 2] == "'":
                cur += "'"
                i += 1
            elif ch == "'":
                quoted = False
            else:
                cur += ch
        elif ch == "'":
            quoted = True
        elif ch == ",":
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
        i += 1
    if quoted:
        raise Refused(f"unbalanced quote in {text!r}")
    out.append(cur.strip())
    return out


def rule_text(rule: dict[str, Any]) -> str:
    if rule["kind"] == "range":
        lo = rule["from"] if rule["from"] is not None else "MINVALUE"
        hi = rule["to"] if rule["to"] is not None else "MAXVALUE"
        return f"range({lo}, {hi})={rule['server']}"
    vals = ", ".join("'" + v.replace("'", "''") + "'" for v in rule["values"])
    return f"list({vals})={rule['server']}"


def _canonical(conn: Connection, values: list[str], typ: str, tz: str) -> list[str]:
    """Each value cast to the key's type by the server (in the policy's time zone), as text."""
    import psycopg

    try:
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL TimeZone = {}").format(sql.Literal(tz)))
            row = conn.execute(sql.SQL("SELECT ARRAY[{}]::text[]").format(sql.SQL(", ").join(
                sql.SQL("({})::{}").format(sql.Literal(v), sql.SQL(typ)) for v in values))
            ).fetchone()
    except psycopg.Error as exc:
        raise Refused(f"placement value(s) {', '.join(values)} do not fit the key's type {typ}: "
                      f"{str(exc).strip().splitlines()[0]}",
                      hint="e.g. --place 'range(2025-04-01, 2026-01-01)=db2'") from None
    assert row is not None
    return [str(v) for v in row[0]]


def parse_placement(conn: Connection, policy: Policy, info: TableInfo,
                    texts: list[str]) -> list[dict[str, Any]]:
    """Read and check ``--place`` rules: ``range(FROM, TO)=SERVER`` (FROM/TO may be MINVALUE/
    MAXVALUE) for a range-partitioned table, ``list(V1, V2)=SERVER`` for a list-partitioned
    one. Values are cast to the key's type; the server must exist; rules must not overlap; the
    table must be able to take foreign partitions."""
    from . import servers
    from .ddl.shards import refuse_parent_keys
    from .errors import NotFound

    p = info.partitioning
    assert p is not None
    key = info.column(policy.key_column)
    rules: list[dict[str, Any]] = []
    for text in texts:
        m = _PLACE_RE.match(text)
        if not m:
            raise Refused(f"cannot read placement rule {text!r}",
                          hint="write it as 'range(FROM, TO)=SERVER' or 'list(V1, V2)=SERVER'")
        kind, args, server = m.group(1).lower(), _split_values(m.group(2)), m.group(3)
        if server == "local":
            raise Refused("a placement rule names a server; partitions without a rule stay "
                          "local", hint="drop the rule (config --no-place, then --place the "
                          "others)")
        try:
            servers.get_server(conn, server)
        except NotFound as exc:
            raise Refused(exc.message, hint=exc.hint) from None
        if policy.sub_strategy is not None:
            raise Refused(f"{info.name} has two levels: its branches are partitioned and "
                          "cannot be foreign tables, and sub-partitions cannot be placed")
        if kind != policy.strategy:
            raise Refused(f"a {kind} rule does not fit {info.name}, partitioned by {p.key}",
                          hint=f"write '{policy.strategy}(...)={server}'")
        if kind == "range":
            if len(args) != 2 or not all(args):
                raise Refused(f"{text!r}: a range rule takes two bounds, FROM and TO",
                              hint="e.g. 'range(2025-04-01, 2026-01-01)=db2'")
            inf = [a.upper() in ("MINVALUE", "MAXVALUE") for a in args]
            fin = [a for a, i in zip(args, inf, strict=True) if not i]
            canon = iter(_canonical(conn, fin, key.type, policy.time_zone))
            lo = None if inf[0] else next(canon)
            hi = None if inf[1] else next(canon)
            if args[0].upper() == "MAXVALUE" or args[1].upper() == "MINVALUE":
                raise Refused(f"{text!r}: FROM may be MINVALUE and TO MAXVALUE, not the reverse")
            rules.append({"kind": "range", "from": lo, "to": hi, "server": server})
        else:
            if not all(args):
                raise Refused(f"{text!r}: empty value in a list rule")
            vals = _canonical(conn, args, key.type, policy.time_zone)
            rules.append({"kind": "list", "values": sorted(set(vals)), "server": server})
    # bounds in order, no overlap (compared by the server, in the key's type)
    ranges = [r for r in rules if r["kind"] == "range"]
    if ranges:
        bounds = range_rule_values(conn, ranges, key.type)
        for r, (lo, hi) in zip(ranges, bounds, strict=True):
            if lo is not None and hi is not None and not lo < hi:
                raise Refused(f"placement rule {rule_text(r)}: FROM must be below TO")
        for i, (lo1, hi1) in enumerate(bounds):
            for j, (lo2, hi2) in enumerate(bounds[:i]):
                if (lo1 is None or hi2 is None or lo1 < hi2) and \
                        (lo2 is None or hi1 is None or lo2 < hi1):
                    raise Refused(f"placement rules {rule_text(ranges[j])} and "
                                  f"{rule_text(ranges[i])} overlap",
                                  hint="give each range one server")
    seen: dict[str, dict[str, Any]] = {}
    for r in rules:
        for v in r.get("values", []):
            if v in seen:
                raise Refused(f"placement rules {rule_text(seen[v])} and {rule_text(r)} "
                              f"overlap on {v!r}", hint="give each value one server")
            seen[v] = r
    refuse_parent_keys(info)
    if any(col.generated for col in info.columns):
        raise Refused(f"{info.name} has generated columns; foreign partitions cannot carry them")
    return rules


def range_rule_values(conn: Connection, rules: list[dict[str, Any]], typ: str
                      ) -> list[tuple[Any, Any]]:
    """The bounds of range rules as Python values of the key's type (None: unbounded)."""
    if not rules:
        return []
    items: list[sql.Composable] = []
    for r in rules:
        for v in (r["from"], r["to"]):
            items.append(sql.SQL("NULL::{}").format(sql.SQL(typ)) if v is None else
                         sql.SQL("({})::{}").format(sql.Literal(v), sql.SQL(typ)))
    row = conn.execute(sql.SQL("SELECT {}").format(sql.SQL(", ").join(items))).fetchone()
    assert row is not None
    return [(row[2 * i], row[2 * i + 1]) for i in range(len(rules))]


def placed_server(rules: list[dict[str, Any]], values: list[tuple[Any, Any]], lo: Any,
                  hi: Any) -> str | None:
    """The server of the range rule holding all of ``[lo, hi)``, if any."""
    for r, (rlo, rhi) in zip(rules, values, strict=True):
        if (rlo is None or (lo is not None and rlo <= lo)) and \
                (rhi is None or (hi is not None and hi <= rhi)):
            return str(r["server"])
    return None
