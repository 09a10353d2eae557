"""The copy's swap and unswap: the statements of the one short transaction in which the
partitioned ``T_intermediate`` takes the name ``T`` (the old table becoming ``T_retired``) and
the way back.

Everything the application knows the table by moves with the name: sequences, grants (table and
column), comments, row-level security, triggers, views, inbound foreign keys, and the names of
its indexes and constraints (``ddl.renames``): after the swap the live table carries exactly the
names the old one had (``T_pkey``, a Django ``Meta.indexes`` name, ...), the retired table the
derived ``T_retired_...`` ones; the unswap gives the plain table its names back and the
partitioned one its ``T_intermediate_...`` ones. An identity column's sequence (the
intermediate's is a new one, ``T_intermediate_id_seq``) takes the original name too.
"""

from __future__ import annotations

import dataclasses

from psycopg import sql

from ..catalog import TableInfo, Trigger
from ..connection import Connection
from ..ddl import dependents
from ..ddl import inbound_fks as ifk
from ..ddl.renames import NameSwap, derived_name, sequence_rename_to, swap_names
from ..errors import Refused
from ..names import QualifiedName
from ..plan import Lock, LockTaken, Statement, Step
from .copy_capture import capture_statements, drop_capture_statements
from .copy_state import TRIGGER, TRIGGER_BACK, TRIGGER_TRUNCATE, Spec, set_state, state_where
from .inbound import Inbound, classify

AE = Lock.ACCESS_EXCLUSIVE
SRE = Lock.SHARE_ROW_EXCLUSIVE
SUE = Lock.SHARE_UPDATE_EXCLUSIVE

INCOMING = "intermediate"
OUTGOING = "retired"


def identity_sync(to: QualifiedName, frm: QualifiedName, column: str) -> sql.Composable:
    """Set ``to``'s identity sequence to where ``frm``'s stands, both found by name at run time
    (the intermediate table's identity sequence did not exist when the job was planned)."""
    return sql.SQL(
        "SELECT setval(pg_get_serial_sequence({to}, {c}), "
        "(pg_sequence_last_value(pg_get_serial_sequence({frm}, {c})::regclass)), "
        "(pg_sequence_last_value(pg_get_serial_sequence({frm}, {c})::regclass)) IS NOT NULL) "
        "WHERE pg_sequence_last_value(pg_get_serial_sequence({frm}, {c})::regclass) IS NOT NULL"
    ).format(to=to.literal, frm=frm.literal, c=sql.Literal(column))


def _sequences(info: TableInfo, *, to: QualifiedName, frm: QualifiedName
               ) -> list[sql.Composable]:
    out: list[sql.Composable] = []
    for s in info.sequences:
        if s.kind == "serial":
            out.append(sql.SQL("ALTER SEQUENCE {} OWNED BY {}.{}").format(
                s.name.ident, to.ident, sql.Identifier(s.column)))
        else:
            out.append(identity_sync(to, frm, s.column))
    return out


def inbound_of(info: TableInfo, spec: Spec, notes: list[str] | None = None,
               warnings: list[str] | None = None) -> Inbound:
    """What the swap does with each foreign key pointing at the old table (``ops.inbound``):
    re-pointed where the new table's primary key (``spec.match``) or a unique index carried
    over whole holds its referenced columns; else as ``spec.inbound_fks`` says."""
    keys = [spec.match] + [ix.columns for ix in info.indexes
                           if ix.unique and ix.valid and " WHERE " not in ix.definition
                           and all(c in ix.columns for c in spec.partition_cols)]
    return classify(info, spec.by, keys, spec.inbound_fks, [] if notes is None else notes,
                    [] if warnings is None else warnings)


def fk_moves(inbound: Inbound, to: QualifiedName, *, emulated: list[ifk.Rule] | None = None,
             restored: list[ifk.Rule] | None = None
             ) -> tuple[list[sql.Composable], list[sql.Composable], list[Step]]:
    """Inbound foreign keys inside the swap: dropped from the old table first (``before``);
    added NOT VALID to ``to`` or emulated on it once the names have moved (``after``);
    validated afterwards (SHARE UPDATE EXCLUSIVE on the referencing table: writes go on).
    ``emulated``: the keys emulated on the table ``to`` replaces (the unswap), whose triggers
    go first and which come back as plain keys; ``restored``: the keys the swap dropped (the
    unswap), which come back as plain keys too."""
    before: list[sql.Composable] = [
        *[sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(fk.table.ident,
                                                              sql.Identifier(fk.name))
          for fk in inbound.drop],
        *[ifk.drop_fk(r) for r in inbound.changed],
        *[s for r in emulated or [] for s in (*ifk.drop_triggers(r, to),
                                              *ifk.drop_functions(r))]]
    back = [*inbound.repoint, *(emulated or []), *(restored or [])]
    after: list[sql.Composable] = [
        *[ifk.add_not_valid(r, to) for r in back],
        *[s for r in inbound.emulate for s in (*ifk.functions(r), *ifk.triggers(r, to))]]
    steps = [ifk.validate_step(r, to) for r in back if r.validated]
    return before, after, steps


