"""``pgcleave status``: where every row of a table lives."""

from __future__ import annotations

from typing import Any

from . import journal
from .catalog import Partition, Partitioning, TableInfo, snapshot
from .connection import Connection


def table_status(conn: Connection, table: str) -> dict[str, Any]:
    """A JSON-ready description of a table and its partitions, ordered by bounds."""
    from . import policy

    info = snapshot(conn, table)
    d = describe(info)
    pol = policy.load(conn, info.name)
    d["policy"] = None if pol is None else {**pol.to_json(), "summary": pol.summary()}
    d["residue"] = [{"job": r.job_id, "step": r.step, "kind": r.kind, "note": r.note,
                     "alive": r.alive, "message": r.message()}
                    for r in journal.residue(conn, info.name.quoted)]
    return d


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
