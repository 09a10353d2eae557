"""``server add`` and ``server remove``: the planners of a postgres_fdw server with its tuned
options and the current user's mapping, and the action that creates the mapping with a password
handed to the run (never to the plan or the journal)."""

from __future__ import annotations

from typing import TypedDict, cast

import psycopg
from psycopg import conninfo, sql

from .. import preflight
from ..connection import Connection, describe_dsn, redact
from ..ddl.shards import is_superuser
from ..errors import Refused, StepFailed
from ..execute import ActionContext
from ..plan import Lock, LockTaken, Plan, Step
from ..servers import (
    MIN_VERSION,
    RemoteCheck,
    check_remote,
    dblink_schema,
    get_server,
    list_servers,
    options_sql,
)


class UserMappingParams(TypedDict):
    server: str
    user: str
    password: bool  # the password itself is a secret handed to the run (password_secret)

#: postgres_fdw options pgcleave sets on every server it adds, with why:
#: - async_capable: an Append over several foreign partitions queries the shards concurrently;
#: - fetch_size: rows per round trip of a remote scan (postgres_fdw's default is 100);
#: - batch_size: rows per remote INSERT when inserting through the parent (default 1).
PERFORMANCE_OPTIONS: dict[str, str] = {
    "async_capable": "true",
    "fetch_size": "10000",
    "batch_size": "100",
}


#: Session settings set on the managed database so plans over foreign partitions push work to
#: the shards: a GROUP BY on the partition key runs on each shard (partitionwise aggregate).
DATABASE_SETTINGS: dict[str, str] = {
    "enable_partitionwise_aggregate": "on",
    "enable_partitionwise_join": "on",
}


# -- planning ------------------------------------------------------------------------------------
def plan_server_add(conn: Connection, name: str, dsn: str, *, tune_database: bool = True,
                    check: RemoteCheck | None = None) -> Plan:
    """Plan a postgres_fdw server and user mapping for the shard at ``dsn``."""
    if not name or len(name.encode()) > 63:
        raise Refused(f"server name {name!r} must be 1 to 63 bytes")
    if name == "local":
        raise Refused("'local' is reserved (`move --to local` brings a partition back)",
                      hint="choose another name, e.g. db2")
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise Refused(f"cannot parse the DSN: {redact(str(exc))}",
                      hint="use a URL (postgresql://user@host:5432/db) or key=value pairs"
                      ) from None
    if any(s.name == name for s in list_servers(conn)):
        raise Refused(f"a server named {name!r} already exists",
                      hint=f"`pgcleave server list` shows it; `pgcleave server remove {name}` "
                           "first to replace it")
    row = conn.execute("SELECT srvname FROM pg_foreign_server WHERE srvname = %s",
                       [name]).fetchone()
    if row:
        raise Refused(f"a foreign server named {name!r} exists and is not a postgres_fdw server")
    avail = conn.execute("SELECT name FROM pg_available_extensions WHERE name IN"
                         " ('postgres_fdw', 'dblink')").fetchall()
    missing = {"postgres_fdw", "dblink"} - {r[0] for r in avail}
    if missing:
        raise Refused(f"extension(s) {', '.join(sorted(missing))} not available on this server",
                      hint="install PostgreSQL's contrib modules (postgresql-contrib)")
    rc = check or check_remote(dsn)
    if rc.version < MIN_VERSION:
        raise Refused(f"the remote runs {rc.version_text}; pgcleave needs PostgreSQL 15 or newer")
    here = conn.execute("SELECT (SELECT system_identifier::text FROM pg_control_system()),"
                        " current_database()").fetchone()
    assert here is not None
    if here[0] == rc.system_identifier:
        raise Refused(f"{describe_dsn(dsn)} is this same PostgreSQL cluster",
                      hint="a shard must be another server: logical replication between two "
                           "databases of one cluster needs manual slot handling")

    host = params.get("host") or params.get("hostaddr") or "localhost"
    srv_opts: dict[str, str] = {"host": str(host), "port": str(params.get("port") or "5432"),
                                "dbname": str(params.get("dbname") or rc.database)}
    for k, v in params.items():
        if k not in ("host", "port", "dbname", "user", "password", "hostaddr") and v:
            srv_opts[k] = str(v)
    if params.get("hostaddr") and params.get("host"):
        srv_opts["hostaddr"] = str(params["hostaddr"])
    srv_opts.update(PERFORMANCE_OPTIONS)
    user = str(params.get("user") or rc.user)
    password = params.get("password")

    dbl = dblink_schema(conn)
    ident = sql.Identifier(name)
    steps = [
        Step.sql("extensions", "install postgres_fdw and dblink (dblink runs pgcleave's remote "
                 "DDL through the same user mapping)",
                 [sql.SQL("CREATE EXTENSION IF NOT EXISTS postgres_fdw"),
                  sql.SQL("CREATE EXTENSION IF NOT EXISTS dblink SCHEMA {}").format(
                      sql.Identifier(dbl))],
                 guard=sql.SQL("SELECT count(*) = 2 FROM pg_extension WHERE extname IN"
                               " ('postgres_fdw', 'dblink')")),
        Step.sql("server", f"create foreign server {name} ({describe_dsn(dsn)}) with "
                 "async_capable, fetch_size 10000, batch_size 100",
                 [sql.SQL("CREATE SERVER {} FOREIGN DATA WRAPPER postgres_fdw OPTIONS ({})").format(
                     ident, options_sql(srv_opts))],
                 guard=sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_foreign_server WHERE srvname = {})"
                               ).format(sql.Literal(name)),
                 undo=[sql.SQL("DROP SERVER IF EXISTS {} CASCADE").format(ident)]),
    ]
    um_shown = {"user": user} | ({"password": "***"} if password else {})
    steps.append(Step(
        name="user-mapping", description=f"map the current user to {user} on {name}"
        + (" (password from the DSN, never shown)" if password else ""),
        statements=[sql.SQL("CREATE USER MAPPING FOR CURRENT_USER SERVER {} OPTIONS ({})").format(
            ident, options_sql(um_shown)).as_string(None)],
        action="server.user_mapping", params=UserMappingParams(server=name, user=user,
                                                         password=bool(password)),
        guard=sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_user_mappings WHERE srvname = {}"
                      " AND usename = current_user)").format(sql.Literal(name)).as_string(None),
        undo=[sql.SQL("DROP USER MAPPING IF EXISTS FOR CURRENT_USER SERVER {}").format(
            ident).as_string(None)], ddl=False))
    steps.append(Step.sql(
        "probe", f"check that postgres_fdw reaches {name} with the mapping",
        [sql.SQL("SELECT * FROM {}.dblink({}, 'SELECT 1') AS r(x int)").format(
            sql.Identifier(dbl), sql.Literal(name))], ddl=False))
    if tune_database:
        dbname = sql.Identifier(str(conn.info.dbname))
        for k, v in DATABASE_SETTINGS.items():
            steps.append(Step.sql(
                f"set-{k}", f"set {k} = {v} for new sessions of this database (GROUP BY on the "
                "partition key then runs on the shards)",
                [sql.SQL("ALTER DATABASE {} SET {} = {}").format(dbname, sql.Identifier(k),
                                                                 sql.SQL(v))],
                guard=sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_db_role_setting s JOIN"
                              " pg_database d ON d.oid = s.setdatabase AND s.setrole = 0"
                              " WHERE d.datname = current_database() AND {} = ANY(s.setconfig))"
                              ).format(sql.Literal(f"{k}={v}")),
                undo=[sql.SQL("ALTER DATABASE {} RESET {}").format(dbname, sql.Identifier(k))]))
    if not password and not is_superuser(conn):
        raise Refused(f"the DSN of {name} has no password, and postgres_fdw and dblink refuse a "
                      "non-superuser's connection that does not use one (\"password is "
                      "required\"); nothing was changed",
                      hint="put the password in the DSN (it goes into the user mapping only, "
                           "never into the journal), and make the shard ask for it "
                           "(scram-sha-256 in its pg_hba.conf)")
    requires = [preflight.fdw_usage(), preflight.extension("dblink")]
    if tune_database:
        requires.append(preflight.database_owner("to set partitionwise aggregation for its "
                                                 "sessions; or pass --no-tune"))
    plan = Plan("server add", f"server:{name}", {"server": name, "dsn": describe_dsn(dsn),
                                                  "remote": rc.to_json()}, steps,
                requires=requires)
    plan = plan.add(notes=[
        f"remote answers: {rc.version_text}, database {rc.database}, user {user}, "
                      f"wal_level={rc.settings['wal_level']}, max_prepared_transactions="
                      f"{rc.settings['max_prepared_transactions']}"])
    plan = plan.add(notes=rc.problems)
    return plan


