"""``pgcleave audit TABLE``: how the statements of a partitioned table use its partitions.

Seed 002 begins with an audit: queries must not span many partitions (they "perform much
worse"), inbound foreign keys go, ``plan_cache_mode = force_custom_plan``. This explains each top
statement pg_stat_statements saw touching the table twice, with values sampled from the table
for its parameters: a custom plan (what pruning at plan time leaves) and the generic plan a
driver's prepared statement gets (pruned, if at all, at executor start: "Subplans Removed").
From them: the partitions and servers each statement reaches, the statements that scan every
partition, those that break or slow down once partitions live on other servers (``ON CONFLICT``
needs a unique index the parent cannot have then; a unique lookup without the partition key asks
every server), and the settings that undo pruning or exhaust the lock table. Nothing is changed.

A CI job runs ``pgcleave audit TABLE --json``: exit code 7 when there is a warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..catalog import Partition, TableInfo, snapshot
from ..catalog.statements import (
    ColumnUse,
    Statement,
    Statements,
    column_use,
    mentions,
    plan_statement,
    read_statements,
    walk,
)
from ..connection import Connection
from ..errors import Refused

#: ``pgcleave audit`` exits with this when it found a warning (0 when clean); see errors.py.
FINDINGS_EXIT = 7
#: With more partitions than this, seed 002's advice applies: force custom plans.
MANY_PARTITIONS = 100
_ON_CONFLICT = re.compile(r"\bON\s+CONFLICT\s*(\(|ON\s+CONSTRAINT)", re.IGNORECASE)


@dataclass
class Finding:
    severity: str  # warning (fails CI), note
    kind: str
    message: str
    queryid: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"severity": self.severity, "kind": self.kind, "message": self.message,
                "queryid": self.queryid}


@dataclass
class Audited:
    """One statement, explained."""

    statement: Statement
    use: ColumnUse
    partitions: int  # leaves of the table
    scanned: list[str]  # custom plan: leaves left after pruning at plan time
    generic_scanned: list[str]  # generic plan: leaves left after pruning at executor start
    run_time_pruned: int  # generic plan: "Subplans Removed"
    servers: list[str]
    values: dict[str, str | None] = field(default_factory=dict)  # $n -> sampled value
    error: str | None = None

    @property
    def reads(self) -> bool:
        return bool(self.use.scans)

    @property
    def plan_time_pruned(self) -> int:
        return self.partitions - len(self.scanned) if self.reads else 0

    def to_json(self) -> dict[str, Any]:
        return {**self.statement.to_json(), "operation": self.statement.operation,
                "partitions": self.partitions, "scanned": len(self.scanned),
                "scanned_partitions": self.scanned, "pruned_at_plan_time": self.plan_time_pruned,
                "generic_plan_scanned": len(self.generic_scanned),
                "pruned_at_run_time": self.run_time_pruned, "servers": self.servers,
                "sampled_values": self.values, "error": self.error, **self.use.to_json()}


@dataclass
class Audit:
    table: str
    key: str
    partitions: list[dict[str, Any]]
    settings: dict[str, str]
    statements: Statements
    audited: list[Audited] = field(default_factory=list)
    unplanned: list[dict[str, Any]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return FINDINGS_EXIT if any(f.severity == "warning" for f in self.findings) else 0

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "key": self.key, "partitions": self.partitions,
                "settings": self.settings, "statements": self.statements.to_json(),
                "audited": [a.to_json() for a in self.audited], "not_planned": self.unplanned,
                "findings": [f.to_json() for f in self.findings], "exit_code": self.exit_code}


_SETTINGS = ("plan_cache_mode", "enable_partition_pruning", "enable_partitionwise_join",
             "enable_partitionwise_aggregate", "max_locks_per_transaction", "max_connections",
             "max_prepared_transactions")


def audit(conn: Connection, table: str, *, limit: int = 50) -> Audit:
    info = snapshot(conn, table)
    if info.partitioning is None:
        raise Refused(f"{info.name} is not partitioned",
                      hint=f"`pgcleave advise {info.name}` says whether and how to partition it")
    leaves = info.partitioning.leaves()
    settings = {name: str(conn.execute("SELECT current_setting(%s)", [name]).fetchone()[0])  # type: ignore[index]
                for name in _SETTINGS}
    stmts = read_statements(conn)
    a = Audit(str(info.name), info.partitioning.key,
              [{"partition": p.name.quoted, "bound": p.bound, "server": p.server or "local"}
               for p in leaves], settings, stmts)
    relations = {(info.name.schema, info.name.name)} | {(p.name.schema, p.name.name)
                                                         for p in leaves}
    where = {(p.name.schema, p.name.name): p for p in leaves}
    cols = [c.name for c in info.columns]
    names = [info.name.name.lower(), *(v.name.name.lower() for v in info.views)]
    sample = _sample_row(conn, info, leaves)
    for st in stmts.statements:
        if not mentions(st.query, names) or "pgcleave_" in st.query:
            continue
        if len(a.audited) >= limit:
            break
        generic = plan_statement(conn, st.query, prune=False)
        if generic.plan is None:
            if st.operation != "other":
                a.unplanned.append({"queryid": st.queryid, "query": st.query,
                                    "error": generic.error})
            continue
        use = column_use(generic.plan, relations, cols, st.operation)
        if not use.touches:
            continue
        values = _values(use, generic.param_types, sample)
        generic_v = plan_statement(conn, st.query, values=values, upper=use.upper_params)
        custom = plan_statement(conn, st.query, generic=False, values=values,
                                upper=use.upper_params)
        g_plan = generic_v.plan or generic.plan
        scanned = _leaf_scans(custom.plan, where) if custom.plan else []
        a.audited.append(Audited(
            st, use, len(leaves), [p.name.quoted for p in scanned],
            [p.name.quoted for p in _leaf_scans(g_plan, where)], _removed(g_plan),
            sorted({p.server or "local" for p in scanned}),
            {f"${i + 1}": v for i, v in enumerate(values)},
            custom.error if custom.plan is None else None))
    a.findings = _findings(conn, info, leaves, a)
    return a


def _sample_row(conn: Connection, info: TableInfo, leaves: list[Partition]
                ) -> dict[str, str | None]:
    """One row of the table, as text: values for the parameters that meet its columns. From
    the last local partitions by bounds first: the newest rows, the ones an application asks
    for most (a row of the oldest would make ``created_at >= $1`` reach every partition)."""
    cols = [c.name for c in info.columns]
    select = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in cols)
    tried = [p for p in reversed(leaves) if p.kind == "r" and not p.is_default][:6]
    sources = [sql.SQL("ONLY {}").format(p.name.ident) for p in tried] + [info.name.ident]
    for src in sources:
        try:
            with conn.transaction():
                conn.execute("SET LOCAL statement_timeout = '5s'")
                row = conn.execute(sql.SQL("SELECT /* pgcleave_sample */ {} FROM {} LIMIT 1"
                                           ).format(select, src)).fetchone()
        except psycopg.Error:  # a shard away, a timeout: plans without values still say much
            row = None
        if row:
            return dict(zip(cols, row, strict=True))
    return {}


def _values(use: ColumnUse, types: list[str], sample: dict[str, str | None]
            ) -> list[str | None]:
    out: list[str | None] = []
    for i, t in enumerate(types, start=1):
        col = use.param_columns.get(i)
        v = sample.get(col) if col else None
        if v is not None and t.endswith("[]"):  # = ANY ($n)
            v = '{"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"}'
        out.append(v)
    return out


def _leaf_scans(plan: dict[str, Any], where: dict[tuple[str, str], Partition]
                ) -> list[Partition]:
    seen: dict[str, Partition] = {}
    for n in walk(plan):
        p = where.get((n.get("Schema", "public"), n.get("Relation Name", "")))
        if p is not None and n.get("Node Type") != "ModifyTable":
            seen[p.name.quoted] = p
    return list(seen.values())


def _removed(plan: dict[str, Any]) -> int:
    return sum(int(n.get("Subplans Removed", 0)) for n in walk(plan))


def _unique_sets(conn: Connection, info: TableInfo, leaves: list[Partition]
                 ) -> list[tuple[str, list[str]]]:
    """Unique indexes of the table and of its partitions (in place, each partition keeps its
    own primary key), as (name, columns)."""
    out = [(ix.name, ix.columns) for ix in info.indexes if ix.unique]
    local = next((p for p in leaves if p.kind == "r"), None)
    if local is not None:
        for name, colnames in conn.execute(
                "SELECT c.relname, array_agg(a.attname ORDER BY k.n)"
                " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n)"
                " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
                " WHERE i.indrelid = %s AND i.indisunique"
                " GROUP BY c.relname, i.indexrelid ORDER BY c.relname", [local.oid]):
            out.append((str(name), [str(x) for x in colnames]))
    return out


def _findings(conn: Connection, info: TableInfo, leaves: list[Partition], a: Audit
              ) -> list[Finding]:
    assert info.partitioning is not None
    key = info.partitioning.key_columns
    n = len(leaves)
    remote = sorted({p.server for p in leaves if p.server})
    out: list[Finding] = []
    s = a.settings
    if not a.statements.available:
        out.append(Finding("note", "no_statements", str(a.statements.note)))
    elif a.statements.hidden:
        out.append(Finding("note", "hidden_statements", str(a.statements.note)))
    uniques = [(name, cols) for name, cols in _unique_sets(conn, info, leaves)
               if not set(key) <= set(cols)]
    idx_per_leaf = max(1, len(info.indexes))
    locks = n * (1 + idx_per_leaf) + 1 + idx_per_leaf
    max_locks = int(s["max_locks_per_transaction"])
    for au in a.audited:
        st = au.statement
        q = " ".join(st.query.split())
        q = q if len(q) <= 80 else q[:77] + "..."
        if au.error:
            out.append(Finding("note", "not_explained", f"{q}: {au.error}", st.queryid))
        if au.reads and n > 1 and len(au.scanned) == n:
            filt = ", ".join(sorted(au.use.filters)) or "nothing"
            on_key = [c for c in key if c in au.use.filters]
            why = (f"its condition on {', '.join(on_key)} did not narrow them for the sampled "
                   f"values ({', '.join(f'{k}={v}' for k, v in au.values.items())})" if on_key
                   else f"it filters on {filt}, not on the partition key ({', '.join(key)})")
            out.append(Finding(
                "warning", "scans_every_partition",
                f"{q} ({st.calls} calls) scans all {n} partitions: {why}"
                + (f", and reaches every server ({', '.join(au.servers)})" if remote else ""),
                st.queryid))
            if locks > max_locks:
                out.append(Finding(
                    "warning", "locks", f"{q} locks about {locks} relations (every partition "
                    f"and its indexes), more than max_locks_per_transaction = {max_locks}: a "
                    "few such sessions at once fill the lock table (out of shared memory)",
                    st.queryid))
        elif au.reads and n > 1 and len(au.generic_scanned) == n and len(au.scanned) < n:
            out.append(Finding(
                "note", "generic_plan_not_pruned",
                f"{q}: its custom plan prunes to {len(au.scanned)} of {n} partitions, its "
                "generic plan (prepared statements after 5 runs) prunes none", st.queryid))
        if _ON_CONFLICT.search(st.query) or au.use.arbiters:
            target = ", ".join(au.use.arbiters) or "its target"
            out.append(Finding(
                "warning", "on_conflict_breaks_on_move",
                f"{q} ({st.calls} calls) infers {target}: "
                + ("a partition is already on another server, so the parent has no unique "
                   "index and this fails" if remote else
                   "once a partition is moved to another server the parent can have no "
                   "unique index, and this statement fails (there is no unique or exclusion "
                   "constraint matching the ON CONFLICT specification)"), st.queryid))
        eq = {c for c, k in au.use.filters.items() if k == "eq"}
        for name, cols in uniques:
            if au.reads and cols and set(cols) <= eq and not set(key) & eq:
                out.append(Finding(
                    "warning", "unique_lookup_without_key",
                    f"{q} ({st.calls} calls) looks up one row by {name} ({', '.join(cols)}) "
                    f"without the partition key: every partition is searched"
                    + (", one query to each server" if remote else
                       "; once partitions move, one query to each server"), st.queryid))
                break
    if s["enable_partition_pruning"] != "on":
        out.append(Finding("warning", "settings", "enable_partition_pruning is off: every "
                           "statement scans every partition"))
    if s["plan_cache_mode"] == "force_generic_plan":
        out.append(Finding("warning", "settings", "plan_cache_mode = force_generic_plan: "
                           "prepared statements never prune at plan time and lock every "
                           "partition on each execution; use force_custom_plan"))
    elif s["plan_cache_mode"] == "auto" and n >= MANY_PARTITIONS:
        out.append(Finding("note", "settings", f"plan_cache_mode = auto with {n} partitions: "
                           "drivers that prepare statements switch to generic plans, which "
                           "lock every partition on each execution; set plan_cache_mode = "
                           "force_custom_plan for the application's role"))
    if remote:
        for name in ("enable_partitionwise_aggregate", "enable_partitionwise_join"):
            if s[name] != "on":
                out.append(Finding("note", "settings", f"{name} is off while partitions live "
                                   f"on {', '.join(remote)}: aggregates and joins by the key "
                                   "are not pushed down to the shards"))
    if locks > max_locks and not any(f.kind == "locks" for f in out):
        out.append(Finding("note", "locks", f"a statement touching every partition would lock "
                           f"about {locks} relations, more than max_locks_per_transaction = "
                           f"{max_locks}"))
    return out
