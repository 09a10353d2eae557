"""Tables and their keys as DDL: the one ``pg_get_indexdef`` reader, column lists, partition
creation with the unique keys that must live on each partition, and small catalog guards."""

from __future__ import annotations

import re
from dataclasses import dataclass

from psycopg import sql

from ..catalog import Index, TableInfo
from ..connection import Connection
from ..errors import Refused
from ..names import QualifiedName, quote_ident
from ..plan import Statement
from .bounds import (
    Bound,
)

#: An identifier as PostgreSQL prints it: quoted (with "" for a quote) or plain.
_IDENT = r'(?:"(?:[^"]|"")+"|[^\s".]+)'
#: ``pg_get_indexdef`` output: CREATE [UNIQUE] INDEX name ON [ONLY] [schema.]table USING ...
_INDEXDEF_RE = re.compile(
    rf"^CREATE (UNIQUE )?INDEX ({_IDENT}) ON (?:ONLY )?((?:{_IDENT}\.)?{_IDENT}) (USING .*)$",
    re.S)


@dataclass(frozen=True)
class IndexDef:
    """An index definition read apart: whether it is unique, its name and table as printed
    (quoted where needed), and the tail from ``USING`` on (method, columns, INCLUDE, WHERE)."""

    unique: bool
    name: str
    table: str
    tail: str


def parse_indexdef(definition: str) -> IndexDef:
    """The one reader of ``pg_get_indexdef`` text, for names with capitals, quotes, spaces
    and dots alike."""
    m = _INDEXDEF_RE.match(definition)
    if not m:
        raise Refused(f"cannot read the index definition {definition!r}")
    return IndexDef(bool(m.group(1)), m.group(2), m.group(3), m.group(4))


def index_tail(definition: str) -> str:
    """``USING btree (id) WHERE ...`` of an index definition: what follows the table name."""
    return parse_indexdef(definition).tail


def excludes_by_key(definition: str, col: str) -> bool:
    """Whether an EXCLUDE constraint (``pg_get_constraintdef``) compares the partition key
    ``col`` with ``=``: PostgreSQL 17+ accepts it on a partitioned table then (rows that
    conflict always fall in one partition), and ATTACH adopts a partition's equal one."""
    return re.search(r"(?:\(|,)\s*" + re.escape(quote_ident(col)) + r"\s+WITH\s+=\s*(?:,|\))",
                     definition) is not None


def is_partition_of(part: QualifiedName, parent: QualifiedName) -> sql.Composable:
    return sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass({})"
                   " AND inhparent = to_regclass({}))").format(part.literal, parent.literal)


def insert_columns(info: TableInfo) -> list[str]:
    """Columns an INSERT ... SELECT may write (generated columns compute themselves)."""
    return [c.name for c in info.columns if not c.generated]


def overriding(info: TableInfo) -> sql.Composable:
    return sql.SQL(" OVERRIDING SYSTEM VALUE" if any(c.identity == "a" for c in info.columns)
                   else "")


def collist(cols: list[str], prefix: str | None = None) -> sql.Composable:
    """``"a", "b"``, or ``NEW."a", NEW."b"`` with a ``prefix`` (a row variable, not quoted)."""
    if prefix is None:
        return sql.SQL(", ").join(map(sql.Identifier, cols))
    return sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.SQL(prefix), sql.Identifier(c))
                              for c in cols)


PartKey = tuple[str, str]  # ("constraint", "PRIMARY KEY (id)") or ("index", "USING btree ...")


def part_keys(info: TableInfo, indexes: list[Index]) -> list[PartKey]:
    out: list[PartKey] = []
    for ix in indexes:
        con = next((c for c in info.constraints if c.name == ix.constraint), None)
        out.append(("constraint", con.definition) if con is not None
                   else ("index", index_tail(ix.definition)))
    return out


def create_partition(parent: QualifiedName, part: QualifiedName, b: Bound,
                     keys: list[PartKey]) -> list[Statement]:
    """``CREATE TABLE ... PARTITION OF``, plus the unique keys that cannot live on the parent."""
    out: list[Statement] = [sql.SQL("CREATE TABLE {} PARTITION OF {} {}").format(
        part.ident, parent.ident, b.for_values())]
    out += per_partition_keys(part, keys)
    return out


def per_partition_keys(part: QualifiedName, keys: list[PartKey]) -> list[sql.Composable]:
    out: list[sql.Composable] = []
    for kind, text in keys:
        if kind == "constraint":
            out.append(sql.SQL("ALTER TABLE {} ADD {}").format(part.ident, sql.SQL(text)))
        else:
            out.append(sql.SQL("CREATE UNIQUE INDEX ON {} {}").format(part.ident, sql.SQL(text)))
    return out


def partition_only_keys(conn: Connection, parent: TableInfo) -> list[PartKey]:
    """Unique keys the partitions of ``parent`` carry but the parent cannot (they lack the
    partition key, e.g. ``PRIMARY KEY (id)``): those of a local partition whose index is not
    attached to an index of the parent."""
    assert parent.partitioning is not None
    p = next((x for x in parent.partitioning.partitions if x.kind == "r"), None)
    if p is None:
        return []
    rows = conn.execute(
        "SELECT con.contype::text, pg_get_constraintdef(con.oid), pg_get_indexdef(i.indexrelid)"
        " FROM pg_index i LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid"
        " AND con.conrelid = i.indrelid"
        " WHERE i.indrelid = %s AND i.indisunique AND i.indisvalid"
        " AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)"
        " ORDER BY i.indexrelid", [p.oid]).fetchall()
    out: list[PartKey] = []
    for contype, condef, idxdef in rows:
        if contype in ("p", "u"):
            out.append(("constraint", str(condef)))
        else:
            out.append(("index", index_tail(str(idxdef))))
    return out
