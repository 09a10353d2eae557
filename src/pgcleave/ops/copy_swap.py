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
from ..ddl.renames import NameSwap, derived_name, sequence_rename_to, swap_names
from ..ddl.tables import collist
from ..names import QualifiedName
from ..plan import Lock, LockTaken, Statement, Step
from .copy_capture import capture_statements, drop_capture_statements
from .copy_state import TRIGGER, TRIGGER_BACK, TRIGGER_TRUNCATE, Spec, set_state, state_where

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


def fk_moves(info: TableInfo, to: QualifiedName) -> tuple[list[sql.Composable], list[Step]]:
    """Inbound foreign keys dropped from the old table and added NOT VALID to ``to`` inside the
    swap; validated afterwards (SHARE UPDATE EXCLUSIVE on the referencing table: writes go on)."""
    stmts: list[sql.Composable] = []
    steps: list[Step] = []
    for fk in info.foreign_keys_in:
        refs = fk.definition[fk.definition.index("REFERENCES"):]
        tail = refs[refs.index(")") + 1:]
        tail = tail.replace(" NOT VALID", "")
        stmts.append(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
            fk.table.ident, sql.Identifier(fk.name)))
        stmts.append(sql.SQL(
            "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}){} NOT VALID"
        ).format(fk.table.ident, sql.Identifier(fk.name), collist(fk.columns), to.ident,
                 collist(fk.ref_columns), sql.SQL(tail)))
        if fk.validated:
            steps.append(Step.sql(
                f"validate {fk.name}", f"validate foreign key {fk.name} of {fk.table}",
                [sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                    fk.table.ident, sql.Identifier(fk.name))],
                locks=[LockTaken(SUE, str(fk.table)), LockTaken(Lock.ROW_SHARE, str(to))],
                guard=sql.SQL("SELECT EXISTS (SELECT FROM pg_constraint WHERE conrelid = "
                              "to_regclass({}) AND conname = {} AND convalidated)").format(
                    fk.table.literal, sql.Literal(fk.name))))
    return stmts, steps


def swap_steps(conn: Connection, old: TableInfo, spec: Spec, names: list[NameSwap]
               ) -> list[Step]:
    """One short transaction: lock, renames (of the tables, then of their indexes and
    constraints), sequences, grants, comments, RLS, triggers, views, inbound foreign keys,
    capture turned around. Then validate the moved foreign keys. ``names``: the indexes and
    constraints ``T_intermediate`` carries under their ``incoming`` names."""
    t, new, retired = spec.table, spec.intermediate, spec.retired
    fk_stmts, fk_steps = fk_moves(old, t)
    stmts: list[sql.Composable] = [
        sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(t.ident),
        sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(new.ident),
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
        *fk_stmts,
        *capture_statements(spec, t, retired, back=True),
        set_state(t, "state = 'swapped', swapped_at = now()"),
    ]
    locks = [LockTaken(AE, str(t)), LockTaken(AE, str(new))]
    locks += [LockTaken(SRE, str(fk.table)) for fk in old.foreign_keys_in]
    swap = Step.sql(
        "swap", f"swap {t} and {new} (the old table stays as {retired}, kept in sync)", _st(stmts),
        locks=locks,
        guard=sql.SQL("SELECT EXISTS (SELECT FROM pgcleave.copies WHERE {} AND state = "
                      "'swapped')").format(state_where(t)))
    return [swap, *fk_steps]


def user_triggers(info: TableInfo) -> list[Trigger]:
    return [tr for tr in info.triggers
            if tr.name not in (TRIGGER, TRIGGER_BACK, TRIGGER_TRUNCATE)]



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


def unswap_steps(new: TableInfo, old: TableInfo, spec: Spec) -> list[Step]:
    t, inter, retired = spec.table, spec.intermediate, spec.retired
    fk_stmts, fk_steps = fk_moves(new, t)
    stmts: list[sql.Composable] = [
        sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(t.ident),
        sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(retired.ident),
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
        *fk_stmts,
        *capture_statements(spec, t, inter, back=False),
        set_state(t, "state = 'prepped', swapped_at = NULL"),
    ]
    locks = [LockTaken(AE, str(t)), LockTaken(AE, str(retired))]
    locks += [LockTaken(SRE, str(fk.table)) for fk in new.foreign_keys_in]
    step = Step.sql(
        "unswap", f"swap back: {retired} becomes {t} again, the partitioned table {inter}",
        _st(stmts), locks=locks,
        guard=sql.SQL("SELECT EXISTS (SELECT FROM pgcleave.copies WHERE {} AND state = "
                      "'prepped')").format(state_where(t)))
    return [step, *fk_steps]




def _st(stmts: list[sql.Composable]) -> list[Statement]:
    return list(stmts)
