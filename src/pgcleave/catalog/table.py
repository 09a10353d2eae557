"""A snapshot of one table: everything an operation must know before it plans.

Partitions are always ordered by their bounds, evaluated by the server in the key's own type
(never by their names: ``orders_p2024_10`` sorts before ``orders_p2024_9`` as text).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, TypeVar

import psycopg
from psycopg import sql

from ..connection import Connection
from ..errors import NotFound, Refused
from ..names import QualifiedName

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Column:
    name: str
    type: str
    not_null: bool
    default: str | None
    identity: str  # '' | 'a' (ALWAYS) | 'd' (BY DEFAULT)
    generated: str  # '' | 's' (STORED)
    attnum: int
    type_oid: int = 0
    collation: str | None = None
    comment: str | None = None
    # 18+: the name of its NOT NULL constraint (pg_constraint contype 'n'); None before 18
    not_null_constraint: str | None = None


@dataclass
class Index:
    name: str
    definition: str
    unique: bool
    primary: bool
    valid: bool
    columns: list[str]
    constraint: str | None


@dataclass
class Constraint:
    name: str
    type: str  # c, f, p, u, x, t (NOT NULL, contype 'n' on 18+, is Column.not_null instead)
    definition: str
    validated: bool
    columns: list[str]
    inherited: bool = False


@dataclass
class ForeignKey:
    name: str
    table: QualifiedName
    columns: list[str]
    ref_table: QualifiedName
    ref_columns: list[str]
    definition: str
    validated: bool


@dataclass
class SequenceInfo:
    name: QualifiedName
    column: str
    kind: str  # 'serial' (owned, used by a default) or 'identity'
    last_value: int | None
    # Its parameters (as in pg_sequence), to re-create an identity with the same ones.
    increment: int = 1
    min_value: int = 1
    max_value: int = 2**63 - 1
    start: int = 1
    cache: int = 1
    cycle: bool = False
    # Privileges on the sequence itself ({"grantee", "privilege", "grantable"}), owner excluded.
    grants: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Trigger:
    name: str
    definition: str
    enabled: str


@dataclass
class Policy:
    name: str
    permissive: bool
    command: str  # ALL, SELECT, INSERT, UPDATE, DELETE
    roles: list[str]
    using: str | None
    with_check: str | None


@dataclass
class View:
    name: QualifiedName
    definition: str
    materialized: bool


@dataclass
class Partition:
    name: QualifiedName
    oid: int
    bound: str  # e.g. "FOR VALUES FROM ('A') TO ('B')" or "DEFAULT"
    is_default: bool
    kind: str  # 'r' table, 'p' partitioned, 'f' foreign
    server: str | None
    rows: int | None
    bytes: int | None
    detach_pending: bool = False
    lower: list[str] | None = None  # range: SQL literals or MINVALUE/MAXVALUE
    upper: list[str] | None = None
    values: list[str] | None = None  # list: SQL literals (NULL included)
    modulus: int | None = None
    remainder: int | None = None
    partitioning: Partitioning | None = None

    @property
    def location(self) -> str:
        return self.server if self.server else "local"


@dataclass
class Partitioning:
    strategy: str  # range, list, hash
    key: str  # pg_get_partkeydef, e.g. "RANGE (created_at)"
    key_columns: list[str]
    key_types: list[str]
    partitions: list[Partition] = field(default_factory=list)

    @property
    def default(self) -> Partition | None:
        return next((p for p in self.partitions if p.is_default), None)

    def leaves(self) -> list[Partition]:
        out: list[Partition] = []
        for p in self.partitions:
            if p.partitioning is not None:
                out.extend(p.partitioning.leaves())
            else:
                out.append(p)
        return out


@dataclass
class TableInfo:
    oid: int
    name: QualifiedName
    kind: str  # r, p, f
    persistence: str
    owner: str
    columns: list[Column]
    primary_key: Constraint | None
    indexes: list[Index]
    constraints: list[Constraint]
    foreign_keys_out: list[ForeignKey]
    foreign_keys_in: list[ForeignKey]
    sequences: list[SequenceInfo]
    triggers: list[Trigger]
    grants: list[dict[str, Any]]
    acl: str | None
    views: list[View]
    comment: str | None
    rls_enabled: bool
    rls_forced: bool
    policies: list[Policy]
    reloptions: list[str]
    partitioning: Partitioning | None
    parent: QualifiedName | None
    rows: int | None
    bytes: int
    server_version: int
    # Column privileges ({"column", "grantee", "privilege", "grantable"}), owner excluded.
    column_grants: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_partitioned(self) -> bool:
        return self.kind == "p"

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise NotFound(f"table {self.name} has no column {name!r}",
                       hint="columns: " + ", ".join(c.name for c in self.columns))

    def to_json(self) -> dict[str, Any]:
        def conv(o: Any) -> Any:
            if isinstance(o, QualifiedName):
                return {"schema": o.schema, "name": o.name}
            if isinstance(o, dict):
                return {k: conv(v) for k, v in o.items()}
            if isinstance(o, list):
                return [conv(v) for v in o]
            return o

        return conv(asdict(self))  # type: ignore[no-any-return]


def server_version(conn: Connection) -> int:
    return int(conn.info.server_version)


def relation_exists(conn: Connection, name: QualifiedName) -> bool:
    """Whether a relation of that name exists now (any kind: table, view, index, ...)."""
    row = conn.execute(relation_exists_sql(name)).fetchone()
    return bool(row and row[0])


def relation_exists_sql(name: QualifiedName) -> sql.Composed:
    """The same question as a query returning one boolean, for a step's guard."""
    return sql.SQL("SELECT to_regclass({}) IS NOT NULL").format(name.literal)


