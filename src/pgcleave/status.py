"""``pgcleave status``: where every row of a table lives."""

from __future__ import annotations

from typing import Any

from . import journal, policy, span_checks
from .catalog import Partition, Partitioning, TableInfo, snapshot
from .catalog.emulated_fks import EMULATED_SQL, MARK, emulated_from
from .connection import Connection
from .names import QualifiedName


def table_status(conn: Connection, table: str) -> dict[str, Any]:
    """A JSON-ready description of a table and its partitions, ordered by bounds. Past the
    catalog's snapshot, two round trips at most: which of pgcleave's tables exist (with the
    emulated keys and the span CHECKs on its DEFAULTs), then the policy, the unfinished jobs'
    residue and the jobs owning those CHECKs, together."""
    info = snapshot(conn, table)
    d = describe(info)
    defaults = _defaults(info)
    with conn.pipeline():
        present = conn.execute(policy.PRESENT_SQL)
        rules = conn.execute(EMULATED_SQL, [MARK + "%"])
        spans_cur = (conn.execute(span_checks.CATALOG_SQL, [list(defaults),
                                                            span_checks.prefix()])
                     if defaults else None)
    row = present.fetchone()
    has_jobs, has_policies = bool(row and row[0]), bool(row and row[1] and row[0])
    spans = [(defaults[int(oid)], str(con))
             for oid, con in (spans_cur.fetchall() if spans_cur is not None else [])]
    pol_cur = res_cur = owners_cur = None
    if has_jobs:
        with conn.pipeline():
            pol_cur = conn.execute(policy.load_sql(info.name)) if has_policies else None
            res_cur = conn.execute(journal.residue_sql(info.name.quoted))
            owners_cur = (conn.execute(span_checks.OWNERS_SQL, [[con for _, con in spans]])
                          if spans else None)
    pol = policy.from_row(info.name, pol_cur.fetchone()) if pol_cur is not None else None
    d["span_checks"] = [sc.to_json() for sc in span_checks.owned(
        spans, owners_cur.fetchall() if owners_cur is not None else None)]
    d["policy"] = None if pol is None else {**pol.to_json(), "summary": pol.summary()}
    residue = journal.residue_from(res_cur.fetchall()) if res_cur is not None else []
    d["residue"] = [{"job": r.job_id, "step": r.step, "kind": r.kind, "note": r.note,
                     "alive": r.alive, "message": r.message()} for r in residue]
    d["emulated_foreign_keys"] = [{"name": r.name, "child": r.child.quoted,
                                   "columns": list(r.columns), "ref_columns": list(r.ref_columns),
                                   "on_delete": r.on_delete, "on_update": r.on_update,
                                   "deferrable": r.deferrable, "summary": r.describe()}
                                  for r in emulated_from(rules.fetchall(), info.name)]
    return d


def _defaults(info: TableInfo) -> dict[int, QualifiedName]:
    """The DEFAULT partitions of every level of ``info``, by oid."""
    found: dict[int, QualifiedName] = {}
    todo = [info.partitioning] if info.partitioning is not None else []
    while todo:
        p = todo.pop()
        for part in p.partitions:
            if part.is_default:
                found[part.oid] = part.name
            if part.partitioning is not None:
                todo.append(part.partitioning)
    return found


def describe(info: TableInfo) -> dict[str, Any]:
    d: dict[str, Any] = {
        "table": info.name.quoted,
        "schema": info.name.schema,
        "name": info.name.name,
        "kind": {"r": "table", "p": "partitioned table", "f": "foreign table"}[info.kind],
        "rows": info.rows,
        "bytes": info.bytes,
        "primary_key": info.primary_key.definition if info.primary_key else None,
        "partition_of": info.parent.quoted if info.parent else None,
        "server_version": info.server_version,
    }
    if info.partitioning is not None:
        d["partitioning"] = _partitioning(info.partitioning)
    return d


def _partitioning(p: Partitioning) -> dict[str, Any]:
    return {"strategy": p.strategy, "key": p.key, "key_columns": p.key_columns,
            "partitions": [_partition(x) for x in p.partitions]}


def _partition(p: Partition) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": p.name.quoted, "bound": p.bound, "is_default": p.is_default,
        "rows": p.rows, "bytes": p.bytes, "location": p.location, "server": p.server,
        "detach_pending": p.detach_pending,
    }
    if p.partitioning is not None:
        d["partitioning"] = _partitioning(p.partitioning)
    return d


def human_rows(n: int | None) -> str:
    """A row count for people (``?``: unknown, e.g. never analyzed)."""
    return "?" if n is None else f"{n:,}"


def human_size(n: int | None) -> str:
    """A size for people (``remote``: a foreign partition, whose size is on its server)."""
    if n is None:
        return "remote"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"
