"""``pgcleave explain "SQL"``: a query's plan, and which partitions and servers it touches.

Seed 000's "Query planning" section reads EXPLAIN output by eye to see whether a query was
pruned to one partition. With partitions on several servers the question that matters is also
*which servers* a query reaches. This reads ``EXPLAIN (FORMAT JSON, VERBOSE)``, collects every
scanned relation (and the SQL sent to each shard), maps each to its partitioned table and its
server, and lists the partitions that were pruned away (at plan time, or at run time with
``--analyze``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..connection import Connection
from ..errors import Refused


@dataclass
class PartitionUse:
    name: str
    server: str | None  # None: local
    scanned: bool
    node: str | None = None
    remote_sql: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"partition": self.name, "server": self.server or "local",
                "scanned": self.scanned, "node": self.node, "remote_sql": self.remote_sql}


@dataclass
class TableUse:
    table: str
    partitions: list[PartitionUse] = field(default_factory=list)

    @property
    def pruned(self) -> list[PartitionUse]:
        return [p for p in self.partitions if not p.scanned]

    @property
    def servers(self) -> list[str]:
        return sorted({p.server or "local" for p in self.partitions if p.scanned})

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "servers": self.servers,
                "scanned": sum(p.scanned for p in self.partitions),
                "pruned": len(self.pruned), "partitions": [p.to_json() for p in self.partitions]}


@dataclass
class Explained:
    query: str
    plan_text: str
    tables: list[TableUse]
    other: list[str]  # scanned relations that are not partitions

    def to_json(self) -> dict[str, Any]:
        return {"query": self.query, "plan": self.plan_text,
                "tables": [t.to_json() for t in self.tables], "other_relations": self.other}


def explain_query(conn: Connection, query: str, *, analyze: bool = False) -> Explained:
    """EXPLAIN ``query`` (inside a transaction that is rolled back) and annotate the result."""
    q = query.strip().rstrip(";")
    if not q:
        raise Refused("no query given", hint='pgcleave explain "SELECT * FROM t WHERE k = 1"')
    opts = "ANALYZE, " if analyze else ""
    try:
        with conn.transaction(force_rollback=True):
            text_rows = conn.execute(sql.SQL("EXPLAIN ({}VERBOSE) {}").format(
                sql.SQL(opts), sql.SQL(q))).fetchall()
            js = conn.execute(sql.SQL("EXPLAIN ({}VERBOSE, FORMAT JSON) {}").format(
                sql.SQL(opts), sql.SQL(q))).fetchone()
    except psycopg.Error as exc:
        raise Refused(f"the query cannot be explained: {str(exc).strip()}") from None
    assert js is not None
    doc = js[0] if not isinstance(js[0], str) else json.loads(js[0])
    scans: list[dict[str, Any]] = []
    _walk(doc[0]["Plan"], scans)
    return _annotate(conn, q, "\n".join(r[0] for r in text_rows), scans)


def _walk(node: dict[str, Any], out: list[dict[str, Any]]) -> None:
    if "Relation Name" in node:
        out.append(node)
    for child in node.get("Plans", []):
        _walk(child, out)


def _annotate(conn: Connection, query: str, text: str, scans: list[dict[str, Any]]
              ) -> Explained:
    by_root: dict[int, TableUse] = {}
    used: dict[int, dict[str, Any]] = {}
    other: list[str] = []
    for node in scans:
        row = conn.execute(
            "SELECT c.oid::int, pg_partition_root(c.oid)::oid::int, c.relispartition"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s"
            " AND c.relname = %s", [node.get("Schema", "public"), node["Relation Name"]]
        ).fetchone()
        if row is None or not row[2]:
            other.append(str(sql.Identifier(node.get("Schema", "public"),
                                            node["Relation Name"]).as_string(None)))
            continue
        used[int(row[0])] = node
        by_root.setdefault(int(row[1]), TableUse(""))
    for root in by_root:
        tname = conn.execute("SELECT %s::regclass::text", [root]).fetchone()
        by_root[root].table = str(tname[0]) if tname else str(root)
        for oid, name, server in conn.execute(
                "SELECT t.relid::oid::int, t.relid::regclass::text, s.srvname"
                " FROM pg_partition_tree(%s::oid::regclass) t"
                " LEFT JOIN pg_foreign_table ft ON ft.ftrelid = t.relid"
                " LEFT JOIN pg_foreign_server s ON s.oid = ft.ftserver"
                " WHERE t.isleaf ORDER BY t.level, 2", [root]):
            hit = used.get(int(oid))
            by_root[root].partitions.append(PartitionUse(
                str(name), server, hit is not None and not _never_executed(hit),
                hit.get("Node Type") if hit else None,
                hit.get("Remote SQL") if hit else None))
    return Explained(query, text, list(by_root.values()), other)


def _never_executed(node: dict[str, Any]) -> bool:
    """With ANALYZE, a scan pruned at run time shows ``Actual Loops = 0``."""
    return node.get("Actual Loops") == 0


def render(e: Explained) -> str:
    out = [e.plan_text, ""]
    for t in e.tables:
        n = len(t.partitions)
        scanned = n - len(t.pruned)
        out.append(f"{t.table}: {scanned} of {n} partitions scanned"
                   + (f", {len(t.pruned)} pruned" if t.pruned else ", nothing pruned")
                   + f"; servers: {', '.join(t.servers) or 'none'}")
        for p in t.partitions:
            where = f"on {p.server}" if p.server else "local"
            what = (p.node or "scan") if p.scanned else "pruned"
            out.append(f"  {p.name:<30} {where:<12} {what}")
            if p.scanned and p.remote_sql:
                out.append(f"  {'':<30} {'':<12} remote SQL: {p.remote_sql}")
    if e.other:
        out.append("other relations: " + ", ".join(e.other))
    return "\n".join(out) + "\n"
