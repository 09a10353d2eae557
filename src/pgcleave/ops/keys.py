"""Keys, indexes and foreign keys of a partitioned table, changed online.

PostgreSQL does most of these changes on a partitioned table in one statement that builds or
checks everything under a lock that blocks the application for as long as the build takes
(seed 004: 30 minutes for ``ADD PRIMARY KEY`` on the parent). Each plan here splits that work into
steps that take no write-blocking lock while they read the data, and finishes with a catalog-only
statement that *adopts* what the steps built:

- ``ADD PRIMARY KEY`` on a parent adopts a partition's index only when it already backs a
  primary key constraint. So each partition gets ``CREATE UNIQUE INDEX CONCURRENTLY``, then
  ``ADD CONSTRAINT .. PRIMARY KEY USING INDEX`` (needs NOT NULL: a validated
  ``CHECK (col IS NOT NULL)`` lets ``SET NOT NULL`` skip its scan), then the parent's
  ``ADD PRIMARY KEY`` attaches those constraints without a build.
- ``CREATE INDEX CONCURRENTLY`` is refused on a partitioned table: ``CREATE INDEX .. ON ONLY``
  the parent, build each partition's index concurrently, and ``ALTER INDEX .. ATTACH
  PARTITION``; the parent index turns valid when the last partition's index is attached.
- PG15 refuses ``NOT VALID`` foreign keys on a partitioned table: add ``NOT VALID`` and
  ``VALIDATE`` on each partition (no write-blocking lock while validating), then add the key
  on the parent, which adopts them without a scan.

Every step carries a guard (true when its effect is there), so a resumed job and a second run
skip what is done. A ``CREATE INDEX CONCURRENTLY`` that was interrupted leaves an INVALID index:
the build steps drop such a leftover before building again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from .. import preflight
from ..catalog import Partition, Partitioning, TableInfo, snapshot
from ..catalog.table import foreign_target
from ..connection import Connection
from ..ddl import orm
from ..errors import NotFound, Refused
from ..names import QualifiedName, child_name, parse_columns
from ..plan import Lock, LockTaken, Plan, Residue, Step

AE = Lock.ACCESS_EXCLUSIVE
SUE = Lock.SHARE_UPDATE_EXCLUSIVE
SHARE = Lock.SHARE
SRE = Lock.SHARE_ROW_EXCLUSIVE

ON_DELETE = ("no action", "restrict", "cascade", "set null", "set default")

# The undo of a step that leaves nothing to reverse once the steps before it are undone (a
# VALIDATE, an index ATTACH): the executor's rollback refuses steps with no undo at all.


# -- catalog helpers -----------------------------------------------------------------------------
@dataclass
class _Node:
    """A partitioned table of the tree (the target or a sub-partitioned partition)."""

    name: QualifiedName
    oid: int
    partitioning: Partitioning
    parent: _Node | None = None
    children: list[Partition] = field(default_factory=list)


def _tree(info: TableInfo) -> tuple[list[_Node], list[tuple[Partition, _Node]]]:
    """Partitioned nodes top-down, and every leaf with its direct parent node."""
    assert info.partitioning is not None
    root = _Node(info.name, info.oid, info.partitioning)
    nodes = [root]
    leaves: list[tuple[Partition, _Node]] = []
    todo = [root]
    while todo:
        node = todo.pop(0)
        for p in node.partitioning.partitions:
            node.children.append(p)
            if p.partitioning is not None:
                sub = _Node(p.name, p.oid, p.partitioning, node)
                nodes.append(sub)
                todo.append(sub)
            else:
                leaves.append((p, node))
    return nodes, leaves


def _key_columns(nodes: list[_Node]) -> list[str]:
    out: list[str] = []
    for n in nodes:
        for c in n.partitioning.key_columns:
            if c not in out:
                out.append(c)
    return out


def _require_partitioned(info: TableInfo, what: str) -> None:
    if not info.is_partitioned or info.partitioning is None:
        raise Refused(f"{info.name} is not a partitioned table; {what} is for partitioned tables",
                      hint="on a plain table use CREATE INDEX CONCURRENTLY and ALTER TABLE .. "
                           "ADD CONSTRAINT .. USING INDEX directly, or partition it first")


def _check_columns(info: TableInfo, cols: list[str]) -> None:
    for c in cols:
        info.column(c)  # raises NotFound with the list of columns
    if len(set(cols)) != len(cols):
        raise Refused(f"column list {cols} names a column twice")


def _require_key_in(nodes: list[_Node], cols: list[str], what: str) -> None:
    missing = [k for k in _key_columns(nodes) if k not in cols]
    if "(expression)" in missing:
        raise Refused(f"{nodes[0].name} is partitioned by an expression; PostgreSQL cannot "
                      f"enforce a {what} on it",
                      hint="enforce uniqueness per partition with create-index --unique on each")
    if missing:
        raise Refused(
            f"a {what} on partitioned table {nodes[0].name} must include its partition key "
            f"({', '.join(missing)}); PostgreSQL checks uniqueness only within each partition",
            hint="add the partition key to the columns, e.g. --columns "
                 + ",".join(_ident_text(c) for c in [*cols, *missing]))


def _foreign_leaves(leaves: list[tuple[Partition, _Node]]) -> list[Partition]:
    return [p for p, _ in leaves if p.kind == "f"]


def _ident_text(name: str) -> str:
    return sql.Identifier(name).as_string(None) if name != name.lower() or " " in name else name


def _cols(cols: list[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(c) for c in cols)


def _exists(conn: Connection, query: sql.Composed) -> bool:
    row = conn.execute(query).fetchone()
    return bool(row and row[0])


def _relname_taken(conn: Connection, schema: str, name: str) -> bool:
    return _exists(conn, sql.SQL(
        "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = {} AND c.relname = {})").format(sql.Literal(schema),
                                                            sql.Literal(name)))


def _free_index_name(conn: Connection, table: QualifiedName, base: str, cols: list[str],
                     taken: set[str]) -> str:
    """A free relation name for an index of ``table``; an index of ``table`` on exactly
    ``cols`` that already carries the name (a leftover of an earlier attempt) is reused."""
    for n in range(0, 100):
        name = base if n == 0 else child_name(base, str(n))
        if name in taken:
            continue
        row = conn.execute(
            "SELECT i.indrelid = to_regclass(%s), (SELECT array_agg(a.attname::text ORDER BY"
            " k.ord) FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum)"
            " FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace"
            " LEFT JOIN pg_index i ON i.indexrelid = c.oid"
            " WHERE ns.nspname = %s AND c.relname = %s",
            [table.quoted, table.schema, name]).fetchone()
        if row is None or (row[0] and list(row[1] or []) == cols):
            taken.add(name)
            return name
    raise Refused(f"no free index name near {base!r} in schema {table.schema}")


def _colnames_sql(arr: str, rel: str) -> str:
    return (f"(SELECT array_agg(a.attname::text ORDER BY k.ord) FROM unnest({arr})"
            f" WITH ORDINALITY k(attnum, ord) JOIN pg_attribute a ON a.attrelid = {rel}"
            f" AND a.attnum = k.attnum)")


# -- guards (text queries returning one boolean) -------------------------------------------------
def _g_pk(table: QualifiedName, cols: list[str]) -> sql.Composable:
    return sql.SQL(
        "SELECT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conrelid = to_regclass({t})"
        " AND con.contype = 'p' AND " + _colnames_sql("con.conkey", "con.conrelid")
        + " = {c}::text[])").format(t=table.literal, c=sql.Literal(cols))


def _g_constraint(table: QualifiedName, name: str, *, validated: bool = False) -> sql.Composable:
    return sql.SQL(
        "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass({t})"
        " AND conname = {n}" + (" AND convalidated" if validated else "") + ")").format(
        t=table.literal, n=sql.Literal(name))


def _g_no_constraint(table: QualifiedName, name: str) -> sql.Composable:
    return sql.SQL(
        "SELECT NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass({t})"
        " AND conname = {n})").format(t=table.literal, n=sql.Literal(name))


def _g_not_null(table: QualifiedName, col: str) -> sql.Composable:
    return sql.SQL(
        "SELECT coalesce((SELECT attnotnull FROM pg_attribute WHERE attrelid = to_regclass({t})"
        " AND attname = {c}), false)").format(t=table.literal, c=sql.Literal(col))


def _g_index_valid(index: QualifiedName) -> sql.Composable:
    return sql.SQL(
        "SELECT coalesce((SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass({i})),"
        " false)").format(i=index.literal)


def _g_index_exists(index: QualifiedName) -> sql.Composable:
    return sql.SQL("SELECT to_regclass({i}) IS NOT NULL").format(i=index.literal)


def _g_index_gone(index: QualifiedName) -> sql.Composable:
    return sql.SQL("SELECT to_regclass({i}) IS NULL").format(i=index.literal)


def _g_attached(child: QualifiedName, parent: QualifiedName) -> sql.Composable:
    return sql.SQL(
        "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass({c})"
        " AND inhparent = to_regclass({p}))").format(c=child.literal, p=parent.literal)


def _or(*guards: sql.Composable) -> sql.Composable:
    return sql.SQL("SELECT ") + sql.SQL(" OR ").join(
        sql.SQL("({})").format(g) for g in guards)


# -- per-leaf facts ------------------------------------------------------------------------------
@dataclass
class _LeafKey:
    pk_name: str | None
    pk_cols: list[str]
    pk_index: str | None
    not_null: dict[str, bool]
    inbound_fks: list[str]


def _leaf_key(conn: Connection, oid: int, cols: list[str]) -> _LeafKey:
    pk = conn.execute(
        "SELECT con.conname, " + _colnames_sql("con.conkey", "con.conrelid")
        + ", ic.relname, (SELECT array_agg(f.conname::text || ' on '"
        " || f.conrelid::regclass::text) FROM pg_constraint f WHERE f.contype = 'f'"
        " AND f.conindid = con.conindid AND f.confrelid = con.conrelid)"
        " FROM pg_constraint con JOIN pg_class ic ON ic.oid = con.conindid"
        " WHERE con.conrelid = %s AND con.contype = 'p'", [oid]).fetchone()
    nn: dict[str, bool] = dict(conn.execute(
        "SELECT attname::text, attnotnull FROM pg_attribute WHERE attrelid = %s"
        " AND attname = ANY(%s)", [oid, cols]).fetchall())
    if pk is None:
        return _LeafKey(None, [], None, nn, [])
    return _LeafKey(pk[0], list(pk[1] or []), pk[2], nn, list(pk[3] or []))


# =================================================================================================
# set-primary-key
# =================================================================================================
def plan_set_primary_key(conn: Connection, table: str, columns: list[str], *,
                         keep_old_key: bool = False) -> Plan:
    """From per-partition keys (or none) to ``PRIMARY KEY (columns)`` on the parent, online."""
    info = snapshot(conn, table)
    cols = parse_columns(columns) if isinstance(columns, str) else list(columns)
    _require_partitioned(info, "set-primary-key")
    _check_columns(info, cols)
    nodes, leaves = _tree(info)
    _require_key_in(nodes, cols, "primary key")
    foreign = _foreign_leaves(leaves)
    if foreign:
        raise Refused(
            f"{info.name} has foreign (postgres_fdw) partitions "
            f"({', '.join(str(p.name) for p in foreign)}); PostgreSQL cannot enforce a primary "
            "key across servers",
            hint="move those partitions back first, or enforce the key on each shard's table")
    args: dict[str, Any] = {"columns": cols, "keep_old_key": keep_old_key}
    plan = Plan("set-primary-key", info.name.quoted, args, [],
                requires=preflight.table_change(info.name))
    if info.primary_key is not None:
        if info.primary_key.columns == cols:
            plan = plan.add(notes=[f"{info.name} already has PRIMARY KEY ({', '.join(cols)}) "
                              f"({info.primary_key.name}); nothing to do"])
            return plan
        raise Refused(
            f"{info.name} already has a primary key {info.primary_key.name} on "
            f"({', '.join(info.primary_key.columns)})",
            hint=f"drop it first: pgcleave drop-constraint {info.name} "
                 f"{info.primary_key.name} (short lock), then run set-primary-key again")
    for node in nodes[1:]:
        row = conn.execute(
            "SELECT conname, " + _colnames_sql("conkey", "conrelid") + " FROM pg_constraint"
            " WHERE conrelid = %s AND contype = 'p'", [node.oid]).fetchone()
        if row and list(row[1] or []) != cols:
            raise Refused(f"sub-partitioned {node.name} has its own primary key {row[0]} on "
                          f"({', '.join(row[1])})",
                          hint=f"drop it first: pgcleave drop-constraint {node.name} {row[0]}")

    facts = {p.oid: _leaf_key(conn, p.oid, cols) for p, _ in leaves}
    blocked = [(p, facts[p.oid]) for p, _ in leaves
               if facts[p.oid].inbound_fks and facts[p.oid].pk_cols != cols]
    if blocked:
        p, f = blocked[0]
        raise Refused(
            f"primary key {f.pk_name} of partition {p.name} is referenced by foreign keys "
            f"({', '.join(f.inbound_fks)}); it cannot be retired while they exist",
            hint="drop or re-point those foreign keys first (pgcleave drop-constraint), then "
                 "add them again against the new key with add-foreign-key")

    steps: list[Step] = []
    # 1. NOT NULL, proven by validated CHECKs so that SET NOT NULL does not scan under AE.
    for col in cols:
        nullable_leaves = [p for p, _ in leaves if not facts[p.oid].not_null.get(col, False)]
        parent_nn = info.column(col).not_null
        if parent_nn and not nullable_leaves:
            continue
        check_name = child_name("pgcleave", f"{col}_not_null")
        for p in nullable_leaves:
            steps.append(Step.sql(
                f"nn-add:{p.name.name}:{col}",
                f"add CHECK ({col} IS NOT NULL) NOT VALID on {p.name} (no scan)",
                [sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({} IS NOT NULL) NOT VALID")
                 .format(p.name.ident, sql.Identifier(check_name), sql.Identifier(col))],
                locks=[LockTaken(AE, str(p.name))],
                guard=_or(_g_constraint(p.name, check_name), _g_not_null(p.name, col)),
                undo=[sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                    p.name.ident, sql.Identifier(check_name))],
                residue=Residue.REFUSES, residue_note=f"refuses NULL {col} in {p.name}"))
            steps.append(Step.sql(
                f"nn-validate:{p.name.name}:{col}",
                f"validate CHECK ({col} IS NOT NULL) on {p.name} (scans; writes continue)",
                [sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                    p.name.ident, sql.Identifier(check_name))],
                locks=[LockTaken(SUE, str(p.name))],
                guard=_or(_g_constraint(p.name, check_name, validated=True),
                          _g_not_null(p.name, col)),
                nothing_to_undo=True))
        steps.append(Step.sql(
            f"set-not-null:{col}",
            f"SET NOT NULL on {col} of {info.name} and its partitions (proven by the CHECKs, "
            "no scan)",
            [sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(
                info.name.ident, sql.Identifier(col))],
            locks=[LockTaken(AE, str(info.name)), LockTaken(AE, "every partition")],
            guard=sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM pg_partition_tree({t}) pt"
                          " JOIN pg_attribute a ON a.attrelid = pt.relid AND a.attname = {c}"
                          " WHERE NOT a.attnotnull)").format(t=info.name.literal,
                                                             c=sql.Literal(col)),
            undo=[sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(
                info.name.ident, sql.Identifier(col))] if not parent_nn else [],
            nothing_to_undo=parent_nn))
        for p in nullable_leaves:
            steps.append(Step.sql(
                f"nn-drop:{p.name.name}:{col}",
                f"drop the helper CHECK on {p.name} (NOT NULL holds now)",
                [sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                    p.name.ident, sql.Identifier(check_name))],
                locks=[LockTaken(AE, str(p.name))],
                guard=_g_no_constraint(p.name, check_name), nothing_to_undo=True))

    # 2. Unique indexes built concurrently, one per partition.
    taken: set[str] = set()
    suffix = "_".join(cols)
    swaps: list[Step] = []
    retired: list[str] = []
    for p, _ in leaves:
        f = facts[p.oid]
        if f.pk_cols == cols:
            continue  # this partition already has the key (an earlier run, or by design)
        idx = p.name.sibling(_free_index_name(conn, p.name, child_name(p.name.name,
                                                                       f"{suffix}_pkey"),
                                              cols, taken))
        steps.append(_build_index_step(
            f"build:{p.name.name}", f"build unique index {idx.name} on {p.name} concurrently",
            p.name, idx, cols, unique=True,
            done=_or(_g_index_valid(idx), _g_pk(p.name, cols))))
        swap_stmts: list[str | sql.Composable] = []
        if f.pk_name is not None:
            retired.append(f"{f.pk_name} ({', '.join(f.pk_cols)})")
            swap_stmts.append(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                p.name.ident, sql.Identifier(f.pk_name)))
            if keep_old_key:
                old = p.name.sibling(_free_index_name(
                    conn, p.name, child_name(p.name.name, "_".join(f.pk_cols) + "_key"),
                    f.pk_cols, taken))
                steps.append(_build_index_step(
                    f"build-old:{p.name.name}",
                    f"build unique index {old.name} on {p.name} ({', '.join(f.pk_cols)}) "
                    "concurrently, to keep the old key as a unique constraint",
                    p.name, old, f.pk_cols, unique=True,
                    done=_or(_g_index_valid(old), _g_pk(p.name, cols))))
                swap_stmts.append(sql.SQL(
                    "ALTER TABLE {} ADD CONSTRAINT {} UNIQUE USING INDEX {}").format(
                    p.name.ident, sql.Identifier(old.name), sql.Identifier(old.name)))
        swap_stmts.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}")
                          .format(p.name.ident, sql.Identifier(idx.name),
                                  sql.Identifier(idx.name)))
        retire = f"retire {f.pk_name} and " if f.pk_name else ""
        swaps.append(Step.sql(
            f"swap:{p.name.name}",
            f"{retire}make {idx.name} the primary key of {p.name} (catalog only)",
            swap_stmts, locks=[LockTaken(AE, str(p.name))], guard=_g_pk(p.name, cols),
            undo=[]))
    steps.extend(swaps)

    # 3. Adopt bottom-up: sub-partitioned tables, then the parent.
    for node in reversed(nodes):
        con = child_name(node.name.name, "pkey")
        if node is nodes[0] or _relname_taken(conn, node.name.schema, con):
            con = _free_index_name(conn, node.name, con, cols, taken)
        level = "the parent" if node.parent is None else "sub-partitioned"
        steps.append(Step.sql(
            f"adopt:{node.name.name}",
            f"ADD PRIMARY KEY ({', '.join(cols)}) on {level} {node.name}: adopts the "
            "partitions' keys, no build",
            [sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
                node.name.ident, sql.Identifier(con), _cols(cols))],
            locks=[LockTaken(AE, str(node.name)), LockTaken(SHARE, "its partitions")],
            guard=_g_pk(node.name, cols), undo=[]))

    plan = dataclasses.replace(plan, steps=steps)
    plan = plan.add(notes=[f"{len(leaves)} partitions; no step reads the rows under a lock that "
                      "blocks writes: indexes are built CONCURRENTLY, NOT NULL is proven by "
                      "validated CHECKs, the parent's key adopts the partitions' keys"])
    if retired:
        msg = (f"the per-partition primary keys {', '.join(retired[:3])}"
               + (f" and {len(retired) - 3} more" if len(retired) > 3 else "")
               + " are replaced by the new key")
        if keep_old_key:
            plan = plan.add(notes=[msg + "; they stay as UNIQUE constraints (--keep-old-key)"])
        else:
            pk = ", ".join(facts[leaves[0][0].oid].pk_cols)
            plan = plan.add(warnings=[
                msg + f": uniqueness of ({pk}) alone "
                "within a partition is no longer enforced (it never was across partitions); "
                "pass --keep-old-key to keep it as a UNIQUE constraint per partition (one more "
                "index build per partition)"])
    old_cols = next((f.pk_cols for f in facts.values() if f.pk_cols), None)
    if len(cols) > 1 and old_cols and old_cols != cols:
        plan = plan.add(notes=[orm.key_change(info.name.name, old_cols, cols)])
    return plan


def _build_index_step(name: str, description: str, table: QualifiedName, idx: QualifiedName,
                      cols: list[str], *, unique: bool, done: sql.Composable,
                      where: str | None = None, method: str | None = None,
                      residue: Residue = Residue.NONE) -> Step:
    """CREATE INDEX CONCURRENTLY, resumable: an INVALID leftover of an interrupted build (or
    of a build that timed out waiting for old transactions) is dropped and built again."""
    create = sql.SQL("CREATE {}INDEX CONCURRENTLY {} ON {}{} ({}){}").format(
        sql.SQL("UNIQUE ") if unique else sql.SQL(""), sql.Identifier(idx.name), table.ident,
        sql.SQL(" USING {}").format(sql.Identifier(method)) if method else sql.SQL(""),
        _cols(cols), sql.SQL(" WHERE {}").format(sql.SQL(where)) if where else sql.SQL(""))
    drop = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(idx.ident)
    # ddl=False: no short lock_timeout. A concurrent build waits for every transaction older
    # than its snapshots; under lock_timeout such a wait fails *after* the build and leaves an
    # INVALID index (verified on 15), so a busy server would never finish one. Its only table
    # lock is SHARE UPDATE EXCLUSIVE, which no read or write of the application waits behind.
    # A unique build that stopped half-way (even INVALID, once ready for inserts) already
    # refuses duplicates: with ``residue`` REFUSES a failure drops it at once.
    return Step.sql(name, description, [drop, create], locks=[LockTaken(SUE, str(table))],
                    transactional=False, guard=done, undo=[drop], retry_cleanup=[drop],
                    ddl=False, residue=residue,
                    residue_note=f"unique index {idx.name} refuses duplicates in {table}"
                    if residue.harmful else "")


# =================================================================================================
# create-index
# =================================================================================================
def plan_create_index(conn: Connection, table: str, columns: list[str], *, unique: bool = False,
                      name: str | None = None, where: str | None = None,
                      method: str | None = None) -> Plan:
    """``CREATE INDEX`` on a partitioned table without blocking writes while it builds."""
    info = snapshot(conn, table)
    cols = list(columns)
    _require_partitioned(info, "create-index")
    _check_columns(info, cols)
    nodes, leaves = _tree(info)
    if unique:
        _require_key_in(nodes, cols, "unique index")
    foreign = _foreign_leaves(leaves)
    if unique and foreign:
        raise Refused(f"{info.name} has foreign (postgres_fdw) partitions; PostgreSQL cannot "
                      "build a unique index across servers",
                      hint="create a unique index on each shard's table instead, or drop --unique")
    if where is not None:
        _check_where(conn, info.name, where)
    iname = name or child_name(info.name.name, "_".join(cols) + ("_key" if unique else "_idx"))
    if len(iname.encode()) > 63:
        raise Refused(f"index name {iname!r} is longer than 63 bytes")
    parent_idx = info.name.sibling(iname)
    existing = conn.execute(
        "SELECT i.indrelid = %s, i.indisvalid, i.indisunique, "
        + _colnames_sql("i.indkey::int2[]", "i.indrelid")
        + " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " LEFT JOIN pg_index i ON i.indexrelid = c.oid WHERE n.nspname = %s AND c.relname = %s",
        [info.oid, info.name.schema, iname]).fetchone()
    args: dict[str, Any] = {"columns": cols, "unique": unique, "name": iname, "where": where,
                            "method": method}
    plan = Plan("create-index", info.name.quoted, args, [], requires=[preflight.owner(info.name)])
    if existing is not None:
        same = bool(existing[0]) and existing[2] == unique and list(existing[3] or []) == cols
        if not same:
            raise Refused(f"a relation named {parent_idx} already exists and is not this index",
                          hint="choose another name with --name")
        if existing[1]:
            plan = plan.add(notes=[
                f"index {parent_idx} already exists and is valid; nothing to do"])
            return plan
        plan = plan.add(notes=[f"index {parent_idx} exists but is not valid yet (an earlier run "
                          "stopped): the missing partition indexes are built and attached"])

    taken: set[str] = {iname}
    sub_idx: dict[int, QualifiedName] = {nodes[0].oid: parent_idx}
    steps: list[Step] = []
    using = sql.SQL(" USING {}").format(sql.Identifier(method)) if method else sql.SQL("")
    pred = sql.SQL(" WHERE {}").format(sql.SQL(where)) if where else sql.SQL("")
    uniq = sql.SQL("UNIQUE ") if unique else sql.SQL("")
    # A unique index half built refuses the application's duplicates: a failure undoes it all
    # at once (the parent's index first, which drops every partition index attached to it).
    residue = Residue.REFUSES if unique else Residue.NONE
    if not foreign:
        for node in nodes:
            idx = parent_idx if node.parent is None else node.name.sibling(_attached_or_free(
                conn, node.name, sub_idx[node.parent.oid], child_name(
                    node.name.name, "_".join(cols) + ("_key" if unique else "_idx")), cols,
                taken))
            sub_idx[node.oid] = idx
            steps.append(Step.sql(
                f"index-only:{node.name.name}",
                f"create index {idx.name} ON ONLY {node.name} (invalid until every partition's "
                "index is attached; no build)",
                [sql.SQL("CREATE {}INDEX IF NOT EXISTS {} ON ONLY {}{} ({}){}").format(
                    uniq, sql.Identifier(idx.name), node.name.ident, using, _cols(cols), pred)],
                locks=[LockTaken(SHARE, str(node.name))], guard=_g_index_exists(idx),
                undo=[sql.SQL("DROP INDEX IF EXISTS {}").format(idx.ident)], residue=residue,
                residue_note=f"unique index {parent_idx.name} refuses duplicates in "
                f"{info.name}'s partitions" if unique else ""))
            if node.parent is not None:
                steps.append(_attach_step(sub_idx[node.parent.oid], idx, node.name,
                                          unique_top=parent_idx if unique else None))
    for p, parent in leaves:
        if p.kind == "f":
            continue
        above = sub_idx.get(parent.oid, parent_idx)
        idx = p.name.sibling(_attached_or_free(
            conn, p.name, above, child_name(p.name.name, "_".join(cols)
                                            + ("_key" if unique else "_idx")), cols, taken))
        steps.append(_build_index_step(
            f"build:{p.name.name}", f"build index {idx.name} on {p.name} concurrently",
            p.name, idx, cols, unique=unique, where=where, method=method,
            done=_or(_g_index_valid(idx), _g_attached(idx, above)), residue=residue))
        if not foreign:
            steps.append(_attach_step(above, idx, p.name,
                                      unique_top=parent_idx if unique else None))
    if foreign:
        # An index created ON ONLY never turns valid while a foreign partition exists (nothing
        # can be attached for it). A plain CREATE INDEX on the parent skips foreign partitions
        # and adopts the matching indexes just built, so it does no build either.
        steps.append(Step.sql(
            f"index-adopt:{info.name.name}",
            f"create index {iname} on {info.name}: adopts the partitions' indexes, skips the "
            "foreign partitions, no build",
            [sql.SQL("CREATE {}INDEX IF NOT EXISTS {} ON {}{} ({}){}").format(
                uniq, sql.Identifier(iname), info.name.ident, using, _cols(cols), pred)],
            locks=[LockTaken(SHARE, str(info.name)), LockTaken(SHARE, "its local partitions")],
            guard=_g_index_valid(parent_idx),
            undo=[sql.SQL("DROP INDEX IF EXISTS {}").format(parent_idx.ident)]))
        # postgres_fdw keeps no index here for a foreign partition: the index the queries use
        # must live on the shard's table, so build it there too, concurrently, through dblink
        # (which `pgcleave server add` installs; a server made by hand may lack it).
        names = ", ".join(f"{p.name} on {p.server}" for p in foreign)
        has_dblink = conn.execute(
            "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'dblink')").fetchone()
        if has_dblink and has_dblink[0]:
            for p in foreign:
                steps.append(_remote_index_step(conn, p, cols, unique=False, where=where,
                                                method=method))
            plan = plan.add(notes=[f"foreign partitions ({names}) get the index on their shard's "
                              "table, built concurrently there"])
        else:
            plan = plan.add(notes=[
                f"foreign partitions are skipped ({names}): dblink is not installed here, so "
                "pgcleave cannot build the index on the shards' tables; `pgcleave server add` "
                "installs it (or create the index on each shard yourself)"])
    plan = dataclasses.replace(plan, steps=steps)
    return plan


def _remote_index_step(conn: Connection, part: Partition, cols: list[str], *, unique: bool,
                       where: str | None, method: str | None) -> Step:
    """Build an index on the shard table behind a foreign partition, through dblink."""
    from ..servers import dblink_schema, remote_exists, remote_sql

    assert part.server is not None
    remote = foreign_target(conn, part.oid)
    idx = remote.sibling(child_name(remote.name, "_".join(cols) + ("_key" if unique else "_idx")))
    dbl = dblink_schema(conn)
    using = sql.SQL(" USING {}").format(sql.Identifier(method)) if method else sql.SQL("")
    pred = sql.SQL(" WHERE {}").format(sql.SQL(where)) if where else sql.SQL("")
    build = sql.SQL("CREATE {}INDEX CONCURRENTLY {} ON {}{} ({}){}").format(
        sql.SQL("UNIQUE ") if unique else sql.SQL(""), sql.Identifier(idx.name), remote.ident,
        using, _cols(cols), pred)
    # An earlier build that stopped leaves an invalid index; the guard skips a valid one, so
    # what the first statement drops can only be such a leftover.
    drop = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(idx.ident)
    valid = sql.SQL("SELECT 1 FROM pg_index WHERE indexrelid = to_regclass({}) AND indisvalid"
                    ).format(sql.Literal(idx.quoted))
    return Step.sql(
        f"build-remote:{part.name.name}",
        f"build index {idx.name} on {remote} on server {part.server} concurrently",
        [remote_sql(dbl, part.server, drop, durable=False),
         remote_sql(dbl, part.server, build, durable=False)],
        locks=[LockTaken(SUE, f"{remote} on {part.server}")], transactional=False,
        guard=remote_exists(dbl, part.server, valid), ddl=False,
        undo=[remote_sql(dbl, part.server, drop, durable=False)])


def _attach_step(parent_idx: QualifiedName, idx: QualifiedName, table: QualifiedName, *,
                 unique_top: QualifiedName | None = None) -> Step:
    """Attach a partition's index. No DETACH exists for indexes: undoing the ON ONLY step drops
    the attached ones with it. A unique one refuses duplicates once built and attached, and an
    attached index cannot be dropped alone: its undo drops the whole index from the top."""
    undo: list[str | sql.Composable] = (
        [sql.SQL("DROP INDEX IF EXISTS {}").format(unique_top.ident)] if unique_top else [])
    return Step.sql(
        f"attach:{idx.name}", f"attach index {idx.name} to {parent_idx.name}",
        [sql.SQL("ALTER INDEX {} ATTACH PARTITION {}").format(parent_idx.ident, idx.ident)],
        locks=[LockTaken(SUE, str(parent_idx)), LockTaken(AE, f"{idx} (index of {table})")],
        guard=_g_attached(idx, parent_idx), nothing_to_undo=not undo, undo=undo,
        residue=Residue.REFUSES if undo else Residue.NONE,
        residue_note=f"unique index {unique_top.name} refuses duplicates in {table}"
        if unique_top else "")


def _attached_or_free(conn: Connection, table: QualifiedName, parent_idx: QualifiedName,
                      base: str, cols: list[str], taken: set[str]) -> str:
    """The index of ``table`` already attached to ``parent_idx``, else a free name."""
    row = conn.execute(
        "SELECT c.relname FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid"
        " JOIN pg_index i ON i.indexrelid = c.oid"
        " WHERE h.inhparent = to_regclass(%s) AND i.indrelid = to_regclass(%s)",
        [parent_idx.quoted, table.quoted]).fetchone()
    if row:
        taken.add(row[0])
        return str(row[0])
    return _free_index_name(conn, table, base, cols, taken)


def _check_where(conn: Connection, table: QualifiedName, where: str) -> None:
    try:
        with conn.transaction():
            conn.execute(sql.SQL("EXPLAIN SELECT 1 FROM {} WHERE {}").format(
                table.ident, sql.SQL(where)))
    except psycopg.Error as exc:
        raise Refused(f"--where {where!r} is not a valid condition on {table}: "
                      f"{str(exc).strip().splitlines()[0]}") from None


# =================================================================================================
# add-foreign-key
# =================================================================================================
def plan_add_foreign_key(conn: Connection, table: str, columns: list[str], ref_table: str,
                         ref_columns: list[str] | None = None, *, name: str | None = None,
                         on_delete: str | None = None) -> Plan:
    """A foreign key from ``table`` to ``ref_table``, validated without blocking writes."""
    info = snapshot(conn, table)
    ref = snapshot(conn, ref_table)
    cols = list(columns)
    _check_columns(info, cols)
    if ref_columns is None:
        if ref.primary_key is None:
            raise Refused(f"{ref.name} has no primary key to reference",
                          hint="name the referenced columns, which need a unique key")
        ref_cols = list(ref.primary_key.columns)
    else:
        ref_cols = list(ref_columns)
    _check_columns(ref, ref_cols)
    if len(cols) != len(ref_cols):
        raise Refused(f"{len(cols)} referencing columns but {len(ref_cols)} referenced columns")
    if on_delete is not None and on_delete.lower() not in ON_DELETE:
        raise Refused(f"--on-delete {on_delete!r} is not one of {', '.join(ON_DELETE)}")
    for ti in (info, ref):
        if ti.kind == "f" or (ti.partitioning is not None
                              and _foreign_leaves(_tree(ti)[1])):
            raise Refused(f"{ti.name} is or has foreign (postgres_fdw) partitions; PostgreSQL "
                          "cannot enforce a foreign key across servers",
                          hint="check the relationship in the application or on each shard")
    keys = [c for c in ref.constraints if c.type in ("p", "u")]
    if not any(sorted(c.columns) == sorted(ref_cols) for c in keys):
        if ref.is_partitioned and ref.partitioning is not None:
            ref_nodes, _ = _tree(ref)
            missing = [k for k in _key_columns(ref_nodes) if k not in ref_cols]
            if missing:
                raise Refused(
                    f"({', '.join(ref_cols)}) of partitioned {ref.name} cannot have a unique "
                    f"key: it lacks the partition key ({', '.join(missing)}), and a foreign key "
                    "needs a unique key on the referenced columns",
                    hint=f"reference ({', '.join([*ref_cols, *missing])}): carry "
                         f"{', '.join(missing)} in {info.name} too, and give {ref.name} that key "
                         "with pgcleave set-primary-key")
        have = "; ".join(f"({', '.join(c.columns)})" for c in keys) or "none"
        raise Refused(f"({', '.join(ref_cols)}) of {ref.name} has no primary key or unique "
                      f"constraint (keys: {have}); a foreign key needs one",
                      hint=f"create it first, e.g. pgcleave create-index {ref.name} "
                           f"{','.join(ref_cols)} --unique, then ALTER TABLE .. ADD UNIQUE "
                           "USING INDEX (plain table) or set-primary-key")
    fk_name = name or child_name(info.name.name, "_".join(cols) + "_fkey")
    if len(fk_name.encode()) > 63:
        raise Refused(f"constraint name {fk_name!r} is longer than 63 bytes")
    clash = next((c for c in info.constraints if c.name == fk_name), None)
    args: dict[str, Any] = {"columns": cols, "references": str(ref.name),
                            "ref_columns": ref_cols, "name": fk_name, "on_delete": on_delete}
    plan = Plan("add-foreign-key", info.name.quoted, args, [],
                requires=[preflight.owner(info.name), preflight.references(ref.name)])
    if clash is not None:
        if clash.type == "f" and clash.validated and clash.columns == cols:
            plan = plan.add(notes=[f"{info.name} already has foreign key {fk_name}; nothing to do"])
            return plan
        raise Refused(f"{info.name} already has a constraint named {fk_name}",
                      hint="choose another name with --name")
    body = sql.SQL("FOREIGN KEY ({}) REFERENCES {} ({}){}").format(
        _cols(cols), ref.name.ident, _cols(ref_cols),
        sql.SQL(" ON DELETE {}").format(sql.SQL(on_delete.upper())) if on_delete
        else sql.SQL(""))
    ref_lock = [LockTaken(SRE, str(ref.name))] + (
        [LockTaken(SRE, f"partitions of {ref.name}")] if ref.is_partitioned else [])
    # PostgreSQL 18 accepts NOT VALID foreign keys on a partitioned table: add and validate it
    # on the parent directly. Before 18, per partition, then the parent adopts them.
    per_partition = info.is_partitioned and info.server_version < 180000
    targets = [p for p, _ in _tree(info)[1]] if per_partition else []
    steps: list[Step] = []
    for t in ([p.name for p in targets] if targets else [info.name]):
        steps.append(Step.sql(
            f"fk-add:{t.name}", f"add foreign key {fk_name} on {t} NOT VALID (no scan)",
            [sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID").format(
                t.ident, sql.Identifier(fk_name), body)],
            locks=[LockTaken(SRE, str(t)), *ref_lock], guard=_g_constraint(t, fk_name),
            undo=[sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                t.ident, sql.Identifier(fk_name))],
            residue=Residue.REFUSES,
            residue_note=f"refuses rows of {t} that foreign key {fk_name} rejects"))
        steps.append(Step.sql(
            f"fk-validate:{t.name}",
            f"validate {fk_name} on {t} (scans; writes continue)",
            [sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                t.ident, sql.Identifier(fk_name))],
            locks=[LockTaken(SUE, str(t)), LockTaken(Lock.ROW_SHARE, str(ref.name))],
            guard=_g_constraint(t, fk_name, validated=True), nothing_to_undo=True))
    if targets:
        steps.append(Step.sql(
            f"fk-adopt:{info.name.name}",
            f"add foreign key {fk_name} on the parent {info.name}: adopts the partitions' "
            "validated keys, no scan",
            [sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                info.name.ident, sql.Identifier(fk_name), body)],
            # Measured on 15: the adoption drops the partitions' own action triggers on the
            # referenced table, which takes ACCESS EXCLUSIVE on it for the (short) transaction.
            locks=[LockTaken(SRE, str(info.name)), LockTaken(SRE, "its partitions"),
                   LockTaken(AE, str(ref.name))],
            guard=_g_constraint(info.name, fk_name, validated=True),
            undo=[sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                info.name.ident, sql.Identifier(fk_name))]))
    plan = dataclasses.replace(plan, steps=steps)
    plan = plan.add(notes=["rows are checked by VALIDATE, which lets writes continue; "
                      "the statements that take write-blocking locks do not read rows"])
    return plan


# =================================================================================================
# drop-index, drop-constraint
# =================================================================================================
def plan_drop_index(conn: Connection, index: str) -> Plan:
    """Drop an index: CONCURRENTLY where PostgreSQL can, else one short catalog-only step."""
    try:
        row = conn.execute(
            "SELECT c.relkind::text, n.nspname, c.relname, tn.nspname, t.relname,"
            " con.conname, (SELECT ph.relname FROM pg_inherits h JOIN pg_class ph"
            "   ON ph.oid = h.inhparent WHERE h.inhrelid = c.oid)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_index i ON i.indexrelid = c.oid JOIN pg_class t ON t.oid = i.indrelid"
            " JOIN pg_namespace tn ON tn.oid = t.relnamespace"
            " LEFT JOIN pg_constraint con ON con.conindid = c.oid AND con.conrelid = t.oid"
            " AND con.contype IN ('p', 'u', 'x')"
            " WHERE c.oid = to_regclass(%s)", [index]).fetchone()
    except psycopg.errors.InvalidName as exc:
        raise Refused(f"{index!r} is not a valid index name: {exc}") from None
    if row is None:
        raise NotFound(f"index {index} does not exist",
                       hint="schema-qualify it if it is not on the search_path; names with "
                            "capitals need double quotes")
    kind, nsp, rel, tnsp, trel, con, parent = row
    idx, table = QualifiedName(nsp, rel), QualifiedName(tnsp, trel)
    if con:
        raise Refused(f"index {idx} backs constraint {con} of {table}",
                      hint=f"drop the constraint instead: pgcleave drop-constraint {table} {con}")
    if parent:
        raise Refused(f"index {idx} is a partition of index {parent}; PostgreSQL drops it only "
                      "with its parent",
                      hint=f"drop {QualifiedName(nsp, parent)} instead")
    plan = Plan("drop-index", table.quoted, {"index": str(idx)}, [],
                requires=[preflight.owner(table)])
    if kind == "I":
        plan = plan.add(steps=[Step.sql(
            f"drop:{rel}", f"drop partitioned index {idx} and its partitions' indexes "
            "(catalog only; PostgreSQL has no DROP INDEX CONCURRENTLY for it)",
            [sql.SQL("DROP INDEX IF EXISTS {}").format(idx.ident)],
            locks=[LockTaken(AE, str(table)), LockTaken(AE, "its partitions")],
            guard=_g_index_gone(idx), undo=[])])
        plan = plan.add(notes=[
            "dropping a partitioned index takes ACCESS EXCLUSIVE on the table and "
                          "its partitions for the few milliseconds the catalog change takes; "
                          "it is tried under lock_timeout and retried"])
    else:
        plan = plan.add(steps=[Step.sql(
            f"drop:{rel}", f"drop index {idx} concurrently",
            [sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(idx.ident)],
            locks=[LockTaken(SUE, str(table))], transactional=False,
            guard=_g_index_gone(idx), undo=[], ddl=False)])
    return plan


def plan_drop_constraint(conn: Connection, table: str, name: str) -> Plan:
    """Drop a constraint: one short catalog-only transaction (its index is dropped with it)."""
    info = snapshot(conn, table)
    con = next((c for c in info.constraints if c.name == name), None)
    plan = Plan("drop-constraint", info.name.quoted, {"name": name}, [],
                requires=[preflight.owner(info.name)])
    if con is None:
        raise NotFound(f"{info.name} has no constraint {name!r}",
                       hint="constraints: " + (", ".join(c.name for c in info.constraints)
                                               or "none"))
    if con.inherited:
        raise Refused(f"constraint {name} of {info.name} is inherited from its parent table",
                      hint=f"drop it on the parent: pgcleave drop-constraint {info.parent} ...")
    if con.type in ("p", "u"):
        deps = conn.execute(
            "SELECT f.conname::text || ' on ' || f.conrelid::regclass::text FROM pg_constraint f"
            " JOIN pg_constraint k ON k.conindid = f.conindid AND k.conrelid = f.confrelid"
            " WHERE f.contype = 'f' AND f.conparentid = 0 AND k.conrelid = %s"
            " AND k.conname = %s", [info.oid, name]).fetchall()
        if deps:
            raise Refused(f"{name} is referenced by foreign keys: "
                          + ", ".join(d[0] for d in deps),
                          hint="drop those first with pgcleave drop-constraint")
    locks = [LockTaken(AE, str(info.name))]
    if info.is_partitioned:
        locks.append(LockTaken(AE, "its partitions"))
    if con.type == "f":
        ref = next((f.ref_table for f in info.foreign_keys_out if f.name == name), None)
        if ref is not None:
            locks.append(LockTaken(AE, str(ref)))
    plan = plan.add(steps=[Step.sql(
        f"drop:{name}", f"drop constraint {name} of {info.name} (catalog only)",
        [sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
            info.name.ident, sql.Identifier(name))],
        locks=locks, guard=_g_no_constraint(info.name, name), undo=[])])
    if con.type in ("p", "u"):
        plan = plan.add(warnings=[f"dropping {name} removes the uniqueness it enforces on "
                             f"({', '.join(con.columns)})"])
    return plan
