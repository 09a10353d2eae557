"""Foreign keys that point at a table being partitioned (inbound keys), as SQL recipes.

PostgreSQL lets a foreign key reference a partitioned table (since 12) when a PRIMARY KEY or
UNIQUE of the partitioned table covers the referenced columns, which it can only when they
contain the partition key. Such a key is *re-pointed* at the cut-over: dropped from the old
table and added ``NOT VALID`` to the partitioned one (catalog only), then validated with writes
flowing (``VALIDATE`` takes SHARE UPDATE EXCLUSIVE on the referencing table and ROW SHARE on the
referenced one). Verified on 15 and 18: ``NOT VALID`` is allowed for a key *referencing* a
partitioned table (it is refused only for a key *on* a partitioned table before 18).

A key whose referenced columns do not contain the partition key cannot reference the
partitioned table. ``emulate`` replaces it with constraint triggers doing what PostgreSQL's own
referential triggers do:

- on INSERT, and UPDATE of the key columns, of the referencing (child) table: a key with a NULL
  column references nothing (MATCH SIMPLE; MATCH FULL refuses a mix of NULL and non-NULL);
  otherwise the referenced row must exist and is locked ``FOR KEY SHARE`` until the end of the
  transaction, so a concurrent DELETE or key UPDATE of it waits for this transaction;
- on DELETE, and UPDATE of the referenced columns, of the referenced (parent) table: the key's
  action (NO ACTION and RESTRICT raise SQLSTATE 23503 with PostgreSQL's message, CASCADE,
  SET NULL, SET DEFAULT). Under READ COMMITTED each statement of the trigger takes a new
  snapshot: a child row committed by a transaction the DELETE waited for (its ``FOR KEY SHARE``
  lock) is seen, so no orphan can commit in either order.

One gap no trigger can close: a DELETE (or key UPDATE) of the referenced table in a REPEATABLE
READ or SERIALIZABLE transaction keeps its snapshot for the trigger's query, so a child row
committed after that snapshot (its transaction held the FOR KEY SHARE lock the DELETE waited
for) is not seen and the orphan commits (verified on 15: PostgreSQL's own RI triggers avoid it
with a crosscheck snapshot that plpgsql cannot take; SERIALIZABLE protects only when the child's
writer is SERIALIZABLE too). The plan says so in its warning.

The functions are SECURITY DEFINER in the ``pgcleave`` schema, owned by the role that runs
pgcleave (the tables' owner: no superuser needed), with a fixed search_path; the application's
roles need no privilege they did not have. Each emulated key is recorded in the COMMENT of its
child-side trigger (which carries the key's name), so ``status`` and ``check`` find it and
``unpartition``/``unswap`` put a plain foreign key back.
"""

from __future__ import annotations

from psycopg import sql

from ..catalog import ForeignKey
from ..catalog.emulated_fks import MARK, Rule, emulated, is_emulation
from ..names import QualifiedName
from ..plan import Lock, LockTaken, Step
from .tables import collist


def emulable(fk: ForeignKey) -> str | None:
    """Why ``fk`` cannot be emulated, or None."""
    try:
        Rule.from_fk(fk)
    except ValueError as exc:
        return str(exc)
    return None


# -- re-pointing ------------------------------------------------------------------------------
def add_not_valid(r: Rule, to: QualifiedName) -> sql.Composable:
    return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}){} "
                   "NOT VALID").format(r.child.ident, sql.Identifier(r.name),
                                       collist(list(r.columns)), to.ident,
                                       collist(list(r.ref_columns)), sql.SQL(r.clauses()))


def drop_fk(r: Rule, *, if_exists: bool = False) -> sql.Composable:
    return sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}{}").format(
        r.child.ident, sql.SQL("IF EXISTS " if if_exists else ""), sql.Identifier(r.name))


