"""``pgcleave advise TABLE``: should this table be partitioned, by what, how wide, and at what
cost -- a verdict with its evidence.

Seed 001 ends with "So, should I partition or not?": look at the size and growth of the table
and at its most common queries; if all you do is select by primary key you probably do not need
partitioning. This reads the size against memory (``shared_buffers``, ``effective_cache_size``,
the ~100 GB rule of thumb), the growth (``pg_stat_user_tables``, measured over ``--sample``),
and the statements pg_stat_statements saw touching the table, planned by the server itself
(catalog/statements.py) to learn which columns they filter, group and order by. A column ranks
by the share of statement time whose plans would prune by it; the interval keeps partitions in
a size band; the blockers are what the conversion costs the application. Nothing is changed.
"""

from __future__ import annotations

import math
import re
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from ..catalog import TableInfo, snapshot
from ..catalog.statements import (
    ColumnUse,
    Statement,
    Statements,
    column_use,
    mentions,
    plan_statement,
    read_statements,
)
from ..connection import Connection
from ..errors import Refused

GIB = 1024**3
#: The rule of thumb users quote: partition a table past ~100 GB (seed 001, seed 002).
BIG_TABLE = 100 * GIB
#: Partitions below this gain little; above the top they are slow to copy, index or retire.
BAND = (1 * GIB, 50 * GIB)
TIME_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")
INT_TYPES = ("smallint", "integer", "bigint", "numeric")
INTERVALS = (("1 day", 1.0), ("1 week", 7.0), ("1 month", 30.44), ("3 months", 91.31),
             ("1 year", 365.25))
#: List partitioning only for columns with at most this many distinct values.
LIST_MAX_VALUES = 50


@dataclass
class Seen:
    """One statement that touches the table, and what its plan does with the columns."""

    statement: Statement
    use: ColumnUse
    weight: float  # share of the time (or calls) of all statements that scan the table
    by_primary_key: bool
    sets: list[str]  # columns an UPDATE assigns

    def to_json(self) -> dict[str, Any]:
        return {**self.statement.to_json(), "operation": self.statement.operation,
                "weight": round(self.weight, 4), "by_primary_key": self.by_primary_key,
                "updates_columns": self.sets, **self.use.to_json()}


@dataclass
class Candidate:
    column: str
    type: str
    method: str  # range, list, hash
    score: float  # share of statement time whose plans would prune by it
    statements: int
    calls: int
    interval: str | None = None
    modulus: int | None = None
    reason: str = ""

    @property
    def by(self) -> str:
        return f"{self.method}({_ident(self.column)})"

    def to_json(self) -> dict[str, Any]:
        return {"column": self.column, "type": self.type, "method": self.method,
                "by": self.by, "score": round(self.score, 4), "statements": self.statements,
                "calls": self.calls, "interval": self.interval, "modulus": self.modulus,
                "reason": self.reason}


@dataclass
class Blocker:
    kind: str  # inbound_fk, primary_key, unique, on_conflict, trigger, row_movement
    what: str
    cost: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "what": self.what, "cost": self.cost}


@dataclass
class Advice:
    table: str
    verdict: str  # partition, not yet, don't partition, unknown
    reasons: list[str]
    size: dict[str, Any]
    growth: dict[str, Any]
    statements: Statements
    seen: list[Seen] = field(default_factory=list)
    unplanned: list[dict[str, Any]] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    blockers: list[Blocker] = field(default_factory=list)
    command: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "verdict": self.verdict, "reasons": self.reasons,
                "size": self.size, "growth": self.growth,
                "statements": {**self.statements.to_json(),
                               "touching": [s.to_json() for s in self.seen],
                               "not_planned": self.unplanned},
                "candidates": [c.to_json() for c in self.candidates],
                "blockers": [b.to_json() for b in self.blockers], "command": self.command}


