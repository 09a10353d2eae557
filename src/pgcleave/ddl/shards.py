"""Shard-side DDL: the table that holds a partition on another server (columns, keys, the
CHECK equal to its bound), the foreign table that stands for it locally, the DDL-guard event
trigger, and the checks a move needs (logical replication, replica identity, parent keys)."""

from __future__ import annotations

from psycopg import sql

from .. import servers
from ..catalog import TableInfo
from ..connection import Connection
from ..errors import Refused
from ..names import QualifiedName
from ..plan import Step
from .tables import parse_indexdef

BOUND_CHECK = "pgcleave_partition_bound"


EVENT_TRIGGER = "pgcleave_guard_ddl"


def first_move_warnings(parent: TableInfo) -> list[str]:
    """What stops working once a table has a partition on another server."""
    t = str(parent.name)
    return [
        f"{t} will have a partition on another server. From then on PostgreSQL refuses a "
        f"PRIMARY KEY or UNIQUE constraint on {t} itself (per-partition keys remain), so "
        f"`INSERT ... ON CONFLICT (col)` on {t} fails, and foreign keys to or from {t} are "
        "impossible",
        "an UPDATE that changes the partition key of a row on the remote partition so that the "
        "row would leave it fails (the shard's CHECK refuses it) instead of moving the row",
        "a transaction writing to local and remote partitions can commit on one server and not "
        "the other if a server fails at the wrong moment (no two-phase commit for DML)",
        f"plain ALTER TABLE {t} that changes columns is refused by an event trigger; use "
        f"`pgcleave alter {t} \"ACTION\"`, which changes every server at once",
    ]


# -- DDL generation ----------------------------------------------------------------------------
def column_defs(info: TableInfo) -> list[sql.Composable]:
    out: list[sql.Composable] = []
    for col in info.columns:
        parts: list[sql.Composable] = [sql.Identifier(col.name), sql.SQL(col.type)]
        if col.collation:
            parts.append(sql.SQL("COLLATE {}").format(sql.Identifier(col.collation)))
        if col.not_null:
            parts.append(sql.SQL("NOT NULL"))
        out.append(sql.SQL(" ").join(parts))
    return out


def shard_table_ddl(conn: Connection, info: TableInfo, remote: QualifiedName,
                    constraint_def: str | sql.Composable, *, markers: bool = True
                    ) -> list[sql.Composable]:
    """A shard table built from ``info`` (a partition, or the parent of a partition about to be
    created): same columns, NOT NULLs, constraints, keys and indexes, plus ``CHECK`` equal to
    the partition constraint. Index definitions naming another table than ``remote`` (the
    parent's partitioned indexes) are re-targeted at ``remote``."""
    t = remote.ident
    bound = sql.SQL(constraint_def) if isinstance(constraint_def, str) else constraint_def
    stmts: list[sql.Composable] = [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(remote.schema)),
        sql.SQL("CREATE TABLE {} ({})").format(t, sql.SQL(", ").join(column_defs(info))),
    ]
    for con in info.constraints:
        # a partition moved back from a shard keeps the shard's bound CHECK: written anew below
        if con.type in ("c", "p", "u", "x") and con.name != BOUND_CHECK:
            stmts.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                t, sql.Identifier(con.name), sql.SQL(con.definition)))
    stmts.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(
        t, sql.Identifier(BOUND_CHECK), bound))
    for ix in info.indexes:
        if ix.constraint is None and ix.valid:
            if remote == info.name:
                stmts.append(sql.SQL(ix.definition))
            else:
                d = parse_indexdef(ix.definition)
                stmts.append(sql.SQL("CREATE {}INDEX ON {} {}").format(
                    sql.SQL("UNIQUE " if d.unique else ""), t, sql.SQL(d.tail)))
    if info.primary_key is None:
        ri = conn.execute("SELECT relreplident::text FROM pg_class WHERE oid = %s",
                          [info.oid]).fetchone()
        if ri and ri[0] == "f":
            stmts.append(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(t))
    if markers:
        stmts += [
            sql.SQL("CREATE SCHEMA IF NOT EXISTS pgcleave"),
            sql.SQL("CREATE TABLE IF NOT EXISTS pgcleave.move_markers (token text NOT NULL,"
                    " at timestamptz NOT NULL DEFAULT clock_timestamp())"),
            sql.SQL("ALTER TABLE pgcleave.move_markers REPLICA IDENTITY FULL"),
        ]
    return stmts


