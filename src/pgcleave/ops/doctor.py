"""``pgcleave doctor``: what the connected role can do here, capability by capability.

Each capability is the list of ``preflight`` requirements its commands check before their first
change, asked here without planning anything: yes or no, and for each no the statement or the
setting that fixes it. Also what the answers rest on: the role's attributes and memberships,
the table's owner, schema privileges, extensions, and the replication and two-phase settings,
here and on each registered server (through dblink). Read-only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from .. import preflight, servers
from ..catalog import resolve
from ..connection import Connection
from ..names import QualifiedName
from ..preflight import Requirement


@dataclass
class Capability:
    name: str
    ok: bool
    missing: list[dict[str, str]] = field(default_factory=list)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "missing": self.missing, "note": self.note}


def _ask(conn: Connection, name: str, reqs: list[Requirement], note: str = "") -> Capability:
    user = str(conn.info.user)
    missing = [{"what": r.requirement.what + (f" ({r.detail})" if r.detail else ""),
                "fix": r.fix.replace("{user}", user)}
               for r in preflight.check(conn, reqs) if not r.ok]
    return Capability(name, not missing, missing, note)


def _facts(conn: Connection) -> dict[str, Any]:
    row = conn.execute(
        "SELECT current_user, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication,"
        " r.rolbypassrls, current_setting('server_version'), current_setting('wal_level'),"
        " current_setting('max_prepared_transactions')::int,"
        " current_setting('max_replication_slots')::int,"
        " (SELECT count(*) FROM pg_replication_slots),"
        " current_setting('max_wal_senders')::int, (SELECT count(*) FROM pg_stat_replication),"
        " current_database(), has_database_privilege(current_database(), 'CREATE')"
        " FROM pg_roles r WHERE r.rolname = current_user").fetchone()
    assert row is not None
    member_of = [str(r[0]) for r in conn.execute(
        "SELECT rolname FROM pg_roles WHERE rolname <> current_user AND"
        " pg_has_role(current_user, oid, 'MEMBER') ORDER BY rolname")]
    extensions = {str(r[0]): str(r[1]) for r in conn.execute(
        "SELECT extname, extversion FROM pg_extension ORDER BY extname")}
    available = sorted(str(r[0]) for r in conn.execute(
        "SELECT name FROM pg_available_extensions WHERE name IN ('postgres_fdw', 'dblink',"
        " 'pg_stat_statements') AND installed_version IS NULL"))
    return {
        "role": {"name": row[0], "superuser": row[1], "createrole": row[2],
                 "createdb": row[3], "replication": row[4], "bypassrls": row[5],
                 "member_of": member_of},
        "server_version": row[6], "database": row[13], "create_on_database": row[14],
        "settings": {"wal_level": row[7], "max_prepared_transactions": row[8],
                     "max_replication_slots": row[9], "replication_slots_used": row[10],
                     "max_wal_senders": row[11], "wal_senders_used": row[12]},
        "extensions": extensions, "extensions_available": available,
    }


def _table_facts(conn: Connection, table: QualifiedName) -> dict[str, Any]:
    row = conn.execute(
        "SELECT pg_get_userbyid(c.relowner), pg_has_role(current_user, c.relowner, 'USAGE'),"
        " has_schema_privilege(current_user, c.relnamespace, 'CREATE'),"
        " has_schema_privilege(current_user, c.relnamespace, 'USAGE')"
        " FROM pg_class c WHERE c.oid = to_regclass(%s)", [table.quoted]).fetchone()
    assert row is not None
    return {"table": table.quoted, "owner": row[0], "owned_by_you": row[1],
            "create_on_schema": row[2], "usage_on_schema": row[3]}


def _server_facts(conn: Connection, name: str, dbl: str) -> dict[str, Any]:
    query = ("SELECT current_user, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),"
             " current_setting('server_version'), current_setting('wal_level'),"
             " current_setting('max_prepared_transactions')")
    try:
        with conn.transaction():
            row = conn.execute(sql.SQL(
                "SELECT * FROM {}.dblink({}, {}) AS t(u text, s boolean, v text, w text, p text)"
            ).format(sql.Identifier(dbl), sql.Literal(name), sql.Literal(query))).fetchone()
    except psycopg.Error as exc:
        return {"reachable": False, "error": str(exc).strip().splitlines()[0]}
    assert row is not None
    return {"reachable": True, "user": row[0], "superuser": row[1], "server_version": row[2],
            "wal_level": row[3], "max_prepared_transactions": int(row[4])}


def diagnose(conn: Connection, table: str | None = None,
             server: str | None = None) -> dict[str, Any]:
    """Everything ``doctor`` reports, as data."""
    facts = _facts(conn)
    name: QualifiedName | None = resolve(conn, table)[1] if table else None
    change = (preflight.table_change(name) if name is not None else [])
    journal = [preflight.journal_schema(), preflight.journal_tables(parts=True)]
    caps = [
        _ask(conn, "partition in place", [*journal, *change]),
        _ask(conn, "partition by copy", [*journal, *change]),
        _ask(conn, "maintain", [*journal, *change]),
        _ask(conn, "retention and archive", [*journal, *change],
             note="archives also need a writable --archive-dir and, for --archive-format "
                  "pg_dump, a pg_dump at least as new as the server"),
        _ask(conn, "keys and indexes", [*journal, *(change[:1])]),
        _ask(conn, "add servers", [*journal, preflight.fdw_usage(), preflight.extension("dblink")],
             note="" if facts["role"]["superuser"] else
             "as a non-superuser, the server's DSN must carry a password and the shard must "
             "ask for it (scram-sha-256)"),
    ]
    srv_names = [server] if server else [s.name for s in servers.list_servers(conn)]
    dbl = servers.dblink_schema(conn)
    srv_facts = {s: _server_facts(conn, s, dbl) for s in srv_names}
    remote = [(s, dbl) for s in srv_names if srv_facts[s].get("reachable")]
    # move out: this database publishes, the shard subscribes; back: the reverse
    caps.append(_ask(conn, "move with replication", [
        *journal, *change, preflight.wal_level_logical(), preflight.replication_slot_free(),
        preflight.create_subscription(),
        *(preflight.on_server(r, s, d) for s, d in remote
          for r in (preflight.create_subscription(), preflight.wal_level_logical()))],
        note="" if srv_names else "no server registered: the shard's side is not checked"))
    caps.append(_ask(conn, "move by copy", [
        *journal, *change,
        *(preflight.on_server(preflight.create_in(name.schema if name else "public"), s, d)
          for s, d in remote)],
        note="needs only ordinary privileges; `move --method copy`"))
    caps.append(_ask(conn, "alter with two-phase commit", [
        *journal, *(change[:1]),
        *(preflight.on_server(preflight.prepared_transactions(), s, d) for s, d in remote)],
        note="without it, alter applies ADD/DROP COLUMN server by server and refuses the "
             "other changes" if remote else ""))
    guard = _ask(conn, "DDL guard (event trigger)", [preflight.superuser(
        "only a superuser can create an event trigger")])
    if not guard.ok:
        guard.note = ("off: a plain ALTER TABLE on a table with remote partitions is not "
                      "refused; `pgcleave check` reports any drift between a foreign partition "
                      "and its shard table instead")
    caps.append(guard)
    out: dict[str, Any] = {**facts, "capabilities": [c.to_json() for c in caps],
                           "servers": srv_facts}
    if name is not None:
        out["table"] = _table_facts(conn, name)
    return out