def advise(conn: Connection, table: str, *, sample_s: float = 0.0) -> Advice:
    info = snapshot(conn, table)
    if info.is_partitioned:
        raise Refused(f"{info.name} is already partitioned",
                      hint=f"`pgcleave audit {info.name}` checks how its statements use the "
                           "partitions")
    if info.parent is not None:
        raise Refused(f"{info.name} is a partition of {info.parent}",
                      hint=f"advise on the table itself: `pgcleave audit {info.parent}`")
    size = _size(conn, info)
    growth = _growth(conn, info, sample_s)
    stmts = read_statements(conn)
    seen, unplanned = touching(conn, info, stmts.statements)
    adv = Advice(str(info.name), "unknown", [], size, growth, stmts, seen, unplanned)
    adv.candidates = _candidates(conn, info, seen, size, growth)
    best = adv.candidates[0] if adv.candidates else None
    if best is not None:
        adv.blockers = _blockers(info, seen, best)
        adv.command = _command(info, best, adv.blockers)
    adv.verdict, adv.reasons = _verdict(info, adv, best)
    return adv


def touching(conn: Connection, info: TableInfo, statements: list[Statement]
             ) -> tuple[list[Seen], list[dict[str, Any]]]:
    """The statements whose plans read or write the table (or its partitions), each with the
    columns it uses; and those naming the table that the server could not plan."""
    relations = {(info.name.schema, info.name.name)}
    if info.partitioning is not None:
        relations |= {(p.name.schema, p.name.name) for p in info.partitioning.leaves()}
    names = [info.name.name.lower(), *(v.name.name.lower() for v in info.views)]
    cols = [c.name for c in info.columns]
    pk = set(info.primary_key.columns) if info.primary_key else set()
    found: list[tuple[Statement, ColumnUse]] = []
    unplanned: list[dict[str, Any]] = []
    for st in statements:
        if not mentions(st.query, names) or "pgcleave_" in st.query:
            continue
        planned = plan_statement(conn, st.query)
        if planned.plan is None:
            if st.operation == "other":
                continue  # utility statements (ANALYZE, SET, BEGIN) have no plan
            unplanned.append({"queryid": st.queryid, "query": st.query,
                              "error": planned.error})
            continue
        use = column_use(planned.plan, relations, cols, st.operation)
        if use.touches:
            found.append((st, use))
    total_ms = sum(s.total_ms for s, u in found if u.scans)
    total_calls = sum(s.calls for s, u in found if u.scans)
    seen: list[Seen] = []
    for st, use in found:
        w = 0.0
        if use.scans:
            w = st.total_ms / total_ms if total_ms > 0 else st.calls / max(total_calls, 1)
        by_pk = bool(pk) and all(use.filters.get(c) == "eq" for c in pk)
        seen.append(Seen(st, use, w, by_pk, _assigned(st.query, cols)
                         if st.operation == "update" else []))
    seen.sort(key=lambda s: (-s.weight, -s.statement.calls))
    return seen, unplanned


def _assigned(query: str, cols: list[str]) -> list[str]:
    """The columns an UPDATE's SET list assigns (the normalized text keeps the names)."""
    m = re.search(r"\bSET\b(.*?)(?:\bWHERE\b|\bFROM\b|\bRETURNING\b|$)", query,
                  re.IGNORECASE | re.DOTALL)
    if not m:
        return []
    sets = m.group(1)
    return [c for c in cols
            if re.search(r"(?:^|[,(\s])" + re.escape(_ident(c)) + r"\s*[=,)]", sets)]


def _ident(name: str) -> str:
    return name if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) else \
        '"' + name.replace('"', '""') + '"'


def _one(conn: Connection, query: str | sql.Composable, *args: Any) -> tuple[Any, ...]:
    row = conn.execute(query.encode() if isinstance(query, str) else query,  # type: ignore[arg-type]
                       list(args) or None).fetchone()
    assert row is not None
    return tuple(row)


def _size(conn: Connection, info: TableInfo) -> dict[str, Any]:
    sb, ecs = _one(conn, "SELECT pg_size_bytes(current_setting('shared_buffers')),"
                         " pg_size_bytes(current_setting('effective_cache_size'))")
    heap, = _one(conn, "SELECT pg_table_size(%s::oid)", info.oid)
    return {"bytes": info.bytes, "table_bytes": int(heap), "rows": info.rows,
            "shared_buffers": int(sb), "effective_cache_size": int(ecs),
            "bigger_than_memory": info.bytes > int(ecs), "over_100_gb": info.bytes >= BIG_TABLE}


