"""Partition a test database's tables the way production is partitioned, so an application's
test suite runs against partitioned tables (seed 003: "should have performed partition
conversion in CI database from the beginning").

``convert(dsn, {"orders": {"by": "range(created_at)", "interval": "1 month"}})`` runs the same
``pgcleave partition`` production runs (strategy ``auto`` unless given), accepting its warnings
(a test database has no application to protect). Tables the migrations already partitioned
(a ``PartitionTable`` / ``op.partition_table`` migration) are left as they are.

Strict by default: in a test database the converted table is empty, and the partition that
would hold the old table's rows (the DEFAULT, or the legacy ``[MINVALUE, cutoff)`` partition)
would swallow any row, hiding the rows production rejects. ``convert`` drops that partition when
it is empty and leaves the partitions production has: ``past`` intervals before the current one
(default 12) through ``premake`` intervals ahead. A test that writes a date outside them fails
with PostgreSQL's "no partition of relation ... found for row"; ``explain_missing_partition``
turns that into a message naming the partition to add. ``{"default": True}`` keeps a DEFAULT
(then such rows land there, as they would in production with a DEFAULT).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg import sql

from ..catalog import snapshot
from ..connection import Connection, Settings, connect
from ..errors import Refused, UsageError
from ..frameworks import OnlineOperation, missing_partition_message, run
from ..schemes import Interval, add, as_key_value, floor, key_kind

__all__ = ["TableConfig", "convert", "explain_missing_partition", "parse_config"]

#: How many intervals before the current one a strict conversion covers.
DEFAULT_PAST = 12


@dataclass(frozen=True)
class TableConfig:
    table: str
    by: str
    interval: str | None = None
    strategy: str = "auto"
    premake: int = 3
    past: int = DEFAULT_PAST
    default: bool = False


def parse_config(config: Mapping[str, Mapping[str, Any]]) -> list[TableConfig]:
    """``{"orders": {"by": "range(created_at)", "interval": "1 month", ...}}`` (as a dict, or
    read from TOML by the caller) -> validated table configs."""
    out: list[TableConfig] = []
    allowed = {"by", "interval", "strategy", "premake", "past", "default"}
    for table, opts in config.items():
        unknown = set(opts) - allowed
        if unknown or "by" not in opts:
            raise UsageError(f"partition config of {table}: "
                             + (f"unknown keys {sorted(unknown)}" if unknown else "no 'by'"),
                             hint=f"keys: {', '.join(sorted(allowed))}; e.g. "
                                  "{'by': 'range(created_at)', 'interval': '1 month'}")
        out.append(TableConfig(table, **dict(opts)))
    return out


def convert(settings: Settings | str, config: Mapping[str, Mapping[str, Any]], *,
            now: datetime | None = None) -> list[str]:
    """Partition every configured table of the (test) database; returns what it did, one line
    per table."""
    if isinstance(settings, str):
        settings = Settings(dsn=settings)
    done: list[str] = []
    for tc in parse_config(config):
        with connect(settings) as conn:
            kind = snapshot(conn, tc.table).kind
        if kind == "p":
            done.append(f"{tc.table}: already partitioned (by its migrations)")
            continue
        run(settings, OnlineOperation("partition", tc.table, {
            "by": tc.by, "interval": tc.interval, "strategy": tc.strategy,
            "premake": tc.premake}, confirm=True))
        line = f"{tc.table}: partitioned by {tc.by}"
        if not tc.default and tc.interval is not None:
            with connect(settings) as conn:
                line += _strict(conn, settings, tc, now or datetime.now(UTC))
        done.append(line)
    return done


def _strict(conn: Connection, settings: Settings, tc: TableConfig, now: datetime) -> str:
    """Drop the empty catch-all partition, then add the partitions production has."""
    info = snapshot(conn, tc.table)
    assert info.partitioning is not None
    catch_all = [p for p in info.partitioning.partitions
                 if p.is_default or (p.lower and p.lower[0].upper() == "MINVALUE")]
    dropped = []
    for p in catch_all:
        if conn.execute(sql.SQL("SELECT NOT EXISTS (SELECT FROM {})").format(
                p.name.ident)).fetchone() == (True,):
            conn.execute(sql.SQL("DROP TABLE {}").format(p.name.ident))
            dropped.append(str(p.name))
    key = info.column(info.partitioning.key_columns[0])
    kind, iv = key_kind(key.type), Interval.parse(str(tc.interval))
    row = conn.execute("SELECT current_setting('TimeZone')").fetchone()
    tz = str(row[0]) if row else "UTC"
    current = floor(as_key_value(now, kind, tz), iv, tz)
    added = 0
    for k in range(-tc.past, tc.premake + 1):
        lo = add(current, iv, k)
        try:
            run(settings, OnlineOperation("add-partition", tc.table, {
                "lower": str(lo), "upper": str(add(lo, iv))}, confirm=True))
        except Refused:
            continue  # that range (or part of it) has a partition already
        added += 1
    return (f"; strict: dropped the empty catch-all {', '.join(dropped) or '(none)'}, "
            f"{added} partitions added ({tc.past} intervals back, {tc.premake} ahead)")


def explain_missing_partition(conn: Connection | None, exc: BaseException) -> str | None:
    """For an exception whose cause is "no partition of relation ... found for row", the message
    that names the missing partition and the fix; None otherwise."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    # The driver's error carries the DETAIL (the key's value); wrappers (Django's) do not.
    chain.sort(key=lambda e: getattr(e, "diag", None) is None)
    for e in chain:
        diag = getattr(e, "diag", None)
        detail = getattr(diag, "message_detail", None) if diag is not None else None
        msg = missing_partition_message(conn, str(e), detail)
        if msg is not None:
            return msg
    return None
