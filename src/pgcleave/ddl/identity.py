"""Identity columns when a standalone table becomes a partition, and back.

PostgreSQL 15 and 16 let a partition keep an identity column of its own: the partitioned
table gets its own identity (``LIKE ... INCLUDING IDENTITY`` makes a new sequence starting at 1),
which continues from the old sequence, and the old table keeps its sequence.

PostgreSQL 17 and later refuse to attach a table with an identity column ("table ... being
attached contains an identity column"): the identity belongs to the partitioned table and every
partition draws from its one sequence (a detached partition loses the identity). So inside the
cut-over transaction the new parent's sequence continues from the old one, the old table's
identity is dropped (which drops the old sequence, read before), and the new sequence takes the
old one's name and privileges: ``INSERT ... RETURNING id``, ``currval('t_id_seq')`` and
``pg_get_serial_sequence`` go on working, and ids continue with no restart and no reuse. The way
back gives the plain table an identity again, under the same name, continuing from the parent's.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from ..catalog import SequenceInfo, TableInfo
from ..names import QualifiedName, child_name
from .bounds import Bound
from .dependents import sequence_grants

SHARED_IDENTITY_VERSION = 170000


def shared_by_partitions(server_version: int) -> bool:
    """Whether partitions share their parent's identity (and may not have one of their own)."""
    return server_version >= SHARED_IDENTITY_VERSION


@dataclass(frozen=True)
class Identity:
    column: str
    always: bool  # GENERATED ALWAYS (else BY DEFAULT)
    sequence: SequenceInfo


def identities(info: TableInfo) -> list[Identity]:
    """The identity columns of ``info`` that have a sequence of their own (on 17+ a partition's
    identity columns have none: they draw from the parent's)."""
    kinds = {c.name: c.identity for c in info.columns}
    return [Identity(s.column, kinds.get(s.column) == "a", s)
            for s in info.sequences if s.kind == "identity"]


def continue_from(target: QualifiedName, column: str, source: QualifiedName) -> sql.Composable:
    """Set ``target``'s identity sequence (found at run time: it may not exist yet when the
    plan is made) to the last value of the sequence ``source``, if that was ever used."""
    return sql.SQL(
        "SELECT setval(pg_get_serial_sequence({}, {})::regclass, v) FROM "
        "(SELECT pg_sequence_last_value({}::regclass) v) x WHERE v IS NOT NULL").format(
        target.literal, sql.Literal(column), source.literal)


def take_over(info: TableInfo, new: QualifiedName, old: QualifiedName) -> list[sql.Composable]:
    """Inside the cut-over, after ``new`` was created ``LIKE old INCLUDING IDENTITY`` and before
    ``old`` is attached to it: ``new``'s identity sequences continue from ``old``'s (nothing can
    draw from them meanwhile: ``old`` is locked). On 17+ ``old`` also loses its identity, and
    the new sequence takes the old one's name and privileges."""
    out: list[sql.Composable] = []
    for ident in identities(info):
        seq = ident.sequence
        out.append(continue_from(new, ident.column, seq.name))
        if not shared_by_partitions(info.server_version):
            continue
        col = sql.Identifier(ident.column)
        out.append(sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP IDENTITY").format(old.ident, col))
        # The new sequence's name was chosen by the server (``t_id_seq1``): found at run time.
        out.append(sql.SQL(
            "DO $pgcleave$ BEGIN EXECUTE 'ALTER SEQUENCE ' || pg_get_serial_sequence({}, {}) || "
            "' RENAME TO ' || quote_ident({}); END $pgcleave$").format(
            new.literal, sql.Literal(ident.column), sql.Literal(seq.name.name)))
        out += sequence_grants(seq, seq.name)
    return out


def _options(seq: SequenceInfo) -> sql.Composable:
    return sql.SQL("INCREMENT BY {} MINVALUE {} MAXVALUE {} START WITH {} CACHE {} {}").format(
        sql.Literal(seq.increment), sql.Literal(seq.min_value), sql.Literal(seq.max_value),
        sql.Literal(seq.start), sql.Literal(seq.cache),
        sql.SQL("CYCLE" if seq.cycle else "NO CYCLE"))


def give_back(idents: list[Identity], table: QualifiedName) -> list[sql.Composable]:
    """The way back on 17+, once ``table`` is a plain table again (detaching it dropped its
    share of the identity) and while the partitioned table still exists: the partitioned
    table's sequence steps aside, ``table`` gets an identity of the same kind under the
    sequence's name and with its parameters, continuing from it, with its privileges. Dropping
    the partitioned table then drops the old sequence."""
    out: list[sql.Composable] = []
    for ident in idents:
        seq = ident.sequence
        away = seq.name.sibling(child_name(seq.name.name, "pgcleave_undo"))
        out += [
            sql.SQL("ALTER SEQUENCE {} RENAME TO {}").format(seq.name.ident,
                                                              sql.Identifier(away.name)),
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} ADD GENERATED {} AS IDENTITY (SEQUENCE NAME "
                    "{} {})").format(table.ident, sql.Identifier(ident.column),
                                     sql.SQL("ALWAYS" if ident.always else "BY DEFAULT"),
                                     seq.name.ident, _options(seq)),
            sql.SQL("SELECT setval({}::regclass, v) FROM (SELECT pg_sequence_last_value("
                    "{}::regclass) v) x WHERE v IS NOT NULL").format(seq.name.literal,
                                                                      away.literal),
            *sequence_grants(seq, seq.name),
        ]
    return out


def partitions_share(info: TableInfo) -> bool:
    """Whether ``info`` (a partitioned table) has an identity its partitions share (17+)."""
    return shared_by_partitions(info.server_version) and any(c.identity for c in info.columns)


def mark_partitions(parent: QualifiedName,
                    children: list[tuple[QualifiedName, Bound]]) -> list[sql.Composable]:
    """Attach again the partitions ``children`` (name and bound) of
    ``parent``, a partitioned table just attached under a table with a shared identity.

    17+ (seen on 18.6) marks the identity on the table attached, not on that table's own
    partitions; detaching it later then fails ("column ... of relation ... is not an identity
    column"), as the detach drops the identity down the tree. Attached again one by one, the
    partitions are marked too. No scan: each carries the CHECKs that proved its bound (the
    DEFAULT goes last, its CHECK excluding the others' bounds)."""
    ordered = sorted(children, key=lambda c: c[1].kind == "default")
    return [*(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent.ident, c.ident)
              for c, _ in ordered),
            *(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(
                parent.ident, c.ident, b.for_values()) for c, b in ordered)]