def resolve(conn: Connection, name: str) -> tuple[int, QualifiedName, str]:
    """Resolve user input (``orders``, ``"Sales"."Order Items"``) the way the server does."""
    try:
        row = conn.execute(
            "SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
            [name]).fetchone()
    except psycopg.errors.InvalidName as exc:
        raise Refused(f"{name!r} is not a valid table name: {exc}",
                      hint="quote names with capitals or spaces: "
                           "'\"Sales\".\"Order Items\"'") from None
    if row is None:
        raise NotFound(f"table {name} does not exist",
                       hint="check the name and schema; names with capitals need double quotes,"
                            ' e.g. \'"Orders"\'')
    oid, schema, relname, relkind = row
    if relkind not in ("r", "p", "f"):
        raise Refused(f"{name} is not a table (relkind {relkind!r})")
    return int(oid), QualifiedName(schema, relname), str(relkind)


def snapshot(conn: Connection, name: str) -> TableInfo:
    """Read everything about one table in a single repeatable-read snapshot."""
    oid, qname, kind = resolve(conn, name)
    return _snapshot_oid(conn, oid, qname, kind)


def _snapshot_oid(conn: Connection, oid: int, qname: QualifiedName, kind: str) -> TableInfo:
    """Every independent query travels in one pipeline (one round trip instead of one a
    query: ``status`` and every planner pay it); what depends on their answers (exact counts
    of tables never analyzed, the partitions' order, remote sizes) is asked after."""
    q = _Query(conn)
    with conn.pipeline():
        cls = q.first(
            "SELECT c.relpersistence, pg_get_userbyid(c.relowner), c.relacl::text,"
            " obj_description(c.oid, 'pg_class'), c.relrowsecurity, c.relforcerowsecurity,"
            " coalesce(c.reloptions, '{}'), c.reltuples, c.relispartition,"
            " has_table_privilege(c.oid, 'SELECT')"
            " FROM pg_class c WHERE c.oid = %s", oid)
        parts = _partitioning_queries(q, oid) if kind == "p" else None
        parent = q.rows(lambda r: QualifiedName(r[0], r[1]),
                        "SELECT n.nspname, c.relname FROM pg_inherits i JOIN pg_class c"
                        " ON c.oid = i.inhparent JOIN pg_namespace n ON n.oid = c.relnamespace"
                        " WHERE i.inhrelid = %s", oid)
        size = _size_query(q, oid, kind)
        lists = _table_queries(q, oid)
    # leaving the pipeline synced it: every answer is in
    known = {name: pending.get() for name, pending in lists.items()}
    (persistence, owner, acl, comment, rls, rls_forced, reloptions, reltuples, is_part,
     readable) = cls.get()
    parent_rows = parent.get()
    size_row = size.get() if size is not None else None
    partitioning = _partitioning_build(q, parts) if parts is not None else None

    if kind == "p":
        total_bytes = int(size_row[0] or 0) if size_row else 0
        rows: int | None = (sum(p.rows or 0 for p in partitioning.leaves())
                            if partitioning is not None else 0)
    elif kind == "r":
        total_bytes = int(size_row[0]) if size_row else 0
        rows = _estimate(float(reltuples))
        if _countable(float(reltuples), total_bytes, readable):
            rows = _exact_counts(q, [qname])[0]
    else:
        rows = int(reltuples) if reltuples >= 0 else None
        total_bytes = 0

    constraints = known["constraints"]
    return TableInfo(
        oid=oid, name=qname, kind=kind, persistence=persistence, owner=owner,
        columns=known["columns"], primary_key=next((c for c in constraints if c.type == "p"),
                                                   None),
        indexes=known["indexes"], constraints=constraints,
        foreign_keys_out=known["fks_out"], foreign_keys_in=known["fks_in"],
        sequences=known["sequences"], triggers=known["triggers"], grants=known["grants"],
        acl=acl, views=known["views"], comment=comment, rls_enabled=rls, rls_forced=rls_forced,
        policies=known["policies"], reloptions=list(reloptions), partitioning=partitioning,
        parent=parent_rows[0] if is_part and parent_rows else None, rows=rows,
        bytes=total_bytes, server_version=server_version(q.conn),
        column_grants=known["column_grants"],
    )