def swap_steps(conn: Connection, old: TableInfo, spec: Spec, names: list[NameSwap]
               ) -> list[Step]:
    """One short transaction: lock, renames (of the tables, then of their indexes and
    constraints), sequences, grants, comments, RLS, triggers, views, inbound foreign keys,
    capture turned around. Then validate the moved foreign keys. ``names``: the indexes and
    constraints ``T_intermediate`` carries under their ``incoming`` names."""
    t, new, retired = spec.table, spec.intermediate, spec.retired
    inbound = inbound_of(old, spec)
    fk_before, fk_after, fk_steps = fk_moves(inbound, t)
    stmts: list[sql.Composable] = [
        sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(t.ident),
        sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(new.ident),
        *fk_before,
        *drop_capture_statements(spec, t, back=False),
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(t.ident, sql.Identifier(retired.name)),
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(new.ident, sql.Identifier(t.name)),
        *swap_names(names, replaced=retired, taking_over=t),
        *sequence_names(old, t, retired),
        *_sequences(old, to=t, frm=retired),
        *dependents.grants(old, t),
        *dependents.comments(old, t),
        *dependents.row_security(old, t),
        *dependents.triggers(dataclasses.replace(old, triggers=user_triggers(old))),
        *[sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(retired.ident,
                                                              sql.Identifier(tr.name))
          for tr in old.triggers if tr.name not in (TRIGGER, TRIGGER_TRUNCATE)
          and tr.enabled != "D"],
        *dependents.views(old),
        *fk_after,
        *capture_statements(spec, t, retired, back=True),
        set_state(t, "state = 'swapped', swapped_at = now()"),
        *_record_dropped(inbound, t),
    ]
    locks = [LockTaken(AE, str(t)), LockTaken(AE, str(new))]
    # dropping a foreign key locks its table ACCESS EXCLUSIVE (briefly: the swap is short)
    locks += [LockTaken(AE, str(fk.table)) for fk in old.foreign_keys_in]
    swap = Step.sql(
        "swap", f"swap {t} and {new} (the old table stays as {retired}, kept in sync)", _st(stmts),
        locks=locks,
        guard=sql.SQL("SELECT EXISTS (SELECT FROM pgcleave.copies WHERE {} AND state = "
                      "'swapped')").format(state_where(t)))
    return [swap, *fk_steps]


def dropped_rules(inbound: Inbound) -> list[ifk.Rule]:
    """The keys ``--inbound-fks drop`` drops, as rules ``unswap`` can add back (but an ON
    DELETE SET NULL with a column list, which the plan's warning says it cannot)."""
    rules = []
    for fk in inbound.drop:
        try:
            rules.append(ifk.Rule.from_fk(fk))
        except ValueError:
            continue
    return rules


def _record_dropped(inbound: Inbound, t: QualifiedName) -> list[sql.Composable]:
    rules = dropped_rules(inbound)
    if not rules:
        return []
    texts = "[" + ", ".join(r.to_json() for r in rules) + "]"
    return [sql.SQL("UPDATE pgcleave.copies SET dropped_fks = {}::jsonb WHERE {}").format(
        sql.Literal(texts), state_where(t))]


def user_triggers(info: TableInfo) -> list[Trigger]:
    """The table's triggers but pgcleave's own (capture, emulated foreign keys)."""
    return [tr for tr in info.triggers
            if tr.name not in (TRIGGER, TRIGGER_BACK, TRIGGER_TRUNCATE)
            and not ifk.is_emulation(tr.definition)]



def sequence_names(old: TableInfo, t: QualifiedName, retired: QualifiedName
                   ) -> list[sql.Composable]:
    """Identity sequences: the retired table's takes the derived name, the live table's (made
    by ``LIKE ... INCLUDING IDENTITY``, named after the intermediate) the original one. Serial
    sequences need nothing: the new table's default calls the same sequence."""
    out: list[sql.Composable] = []
    for s in old.sequences:
        if s.kind != "identity":
            continue
        out.append(sql.SQL("ALTER SEQUENCE {} RENAME TO {}").format(
            s.name.ident, sql.Identifier(derived_name(s.name.name, t.name, OUTGOING))))
        out.append(sequence_rename_to(t, s.column, s.name.name))
    return out


