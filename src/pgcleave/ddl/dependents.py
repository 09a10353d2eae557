"""What the application relies on besides rows: grants, ownership, comments, row-level security,
triggers, views and sequence ownership, re-created on the table that takes over a name.

Renames do not move dependents: views, triggers and grants stay bound to the old relation (by
OID), and ``LIKE ... INCLUDING ALL`` copies none of them. These functions return the statements
that re-create each kind on ``target`` from a snapshot of the old table, for use inside a
cut-over transaction. Definitions that name the table (views, triggers) are replayed *after*
the renames, so the name they contain resolves to the new table.
"""

from __future__ import annotations

from psycopg import sql

from ..catalog import SequenceInfo, TableInfo
from ..names import QualifiedName


def grants(info: TableInfo, target: QualifiedName) -> list[sql.Composable]:
    """Owner, table privileges and column privileges (``GRANT SELECT (col)``: an application
    role that may read only some columns keeps exactly those)."""
    out: list[sql.Composable] = [
        sql.SQL("ALTER TABLE {} OWNER TO {}").format(target.ident, sql.Identifier(info.owner))]
    for g in info.grants:
        grantee = (sql.SQL("PUBLIC") if g["grantee"] == "PUBLIC"
                   else sql.Identifier(g["grantee"]))
        out.append(sql.SQL("GRANT {} ON {} TO {}{}").format(
            sql.SQL(g["privilege"]), target.ident, grantee,
            sql.SQL(" WITH GRANT OPTION") if g["grantable"] else sql.SQL("")))
    for g in info.column_grants:
        grantee = (sql.SQL("PUBLIC") if g["grantee"] == "PUBLIC"
                   else sql.Identifier(g["grantee"]))
        out.append(sql.SQL("GRANT {} ({}) ON {} TO {}{}").format(
            sql.SQL(g["privilege"]), sql.Identifier(g["column"]), target.ident, grantee,
            sql.SQL(" WITH GRANT OPTION") if g["grantable"] else sql.SQL("")))
    return out


def comments(info: TableInfo, target: QualifiedName) -> list[sql.Composable]:
    out: list[sql.Composable] = []
    if info.comment is not None:
        out.append(sql.SQL("COMMENT ON TABLE {} IS {}").format(target.ident,
                                                               sql.Literal(info.comment)))
    for c in info.columns:
        if c.comment is not None:
            out.append(sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(
                target.ident, sql.Identifier(c.name), sql.Literal(c.comment)))
    return out


def row_security(info: TableInfo, target: QualifiedName) -> list[sql.Composable]:
    out: list[sql.Composable] = []
    if info.rls_enabled:
        out.append(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(target.ident))
    if info.rls_forced:
        out.append(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(target.ident))
    for p in info.policies:
        roles = sql.SQL(", ").join(sql.SQL("PUBLIC") if r == "public" else sql.Identifier(r)
                                   for r in p.roles)
        stmt = sql.SQL("CREATE POLICY {} ON {} AS {} FOR {} TO {}").format(
            sql.Identifier(p.name), target.ident,
            sql.SQL("PERMISSIVE" if p.permissive else "RESTRICTIVE"), sql.SQL(p.command), roles)
        if p.using is not None:
            stmt = sql.SQL("{} USING ({})").format(stmt, sql.SQL(p.using))
        if p.with_check is not None:
            stmt = sql.SQL("{} WITH CHECK ({})").format(stmt, sql.SQL(p.with_check))
        out.append(stmt)
    return out


def drop_policies(info: TableInfo, table: QualifiedName) -> list[sql.Composable]:
    return [sql.SQL("DROP POLICY {} ON {}").format(sql.Identifier(p.name), table.ident)
            for p in info.policies]


def triggers(info: TableInfo) -> list[sql.Composable]:
    """``CREATE TRIGGER`` as deparsed; run after the renames so ``ON name`` finds the new table.
    Disabled triggers stay disabled."""
    out: list[sql.Composable] = []
    for t in info.triggers:
        out.append(sql.SQL(t.definition))
        if t.enabled == "D":
            out.append(sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(
                info.name.ident, sql.Identifier(t.name)))
    return out


def drop_triggers(info: TableInfo, table: QualifiedName) -> list[sql.Composable]:
    """Drop the user triggers from ``table`` (the old one, renamed): once a partition, it would
    otherwise fire both its own copy and the one cloned from the parent."""
    return [sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(t.name), table.ident)
            for t in info.triggers]


def views(info: TableInfo) -> list[sql.Composable]:
    """``CREATE OR REPLACE VIEW`` with each dependent view's own definition. Replayed after the
    renames, the table name in it now means the new table; the view keeps its OID, grants and
    the objects that depend on it. Materialized views are left alone (they hold their own data)."""
    return [sql.SQL("CREATE OR REPLACE VIEW {} AS {}").format(
        v.name.ident, sql.SQL(v.definition.rstrip().rstrip(";")))
        for v in info.views if not v.materialized]


def sequence_ownership(info: TableInfo, target: QualifiedName) -> list[sql.Composable]:
    """Serial sequences: owned by the new table's column, so dropping the old table later does
    not drop the sequence the application's inserts use. Identity columns are not handled here
    (an identity's sequence cannot change hands; see ``ddl.identity``)."""
    return [sql.SQL("ALTER SEQUENCE {} OWNED BY {}.{}").format(
        s.name.ident, target.ident, sql.Identifier(s.column))
        for s in info.sequences if s.kind == "serial"]


def sequence_grants(seq: SequenceInfo, target: QualifiedName) -> list[sql.Composable]:
    """The privileges held on ``seq`` (from the snapshot), granted on the sequence ``target``
    (the one that takes its name and its place)."""
    out: list[sql.Composable] = []
    for g in seq.grants:
        grantee = (sql.SQL("PUBLIC") if g["grantee"] == "PUBLIC"
                   else sql.Identifier(g["grantee"]))
        out.append(sql.SQL("GRANT {} ON SEQUENCE {} TO {}{}").format(
            sql.SQL(g["privilege"]), target.ident, grantee,
            sql.SQL(" WITH GRANT OPTION") if g["grantable"] else sql.SQL("")))
    return out
