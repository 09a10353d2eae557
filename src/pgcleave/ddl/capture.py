"""Change capture by key log: a trigger that records the primary key of every row the
application writes on a table being copied, so the copy is brought up to date by replaying the
log (carve, maintain's DEFAULT drain) instead of repeating each write."""

from __future__ import annotations

from psycopg import sql

from ..names import QualifiedName
from .tables import collist


def key_log_function(fname: QualifiedName, log: QualifiedName, pk: list[str]
                     ) -> sql.Composable:
    """An AFTER ROW trigger function on the source: logs the primary key of the old row and
    of the new one (once when the key did not change). Nothing else: the copies are brought
    up to date by replaying the log, so writers pay one small insert per row they write."""
    def row(r: str) -> sql.Composable:
        return sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.SQL(r), sql.Identifier(c))
                                  for c in pk)

    def ins(r: str) -> sql.Composable:
        return sql.SQL("INSERT INTO {} ({}) VALUES ({});").format(log.ident, collist(pk), row(r))

    body = sql.SQL(
        "BEGIN IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND ({o}) IS DISTINCT FROM ({n})) THEN "
        "{io} END IF; IF TG_OP <> 'DELETE' THEN {inn} END IF; RETURN NULL; END").format(
        o=row("OLD"), n=row("NEW"), io=ins("OLD"), inn=ins("NEW"))
    return sql.SQL("CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
        fname.ident, sql.Literal(body.as_string(None)))
