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

from dataclasses import asdict, dataclass, field
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from .catalog import TableInfo
from .connection import Connection
from .errors import Refused
from .names import QualifiedName

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
    if not _has_table(conn):
        return None
    return from_row(table, conn.execute(load_sql(table)).fetchone())


def load_sql(table: QualifiedName) -> sql.Composed:
    """The query of ``load`` (when ``pgcleave.policies`` exists), for a caller that sends it
    with others in one pipeline; ``from_row`` reads its answer."""
    cols = sql.SQL(", ").join(map(sql.Identifier, Policy._COLUMNS))
    return sql.SQL("SELECT {} FROM pgcleave.policies WHERE table_schema = {} AND "
                   "table_name = {}").format(cols, sql.Literal(table.schema),
                                             sql.Literal(table.name))


def from_row(table: QualifiedName, row: tuple[Any, ...] | None) -> Policy | None:
    if row is None:
        return None
    return Policy(table, **dict(zip(Policy._COLUMNS, row, strict=True)))


def load_all(conn: Connection) -> list[Policy]:
    if not _has_table(conn):
        return []
    cols = sql.SQL(", ").join(map(sql.Identifier, Policy._COLUMNS))
    rows = conn.execute(sql.SQL("SELECT table_schema, table_name, {} FROM pgcleave.policies "
                                "ORDER BY 1, 2").format(cols)).fetchall()
    return [Policy(QualifiedName(r[0], r[1]), **dict(zip(Policy._COLUMNS, r[2:], strict=True)))
            for r in rows]


def _has_table(conn: Connection) -> bool:
    """Whether the journal's schema and its policies table exist (one query)."""
    row = conn.execute(PRESENT_SQL).fetchone()
    return bool(row and row[0] and row[1])


#: Whether ``pgcleave.jobs`` and ``pgcleave.policies`` exist: two booleans.
PRESENT_SQL = ("SELECT to_regclass('pgcleave.jobs') IS NOT NULL,"
               " to_regclass('pgcleave.policies') IS NOT NULL")


# -- validation --------------------------------------------------------------------------------
def validate(policy: Policy, info: TableInfo) -> None:
    """Refuse a policy that does not fit the table as the catalog shows it."""
    from . import schemes  # here: ``status`` reads policies and validates none

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
        schemes.time_zone_info(policy.time_zone)
    except Exception:
        raise Refused(f"unknown time zone {policy.time_zone!r}") from None








































def rule_text(rule: dict[str, Any]) -> str:
    if rule["kind"] == "range":
        lo = rule["from"] if rule["from"] is not None else "MINVALUE"
        hi = rule["to"] if rule["to"] is not None else "MAXVALUE"
        return f"range({lo}, {hi})={rule['server']}"
    vals = ", ".join("'" + v.replace("'", "''") + "'" for v in rule["values"])
    return f"list({vals})={rule['server']}"






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
