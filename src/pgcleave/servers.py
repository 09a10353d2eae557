"""Remote servers: postgres_fdw foreign servers and user mappings, and connections to them.

A *server* in pgcleave is a postgres_fdw foreign server in the managed database, plus a user
mapping for the current user. The catalog is the only registry: the server's options and the
user mapping say where the shard is and how to log in, for postgres_fdw (queries), dblink
(pgcleave's remote DDL, so remote steps are plain SQL with guards and undo) and pgcleave's own
direct connections (catch-up waits, verification, two-phase DDL).

Passwords: the DSN given to ``server add`` may carry one. It goes into the user mapping (where
PostgreSQL keeps it, readable by superusers and the mapping's owner only) and never into a plan,
the journal, the dry run or any output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import conninfo, sql

from .connection import Connection, describe_dsn, redact
from .errors import NotFound, Refused, StepFailed

#: Options of a postgres_fdw server that are not libpq connection options.
FDW_ONLY_OPTIONS = {
    "async_capable", "fetch_size", "batch_size", "use_remote_estimate", "fdw_startup_cost",
    "fdw_tuple_cost", "extensions", "updatable", "truncatable", "keep_connections",
    "parallel_commit", "parallel_abort", "analyze_sampling",
}

MIN_VERSION = 150000


@dataclass
class RemoteCheck:
    """What a remote server answered when pgcleave connected to it."""

    version: int
    version_text: str
    settings: dict[str, str]
    system_identifier: str
    database: str
    user: str
    superuser: bool
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "version_text": self.version_text,
                "settings": self.settings, "database": self.database, "user": self.user,
                "superuser": self.superuser, "problems": self.problems}


@dataclass
class ServerInfo:
    """A postgres_fdw server as the catalog describes it (no password, ever)."""

    name: str
    options: dict[str, str]
    mapping_user: str | None
    has_password: bool
    partitions: list[str]

    @property
    def where(self) -> str:
        o = self.options
        return f"{o.get('host', 'localhost')}:{o.get('port', '5432')}/{o.get('dbname', '?')}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "where": self.where, "options": self.options,
                "user": self.mapping_user, "password": "***" if self.has_password else None,
                "partitions": self.partitions}


# -- reading the catalog ----------------------------------------------------------------------
def list_servers(conn: Connection) -> list[ServerInfo]:
    """Every postgres_fdw server of this database, with the foreign tables placed on it."""
    rows = conn.execute(
        "SELECT s.srvname, coalesce(s.srvoptions, '{}'),"
        " (SELECT um.umoptions FROM pg_user_mappings um WHERE um.srvid = s.oid"
        "   AND um.umuser IN (0, (SELECT oid FROM pg_roles WHERE rolname = current_user))"
        "   ORDER BY um.umuser DESC LIMIT 1),"
        " (SELECT coalesce(array_agg(format('%I.%I', n.nspname, c.relname) ORDER BY 1), '{}')"
        "   FROM pg_foreign_table ft JOIN pg_class c ON c.oid = ft.ftrelid"
        "   JOIN pg_namespace n ON n.oid = c.relnamespace WHERE ft.ftserver = s.oid)"
        " FROM pg_foreign_server s JOIN pg_foreign_data_wrapper w ON w.oid = s.srvfdw"
        " WHERE w.fdwname = 'postgres_fdw' ORDER BY s.srvname").fetchall()
    out: list[ServerInfo] = []
    for name, opts, umopts, parts in rows:
        um = _options(umopts or [])
        out.append(ServerInfo(name, _options(opts), um.get("user"), "password" in um,
                              list(parts)))
    return out


def get_server(conn: Connection, name: str) -> ServerInfo:
    for s in list_servers(conn):
        if s.name == name:
            return s
    known = ", ".join(s.name for s in list_servers(conn)) or "none"
    raise NotFound(f"no server named {name!r} in this database (known: {known})",
                   hint=f"add it first: pgcleave server add {name} --dsn 'host=... dbname=...'")


def remote_dsn(conn: Connection, name: str) -> str:
    """A libpq connection string to the shard behind server ``name``, built from the server's
    options and the current user's mapping. Contains the password if the mapping has one:
    use it to connect, never print it (``connection.redact``)."""
    row = conn.execute(
        "SELECT coalesce(s.srvoptions, '{}'),"
        " (SELECT um.umoptions FROM pg_user_mappings um WHERE um.srvid = s.oid"
        "   AND um.umuser IN (0, (SELECT oid FROM pg_roles WHERE rolname = current_user))"
        "   ORDER BY um.umuser DESC LIMIT 1)"
        " FROM pg_foreign_server s WHERE s.srvname = %s", [name]).fetchone()
    if row is None:
        raise NotFound(f"no server named {name!r} in this database",
                       hint="`pgcleave server list` shows the servers")
    params = {k: v for k, v in _options(row[0]).items() if k not in FDW_ONLY_OPTIONS}
    params.update({k: v for k, v in _options(row[1] or []).items() if k in ("user", "password")})
    return conninfo.make_conninfo("", **params)


def connect_remote(conn: Connection, name: str, *, purpose: str = "remote",
                   timeout: int = 10) -> Connection:
    """Open a direct connection to the shard behind server ``name``."""
    dsn = remote_dsn(conn, name)
    try:
        # synchronous_commit = on: what pgcleave changes on a shard is durable before the
        # journal records it as done, whatever the shard's own default
        return psycopg.connect(dsn, autocommit=True, connect_timeout=timeout,
                               application_name=f"pgcleave:{purpose}"[:63],
                               options="-c synchronous_commit=on")
    except psycopg.OperationalError as exc:
        raise StepFailed(f"cannot reach server {name} ({describe_dsn(dsn)}): "
                         f"{redact(str(exc)).strip().splitlines()[0]}",
                         hint="start the remote server or fix the network, then "
                              "`pgcleave resume JOB`") from None


def origin_conninfo(conn: Connection) -> str:
    """How a shard connects back to this database (for subscriptions): the parameters of the
    connection pgcleave itself uses, password included when there is one."""
    info = conn.info
    params: dict[str, Any] = {"host": info.host, "port": str(info.port), "dbname": info.dbname,
                              "user": info.user}
    if info.password:
        params["password"] = info.password
    return conninfo.make_conninfo("", **params)


def dblink_schema(conn: Connection) -> str:
    """The schema holding dblink's functions (installed into ``pgcleave`` by ``server add``)."""
    row = conn.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n"
                       " ON n.oid = e.extnamespace WHERE e.extname = 'dblink'").fetchone()
    return str(row[0]) if row else "pgcleave"


