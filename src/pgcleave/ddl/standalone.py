"""Standalone tables shaped like a partition, built to be attached later without a scan:
their DDL (``LIKE`` the source with a CHECK of the new bound, valid from the start as the table
is empty) and the source's indexes rebuilt on them after a bulk copy. Shared by ``carve`` (the
copies of a split) and ``merge`` (one copy of several partitions)."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from ..catalog import TableInfo
from ..connection import Connection
from ..names import QualifiedName
from ..plan import Statement
from .tables import index_tail

#: The CHECK of a copy's bound, named so that later steps find and drop it.
BOUND_CHECK = "pgcleave_bound"


def like_source(src: TableInfo, new: QualifiedName, check: sql.Composable, *,
          indexes: bool = True, partition_by: sql.Composable | None = None
          ) -> list[Statement]:
    """A standalone copy of the source's shape, with a CHECK of its bound: added to the empty
    table, it is valid at once. With ``indexes`` the source's indexes come along (so ATTACH
    finds every index of the parent); the swap method builds them after its bulk copy instead.
    """
    return [
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING "
                "GENERATED {}INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING "
                "STATISTICS){}").format(
            new.ident, src.name.ident, sql.SQL("INCLUDING INDEXES " if indexes else ""),
            sql.SQL(" PARTITION BY {}").format(partition_by) if partition_by is not None
            else sql.SQL("")),
        *drop_copied(src, new),
        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(
            new.ident, sql.Identifier(BOUND_CHECK), check)]


def drop_copied(src: TableInfo, new: QualifiedName) -> list[Statement]:
    """``LIKE ... INCLUDING CONSTRAINTS`` copied the source's own pgcleave CHECKs (a DEFAULT's
    bound, a legacy cutoff, a pending exclusion): the new table has its own bound instead."""
    return [sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(new.ident, sql.Identifier(c.name))
            for c in src.constraints if c.type == "c" and c.name.startswith("pgcleave_")]


def index_statements(conn: Connection, src: TableInfo, hold: QualifiedName,
                      leaves: list[QualifiedName], own: dict[QualifiedName, int] | None = None
                      ) -> tuple[list[tuple[QualifiedName, list[Statement]]], list[Statement]]:
    """The source's indexes for the copies, built after the bulk copy (a bulk load followed
    by one sort per index, instead of index maintenance row by row): per leaf, the statements
    that build its indexes (one transaction each, so the leaves can be built on several
    connections at once), then the statements on the holder that run after every leaf is
    built. Indexes attached to the parent's go on the holder too (so the swap's ATTACH finds
    them): PostgreSQL finds each leaf's matching index (a constraint's index with the same
    constraint) and attaches it instead of building another one. A partition's own unique
    keys (they lack the partition key, the parent cannot have them) go on each leaf only.
    ``own``: leaves that take the indexes of another table (by oid) instead of ``src``'s: the
    leaves of a new branch, each those of the source branch's leaf it pairs with."""
    def rows_of(oid: int) -> list[Any]:
        return conn.execute(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisunique, con.contype::text,"
            " pg_get_constraintdef(con.oid),"
            " EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)"
            " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid"
            " AND con.conrelid = i.indrelid"
            " WHERE i.indrelid = %s AND i.indisvalid ORDER BY i.indexrelid", [oid]).fetchall()

    def build(tab: QualifiedName, name: str, idxdef: str, unique: bool, contype: str | None,
              condef: str | None) -> Statement:
        if contype in ("p", "u", "x"):
            return sql.SQL("ALTER TABLE {} ADD {}").format(tab.ident, sql.SQL(str(condef)))
        tail = index_tail(idxdef)
        return sql.SQL("CREATE {}INDEX ON {} {}").format(
            sql.SQL("UNIQUE " if unique else ""), tab.ident, sql.SQL(tail))

    rows = rows_of(src.oid)
    per_leaf: list[tuple[QualifiedName, list[Statement]]] = []
    for leaf in leaves:
        mine = rows_of(own[leaf]) if own and leaf in own else rows
        per_leaf.append((leaf, [build(leaf, str(n), str(d), bool(u), c, cd)
                                for n, d, u, c, cd, _ in mine]))
    top = [build(hold, str(n), str(d), bool(u), c, cd)
           for n, d, u, c, cd, attached in rows if attached]
    return per_leaf, top


def hashes_by_type(conn: Connection, table: QualifiedName) -> bool:
    """Whether every column of ``table`` has a default hash operator class of its own type
    (or one its type is binary-coercible to, as varchar to text): then ``hash_record_extended``
    hashes a row field by field, several times faster than hashing its text (the output
    function of every column: measured ~2x the verify time at 1M rows). Arrays, domains and
    composite columns go by text."""
    row = conn.execute(
        "SELECT bool_and(t.typtype = 'b' AND t.typelem = 0 AND EXISTS (SELECT 1 FROM pg_opclass"
        " oc JOIN pg_am am ON am.oid = oc.opcmethod WHERE am.amname = 'hash' AND oc.opcdefault"
        " AND (oc.opcintype = a.atttypid OR EXISTS (SELECT 1 FROM pg_cast c WHERE c.castsource"
        " = a.atttypid AND c.casttarget = oc.opcintype AND c.castmethod = 'b'))))"
        " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
        [table.quoted]).fetchone()
    return bool(row and row[0])


def digest_query(tables: list[QualifiedName], *, only: bool,
                 by_type: bool = False) -> sql.Composed:
    """One row (count, sum of the rows' hashes) over ``tables`` together: what a verification
    compares between sources and their copies (same column order: the copies are ``LIKE``
    the source). ``only``: the tables' own rows, not their partitions' (a partition's rows
    are its own; a holder is read with its partitions). ``by_type``: hash each field with its
    type's hash function (see ``hashes_by_type``), else the row's text."""
    h = (sql.SQL("hash_record_extended(t, 0)") if by_type
         else sql.SQL("hashtextextended(t::text, 0)"))
    parts = [sql.SQL("SELECT {} AS h FROM {}{} t").format(
        h, sql.SQL("ONLY " if only else ""), x.ident) for x in tables]
    body = sql.SQL(" UNION ALL ").join(parts)
    return sql.SQL("SELECT count(*), coalesce(sum(h), 0) FROM ({}) d").format(body)