def password_secret(name: str) -> str:
    """The key of server ``name``'s password among a run's secrets."""
    return f"password:{name}"


def server_secrets(name: str, dsn: str) -> dict[str, str]:
    """What the run of ``plan_server_add(name, dsn)`` needs that the plan never holds: the
    password in ``dsn``, if any. Hand it to ``Executor(secrets=...)``."""
    try:
        password = conninfo.conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        return {}
    return {password_secret(name): str(password)} if password else {}


def plan_server_remove(conn: Connection, name: str) -> Plan:
    """Plan dropping server ``name``; refused while partitions live on it."""
    s = get_server(conn, name)
    if s.partitions:
        raise Refused(f"server {name} still holds {len(s.partitions)} foreign table(s): "
                      + ", ".join(s.partitions),
                      hint="move partitions back first: pgcleave move PARTITION --to local "
                           "(or drop the foreign tables you no longer need)")
    ident = sql.Identifier(name)
    owns = preflight.Requirement(
        f"owner of foreign server {name}",
        sql.SQL("SELECT pg_has_role(current_user, srvowner, 'USAGE') FROM pg_foreign_server "
                "WHERE srvname = {}").format(sql.Literal(name)).as_string(None),
        f"run as the owner of server {name}, or: ALTER SERVER {name} OWNER TO {{user}}")
    return Plan("server remove", f"server:{name}", {"server": name}, requires=[owns], steps=[
        Step.sql("drop-server", f"drop foreign server {name} and its user mappings",
                 [sql.SQL("DROP SERVER IF EXISTS {} CASCADE").format(ident)],
                 locks=[LockTaken(Lock.NONE, name)])],
        notes=["tables pgcleave left on the shard itself (pgcleave.move_markers) stay there"])


def user_mapping(ctx: ActionContext) -> None:
    p = cast(UserMappingParams, ctx.params)
    name = p["server"]
    opts = {"user": p["user"]}
    if p.get("password"):
        pw = ctx.secret(password_secret(name))
        if pw is None:
            raise StepFailed(
                f"the password for server {name} was not given to this run",
                hint=f"passwords are never journaled: `pgcleave rollback` this job, then "
                     f"run `pgcleave server add {name} --dsn ...` again")
        opts["password"] = pw
    stmt = sql.SQL("CREATE USER MAPPING IF NOT EXISTS FOR CURRENT_USER SERVER {} OPTIONS ({})"
                   ).format(sql.Identifier(name), options_sql(opts))
    ctx.conn.execute(stmt)