def _size_query(q: _Query, oid: int, kind: str) -> _Pending[tuple[Any, ...]] | None:
    if kind == "p":
        # pg_partition_tree lists nothing for a plain table, so only partitioned ones use it.
        return q.first("SELECT coalesce(sum(pg_total_relation_size(relid)), 0)"
                       " FROM pg_partition_tree(%s) WHERE isleaf", oid)
    if kind == "r":
        return q.first("SELECT pg_total_relation_size(%s)", oid)
    return None


_FK_SQL = (
    "SELECT con.conname, sn.nspname, s.relname,"
    " (SELECT array_agg(a.attname ORDER BY k.ord) FROM unnest(con.conkey) WITH ORDINALITY"
    "   k(n, ord) JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n),"
    " rn.nspname, r.relname,"
    " (SELECT array_agg(a.attname ORDER BY k.ord) FROM unnest(con.confkey) WITH ORDINALITY"
    "   k(n, ord) JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n),"
    " pg_get_constraintdef(con.oid), con.convalidated"
    " FROM pg_constraint con JOIN pg_class s ON s.oid = con.conrelid"
    " JOIN pg_namespace sn ON sn.oid = s.relnamespace"
    " JOIN pg_class r ON r.oid = con.confrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace"
    " WHERE con.contype = 'f' AND con.conparentid = 0 AND {} = %s ORDER BY con.conname")


def _fk(r: tuple[Any, ...]) -> ForeignKey:
    return ForeignKey(r[0], QualifiedName(r[1], r[2]), list(r[3]), QualifiedName(r[4], r[5]),
                      list(r[6]), r[7], r[8])


