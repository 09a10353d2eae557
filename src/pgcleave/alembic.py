"""Alembic operations that run pgcleave online: ``op.partition_table``, ``op.add_partition``,
``op.create_index_online``, ``op.set_primary_key_online``, ``op.unpartition_table``.

Import this module in ``env.py`` (or in the migration) to register them with Alembic's plugin API
(``Operations.register_operation``); ``pip install 'pgcleave[alembic]'``::

    import pgcleave.alembic  # noqa: F401  (registers the operations)
    from pgcleave.alembic import include_name, include_object
    context.configure(connection=connection, target_metadata=target_metadata,
                      include_name=include_name, include_object=include_object)

    # a migration
    def upgrade():
        op.partition_table("orders", by="range(created_at)", interval="1 month")
    def downgrade():
        op.unpartition_table("orders", by="range(created_at)", interval="1 month")

Online mode: each operation commits the migration's transaction so far and runs outside it
(``autocommit_block()``), on its own psycopg connection to the migration's database (the
engine URL, password included), through pgcleave's executor: a journaled job, every DDL under a
short lock_timeout with retry, an advisory lock per table. If the migration is killed midway,
running it again resumes the unfinished job. Plans that change something the application sees
(a primary key that must include the partition key) refuse unless ``confirm=True``.
``config.attributes["pgcleave"] = {"lock_timeout_ms": 200, "lock_retry_limit_s": 600}`` (in
env.py) sets what ``--lock-timeout`` / ``--lock-retry-limit`` set on the command line.

Offline mode (``alembic upgrade --sql``): there is no database, and pgcleave decides its
statements from the live catalog (bounds, cutoff, indexes, keys), so each operation prints the
exact ``pgcleave`` command it runs and, when a planning database is configured
(``PGCLEAVE_PLAN_DSN``, or ``pgcleave_plan_dsn`` in ``alembic.ini`` or ``-x pgcleave_plan_dsn=``),
the dry run planned against it: the SQL ``pgcleave ... --dry-run`` prints. At run time the plan
is made again from the target's own catalog.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from alembic.operations import MigrateOperation, Operations
from sqlalchemy.engine import URL, Connection

from .frameworks import OnlineOperation, dsn_from_params, offline_sql, run, settings_for

__all__ = ["AddPartitionOp", "CreateIndexOnlineOp", "DropIndexOnlineOp", "DropPartitionOp",
           "PartitionTableOp", "SetPrimaryKeyOnlineOp", "UnpartitionTableOp", "dsn_from_url",
           "include_name", "include_object", "object_filter"]


def dsn_from_url(url: URL) -> str:
    """A libpq DSN from a SQLAlchemy URL (``postgresql+psycopg://user:pw@host/db?sslmode=...``),
    the password included: pgcleave's own connection goes where the migration's goes."""
    query = {k: (v if isinstance(v, str) else v[-1]) for k, v in url.query.items()}
    return dsn_from_params({"host": url.host, "port": url.port, "dbname": url.database,
                            "user": url.username, "password": url.password, **query})


class PgcleaveOp(MigrateOperation):
    """An operation carrying a pgcleave ``OnlineOperation``; ``reverse()`` gives the downgrade."""

    def __init__(self, online: OnlineOperation) -> None:
        self.online = online

    def reverse(self) -> PgcleaveOp:
        rev = self.online.reverse()
        return _BY_KIND[rev.kind](rev)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("pgcleave", self.online.kind, self.online.table)


@Operations.register_operation("partition_table")
class PartitionTableOp(PgcleaveOp):
    """``op.partition_table(table, by="range(col)", interval="1 month", strategy="auto")``."""

    @classmethod
    def partition_table(cls, operations: Operations, table_name: str, *, by: str,
                        interval: str | None = None, strategy: str = "auto", premake: int = 3,
                        confirm: bool = False) -> Any:
        return operations.invoke(cls(OnlineOperation(
            "partition", table_name, {"by": by, "interval": interval, "strategy": strategy,
                                      "premake": premake}, confirm)))


@Operations.register_operation("unpartition_table")
class UnpartitionTableOp(PgcleaveOp):
    """``op.unpartition_table(table)``: back to a plain table (``unpartition`` after an in-place
    conversion; ``unswap`` then ``unprep`` after a copy). ``by``/``interval`` say how its
    reverse partitions again."""

    @classmethod
    def unpartition_table(cls, operations: Operations, table_name: str, *,
                          by: str | None = None, interval: str | None = None,
                          strategy: str = "auto", confirm: bool = False) -> Any:
        return operations.invoke(cls(OnlineOperation(
            "unpartition", table_name, {}, confirm,
            reverse_options={"by": by, "interval": interval, "strategy": strategy})))


@Operations.register_operation("add_partition")
class AddPartitionOp(PgcleaveOp):
    """``op.add_partition(table, lower=..., upper=..., name=...)`` or ``values=[...]``; no scan
    of the DEFAULT under ACCESS EXCLUSIVE. With ``name``, its reverse is
    ``op.drop_partition(table, name)``, which drops the partition only while it is empty."""

    @classmethod
    def add_partition(cls, operations: Operations, table_name: str, *,
                      lower: str | None = None, upper: str | None = None,
                      values: Sequence[str] | None = None, name: str | None = None) -> Any:
        return operations.invoke(cls(OnlineOperation(
            "add-partition", table_name, {"lower": lower, "upper": upper,
                                          "values": list(values) if values else None,
                                          "name": name})))


@Operations.register_operation("create_index_online")
class CreateIndexOnlineOp(PgcleaveOp):
    """``op.create_index_online(name, table, columns, unique=False, where=None, using=None)``:
    CREATE INDEX CONCURRENTLY per partition, then ATTACH (a plain table: CONCURRENTLY)."""

    @classmethod
    def create_index_online(cls, operations: Operations, index_name: str, table_name: str,
                            columns: Sequence[str], *, unique: bool = False,
                            where: str | None = None, using: str | None = None) -> Any:
        return operations.invoke(cls(OnlineOperation(
            "create-index", table_name, {"columns": list(columns), "name": index_name,
                                         "unique": unique, "where": where, "method": using})))


@Operations.register_operation("drop_index_online")
class DropIndexOnlineOp(PgcleaveOp):
    """``op.drop_index_online(name, table)``: the reverse of ``create_index_online``."""

    @classmethod
    def drop_index_online(cls, operations: Operations, index_name: str,
                          table_name: str) -> Any:
        return operations.invoke(cls(OnlineOperation("drop-index", table_name,
                                                     {"name": index_name})))


@Operations.register_operation("set_primary_key_online")
class SetPrimaryKeyOnlineOp(PgcleaveOp):
    """``op.set_primary_key_online(table, columns, old_columns=None)``: the key is built
    concurrently on each partition, then adopted by the parent. ``old_columns`` makes it
    reversible."""

    @classmethod
    def set_primary_key_online(cls, operations: Operations, table_name: str,
                               columns: Sequence[str], *,
                               old_columns: Sequence[str] | None = None,
                               keep_old_key: bool = False, confirm: bool = False) -> Any:
        return operations.invoke(cls(OnlineOperation(
            "set-primary-key", table_name, {"columns": list(columns),
                                            "keep_old_key": keep_old_key}, confirm,
            reverse_options={"columns": list(old_columns)} if old_columns else {})))


@Operations.register_operation("drop_partition")
class DropPartitionOp(PgcleaveOp):
    """``op.drop_partition(table, name)``: drop an empty partition (refused if it holds rows)."""

    @classmethod
    def drop_partition(cls, operations: Operations, table_name: str, name: str) -> Any:
        return operations.invoke(cls(OnlineOperation("drop-partition", table_name,
                                                     {"name": name})))


_BY_KIND: dict[str, type[PgcleaveOp]] = {
    "partition": PartitionTableOp, "unpartition": UnpartitionTableOp,
    "add-partition": AddPartitionOp, "create-index": CreateIndexOnlineOp,
    "drop-index": DropIndexOnlineOp, "set-primary-key": SetPrimaryKeyOnlineOp,
    "drop-partition": DropPartitionOp}


def _plan_dsn(operations: Operations) -> str | None:
    ctx = operations.get_context()
    cfg = ctx.config
    if cfg is not None:
        x = cfg.cmd_opts.x if cfg.cmd_opts is not None and getattr(cfg.cmd_opts, "x", None) \
            else []
        for arg in x or []:
            key, _, value = arg.partition("=")
            if key == "pgcleave_plan_dsn":
                return str(value)
        main = cfg.get_main_option("pgcleave_plan_dsn")
        if main:
            return str(main)
    return os.environ.get("PGCLEAVE_PLAN_DSN") or None


def _execute(operations: Operations, operation: PgcleaveOp) -> None:
    ctx = operations.get_context()
    if ctx.as_sql:
        # COMMIT before and BEGIN after, as online: pgcleave's steps are not in the migration's
        # transaction (CREATE INDEX CONCURRENTLY cannot be)
        with ctx.autocommit_block():
            ctx.impl.static_output(offline_sql(operation.online, _plan_dsn(operations)).rstrip())
        return
    bind = operations.get_bind()
    dsn = dsn_from_url(bind.engine.url)
    tunables = dict(ctx.config.attributes.get("pgcleave", {})) if ctx.config is not None else {}
    with ctx.autocommit_block():
        run(settings_for(dsn, tunables), operation.online)


for _cls in _BY_KIND.values():
    Operations.implementation_for(_cls)(_execute)


# -- autogenerate ----------------------------------------------------------------------------------
_SKIP_SQL = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relispartition
UNION ALL
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE to_regclass('pgcleave.copies') IS NOT NULL AND c.oid IN (
   SELECT to_regclass(format('%I.%I', table_schema, intermediate)) FROM pgcleave.copies
   UNION ALL SELECT to_regclass(format('%I.%I', table_schema, retired)) FROM pgcleave.copies)
"""


class ObjectFilter:
    """``include_name`` / ``include_object`` for autogenerate: pgcleave's own schema, every
    partition (pgcleave creates and retires them; they are not models), and the copy strategy's
    side tables (``T_intermediate``, ``T_retired``) are left out, so autogenerate proposes
    neither to drop nor to recreate them. Reads the catalog once through ``connection``."""

    def __init__(self, connection: Connection | None) -> None:
        self.skip: set[tuple[str | None, str]] = set()
        if connection is not None:
            from sqlalchemy import text

            default = connection.dialect.default_schema_name
            for schema, name in connection.execute(text(_SKIP_SQL)):
                self.skip.add((schema, name))
                if schema == default:
                    self.skip.add((None, name))

    def include_name(self, name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
        if type_ == "schema":
            return name != "pgcleave"
        if type_ == "table" and name is not None:
            return (parent_names.get("schema_name"), name) not in self.skip
        return True

    def include_object(self, obj: Any, name: str | None, type_: str, reflected: bool,
                       compare_to: Any) -> bool:
        if type_ == "table":
            schema = getattr(obj, "schema", None)
            return schema != "pgcleave" and (schema, name) not in self.skip
        return True


def object_filter(connection: Connection) -> ObjectFilter:
    """An ``ObjectFilter`` reading the catalog through ``connection`` (the one env.py passes
    to ``context.configure``)."""
    return ObjectFilter(connection)


def _current() -> ObjectFilter:
    """The filter of the migration running now (read once per connection), through Alembic's
    ``context`` proxy, which only exists while env.py runs; else a filter that skips pgcleave's
    schema only."""
    try:
        from alembic import context

        conn = context.get_bind()
    except Exception:  # not inside env.py: no connection to ask
        return ObjectFilter(None)
    cached = _CACHE.get(id(conn))
    if cached is None or cached[0] is not conn:
        cached = (conn, ObjectFilter(conn))
        _CACHE.clear()
        _CACHE[id(conn)] = cached
    return cached[1]


_CACHE: dict[int, tuple[Connection, ObjectFilter]] = {}


def include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    """Ready for ``context.configure(include_name=...)``."""
    return _current().include_name(name, type_, parent_names)


def include_object(obj: Any, name: str | None, type_: str, reflected: bool,
                   compare_to: Any) -> bool:
    """Ready for ``context.configure(include_object=...)``."""
    return _current().include_object(obj, name, type_, reflected, compare_to)