def validate_step(r: Rule, to: QualifiedName, *, name: str | None = None) -> Step:
    """Validate the re-pointed key with writes flowing (a scan of the child table)."""
    return Step.sql(
        name or f"validate {r.name}", f"validate foreign key {r.name} of {r.child} -> {to}",
        [sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(r.child.ident,
                                                                 sql.Identifier(r.name))],
        locks=[LockTaken(Lock.SHARE_UPDATE_EXCLUSIVE, str(r.child)),
               LockTaken(Lock.ROW_SHARE, str(to))],
        guard=sql.SQL("SELECT EXISTS (SELECT FROM pg_constraint WHERE conrelid = "
                      "to_regclass({}) AND conname = {} AND contype = 'f' AND convalidated)"
                      ).format(r.child.literal, sql.Literal(r.name)),
        nothing_to_undo=True)


# -- emulation --------------------------------------------------------------------------------
def _eq(cols: tuple[str, ...], alias: str, refs: tuple[str, ...], rec: str) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{}.{} = {}.{}").format(sql.Identifier(alias), sql.Identifier(c),
                                        sql.SQL(rec), sql.Identifier(v))
        for c, v in zip(cols, refs, strict=True))


def _any_null(cols: tuple[str, ...], rec: str, op: str = "OR") -> sql.Composable:
    return sql.SQL(f" {op} ").join(sql.SQL("{}.{} IS NULL").format(sql.SQL(rec),
                                                                     sql.Identifier(c))
                                   for c in cols)


def _values(cols: tuple[str, ...], rec: str) -> sql.Composable:
    return sql.SQL("concat_ws(', ', {})").format(sql.SQL(", ").join(
        sql.SQL("{}.{}").format(sql.SQL(rec), sql.Identifier(c)) for c in cols))


def _fn(fn: QualifiedName, body: str) -> sql.Composable:
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
        "SET search_path = pg_catalog, pg_temp AS {body}").format(fn=fn.ident,
                                                                 body=sql.Literal(body))


def _raise(message: sql.Composable, detail: sql.Composable, r: Rule,
           table: QualifiedName) -> sql.Composable:
    return sql.SQL(
        "RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation', MESSAGE = {m}, DETAIL = {d}, "
        "CONSTRAINT = {c}, SCHEMA = {s}, TABLE = {t};").format(
        m=message, d=detail, c=sql.Literal(r.name), s=sql.Literal(table.schema),
        t=sql.Literal(table.name))


def child_function(r: Rule) -> sql.Composable:
    """The check on the child's INSERT and key UPDATE: the referenced row exists, locked."""
    cols = ", ".join(r.columns)
    full: sql.Composable = sql.SQL("")
    if r.match_full and len(r.columns) > 1:
        full = sql.SQL("    IF NOT ({all_null}) THEN {err} END IF;\n").format(
            all_null=_any_null(r.columns, "NEW", "AND"),
            err=_raise(sql.Literal(f'insert or update on table "{r.child.name}" violates '
                                   f'foreign key constraint "{r.name}"'),
                       sql.Literal("MATCH FULL does not allow mixing of null and nonnull key "
                                   "values."), r, r.child))
    body = sql.SQL(
        "\nBEGIN\n"
        "  IF TG_OP = 'UPDATE' AND ROW({old}) IS NOT DISTINCT FROM ROW({new}) THEN\n"
        "    RETURN NULL;\n  END IF;\n"
        "  IF {any_null} THEN\n{full}    RETURN NULL;\n  END IF;\n"
        "  PERFORM 1 FROM {parent} p WHERE {eq} FOR KEY SHARE OF p;\n"
        "  IF NOT FOUND THEN\n    {err}\n  END IF;\n"
        "  RETURN NULL;\nEND\n").format(
        old=collist(list(r.columns), "OLD"), new=collist(list(r.columns), "NEW"),
        any_null=_any_null(r.columns, "NEW"), full=full, parent=r.parent.ident,
        eq=_eq(r.ref_columns, "p", r.columns, "NEW"),
        err=_raise(sql.Literal(f'insert or update on table "{r.child.name}" violates foreign '
                               f'key constraint "{r.name}"'),
                   sql.SQL("format({}, {})").format(
                       sql.Literal(f"Key ({cols})=(%s) is not present in table "
                                   f'"{r.parent.name}".'), _values(r.columns, "NEW")),
                   r, r.child))
    return _fn(r.child_fn, body.as_string(None))