def _table_queries(q: _Query, oid: int) -> dict[str, _Pending[list[Any]]]:
    """The lists a snapshot holds, each query queued (not yet answered) under its field."""
    return {
        # 18+ records each NOT NULL as a named constraint (contype 'n'), which may be NOT
        # VALID (attnotnull is then set although NULLs may remain): not_null means a valid one.
        "columns": q.rows(lambda r: Column(*r),
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod),"
            " a.attnotnull AND coalesce(nn.convalidated, true),"
            " pg_get_expr(d.adbin, d.adrelid), a.attidentity::text, a.attgenerated::text,"
            " a.attnum, a.atttypid::int,"
            " CASE WHEN a.attcollation <> t.typcollation THEN co.collname END,"
            " col_description(a.attrelid, a.attnum), nn.conname::text"
            " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
            " LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
            " LEFT JOIN pg_collation co ON co.oid = a.attcollation"
            " LEFT JOIN pg_constraint nn ON nn.conrelid = a.attrelid AND nn.contype = 'n'"
            "   AND nn.conkey[1] = a.attnum"
            " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            oid),
        "constraints": q.rows(
            lambda r: Constraint(r[0], r[1], r[2], r[3], list(r[4] or []), r[5]),
            "SELECT con.conname, con.contype::text, pg_get_constraintdef(con.oid),"
            " con.convalidated, (SELECT array_agg(a.attname ORDER BY k.ord)"
            "   FROM unnest(con.conkey) WITH ORDINALITY k(attnum, ord) JOIN pg_attribute a"
            "   ON a.attrelid = con.conrelid AND a.attnum = k.attnum), con.conparentid <> 0"
            " FROM pg_constraint con WHERE con.conrelid = %s AND con.contype <> 'n'"
            " ORDER BY con.conname", oid),
        "indexes": q.rows(
            lambda r: Index(r[0], r[1], r[2], r[3], r[4], list(r[5] or []), r[6]),
            "SELECT ic.relname, pg_get_indexdef(i.indexrelid), i.indisunique, i.indisprimary,"
            " i.indisvalid, (SELECT array_agg(coalesce(a.attname, '(expression)')"
            "   ORDER BY k.ord) FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)"
            "   LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum),"
            " con.conname"
            " FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid"
            " LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid"
            "   AND con.conrelid = i.indrelid"
            " WHERE i.indrelid = %s ORDER BY ic.relname", oid),
        "fks_out": q.rows(_fk, _FK_SQL.format("con.conrelid"), oid),
        "fks_in": q.rows(_fk, _FK_SQL.format("con.confrelid"), oid),
        "sequences": q.rows(
            lambda r: SequenceInfo(QualifiedName(r[0], r[1]), r[2], r[3], r[4],
                                   increment=r[5], min_value=r[6], max_value=r[7],
                                   start=r[8], cache=r[9], cycle=r[10], grants=list(r[11])),
            "SELECT sn.nspname, s.relname, a.attname,"
            " CASE WHEN a.attidentity <> '' THEN 'identity' ELSE 'serial' END, ps.last_value,"
            " sq.seqincrement, sq.seqmin, sq.seqmax, sq.seqstart, sq.seqcache, sq.seqcycle,"
            " (SELECT coalesce(json_agg(json_build_object('grantee', CASE WHEN x.grantee = 0"
            "   THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee) END, 'privilege',"
            "   x.privilege_type, 'grantable', x.is_grantable)"
            "   ORDER BY x.grantee, x.privilege_type), '[]')"
            "   FROM aclexplode(s.relacl) x WHERE x.grantee <> s.relowner)"
            " FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'"
            " JOIN pg_sequence sq ON sq.seqrelid = s.oid"
            " JOIN pg_namespace sn ON sn.oid = s.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid"
            " LEFT JOIN pg_sequences ps ON ps.schemaname = sn.nspname"
            "   AND ps.sequencename = s.relname"
            " WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass"
            " AND d.refobjid = %s AND d.deptype IN ('a', 'i') ORDER BY a.attnum", oid),
        "triggers": q.rows(lambda r: Trigger(*r),
            "SELECT t.tgname, pg_get_triggerdef(t.oid), t.tgenabled::text FROM pg_trigger t"
            " WHERE t.tgrelid = %s AND NOT t.tgisinternal AND t.tgparentid = 0"
            " ORDER BY t.tgname", oid),
        "grants": q.rows(lambda r: {"grantee": r[0], "privilege": r[1], "grantable": r[2]},
            "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,"
            " a.privilege_type, a.is_grantable FROM pg_class c, aclexplode(c.relacl) a"
            " WHERE c.oid = %s AND a.grantee <> c.relowner ORDER BY 1, 2", oid),
        "column_grants": q.rows(
            lambda r: {"column": r[0], "grantee": r[1], "privilege": r[2], "grantable": r[3]},
            "SELECT a.attname, CASE WHEN x.grantee = 0 THEN 'PUBLIC'"
            " ELSE pg_get_userbyid(x.grantee) END, x.privilege_type, x.is_grantable"
            " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid,"
            " aclexplode(a.attacl) x WHERE a.attrelid = %s AND a.attnum > 0"
            " AND NOT a.attisdropped AND x.grantee <> c.relowner ORDER BY a.attnum, 2, 3", oid),
        "views": q.rows(lambda r: View(QualifiedName(r[0], r[1]), r[2], r[3] == "m"),
            "SELECT DISTINCT vn.nspname, v.relname, pg_get_viewdef(v.oid), v.relkind::text"
            " FROM pg_depend d JOIN pg_rewrite rw ON rw.oid = d.objid"
            " JOIN pg_class v ON v.oid = rw.ev_class"
            " JOIN pg_namespace vn ON vn.oid = v.relnamespace"
            " WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass"
            " AND d.refobjid = %s AND v.oid <> %s ORDER BY 1, 2", oid, oid),
        "policies": q.rows(lambda r: Policy(r[0], r[1], r[2], list(r[3]), r[4], r[5]),
            "SELECT p.polname, p.polpermissive,"
            " CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN"
            "   'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,"
            " ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r) END"
            "       FROM unnest(p.polroles) r),"
            " pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)"
            " FROM pg_policy p WHERE p.polrelid = %s ORDER BY p.polname", oid),
    }


