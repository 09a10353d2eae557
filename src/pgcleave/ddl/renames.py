"""The names of indexes, constraints and sequences across a table swap.

ORMs and migration frameworks know a table's indexes and constraints by name (Django's
``Meta.indexes`` and ``RenameIndex``, ``ON CONFLICT ON CONSTRAINT``, Rails' ``remove_index``).
When another table takes over a table's name (the copy strategy's swap, and its unswap), it must
also take over those names, and the table it replaces takes derived ones. Index names (and so the
names of PRIMARY KEY, UNIQUE and EXCLUDE constraints, which are their indexes' names) are unique
per schema: the replaced table's objects are renamed away first, then the new ones into place,
all inside the swap's short transaction (renames only change the catalog). CHECK, NOT NULL and
FOREIGN KEY constraint names are unique per table only: both tables carry the original ones.

Partitions' own indexes keep the names PostgreSQL gives them (derived from the partition's
name): only the parent's names are what the application sees.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from psycopg import sql

from ..catalog import TableInfo
from ..names import QualifiedName, child_name

MAX_IDENT = 63


def derived_name(name: str, table: str, word: str) -> str:
    """The name an object ``name`` of ``table`` takes on the table called ``table_word``: the
    table's prefix replaced (``orders_pkey`` -> ``orders_retired_pkey``), else ``_word``
    appended (``my_idx`` -> ``my_idx_retired``). Cut to 63 bytes with a hash of the full name,
    so two long names never cut to the same one."""
    prefix = child_name(table, word)
    if name == table or name.startswith(table + "_"):
        full = prefix + name[len(table):]
    else:
        full = f"{name}_{word}"
    raw = full.encode()
    if len(raw) <= MAX_IDENT:
        return full
    tag = "_" + hashlib.md5(full.encode()).hexdigest()[:8]
    return raw[:MAX_IDENT - len(tag)].decode(errors="ignore") + tag


@dataclass(frozen=True)
class NameSwap:
    """One named object across a swap: ``name`` on the live table; ``incoming`` on the table
    that takes over before the swap (and after an unswap); ``outgoing`` on the replaced table
    after the swap. ``constraint``: a PRIMARY KEY, UNIQUE or EXCLUDE constraint (renaming it
    renames its index), else a plain index."""

    name: str
    incoming: str
    outgoing: str
    constraint: bool


def index_names(info: TableInfo, *, incoming_word: str, outgoing_word: str,
                skip: set[str] | None = None) -> list[NameSwap]:
    """The schema-wide names of ``info`` (its indexes, and the constraints they back) as they
    move in a swap; ``skip``: names of indexes the new table does not get."""
    table = info.name.name
    out: list[NameSwap] = []
    for ix in info.indexes:
        if skip and ix.name in skip:
            continue
        out.append(NameSwap(ix.name, derived_name(ix.name, table, incoming_word),
                            derived_name(ix.name, table, outgoing_word),
                            ix.constraint is not None and ix.constraint == ix.name))
    return out


def _rename(schema: str, table: QualifiedName, cur: str, new: str,
            constraint: bool) -> sql.Composable:
    if constraint:
        return sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
            table.ident, sql.Identifier(cur), sql.Identifier(new))
    return sql.SQL("ALTER INDEX {} RENAME TO {}").format(sql.Identifier(schema, cur),
                                                         sql.Identifier(new))


def swap_names(names: list[NameSwap], *, replaced: QualifiedName, taking_over: QualifiedName,
               back: bool = False) -> list[sql.Composable]:
    """Statements that give ``taking_over`` the original names and ``replaced`` the derived
    ones (``back``: the unswap, where the replaced table is the one that took over, and gets
    its ``incoming`` names back). The replaced table's names go first: they are freed before
    they are taken."""
    schema = replaced.schema
    away = [_rename(schema, replaced, n.name, n.incoming if back else n.outgoing, n.constraint)
            for n in names]
    into = [_rename(schema, taking_over, n.outgoing if back else n.incoming, n.name,
                    n.constraint) for n in names]
    return [*away, *into]


def taken(names: list[str], schema: str) -> sql.Composed:
    """The names among ``names`` already used by a relation of ``schema`` (a collision)."""
    return sql.SQL("SELECT coalesce(array_agg(c.relname::text ORDER BY c.relname), '{{}}') FROM "
                   "pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = "
                   "{} AND c.relname = ANY({})").format(sql.Literal(schema), sql.Literal(names))


def sequence_rename_to(table: QualifiedName, column: str, new: str) -> sql.Composable:
    """Rename the sequence of ``table.column`` (an identity's, whose name is only known at run
    time) to ``new``, in its own schema."""
    return sql.SQL(
        "DO $pgcleave$ BEGIN EXECUTE format('ALTER SEQUENCE %s RENAME TO %I', "
        "pg_get_serial_sequence({}, {}), {}); END $pgcleave$").format(
        table.literal, sql.Literal(column), sql.Literal(new))