def _action(r: Rule, action: str, event: str) -> sql.Composable:
    child = r.child.ident
    where = _eq(r.columns, "c", r.ref_columns, "OLD")
    if action in ("NO ACTION", "RESTRICT"):
        # NO ACTION: another row carrying the same key now satisfies the children
        still = sql.SQL("") if action == "RESTRICT" else sql.SQL(
            " AND NOT EXISTS (SELECT 1 FROM {} p WHERE {})").format(
            r.parent.ident, _eq(r.ref_columns, "p", r.ref_columns, "OLD"))
        err = _raise(sql.Literal(f'update or delete on table "{r.parent.name}" violates '
                                 f'foreign key constraint "{r.name}" on table '
                                 f'"{r.child.name}"'),
                     sql.SQL("format({}, {})").format(
                         sql.Literal(f"Key ({', '.join(r.ref_columns)})=(%s) is still "
                                     f'referenced from table "{r.child.name}".'),
                         _values(r.ref_columns, "OLD")), r, r.parent)
        return sql.SQL(
            "PERFORM 1 FROM {child} c WHERE {where} LIMIT 1 FOR KEY SHARE OF c;\n"
            "    IF FOUND{still} THEN\n      {err}\n    END IF;").format(
            child=child, where=where, still=still, err=err)
    if action == "CASCADE" and event == "DELETE":
        return sql.SQL("DELETE FROM {} c WHERE {};").format(child, where)
    if action == "CASCADE":
        sets: sql.Composable = sql.SQL(", ").join(
            sql.SQL("{} = NEW.{}").format(sql.Identifier(c), sql.Identifier(v))
            for c, v in zip(r.columns, r.ref_columns, strict=True))
    else:
        val = sql.SQL("NULL" if action == "SET NULL" else "DEFAULT")
        sets = sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(c), val)
                                  for c in r.columns)
    upd = sql.SQL("UPDATE {} c SET {} WHERE {};").format(child, sets, where)
    if action == "SET DEFAULT":
        # A default equal to the removed key leaves the rows as they were, and the child's
        # trigger sees no change: look again, as PostgreSQL's RI_FKey_setdefault does.
        return sql.SQL("{}\n    {}").format(upd, _action(r, "NO ACTION", event))
    return upd


def parent_function(r: Rule) -> sql.Composable:
    """The referenced table's side: on DELETE and key UPDATE, the key's action."""
    refs = list(r.ref_columns)
    body = sql.SQL(
        "\nBEGIN\n"
        "  IF TG_OP = 'UPDATE' AND ROW({old}) IS NOT DISTINCT FROM ROW({new}) THEN\n"
        "    RETURN NULL;\n  END IF;\n"
        "  IF {any_null} THEN\n    RETURN NULL;\n  END IF;\n"
        "  IF TG_OP = 'DELETE' THEN\n    {on_delete}\n"
        "  ELSE\n    {on_update}\n  END IF;\n"
        "  RETURN NULL;\nEND\n").format(
        old=collist(refs, "OLD"), new=collist(refs, "NEW"),
        any_null=_any_null(r.ref_columns, "OLD"),
        on_delete=_action(r, r.on_delete, "DELETE"),
        on_update=_action(r, r.on_update, "UPDATE"))
    return _fn(r.parent_fn, body.as_string(None))


def functions(r: Rule) -> list[sql.Composable]:
    return [child_function(r), parent_function(r)]


def drop_functions(r: Rule) -> list[sql.Composable]:
    return [sql.SQL("DROP FUNCTION IF EXISTS {}()").format(fn.ident)
            for fn in (r.child_fn, r.parent_fn)]