EXACT_COUNT_BYTES = 32 * 1024 * 1024


def _estimate(reltuples: float) -> int | None:
    """The planner's estimate of a table's rows (None: never analyzed)."""
    return int(reltuples) if reltuples >= 0 else None


def _countable(reltuples: float, size: int, readable: bool) -> bool:
    """A small table never analyzed is counted exactly instead of estimated."""
    return reltuples < 0 and size <= EXACT_COUNT_BYTES and readable


def _exact_counts(q: _Query, names: list[QualifiedName]) -> list[int]:
    """``count(*)`` of each table, all in one round trip (a level's premade partitions are
    often all never analyzed)."""
    if not names:
        return []
    with q.conn.pipeline():
        counts = [q.first(sql.SQL("SELECT count(*) FROM ONLY {}").format(n.ident))
                  for n in names]
    return [int(c.get()[0]) for c in counts]


@dataclass
class _PartitioningQueries:
    """A partitioned table's key and partitions, queued in the caller's pipeline."""

    key: _Pending[tuple[Any, ...]]
    columns: _Pending[list[tuple[str, str]]]
    partitions: _Pending[list[tuple[Any, ...]]]


def _partitioning_queries(q: _Query, oid: int) -> _PartitioningQueries:
    return _PartitioningQueries(
        q.first("SELECT pt.partstrat::text, pg_get_partkeydef(pt.partrelid)"
                " FROM pg_partitioned_table pt WHERE pt.partrelid = %s", oid),
        q.rows(lambda r: (r[0], r[1]),
               "SELECT coalesce(a.attname, '(expression)'), format_type(a.atttypid, a.atttypmod)"
               " FROM pg_partitioned_table pt CROSS JOIN LATERAL unnest(pt.partattrs::int2[])"
               "   WITH ORDINALITY k(n, ord)"
               " LEFT JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = k.n"
               " WHERE pt.partrelid = %s ORDER BY k.ord", oid),
        q.rows(tuple,
               "SELECT n.nspname, c.relname, c.oid::int, pg_get_expr(c.relpartbound, c.oid),"
               " c.relkind::text, fs.srvname, c.reltuples, i.inhdetachpending,"
               " CASE WHEN c.relkind = 'r' THEN pg_total_relation_size(c.oid) END,"
               " has_table_privilege(c.oid, 'SELECT')"
               " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
               " JOIN pg_namespace n ON n.oid = c.relnamespace"
               " LEFT JOIN pg_foreign_table ft ON ft.ftrelid = c.oid"
               " LEFT JOIN pg_foreign_server fs ON fs.oid = ft.ftserver"
               " WHERE i.inhparent = %s", oid),
    )


def _partitioning(q: _Query, oid: int) -> Partitioning:
    """A sub-partitioned partition's level: its three queries in one round trip."""
    with q.conn.pipeline():
        queued = _partitioning_queries(q, oid)
    return _partitioning_build(q, queued)


def _partitioning_build(q: _Query, queued: _PartitioningQueries) -> Partitioning:
    """The level from its answers, then what depends on them: counts of partitions never
    analyzed, remote sizes, sub-levels, the order of the bounds."""
    strat, key = queued.key.get()
    cols = queued.columns.get()
    strategy = {"r": "range", "l": "list", "h": "hash"}[strat]
    parts: list[Partition] = []
    to_count: list[Partition] = []
    for r in queued.partitions.get():
        nsp, rel, poid, bound, relkind, server, reltuples, pending, size, readable = r
        p = Partition(QualifiedName(nsp, rel), poid, bound, bound == "DEFAULT", relkind, server,
                      None, size, pending)
        if relkind == "r":
            p.rows = _estimate(float(reltuples))
            if _countable(float(reltuples), int(size or 0), readable):
                to_count.append(p)
        elif relkind == "f":
            p.rows = int(reltuples) if reltuples >= 0 else None
            if server is not None:
                remote = _remote_stats(q, poid, server)
                if remote is not None:
                    p.rows, p.bytes = remote
        _parse_bound(p)
        if relkind == "p":
            p.partitioning = _partitioning(q, poid)
            p.rows = sum(x.rows or 0 for x in p.partitioning.leaves())
            p.bytes = sum(x.bytes or 0 for x in p.partitioning.leaves())
        parts.append(p)
    for p, n in zip(to_count, _exact_counts(q, [p.name for p in to_count]), strict=True):
        p.rows = n
    types = [c[1] for c in cols]
    return Partitioning(strategy, key, [c[0] for c in cols], types,
                        _order_by_bounds(q, strategy, types, parts))


