"""What a conversion does with the foreign keys that point at the table (both strategies).

A key whose referenced columns are a unique key of the partitioned table (they contain the
partition key) is re-pointed at the cut-over (``NOT VALID``, then validated with writes
flowing). The others cannot reference a partitioned table: refused with the three ways out,
or, as asked with ``--inbound-fks``, dropped or emulated by constraint triggers
(``ddl.inbound_fks``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..catalog import ForeignKey, TableInfo
from ..ddl.inbound_fks import Rule, emulable
from ..errors import Refused

MODES = ("refuse", "drop", "emulate")


@dataclass
class Inbound:
    """The inbound keys of one conversion, by what happens to them."""

    repoint: list[Rule] = field(default_factory=list)
    emulate: list[Rule] = field(default_factory=list)
    drop: list[ForeignKey] = field(default_factory=list)

    @property
    def changed(self) -> list[Rule]:
        """Every key that is dropped from the old table and put back in some form."""
        return [*self.repoint, *self.emulate]


def mode_of(inbound_fks: str | None, drop_inbound_fks: bool) -> str:
    """``--drop-inbound-fks`` is ``--inbound-fks drop``."""
    if inbound_fks is not None and inbound_fks not in MODES:
        raise Refused(f"unknown --inbound-fks {inbound_fks!r}", hint="use refuse, drop or emulate")
    if drop_inbound_fks and inbound_fks not in (None, "drop"):
        raise Refused(f"--drop-inbound-fks and --inbound-fks {inbound_fks} contradict each other")
    return "drop" if drop_inbound_fks else (inbound_fks or "refuse")


def _fk_text(fk: ForeignKey) -> str:
    return f"{fk.table}.{fk.name} ({', '.join(fk.columns)}) -> ({', '.join(fk.ref_columns)})"


def classify(info: TableInfo, col: str, unique_keys: list[list[str]], mode: str,
             notes: list[str], warnings: list[str]) -> Inbound:
    """Sort ``info``'s inbound keys: re-pointed when ``unique_keys`` (the unique keys the
    partitioned table will have) hold their referenced columns; the others as ``mode`` says
    (``refuse`` raises, naming the three options and what each costs)."""
    out = Inbound()
    keysets = [set(k) for k in unique_keys]
    rest: list[ForeignKey] = []
    for fk in info.foreign_keys_in:
        if fk.table == info.name:
            raise Refused(f"{info.name} references itself ({fk.name}); not supported",
                          hint="drop the self-referencing foreign key first, and re-create it "
                               "after the conversion")
        if col in fk.ref_columns and set(fk.ref_columns) in keysets \
                and emulable(fk) is None:
            out.repoint.append(Rule.from_fk(fk, info.name))
            notes.append(f"foreign key {fk.name} on {fk.table} is re-pointed at the partitioned "
                         f"{info.name} in the cut-over (NOT VALID), then validated while writes "
                         "continue; its actions, deferrability and name are kept")
        else:
            rest.append(fk)
    if not rest:
        return out
    if mode == "refuse":
        fks = "; ".join(_fk_text(fk) for fk in rest)
        raise Refused(
            f"foreign keys point at {info.name}: {fks}. Their referenced columns do not "
            f"contain the partition key {col}, so they will not be unique on the partitioned "
            f"table and no foreign key can reference them there; nothing was changed",
            hint="choose one: (1) --drop-inbound-fks (= --inbound-fks drop): the keys are "
                 "dropped in the cut-over (their definitions are printed) and nothing checks "
                 "those references afterwards; (2) `pgcleave set-primary-key` first, to make "
                 f"{col} part of the referenced key, and have the referencing tables carry "
                 f"{col} too: the keys are then re-pointed and stay real foreign keys; "
                 "(3) --inbound-fks emulate: each key becomes constraint triggers that check "
                 "and lock like PostgreSQL's own (FOR KEY SHARE, its ON DELETE/ON UPDATE "
                 "action), at the cost of a trigger call per write, a lookup in every partition "
                 "for each referencing write, and a key shown as triggers in the catalog")
    for fk in rest:
        if mode == "drop":
            out.drop.append(fk)
            try:
                Rule.from_fk(fk)
                back = "`unswap` puts it back"
            except ValueError:
                back = "`unswap` cannot put it back: re-create it by hand"
            warnings.append(f"foreign key {fk.table}.{fk.name} will be dropped ({back}): "
                            f"ALTER TABLE {fk.table} ADD CONSTRAINT {fk.name} {fk.definition}")
            continue
        why = emulable(fk)
        if why is not None:
            raise Refused(f"foreign key {fk.table}.{fk.name} cannot be emulated: {why}",
                          hint="use --drop-inbound-fks, or change the key first")
        r = Rule.from_fk(fk, info.name)
        out.emulate.append(r)
        warnings.append(
            f"foreign key {fk.table}.{fk.name} ({r.describe()}) is emulated by constraint "
            f"triggers from the cut-over on: pg_constraint shows it as a trigger, not a "
            "foreign key; every referenced-side lookup probes each partition (index them "
            f"on ({', '.join(fk.ref_columns)})); `pgcleave check` verifies it. It holds "
            "exactly under READ COMMITTED (the default): a DELETE of a referenced row in a "
            "REPEATABLE READ or SERIALIZABLE transaction can miss a child row committed after "
            "its snapshot")
    return out


__all__ = ["MODES", "Inbound", "classify", "mode_of"]