def ddl_guard_step(name: str) -> Step:
    """Install the event trigger (superuser only) that refuses a plain ``ALTER TABLE``
    changing the columns of a table with remote partitions (see ``pgcleave.guard_ddl``)."""
    return Step.sql(
        name, "install the event trigger that refuses a plain ALTER TABLE "
        "changing the columns of a table with remote partitions",
        [sql.SQL("CREATE EVENT TRIGGER {} ON ddl_command_end WHEN TAG IN ('ALTER TABLE')"
                 " EXECUTE FUNCTION pgcleave.guard_ddl()").format(sql.Identifier(EVENT_TRIGGER))],
        guard=sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = {})"
                      ).format(sql.Literal(EVENT_TRIGGER)))


def shard_table_step(conn: Connection, info: TableInfo, server: str, remote: QualifiedName,
                     constraint_def: str | sql.Composable, *, dbl: str | None = None,
                     name: str = "shard-table", markers: bool = True) -> Step:
    """The step that creates ``remote`` on ``server`` through dblink (``shard_table_ddl``),
    guarded by its existence there, undone by dropping it."""
    dbl = dbl or servers.dblink_schema(conn)
    shown = constraint_def if isinstance(constraint_def, str) else constraint_def.as_string(None)
    return Step.sql(
        name, f"create {remote} on {server} from the local definition, with CHECK ({shown})",
        [servers.remote_sql(dbl, server, sql.SQL("; ").join(
            shard_table_ddl(conn, info, remote, constraint_def, markers=markers)))],
        guard=servers.remote_exists(dbl, server, sql.SQL(
            "SELECT 1 WHERE to_regclass({}) IS NOT NULL").format(remote.literal)),
        undo=[servers.remote_sql(dbl, server, sql.SQL("DROP TABLE IF EXISTS {}").format(
            remote.ident))],
        transactional=False, ddl=False)


def foreign_table_ddl(parent: TableInfo, name: QualifiedName, server: str,
                 remote: QualifiedName) -> sql.Composable:
    """A foreign table ATTACH accepts: the parent's columns, NOT NULLs and CHECKs."""
    items = column_defs(parent)
    for con in parent.constraints:
        if con.type == "c":
            items.append(sql.SQL("CONSTRAINT {} {}").format(
                sql.Identifier(con.name), sql.SQL(con.definition.removesuffix(" NOT VALID"))))
    return sql.SQL("CREATE FOREIGN TABLE {} ({}) SERVER {} OPTIONS (schema_name {}, "
                   "table_name {})").format(name.ident, sql.SQL(", ").join(items),
                                            sql.Identifier(server), sql.Literal(remote.schema),
                                            sql.Literal(remote.name))


# -- checks ------------------------------------------------------------------------------------
def require_logical(conn: Connection, what: str) -> None:
    row = conn.execute("SELECT current_setting('wal_level')").fetchone()
    if row is None or row[0] != "logical":
        raise Refused(f"{what} runs with wal_level = {row[0] if row else '?'}; a move by "
                      "logical replication needs wal_level = logical",
                      hint="use `move --method copy` (or --method auto), which needs neither "
                           "wal_level = logical nor superuser; or set wal_level = logical and "
                           "restart that server")


def require_replica_identity(conn: Connection, info: TableInfo) -> None:
    row = conn.execute("SELECT relreplident::text FROM pg_class WHERE oid = %s",
                       [info.oid]).fetchone()
    ri = row[0] if row else "d"
    if ri == "n" or (ri == "d" and info.primary_key is None):
        raise Refused(f"{info.name} has no primary key or replica identity: while it is "
                      "replicated, the application's UPDATEs and DELETEs on it would fail",
                      hint=f"add a primary key to {info.name}, or ALTER TABLE {info.name} "
                           "REPLICA IDENTITY FULL (slower to apply), then retry")


def refuse_parent_keys(parent: TableInfo) -> None:
    uniq = [ix for ix in parent.indexes if ix.unique]
    if uniq:
        cons = [ix.constraint for ix in uniq if ix.constraint]
        fix = "; ".join(f"ALTER TABLE {parent.name} DROP CONSTRAINT {n}" for n in cons) or \
            "; ".join(f"DROP INDEX {parent.name.sibling(ix.name)}" for ix in uniq)
        raise Refused(f"{parent.name} has unique keys ({', '.join(ix.name for ix in uniq)}); "
                      "PostgreSQL refuses a foreign partition under a unique key on the parent",
                      hint=f"drop them on the parent (keys on each partition can stay): {fix}")
    if parent.foreign_keys_out or parent.foreign_keys_in:
        names = [fk.name for fk in parent.foreign_keys_out + parent.foreign_keys_in]
        raise Refused(f"{parent.name} has foreign keys ({', '.join(names)}); foreign tables "
                      "cannot take part in foreign keys",
                      hint="drop them first (or keep this table on one server)")


def is_superuser(conn: Connection) -> bool:
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    return bool(row and row[0])