def foreign_target(conn: Connection, oid: int) -> QualifiedName:
    """The table behind a foreign table on its server (``schema_name``/``table_name`` options,
    defaulting to the foreign table's own names, as postgres_fdw does)."""
    row = conn.execute(
        "SELECT coalesce((SELECT substr(o, 13) FROM unnest(ft.ftoptions) o"
        "                 WHERE o LIKE 'schema\\_name=%%'), n.nspname),"
        "       coalesce((SELECT substr(o, 12) FROM unnest(ft.ftoptions) o"
        "                 WHERE o LIKE 'table\\_name=%%'), c.relname)"
        " FROM pg_foreign_table ft JOIN pg_class c ON c.oid = ft.ftrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE ft.ftrelid = %s", [oid]).fetchone()
    if row is None:
        raise NotFound(f"relation {oid} is not a foreign table")
    return QualifiedName(row[0], row[1])


def _remote_stats(q: _Query, oid: int, server: str) -> tuple[int | None, int] | None:
    """Rows and bytes of a foreign partition's table, asked of its server through dblink (as
    installed by ``pgcleave server add``). None when dblink is missing or the server does not
    answer: status must never fail because a shard is away."""
    dbl = q.conn.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n"
                         " ON n.oid = e.extnamespace WHERE e.extname = 'dblink'").fetchone()
    if dbl is None:
        return None
    target = foreign_target(q.conn, oid)
    remote_query = sql.SQL(
        "SELECT c.reltuples::bigint, pg_total_relation_size(c.oid),"
        " CASE WHEN c.reltuples < 0 AND pg_total_relation_size(c.oid) <= {limit}"
        " THEN (SELECT count(*) FROM {t}) END"
        " FROM pg_class c WHERE c.oid = to_regclass({name})").format(
        limit=sql.Literal(EXACT_COUNT_BYTES), t=target.ident, name=sql.Literal(target.quoted))
    try:
        with q.conn.transaction():
            q.conn.execute("SET LOCAL statement_timeout = 5000")
            row = q.conn.execute(sql.SQL(
                "SELECT * FROM {}.dblink({}, {}) AS r(est bigint, bytes bigint, exact bigint)"
            ).format(sql.Identifier(dbl[0]), sql.Literal(server),
                     sql.Literal(remote_query.as_string(None)))).fetchone()
    except psycopg.Error:
        return None
    if row is None:
        return None
    est, size, exact = row
    rows = int(exact) if exact is not None else (int(est) if est is not None and est >= 0
                                                 else None)
    return rows, int(size)


RANGE_BOUND_RE = re.compile(r"^FOR VALUES FROM \((.*)\) TO \((.*)\)$", re.S)
_LIST_RE = re.compile(r"^FOR VALUES IN \((.*)\)$", re.S)
_HASH_RE = re.compile(r"^FOR VALUES WITH \(modulus (\d+), remainder (\d+)\)$")


def split_literals(text: str) -> list[str]:
    """Split a deparsed bound list ``'a', 'b,c', 3`` on top-level commas, respecting quotes."""
    out: list[str] = []
    cur: list[str] = []
    in_quote = False
    depth = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if in_quote:
            cur.append(ch)
            if ch == "'":
                if i + 1 < len(text) and text[i + 1] == "'":
                    cur.append("'")
                    i += 1
                else:
                    in_quote = False
        elif ch == "'":
            in_quote = True
            cur.append(ch)
        elif ch == "(":
            depth += 1
            cur.append(ch)
        elif ch == ")":
            depth -= 1
            cur.append(ch)
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
        i += 1
    if cur or text.strip():
        out.append("".join(cur).strip())
    return out


def _parse_bound(p: Partition) -> None:
    if p.is_default:
        return
    if m := RANGE_BOUND_RE.match(p.bound):
        p.lower, p.upper = split_literals(m.group(1)), split_literals(m.group(2))
    elif m := _LIST_RE.match(p.bound):
        p.values = split_literals(m.group(1))
    elif m := _HASH_RE.match(p.bound):
        p.modulus, p.remainder = int(m.group(1)), int(m.group(2))