def _timing(r: Rule, action: str) -> sql.Composable:
    # PostgreSQL defers only the checks; the actions (and RESTRICT) run at once.
    if r.deferrable and action == "NO ACTION":
        return sql.SQL("DEFERRABLE INITIALLY " + ("DEFERRED" if r.deferred else "IMMEDIATE"))
    return sql.SQL("NOT DEFERRABLE")


def triggers(r: Rule, parent: QualifiedName) -> list[sql.Composable]:
    """The constraint triggers of an emulated key (``parent``: the referenced table as it is
    named when they are created), and the COMMENT recording the key."""
    return [
        sql.SQL("CREATE CONSTRAINT TRIGGER {} AFTER INSERT OR UPDATE OF {} ON {} {} FOR EACH "
                "ROW EXECUTE FUNCTION {}()").format(
            sql.Identifier(r.name), collist(list(r.columns)), r.child.ident,
            _timing(r, "NO ACTION"), r.child_fn.ident),
        sql.SQL("CREATE CONSTRAINT TRIGGER {} AFTER DELETE ON {} {} FOR EACH ROW EXECUTE "
                "FUNCTION {}()").format(sql.Identifier(r.delete_trigger), parent.ident,
                                        _timing(r, r.on_delete), r.parent_fn.ident),
        sql.SQL("CREATE CONSTRAINT TRIGGER {} AFTER UPDATE OF {} ON {} {} FOR EACH ROW EXECUTE "
                "FUNCTION {}()").format(sql.Identifier(r.update_trigger),
                                        collist(list(r.ref_columns)), parent.ident,
                                        _timing(r, r.on_update), r.parent_fn.ident),
        sql.SQL("COMMENT ON TRIGGER {} ON {} IS {}").format(
            sql.Identifier(r.name), r.child.ident, sql.Literal(MARK + r.to_json())),
    ]


def drop_triggers(r: Rule, parent: QualifiedName) -> list[sql.Composable]:
    return [
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(r.name), r.child.ident),
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(r.delete_trigger),
                                                         parent.ident),
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(r.update_trigger),
                                                         parent.ident),
    ]


def emulate(r: Rule, parent: QualifiedName) -> list[sql.Composable]:
    """Inside the cut-over: the foreign key dropped, its triggers created (no scan: the rows
    were valid under the key a moment ago, and the table was locked since)."""
    return [drop_fk(r), *triggers(r, parent)]


def orphans_sql(r: Rule) -> sql.Composed:
    """How many child rows reference no row of the parent (an anti-join)."""
    return sql.SQL("SELECT count(*) FROM {child} c WHERE NOT ({nulls}) AND NOT EXISTS "
                   "(SELECT 1 FROM {parent} p WHERE {eq})").format(
        child=r.child.ident, nulls=_any_null(r.columns, "c"), parent=r.parent.ident,
        eq=_eq(r.ref_columns, "p", r.columns, "c"))


def triggers_ok_sql(r: Rule) -> sql.Composed:
    """Whether the three triggers are there and enabled."""
    return sql.SQL(
        "SELECT count(*) = 3 FROM pg_trigger WHERE tgenabled <> 'D' AND tgparentid = 0 AND "
        "((tgrelid = to_regclass({c}) AND tgname = {n}) OR (tgrelid = to_regclass({p}) AND "
        "tgname IN ({d}, {u})))").format(
        c=r.child.literal, n=sql.Literal(r.name), p=r.parent.literal,
        d=sql.Literal(r.delete_trigger), u=sql.Literal(r.update_trigger))


__all__ = [
    "MARK",
    "Rule",
    "add_not_valid",
    "drop_fk",
    "drop_functions",
    "drop_triggers",
    "emulable",
    "emulate",
    "emulated",
    "functions",
    "is_emulation",
    "orphans_sql",
    "triggers",
    "triggers_ok_sql",
    "validate_step",
]