def back_names(new: TableInfo, old: TableInfo) -> list[NameSwap]:
    """The names the swap moved, read from both tables: each index or constraint of the live
    table whose derived name the retired table carries (a swap by an older pgcleave renamed
    nothing, and nothing is renamed back)."""
    t = new.name.name
    have = {ix.name for ix in old.indexes}
    out: list[NameSwap] = []
    for ix in new.indexes:
        gone = derived_name(ix.name, t, OUTGOING)
        if gone in have:
            out.append(NameSwap(ix.name, derived_name(ix.name, t, INCOMING), gone,
                                ix.constraint is not None and ix.constraint == ix.name))
    return out


def sequence_names_back(new: TableInfo, old: TableInfo, t: QualifiedName
                        ) -> list[sql.Composable]:
    """The unswap's half of ``sequence_names``: the live table's identity sequence takes back
    its ``T_intermediate_...`` name, the retired table's its original one."""
    out: list[sql.Composable] = []
    olds = {s.column: s for s in old.sequences if s.kind == "identity"}
    for s in new.sequences:
        o = olds.get(s.column)
        if s.kind != "identity" or o is None \
                or o.name.name != derived_name(s.name.name, t.name, OUTGOING):
            continue
        out.append(sql.SQL("ALTER SEQUENCE {} RENAME TO {}").format(
            s.name.ident, sql.Identifier(derived_name(s.name.name, t.name, INCOMING))))
        out.append(sql.SQL("ALTER SEQUENCE {} RENAME TO {}").format(
            o.name.ident, sql.Identifier(s.name.name)))
    return out


def unswap_steps(new: TableInfo, old: TableInfo, spec: Spec, emulated: list[ifk.Rule],
                 dropped: list[ifk.Rule] | None = None) -> list[Step]:
    """The swap back; the keys re-pointed at the partitioned table, the ``emulated`` ones and
    the ones the swap ``dropped`` become plain foreign keys of the plain table (NOT VALID,
    then validated: rows written while no key checked them are checked then)."""
    dropped = dropped or []
    t, inter, retired = spec.table, spec.intermediate, spec.retired
    try:
        back = Inbound(repoint=[ifk.Rule.from_fk(fk, t) for fk in new.foreign_keys_in])
    except ValueError as exc:
        raise Refused(f"a foreign key pointing at {t} cannot be moved back: {exc}",
                      hint="drop it first, and re-create it after the unswap") from exc
    fk_before, fk_after, fk_steps = fk_moves(back, t, emulated=emulated, restored=dropped)
    stmts: list[sql.Composable] = [
        sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(t.ident),
        sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(retired.ident),
        *fk_before,
        *drop_capture_statements(spec, t, back=True),
        *[sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(tr.name), t.ident)
          for tr in user_triggers(new)],
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(t.ident, sql.Identifier(inter.name)),
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(retired.ident, sql.Identifier(t.name)),
        *swap_names(back_names(new, old), replaced=inter, taking_over=t, back=True),
        *sequence_names_back(new, old, t),
        *_sequences(old, to=t, frm=inter),
        # a serial's sequence went to the partitioned table at the swap: the retired table's
        # snapshot lists none, the live one's does (else dropping T_intermediate later would
        # take the sequence the plain table's default calls with it)
        *dependents.sequence_ownership(new, t),
        *dependents.grants(new, t),
        # the new table's copies of the user triggers carry their original enabled state
        *[sql.SQL("ALTER TABLE {} ENABLE TRIGGER {}").format(t.ident, sql.Identifier(tr.name))
          for tr in user_triggers(new) if tr.enabled != "D"
          and tr.name in {o.name for o in user_triggers(old)}],
        *dependents.views(new),
        *fk_after,
        *capture_statements(spec, t, inter, back=False),
        set_state(t, "state = 'prepped', swapped_at = NULL"
                  + (", dropped_fks = '[]'" if dropped else "")),
    ]
    locks = [LockTaken(AE, str(t)), LockTaken(AE, str(retired))]
    locks += [LockTaken(AE, str(r.child)) for r in [*back.repoint, *emulated, *dropped]]
    step = Step.sql(
        "unswap", f"swap back: {retired} becomes {t} again, the partitioned table {inter}",
        _st(stmts), locks=locks,
        guard=sql.SQL("SELECT EXISTS (SELECT FROM pgcleave.copies WHERE {} AND state = "
                      "'prepped')").format(state_where(t)))
    return [step, *fk_steps]




def _st(stmts: list[sql.Composable]) -> list[Statement]:
    return list(stmts)