def _order_by_bounds(q: _Query, strategy: str, types: list[str], parts: list[Partition]
                     ) -> list[Partition]:
    """Sort partitions by bound, comparing values in the key's type on the server."""
    default = [p for p in parts if p.is_default]
    bounded = [p for p in parts if not p.is_default]
    if strategy == "hash":
        return sorted(bounded, key=lambda p: (p.modulus or 0, p.remainder or 0)) + default
    if not bounded or "(expression)" in types or not types:
        return sorted(bounded, key=lambda p: p.name.name) + default
    rows: list[sql.Composable] = []
    for i, p in enumerate(bounded):
        if strategy == "range":
            vals = p.lower or []
            items = [sql.SQL("NULL::{}").format(sql.SQL(t)) if v.upper() == "MINVALUE"
                     else sql.SQL("({})::{}").format(sql.SQL(v), sql.SQL(t))
                     for v, t in zip(vals, types, strict=False)]
            maxflags = [sql.Literal(v.upper() == "MAXVALUE") for v in vals]
            rows.append(sql.SQL("({}, {}, {})").format(
                sql.Literal(i), sql.SQL(", ").join(maxflags), sql.SQL(", ").join(items)))
        else:
            vals = [v for v in (p.values or []) if v.upper() != "NULL"]
            lit = (sql.SQL("(SELECT min(x) FROM (VALUES {}) v(x))").format(
                sql.SQL(", ").join(sql.SQL("(({})::{})").format(sql.SQL(v), sql.SQL(types[0]))
                                   for v in vals)) if vals else sql.SQL("NULL::{}").format(
                sql.SQL(types[0])))
            rows.append(sql.SQL("({}, false, {})").format(sql.Literal(i), lit))
    n = len(types) if strategy == "range" else 1
    flags = [f"f{k}" for k in range(n)] if strategy == "range" else ["f0"]
    keys = [f"k{k}" for k in range(n)]
    order = ", ".join(f"{f}, {k} NULLS FIRST" for f, k in zip(flags, keys, strict=True))
    query = sql.SQL("SELECT i FROM (VALUES {}) v(i, {}, {}) ORDER BY {}").format(
        sql.SQL(", ").join(rows), sql.SQL(", ".join(flags)), sql.SQL(", ".join(keys)),
        sql.SQL(order))
    order_idx = [r[0] for r in q.all(query)]
    return [bounded[i] for i in order_idx] + default


class _Pending(Generic[T]):
    """A query sent, answered when the pipeline it was queued in is synced (on leaving it):
    ``get()`` builds its rows (once)."""

    def __init__(self, cursor: psycopg.Cursor[Any], build: Callable[[Any], T]) -> None:
        self._cursor = cursor
        self._build = build
        self._done = False
        self._value: T | None = None

    def get(self) -> T:
        if not self._done:
            self._value, self._done = self._build(self._cursor), True
        return self._value  # type: ignore[return-value]


class _Query:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def _send(self, query: str | sql.Composed | sql.SQL, args: tuple[Any, ...]
              ) -> psycopg.Cursor[Any]:
        q = query.encode() if isinstance(query, str) else query
        return self.conn.execute(q, list(args) or None)

    def rows(self, make: Callable[[tuple[Any, ...]], R], query: str | sql.Composed | sql.SQL,
             *args: Any) -> _Pending[list[R]]:
        """Every row, each made into an ``R`` (sent now, answered on ``get()``)."""
        return _Pending(self._send(query, args), lambda cur: [make(r) for r in cur.fetchall()])

    def first(self, query: str | sql.Composed | sql.SQL, *args: Any
              ) -> _Pending[tuple[Any, ...]]:
        """The one row the query returns (sent now, answered on ``get()``)."""
        return _Pending(self._send(query, args), _one_row)

    def all(self, query: str | sql.Composed | sql.SQL, *args: Any) -> list[tuple[Any, ...]]:
        return self._send(query, args).fetchall()

    def one(self, query: str | sql.Composed | sql.SQL, *args: Any) -> tuple[Any, ...]:
        return _one_row(self._send(query, args))


def _one_row(cur: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    row = cur.fetchone()
    assert row is not None
    return tuple(row)
