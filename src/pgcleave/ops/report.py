"""``report``: what a partitioned table looks like, in one page people look at.

Gathers, through the readers the other commands use (``status`` for the partitions in key
order, ``check`` for the problems and the premake and retention horizons, ``servers`` for
where the foreign partitions live, the journal for the jobs and their lock hold times), one
JSON-ready description per table; ``report_html`` renders it. Read-only: it takes no lock
stronger than ACCESS SHARE and never creates the journal.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .. import journal, servers
from .. import policy as pol
from ..connection import Connection
from ..errors import NotFound, Refused
from ..names import QualifiedName
from ..status import table_status
from .check import check_table

#: the jobs shown per table (the newest); older ones are counted, not drawn
MAX_JOBS = 30


def gather(conn: Connection, table: str, *, now: datetime | None = None) -> dict[str, Any]:
    """One table's report. Refuses a table that is not partitioned (nothing to chart)."""
    st = table_status(conn, table)
    if "partitioning" not in st:
        raise Refused(f"{st['table']} is not partitioned ({st['kind']}): the report charts "
                      "partitions", hint=f"`pgcleave status {st['table']}` shows it as it is; "
                      f"`pgcleave partition {st['table']} --by 'range(COLUMN)' ...` partitions "
                      "it")
    health = check_table(conn, st["table"], now=now)
    policy = st.get("policy") or {}
    old_table = (policy.get("options") or {}).get("old_table")
    past = {n for hz in health.horizons for n in hz.past_retention}
    ahead = {n for hz in health.horizons for n in hz.ahead}
    leaves = _leaves(st["partitioning"], st["schema"], old_table, past, ahead)
    held = {s for leaf in leaves if (s := leaf["server"])}
    jobs = journal.step_timings(conn, st["table"])
    return {
        "table": st["table"],
        "kind": st["kind"],
        "key": st["partitioning"]["key"],
        "strategy": st["partitioning"]["strategy"],
        "rows": st["rows"],
        "bytes": st["bytes"],
        "primary_key": st["primary_key"],
        "policy": st.get("policy"),
        "partitions": leaves,
        "servers": [s.to_json() for s in servers.list_servers(conn) if s.name in held],
        "check": {"ok": not health.problems,
                  "problems": [{"kind": p.kind, "message": p.message}
                               for p in health.problems],
                  "partitions": health.partitions, "default_rows": health.default_rows,
                  "periods_ahead": health.periods_ahead,
                  "periods_wanted": health.periods_wanted},
        "horizons": [{"parent": hz.parent, "now": hz.now,
                      "premake_horizon": hz.premake_horizon,
                      "retention_cutoff": hz.retention_cutoff,
                      "past_retention": hz.past_retention, "ahead": hz.ahead,
                      "bounds": hz.bounds}
                     for hz in health.horizons],
        "jobs": [{**job.to_json(), "steps": [s.to_json() for s in steps]}
                 for job, steps in jobs[-MAX_JOBS:]],
        "jobs_omitted": max(0, len(jobs) - MAX_JOBS),
        "residue": st.get("residue", []),
    }


def known_tables(conn: Connection) -> list[str]:
    """The tables pgcleave knows: those with a policy, then the targets of its jobs."""
    names = [p.table.quoted for p in pol.load_all(conn)]
    for j in journal.list_jobs(conn):
        if j.target not in names:
            names.append(j.target)
    return names


def gather_all(conn: Connection, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """A report of every partitioned table pgcleave knows (a policy or a job), by name."""
    out = []
    for name in known_tables(conn):
        try:
            out.append(gather(conn, name, now=now))
        except (NotFound, Refused):
            continue  # a job's target that is gone, or not (or no longer) partitioned
    if not out:
        raise NotFound("pgcleave knows no partitioned table in this database",
                       hint="`pgcleave config TABLE ...` adopts a partitioned table; "
                            "`pgcleave partition TABLE ...` partitions one")
    return sorted(out, key=lambda r: str(r["table"]))


def _leaves(p: dict[str, Any], schema: str, old_table: str | None, past: set[str],
            ahead: set[str], path: str = "") -> list[dict[str, Any]]:
    """Leaf partitions in key order (the catalog orders each level by bounds), each with what
    the report marks: DEFAULT, legacy (the old table kept as ``[MINVALUE, cutoff)``), past
    retention, made ahead, on which server."""
    out: list[dict[str, Any]] = []
    for part in p["partitions"]:
        if "partitioning" in part:
            out += _leaves(part["partitioning"], schema, old_table, past, ahead,
                           f"{path}{part['name']} / ")
            continue
        name = part["name"]
        legacy = not part["is_default"] and (
            "FROM (MINVALUE)" in part["bound"].upper()
            or (old_table is not None and name == QualifiedName(schema, old_table).quoted))
        out.append({**part, "path": path, "legacy": legacy, "past_retention": name in past,
                    "ahead": name in ahead})
    return out