def _counters(conn: Connection, oid: int) -> tuple[int, int, int, int, float]:
    row = _one(conn, "SELECT coalesce(s.n_tup_ins, 0), coalesce(s.n_tup_upd, 0),"
                     " coalesce(s.n_tup_del, 0), pg_total_relation_size(%s::oid),"
                     " extract(epoch FROM clock_timestamp())"
                     " FROM (SELECT 1) one LEFT JOIN pg_stat_user_tables s ON s.relid = %s::oid",
               oid, oid)
    return int(row[0]), int(row[1]), int(row[2]), int(row[3]), float(row[4])


def _growth(conn: Connection, info: TableInfo, sample_s: float) -> dict[str, Any]:
    """Rows and bytes per day: since the statistics were reset (or the server started: 15+
    keeps them over a clean restart, so that is a lower bound of the window), and measured
    over ``sample_s`` seconds when asked."""
    ins, upd, dele, _, _ = _counters(conn, info.oid)
    since, days = _one(conn, "SELECT coalesce(d.stats_reset, pg_postmaster_start_time()),"
                             " extract(epoch FROM now() - coalesce(d.stats_reset,"
                             " pg_postmaster_start_time())) / 86400"
                             " FROM pg_stat_database d WHERE d.datname = current_database()")
    days = max(float(days), 1e-6)
    bytes_per_row = info.bytes / info.rows if info.rows else 0.0
    g: dict[str, Any] = {
        "since": str(since), "window_days": round(days, 3), "inserted": ins, "updated": upd,
        "deleted": dele,
        # Under an hour of counters says nothing of a day (a bulk load would look like growth).
        "rows_per_day": round((ins - dele) / days, 1) if days >= 1 / 24 else None,
        "bytes_per_day": round((ins - dele) / days * bytes_per_row) if days >= 1 / 24 else None,
        "sampled_seconds": None, "sampled_rows_per_day": None, "sampled_bytes_per_day": None,
    }
    if sample_s > 0:
        a = _counters(conn, info.oid)
        time.sleep(sample_s)
        # Backends flush their counters at most once a second (15+): wait for the last ones.
        time.sleep(min(1.1, sample_s))
        conn.execute("SELECT pg_stat_clear_snapshot()")
        b = _counters(conn, info.oid)
        secs = max(b[4] - a[4], 1e-6)
        rows = (b[0] - a[0]) - (b[2] - a[2])
        g["sampled_seconds"] = round(secs, 1)
        g["sampled_rows_per_day"] = round(rows / secs * 86400, 1)
        g["sampled_bytes_per_day"] = round(max(b[3] - a[3], rows * bytes_per_row)
                                           / secs * 86400)
    return g


def _candidates(conn: Connection, info: TableInfo, seen: list[Seen], size: dict[str, Any],
                growth: dict[str, Any]) -> list[Candidate]:
    pk = set(info.primary_key.columns) if info.primary_key else set()
    score: dict[str, list[Seen]] = {}
    for s in seen:
        for col, kind in s.use.filters.items():
            if kind in ("eq", "range") and not (col in pk and s.by_primary_key):
                score.setdefault(col, []).append(s)
    out: list[Candidate] = []
    for col, using in score.items():
        c = info.column(col)
        ranged = any(s.use.filters[col] == "range" for s in using)
        cand = Candidate(col, c.type, "range", sum(s.weight for s in using), len(using),
                         sum(s.statement.calls for s in using))
        if c.type in TIME_TYPES:
            cand.interval, cand.reason = _time_interval(conn, info, col, size, growth)
        elif c.type in INT_TYPES and ranged:
            cand.interval, cand.reason = _number_interval(conn, info, col, size)
        else:
            distinct = _distinct(conn, info, col)
            if distinct is not None and distinct <= LIST_MAX_VALUES:
                cand.method = "list"
                cand.reason = f"about {distinct:.0f} distinct values: one partition each"
            elif ranged and c.type not in INT_TYPES:
                cand.reason = ("ranges of text: the table becomes the DEFAULT partition and "
                               "`pgcleave carve` cuts ranges out of it")
            else:
                cand.method = "hash"
                cand.modulus = max(4, 2 ** math.ceil(math.log2(max(size["bytes"] / (10 * GIB),
                                                                   1))))
                cand.reason = (("many distinct values" if distinct is None or distinct > 0
                                else "") + f", looked up by equality: hash into "
                               f"{cand.modulus} partitions of about "
                               f"{_gb(size['bytes'] / cand.modulus)} each").lstrip(", ")
        out.append(cand)
    out.sort(key=lambda c: (-c.score, -c.calls, c.column))
    return out


