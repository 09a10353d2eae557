"""The capture triggers of a copy: functions that repeat every INSERT, UPDATE (key-moving ones
included), DELETE and TRUNCATE of the source on the copy in the application's own transaction,
and after the swap the same in reverse, so that ``unswap`` loses nothing."""

from __future__ import annotations

from psycopg import sql

from ..ddl.tables import collist
from ..names import QualifiedName
from .copy_state import (
    MAX_FILL_JOBS,
    PARALLEL_MARK,
    TRIGGER,
    TRIGGER_BACK,
    TRIGGER_TRUNCATE,
    Spec,
)


# -- the capture trigger ---------------------------------------------------------------------------
def capture_function(fn: QualifiedName, target: QualifiedName, spec: Spec,
                     conflict: list[str]) -> sql.Composable:
    """An AFTER ROW trigger function applying each change to ``target``.

    ``conflict`` is the target's unique key the upsert uses; deletes match the old primary key
    *and* the partition key, so the DELETE and INSERT events of a cross-partition UPDATE on a
    partitioned source remove the right row in either order. SECURITY DEFINER: the application's
    role has no privileges on the target, and must not need any. A fixed search_path, and every
    name qualified.
    """
    cols = spec.columns
    new_vals = collist(cols, "NEW")
    set_cols = [c for c in cols if c not in conflict and c not in spec.identity_always]
    if set_cols:
        on_conflict = sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(
            sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
            for c in set_cols))
    else:
        on_conflict = sql.Composed([sql.SQL("DO NOTHING")])
    upsert = sql.SQL("INSERT INTO {t} ({cols}) OVERRIDING SYSTEM VALUE VALUES ({vals}) "
                     "ON CONFLICT ({conflict}) {action};").format(
        t=target.ident, cols=collist(cols), vals=new_vals, conflict=collist(conflict),
        action=on_conflict)
    match_old = sql.SQL(" AND ").join(
        sql.SQL("{} = OLD.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in spec.match)
    # A fill batch may hold (or be about to copy) the row being deleted: wait for the running
    # batch to commit before deleting, and keep the next one from starting until this
    # transaction ends, so its snapshot no longer sees the row. See the module docstring.
    # One key per fill connection (``fill --jobs``), taken in the same order by every
    # writer; each batch holds only its own connection's key.
    delete = sql.SQL(
        "PERFORM pg_catalog.pg_advisory_xact_lock_shared({k} + (w::bigint << 32))"
        " FROM pg_catalog.{gs}(0, {n}) w;\n"
        "    DELETE FROM {t} WHERE {m};").format(t=target.ident, m=match_old,
                                              k=sql.Literal(spec.fill_lock),
                                              gs=sql.SQL(PARALLEL_MARK),
                                              n=sql.Literal(MAX_FILL_JOBS - 1))
    moved = sql.SQL("ROW({}) IS DISTINCT FROM ROW({})").format(
        collist(spec.match, "OLD"), collist(spec.match, "NEW"))
    body = sql.SQL(
        "\nBEGIN\n"
        "  IF TG_OP = 'INSERT' THEN\n    {upsert}\n"
        "  ELSIF TG_OP = 'UPDATE' THEN\n"
        "    IF {moved} THEN\n    {delete}\n    END IF;\n"
        "    {upsert}\n"
        "  ELSE\n    {delete}\n  END IF;\n"
        "  RETURN NULL;\nEND\n").format(upsert=upsert, moved=moved, delete=delete)
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
        "SET search_path = pg_catalog, pg_temp AS {body}").format(
        fn=fn.ident, body=sql.Literal(body.as_string(None)))


def truncate_function(fn: QualifiedName, target: QualifiedName) -> sql.Composable:
    body = sql.SQL("\nBEGIN\n  TRUNCATE {};\n  RETURN NULL;\nEND\n").format(target.ident)
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
        "SET search_path = pg_catalog, pg_temp AS {body}").format(
        fn=fn.ident, body=sql.Literal(body.as_string(None)))


def capture_statements(spec: Spec, source: QualifiedName, target: QualifiedName, *,
                       back: bool) -> list[sql.Composable]:
    fn = spec.fn_back if back else spec.fn_forward
    trg = TRIGGER_BACK if back else TRIGGER
    conflict = spec.pk if back else spec.match
    return [
        capture_function(fn, target, spec, conflict),
        sql.SQL("CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW "
                "EXECUTE FUNCTION {}()").format(sql.Identifier(trg), source.ident, fn.ident),
        truncate_function(spec.fn_truncate, target),
        sql.SQL("CREATE TRIGGER {} AFTER TRUNCATE ON {} FOR EACH STATEMENT "
                "EXECUTE FUNCTION {}()").format(sql.Identifier(TRIGGER_TRUNCATE), source.ident,
                                                spec.fn_truncate.ident),
    ]


def drop_capture_statements(spec: Spec, source: QualifiedName, *, back: bool
                            ) -> list[sql.Composable]:
    trg = TRIGGER_BACK if back else TRIGGER
    return [
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trg), source.ident),
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(TRIGGER_TRUNCATE),
                                                          source.ident),
    ]


def drop_functions(spec: Spec) -> list[sql.Composable]:
    return [sql.SQL("DROP FUNCTION IF EXISTS {}()").format(f.ident)
            for f in (spec.fn_forward, spec.fn_back, spec.fn_truncate)]