def remote_sql(dblink: str, server: str, statement: sql.Composable, *,
               durable: bool = True) -> sql.Composed:
    """``SELECT dblink_exec(server, '...')``: one remote statement (or several, run as one
    implicit transaction) sent through the server's user mapping, shown as plain SQL.

    ``durable`` prefixes ``SET synchronous_commit = on`` so the change survives a crash of the
    shard once the journal says it is done (not possible for statements that refuse to run in
    a transaction block, such as CREATE/DROP SUBSCRIPTION)."""
    text = statement.as_string(None)
    if durable:
        text = "SET synchronous_commit = on; " + text
    return sql.SQL("SELECT {}.dblink_exec({}, {})").format(
        sql.Identifier(dblink), sql.Literal(server), sql.Literal(text))


def remote_exists(dblink: str, server: str, query: sql.Composable) -> sql.Composed:
    """A guard: true when ``query`` (run on the shard) returns a row."""
    return sql.SQL("SELECT EXISTS (SELECT 1 FROM {}.dblink({}, {}) AS r(x int))").format(
        sql.Identifier(dblink), sql.Literal(server),
        sql.Literal(sql.SQL("SELECT 1 FROM ({}) q").format(query).as_string(None)))


# -- checking a remote before adding it --------------------------------------------------------
def check_remote(dsn: str, *, timeout: int = 5) -> RemoteCheck:
    """Connect to ``dsn`` and read what pgcleave needs: version and settings."""
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=timeout,
                             application_name="pgcleave:server-check") as c:
            row = c.execute(
                "SELECT current_setting('server_version_num')::int, version(),"
                " current_setting('wal_level'), current_setting('max_prepared_transactions'),"
                " current_setting('max_replication_slots'), current_setting('max_wal_senders'),"
                " (SELECT system_identifier::text FROM pg_control_system()),"
                " current_database(), current_user,"
                " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)").fetchone()
    except psycopg.OperationalError as exc:
        why = redact(str(exc)).strip().splitlines()[0]
        raise Refused(f"cannot reach the remote server at {describe_dsn(dsn)}: {why}",
                      hint="the server asks for a password: put the password in the DSN (it "
                           "goes into the user mapping only, never into the journal); nothing "
                           "was changed" if "password" in why else
                           "check the DSN (host, port, dbname, user) and that the server runs "
                           "and accepts connections from this machine; nothing was changed"
                      ) from None
    except psycopg.Error as exc:
        raise Refused(f"the remote server at {describe_dsn(dsn)} answered with an error: "
                      f"{redact(str(exc)).strip()}") from None
    assert row is not None
    (version, vtext, wal_level, max_prep, max_slots, max_senders, sysid, database, user,
     superuser) = row
    settings = {"wal_level": wal_level, "max_prepared_transactions": max_prep,
                "max_replication_slots": max_slots, "max_wal_senders": max_senders}
    rc = RemoteCheck(int(version), str(vtext).split(",")[0], settings, str(sysid), database,
                     user, bool(superuser))
    if int(max_prep) == 0:
        rc.problems.append("max_prepared_transactions = 0: `pgcleave alter` needs two-phase "
                           "commit on the shard (set it > 0 and restart the shard)")
    if wal_level != "logical":
        rc.problems.append(f"wal_level = {wal_level}: moving partitions back from this server "
                           "needs wal_level = logical on it")
    return rc










def options_sql(opts: dict[str, str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(k), sql.Literal(v))
                              for k, v in opts.items())


def _options(opts: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for o in opts:
        k, _, v = o.partition("=")
        out[k] = v
    return out