def _gb(n: float) -> str:
    if n >= GIB / 10:
        return f"{n / GIB:.1f} GB"
    return f"{n / 1024**2:.1f} MB" if n >= 1024**2 / 10 else f"{n / 1024:.1f} kB"


def _stats_span(conn: Connection, info: TableInfo, col: str, cast: str) -> float | None:
    """max - min of the column from pg_stats' histogram (no scan of the table); in days for
    time types, in the column's unit for numbers."""
    expr = ("extract(epoch FROM b[array_upper(b, 1)] - b[1]) / 86400" if cast == "timestamptz"
            else "b[array_upper(b, 1)] - b[1]")
    row = conn.execute(sql.SQL(
        "SELECT {} FROM (SELECT histogram_bounds::text::{}[] AS b FROM pg_stats"
        " WHERE schemaname = %s AND tablename = %s AND attname = %s) s").format(
        sql.SQL(expr), sql.SQL(cast)),
        [info.name.schema, info.name.name, col]).fetchone()
    return float(row[0]) if row and row[0] is not None else None


def _time_interval(conn: Connection, info: TableInfo, col: str, size: dict[str, Any],
                   growth: dict[str, Any]) -> tuple[str, str]:
    # The rate that says most about future partitions: measured (--sample), else the
    # statistics' window when it spans a day or more, else the rows the key already spans.
    span = _stats_span(conn, info, col, "timestamptz")
    rate: float | None = None
    if growth.get("sampled_bytes_per_day"):
        rate = float(growth["sampled_bytes_per_day"])
    elif growth.get("window_days", 0) >= 1 and growth.get("bytes_per_day", 0) > 0:
        rate = float(growth["bytes_per_day"])
    elif span and span > 0:
        rate = float(size["bytes"]) / span
    if rate is None:
        return "1 month", "no statistics on the column (run ANALYZE for an estimate)"
    for name, days in INTERVALS:
        if rate * days >= BAND[0]:
            if rate * days > BAND[1] and name != "1 day":
                break
            return name, (f"about {_gb(rate)} a day: {name} partitions of about "
                          f"{_gb(rate * days)} (band {_gb(BAND[0])}-{_gb(BAND[1])})")
    return "1 month", (f"about {_gb(rate)} a day: partitions stay under {_gb(BAND[0])} at any "
                       "interval; a month keeps their number low and is easy to retire by")


def _number_interval(conn: Connection, info: TableInfo, col: str, size: dict[str, Any]
                     ) -> tuple[str, str]:
    span = _stats_span(conn, info, col, "numeric")
    if not span or span <= 0:
        return "1000000", "no statistics on the column (run ANALYZE for an estimate)"
    parts = max(4, min(1000, math.ceil(size["bytes"] / (10 * GIB))))
    width = span / parts
    mag = 10 ** math.floor(math.log10(max(width, 1)))
    nice = next(m * mag for m in (1, 2, 5, 10) if m * mag >= width)
    return str(int(nice)), (f"values span about {span:,.0f}: {nice:,.0f} wide gives about "
                            f"{max(1, round(span / nice))} partitions of "
                            f"{_gb(size['bytes'] * nice / span)}")


def _distinct(conn: Connection, info: TableInfo, col: str) -> float | None:
    row = conn.execute("SELECT n_distinct FROM pg_stats WHERE schemaname = %s AND tablename = %s"
                       " AND attname = %s", [info.name.schema, info.name.name, col]).fetchone()
    if row is None or row[0] is None:
        return None
    nd = float(row[0])
    return nd if nd >= 0 else -nd * float(info.rows or 0)


