"""The application's statements as pg_stat_statements saw them, and what each does with a table.

``advise`` and ``audit`` (and the report) read the same things: which statements touch a table,
how often and for how long, and which of its columns they filter, group and order by. The
normalized text (constants replaced by ``$1``, ``$2``...) is not a query one can run, but it is
one the server can *plan*: ``PREPARE`` infers each parameter's type, and ``EXPLAIN EXECUTE``
under ``plan_cache_mode = force_generic_plan`` shows the generic plan with ``$n`` left in its
conditions (the same plan ``EXPLAIN (GENERIC_PLAN)`` shows on 16+, on every version from 15).
The server's own parser and planner name the columns, so aliases, joins, views and casts need no
SQL parser here. With values (sampled from the table), the same prepared statement shows a custom
plan (pruning at plan time) or a generic one pruned at executor start (pruning at run time).

Nothing here changes anything: every plan is made in a read-only transaction that is rolled
back, and EXPLAIN without ANALYZE runs nothing.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..connection import Connection

ENABLE_HINT = ("add pg_stat_statements to shared_preload_libraries in postgresql.conf "
               "(managed services: the parameter group / database flags), restart the server, "
               "then run CREATE EXTENSION pg_stat_statements in this database")
VISIBILITY_HINT = ("statements of other roles show no text to this role: GRANT pg_read_all_stats "
                   "TO it (or run as a superuser) to see them")

#: Scan-node fields whose conditions restrict the rows of the scanned relation.
_SCAN_CONDITIONS = ("Filter", "Index Cond", "Recheck Cond", "TID Cond")
#: pg_stat_statements turns ``interval '1 day'`` into ``interval $1``, which does not parse.
_TYPED_LITERAL = re.compile(
    r"\b(interval|timestamptz|timestamp(?: with(?:out)? time zone)?|date|timetz|"
    r"time(?: with(?:out)? time zone)?|numeric|bigint|integer|int|smallint|text|uuid|inet|"
    r"boolean|jsonb|json|bytea)\s+(\$\d+)", re.IGNORECASE)


@dataclass
class Statement:
    """One entry of pg_stat_statements in the current database."""

    queryid: int
    query: str
    calls: int
    total_ms: float
    rows: int
    role: str

    @property
    def operation(self) -> str:
        word = self.query.lstrip("( \n\t").split(None, 1)
        first = word[0].upper() if word else ""
        if first == "WITH":
            m = re.search(r"\)\s*(SELECT|INSERT|UPDATE|DELETE|MERGE)\b", self.query, re.I)
            return m.group(1).lower() if m else "select"
        return first.lower() if first in ("SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"
                                          ) else "other"

    def to_json(self) -> dict[str, Any]:
        return {"queryid": self.queryid, "query": self.query, "calls": self.calls,
                "total_ms": round(self.total_ms, 3), "rows": self.rows, "role": self.role}


@dataclass
class Statements:
    """What this role could read of pg_stat_statements."""

    available: bool
    note: str | None = None  # why nothing (or not everything) was read, and how to fix it
    hidden: int = 0  # entries whose text this role may not read
    hidden_calls: int = 0
    statements: list[Statement] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"available": self.available, "note": self.note, "hidden": self.hidden,
                "hidden_calls": self.hidden_calls}


def read_statements(conn: Connection, *, limit: int = 500) -> Statements:
    """The top statements of the current database by total time (never raises for a missing
    or unloaded extension: says so in ``note``)."""
    row = conn.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
        " WHERE e.extname = 'pg_stat_statements'").fetchone()
    if row is None:
        loaded = "pg_stat_statements" in _setting(conn, "shared_preload_libraries")
        return Statements(False, "pg_stat_statements is not installed in this database"
                          + (" (the server preloads it)" if loaded else "") + ": "
                          + ("run CREATE EXTENSION pg_stat_statements" if loaded
                             else ENABLE_HINT))
    view = sql.Identifier(str(row[0]), "pg_stat_statements")
    query = sql.SQL(
        "SELECT s.queryid, s.query, s.calls, s.total_exec_time, s.rows,"
        " coalesce(pg_get_userbyid(s.userid), s.userid::text)"
        " FROM {} s WHERE s.dbid = (SELECT oid FROM pg_database"
        " WHERE datname = current_database()) AND s.toplevel"
        " ORDER BY s.total_exec_time DESC LIMIT {}").format(view, sql.Literal(limit))
    try:
        with conn.transaction():
            rows = conn.execute(query).fetchall()
    except psycopg.errors.ObjectNotInPrerequisiteState:
        return Statements(False, "pg_stat_statements is installed but not loaded: "
                          + ENABLE_HINT)
    except psycopg.errors.InsufficientPrivilege as exc:
        return Statements(False, f"pg_stat_statements cannot be read: {str(exc).strip()}; "
                          + VISIBILITY_HINT)
    out = Statements(True)
    by_text: dict[str, Statement] = {}
    for qid, text, calls, total, nrows, role in rows:
        if qid is None or text is None or text == "<insufficient privilege>":
            out.hidden += 1
            out.hidden_calls += int(calls or 0)
            continue
        same = by_text.get(str(text))
        if same is not None:  # another role's entry, or a table dropped and made again
            same.calls += int(calls)
            same.total_ms += float(total)
            same.rows += int(nrows)
            if str(role) not in same.role.split(", "):
                same.role += f", {role}"
            continue
        by_text[str(text)] = Statement(int(qid), str(text), int(calls), float(total),
                                       int(nrows), str(role))
        out.statements.append(by_text[str(text)])
    if out.hidden:
        out.note = (f"{out.hidden} statements ({out.hidden_calls} calls) of other roles were "
                    f"not readable: {VISIBILITY_HINT}")
    return out


def _setting(conn: Connection, name: str) -> str:
    row = conn.execute("SELECT current_setting(%s, true)", [name]).fetchone()
    return str(row[0]) if row and row[0] is not None else ""


def mentions(query: str, names: list[str]) -> bool:
    """Whether the text names one of ``names`` as a whole word (``orders``, not the partition
    ``orders_p2024_01`` that pgcleave's own checks read), quoted or not, any case."""
    low = query.lower()
    return any(re.search(r"(?<![\w$])" + re.escape(n.lower()) + r"(?![\w$])", low)
               for n in names)


def plannable_text(query: str) -> str | None:
    """The normalized text as something PREPARE accepts, or None for what cannot be one
    statement (several statements, utility commands)."""
    q = query.strip().rstrip(";").strip()
    if not q or ";" in q:
        return None
    return _TYPED_LITERAL.sub(lambda m: f"CAST({m.group(2)} AS {m.group(1)})", q)


@dataclass
class Planned:
    """A statement's plan (the root node of EXPLAIN (VERBOSE, FORMAT JSON)) or why none."""

    plan: dict[str, Any] | None
    param_types: list[str]
    error: str | None = None


def plan_statement(conn: Connection, query: str, *, generic: bool = True,
                   values: list[str | None] | None = None, prune: bool = True,
                   upper: set[int] | frozenset[int] = frozenset()) -> Planned:
    """Plan a normalized statement: its generic plan (parameters unknown, or ``values`` used
    only for pruning at executor start) or, with ``generic=False``, a custom plan for
    ``values`` (text, cast to each parameter's type; None is NULL). ``prune=False`` keeps
    every partition in the plan, each with its conditions: what reading the columns needs
    (pruning at executor start with NULL parameters would remove them all). Parameters in
    ``upper`` (1-based: the upper end of a range, ``col < $2``) get their value a little
    larger (an hour, or one), so that ``col >= $1 AND col < $2`` with one sampled value for
    both is not an empty range."""
    text = plannable_text(query)
    if text is None:
        return Planned(None, [], "not a single plannable statement")
    name = "pgcleave_" + uuid.uuid4().hex[:12]
    ident = sql.Identifier(name)
    try:
        with conn.transaction(force_rollback=True):
            # Read only, so a function the planner folds (an immutable one, with the sampled
            # constants) cannot write either; LOCAL also holds inside a caller's transaction.
            conn.execute("SET LOCAL transaction_read_only = on")
            conn.execute("SET LOCAL statement_timeout = '5s'")
            conn.execute(sql.SQL("SET LOCAL plan_cache_mode = {}").format(
                sql.Literal("force_generic_plan" if generic else "force_custom_plan")))
            if not prune:
                conn.execute("SET LOCAL enable_partition_pruning = off")
            conn.execute(sql.SQL("PREPARE {} AS {}").format(ident, sql.SQL(text)))
            row = conn.execute(
                "SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = %s",
                [name]).fetchone()
            types = [str(t) for t in (row[0] if row and row[0] else [])]
            vals = list(values or [])
            args = [_argument(vals[i] if i < len(vals) else None, t, i + 1 in upper)
                    for i, t in enumerate(types)]
            explain = sql.SQL("EXPLAIN (VERBOSE, FORMAT JSON) EXECUTE {}").format(ident)
            if args:
                explain = sql.SQL("{}({})").format(explain, sql.SQL(", ").join(args))
            js = conn.execute(explain).fetchone()
    except psycopg.Error as exc:
        return Planned(None, [], str(exc).strip().splitlines()[0])
    finally:
        # A prepared statement outlives the rollback of the transaction that prepared it.
        if _prepared(conn, name):
            conn.execute(sql.SQL("DEALLOCATE {}").format(ident))
    assert js is not None
    doc = js[0] if not isinstance(js[0], str) else json.loads(js[0])
    return Planned(doc[0]["Plan"], types)


_BUMP = {"timestamp with time zone": "interval '1 hour'",
         "timestamp without time zone": "interval '1 hour'", "date": "1",
         "smallint": "1", "integer": "1", "bigint": "1", "numeric": "1"}


def _argument(value: str | None, typ: str, bump: bool) -> sql.Composable:
    arg = sql.SQL("CAST({} AS {})").format(sql.Literal(value), sql.SQL(typ))
    if bump and value is not None and typ in _BUMP:
        arg = sql.SQL("CAST({} + {} AS {})").format(arg, sql.SQL(_BUMP[typ]), sql.SQL(typ))
    return arg


def _prepared(conn: Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_prepared_statements WHERE name = %s",
                        [name]).fetchone() is not None


def walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of a plan, the root first."""
    out = [node]
    for child in node.get("Plans", []):
        out.extend(walk(child))
    return out


@dataclass
class ColumnUse:
    """What one statement does with the columns of one table (or of its partitions)."""

    operation: str
    #: column -> "eq" (=, IN), "range" (<, <=, >, >=) or "other", compared with a value
    #: (a parameter, a constant, an expression of no other column): what pruning can use
    filters: dict[str, str] = field(default_factory=dict)
    joins: set[str] = field(default_factory=set)  # compared with another relation's column
    group: set[str] = field(default_factory=set)
    order: set[str] = field(default_factory=set)
    arbiters: list[str] = field(default_factory=list)  # ON CONFLICT arbiter indexes
    #: relations of the table scanned (the table itself or its partitions), by node
    scans: list[dict[str, Any]] = field(default_factory=list)
    param_columns: dict[int, str] = field(default_factory=dict)  # $n -> the column it meets
    upper_params: set[int] = field(default_factory=set)  # $n in `col < $n`, `col <= $n`

    operation_node: dict[str, Any] | None = None  # the ModifyTable node writing the table

    @property
    def touches(self) -> bool:
        return bool(self.scans) or self.operation_node is not None

    def to_json(self) -> dict[str, Any]:
        return {"filters": dict(sorted(self.filters.items())), "joins": sorted(self.joins),
                "group_by": sorted(self.group), "order_by": sorted(self.order),
                "on_conflict_arbiters": self.arbiters}


def _col_pattern(col: str) -> str:
    bare = re.escape(col)
    quoted = re.escape('"' + col.replace('"', '""') + '"')
    return f"(?:{quoted}|{bare})" if re.fullmatch(r"[a-z_][a-z0-9_$]*", col) else quoted


def _alias_pattern(alias: str) -> str:
    return _col_pattern(alias)


_OPS = r"(=|<>|<=|>=|<|>|~~\*?|!~~\*?)"


def column_use(plan: dict[str, Any], relations: set[tuple[str, str]], columns: list[str],
               operation: str) -> ColumnUse:
    """Read which of ``columns`` a plan filters, joins, groups and orders by, on the scans of
    ``relations`` ((schema, name) of the table and its partitions)."""
    use = ColumnUse(operation)
    nodes = walk(plan)
    aliases: set[str] = set()
    for n in nodes:
        rel = (n.get("Schema", "public"), n.get("Relation Name"))
        if rel[1] is None or rel not in relations:
            continue
        if n.get("Node Type") == "ModifyTable":
            use.operation_node = n
            use.arbiters = list(n.get("Conflict Arbiter Indexes", []))
        else:
            use.scans.append(n)
        aliases.add(str(n.get("Alias", rel[1])))
    if not aliases:
        return use
    alias_re = "(?:" + "|".join(_alias_pattern(a) for a in sorted(aliases)) + ")"
    by_col = {c: re.compile(alias_re + r"\." + _col_pattern(c) + r"(?![\w\"])") for c in columns}
    for n in use.scans:
        for fld in _SCAN_CONDITIONS:
            cond = n.get(fld)
            if cond:
                _conditions(use, str(cond), alias_re, by_col)
    for n in nodes:
        for fld, target in (("Sort Key", use.order), ("Group Key", use.group),
                            ("Presorted Key", use.order)):
            for key in n.get(fld, []) or []:
                for c, rx in by_col.items():
                    if rx.search(str(key)):
                        target.add(c)
        for fld in ("Hash Cond", "Merge Cond", "Join Filter"):
            cond = n.get(fld)
            if cond:
                for c, rx in by_col.items():
                    if rx.search(str(cond)):
                        use.joins.add(c)
    return use


def _conditions(use: ColumnUse, cond: str, alias_re: str, by_col: dict[str, re.Pattern[str]]
                ) -> None:
    for c, rx in by_col.items():
        for m in rx.finditer(cond):
            rest = cond[m.end():]
            rest = re.sub(r"^\)?(::[\w ]+(\[\])?\)?)*", "", rest).lstrip()
            op = re.match(_OPS + r"\s*(ANY\s*)?", rest)
            if op is None:
                if rest.upper().startswith("IS "):
                    use.filters.setdefault(c, "other")
                continue
            rhs = rest[op.end():]
            rhs_term = re.split(r"\)\s*(?:AND|OR)\s|\)\)*$", rhs, maxsplit=1)[0]
            if (re.search(alias_re + r"\.", rhs_term)
                    or re.search(r"\b[a-z_]\w*\.[a-z_\"]", rhs_term)):
                use.joins.add(c)
                continue
            kind = ("eq" if op.group(1) == "=" else
                    "range" if op.group(1) in ("<", "<=", ">", ">=") else "other")
            prev = use.filters.get(c)
            if prev is None or (prev == "other") or (prev == "range" and kind == "eq"):
                use.filters[c] = kind
            for p in re.findall(r"\$(\d+)", rhs_term[:40]):
                use.param_columns.setdefault(int(p), c)
                if op.group(1) in ("<", "<="):
                    use.upper_params.add(int(p))
                break