def _blockers(info: TableInfo, seen: list[Seen], best: Candidate) -> list[Blocker]:
    key = best.column
    out: list[Blocker] = []
    for fk in info.foreign_keys_in:
        out.append(Blocker("inbound_fk", f"{fk.table}.{fk.name} ({', '.join(fk.columns)}) "
                           f"references it", "the conversion refuses it: --drop-inbound-fks "
                           "drops it in the cut-over, and the referencing table loses that check "
                           "(a foreign key to a partitioned table needs a unique key with "
                           f"{key})"))
    if info.primary_key and key not in info.primary_key.columns:
        cols = ", ".join(info.primary_key.columns)
        out.append(Blocker("primary_key", f"PRIMARY KEY ({cols}) lacks {key}",
                           f"in place, the partitioned table has no primary key (each partition "
                           f"keeps its own); by copy it becomes ({cols}, {key}): ORMs that read "
                           "the key from the database and upserts on it must change (the "
                           "partition command lists what, per ORM)"))
    for ix in info.indexes:
        if ix.unique and not ix.primary and key not in ix.columns:
            out.append(Blocker("unique", f"unique index {ix.name} ({', '.join(ix.columns)}) "
                               f"lacks {key}", "uniqueness holds per partition only: two "
                               "partitions may then hold the same value"))
    arbiters = {ix.name: ix for ix in info.indexes}
    for s in seen:
        for a in s.use.arbiters:
            arb = arbiters.get(a)
            if arb is not None and key not in arb.columns:
                out.append(Blocker("on_conflict", f"{_short(s.statement.query)} "
                                   f"({s.statement.calls} calls) conflicts on {a} "
                                   f"({', '.join(arb.columns)})",
                                   f"the target must become ({', '.join(arb.columns)}, {key}) "
                                   "or the statement fails (no unique index to infer)"))
    for t in info.triggers:
        out.append(Blocker("trigger", f"trigger {t.name}",
                           "recreated on the partitioned table (row triggers fire per "
                           "partition); the conversion keeps it, test what it does with "
                           "rows that move"))
    for s in seen:
        if key in s.sets:
            out.append(Blocker("row_movement", f"{_short(s.statement.query)} "
                               f"({s.statement.calls} calls) assigns {key}",
                               "a row whose key changes moves to another partition (a delete "
                               "and an insert); a concurrent update of that row fails with "
                               "SQLSTATE 40001 and must be retried by the application"))
    return out


def _short(q: str, n: int = 70) -> str:
    q = " ".join(q.split())
    return q if len(q) <= n else q[: n - 3] + "..."


def _command(info: TableInfo, best: Candidate, blockers: list[Blocker]) -> str:
    args = ["pgcleave", "partition", str(info.name), "--by", best.by]
    if best.interval:
        args += ["--interval", best.interval]
    if best.modulus:
        args += ["--modulus", str(best.modulus)]
    if any(b.kind == "inbound_fk" for b in blockers):
        args.append("--drop-inbound-fks")
    return " ".join(shlex.quote(a) for a in args)


def _verdict(info: TableInfo, adv: Advice, best: Candidate | None) -> tuple[str, list[str]]:
    size = adv.size
    why: list[str] = []
    mem = (f"{_gb(size['bytes'])} against shared_buffers {_gb(size['shared_buffers'])} and "
           f"effective_cache_size {_gb(size['effective_cache_size'])}")
    big = size["over_100_gb"] or size["bigger_than_memory"]
    why.append(("bigger than memory: " if size["bigger_than_memory"] else "fits in memory: ")
               + mem + ("; over the ~100 GB rule of thumb" if size["over_100_gb"] else ""))
    scanning = [s for s in adv.seen if s.use.scans]
    if not adv.statements.available:
        why.append(f"no statement evidence: {adv.statements.note}")
        return ("partition" if big else "unknown"), why
    if adv.statements.hidden:
        why.append(str(adv.statements.note))
    if not scanning:
        why.append("no statement that reads the table was seen in pg_stat_statements")
        return "unknown", why
    if all(s.by_primary_key for s in scanning):
        pk = ", ".join(info.primary_key.columns) if info.primary_key else ""
        why.append(f"every statement that reads the table does so by its primary key ({pk}): "
                   "an index lookup stays fast at any size; partitions would add planning "
                   "work and gain nothing")
        return "don't partition", why
    if best is None:
        why.append("no statement filters on a column partitions could prune by: each would "
                   "scan every partition")
        return "don't partition", why
    why.append(f"{best.column}: {best.score:.0%} of the statement time ({best.statements} "
               f"statements, {best.calls} calls) would prune by it")
    if best.score < 0.5:
        why.append(f"the rest ({1 - best.score:.0%}) would scan every partition")
    if big:
        return "partition", why
    why.append("not yet: the table is small, partition once it outgrows memory (or to retire "
               "old rows by dropping partitions)")
    return "not yet", why
