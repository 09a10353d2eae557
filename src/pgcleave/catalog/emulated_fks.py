"""Inbound foreign keys that pgcleave emulates with constraint triggers, as recorded in the
COMMENT of each one's child-side trigger: the key as its parts (``Rule``), and where to find the
emulated ones. The recipes that create and drop them are in ``ddl/inbound_fks.py``; this half is
a lookup, light enough for ``status``."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

from ..connection import Connection
from ..names import QualifiedName, child_name
from .table import ForeignKey

#: Start of the COMMENT on an emulated key's child-side trigger (JSON of its Rule follows).
MARK = "pgcleave emulated foreign key: "

ACTIONS = ("NO ACTION", "RESTRICT", "CASCADE", "SET NULL", "SET DEFAULT")


@dataclass(frozen=True)
class Rule:
    """An inbound foreign key as its parts (read from ``pg_get_constraintdef``)."""

    name: str
    child: QualifiedName
    columns: tuple[str, ...]
    parent: QualifiedName
    ref_columns: tuple[str, ...]
    on_delete: str = "NO ACTION"
    on_update: str = "NO ACTION"
    match_full: bool = False
    deferrable: bool = False
    deferred: bool = False
    validated: bool = True

    @classmethod
    def from_fk(cls, fk: ForeignKey, parent: QualifiedName | None = None) -> Rule:
        tail = fk.definition[fk.definition.index("REFERENCES"):]
        tail = tail[tail.index(")") + 1:]

        def action(event: str) -> str:
            m = re.search(rf"ON {event} (NO ACTION|RESTRICT|CASCADE|SET NULL|SET DEFAULT)"
                          r"( \()?", tail)
            if m and m.group(2):
                raise ValueError(f"{fk.name}: ON {event} {m.group(1)} with a column list")
            return m.group(1) if m else "NO ACTION"

        return cls(name=fk.name, child=fk.table, columns=tuple(fk.columns),
                   parent=parent or fk.ref_table, ref_columns=tuple(fk.ref_columns),
                   on_delete=action("DELETE"), on_update=action("UPDATE"),
                   match_full="MATCH FULL" in tail,
                   deferrable="DEFERRABLE" in tail and "NOT DEFERRABLE" not in tail,
                   deferred="INITIALLY DEFERRED" in tail, validated=fk.validated)

    # -- text ------------------------------------------------------------------------------
    def clauses(self) -> str:
        """What follows ``REFERENCES t (cols)`` in the key's definition."""
        out = " MATCH FULL" if self.match_full else ""
        if self.on_update != "NO ACTION":
            out += f" ON UPDATE {self.on_update}"
        if self.on_delete != "NO ACTION":
            out += f" ON DELETE {self.on_delete}"
        if self.deferrable:
            out += " DEFERRABLE INITIALLY " + ("DEFERRED" if self.deferred else "IMMEDIATE")
        return out

    def describe(self) -> str:
        return (f"{self.child}({', '.join(self.columns)}) -> {self.parent}"
                f"({', '.join(self.ref_columns)}) ON DELETE {self.on_delete} ON UPDATE "
                f"{self.on_update}" + (" DEFERRABLE" if self.deferrable else ""))

    def to_json(self) -> str:
        d = asdict(self)
        d["child"], d["parent"] = [self.child.schema, self.child.name], \
            [self.parent.schema, self.parent.name]
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Rule:
        d = json.loads(text)
        d["child"] = QualifiedName(*d["child"])
        d["parent"] = QualifiedName(*d["parent"])
        d["columns"], d["ref_columns"] = tuple(d["columns"]), tuple(d["ref_columns"])
        return cls(**d)

    # -- names -----------------------------------------------------------------------------
    def _tag(self) -> str:
        import hashlib  # here: status reads rules and names no function

        return hashlib.md5(f"{self.child.quoted}.{self.name}".encode()).hexdigest()[:12]

    @property
    def child_fn(self) -> QualifiedName:
        return QualifiedName("pgcleave", f"fk_check_{self._tag()}")

    @property
    def parent_fn(self) -> QualifiedName:
        return QualifiedName("pgcleave", f"fk_action_{self._tag()}")

    @property
    def delete_trigger(self) -> str:
        return child_name(self.name, "pgcleave_del")

    @property
    def update_trigger(self) -> str:
        return child_name(self.name, "pgcleave_upd")


def is_emulation(trigger_definition: str) -> bool:
    """Whether a trigger (``pg_get_triggerdef``) is one of an emulated key's: the swaps and
    reverts leave those to the recipes here rather than copying them as the table's own."""
    return "pgcleave.fk_check_" in trigger_definition \
        or "pgcleave.fk_action_" in trigger_definition


def emulated(conn: Connection, parent: QualifiedName) -> list[Rule]:
    """The emulated keys that reference ``parent``, read from their triggers' comments."""
    return emulated_from(conn.execute(EMULATED_SQL, [MARK + "%"]).fetchall(), parent)


#: Every emulated key's trigger comment (parameter: ``MARK + '%'``); ``status`` sends it in a
#: pipeline with its other questions.
EMULATED_SQL = (
    "SELECT obj_description(t.oid, 'pg_trigger') FROM pg_trigger t "
    "WHERE NOT t.tgisinternal AND t.tgparentid = 0 "
    "AND obj_description(t.oid, 'pg_trigger') LIKE %s ORDER BY t.tgname")


def emulated_from(rows: list[tuple[object, ...]], parent: QualifiedName) -> list[Rule]:
    """The rules of ``EMULATED_SQL``'s rows that reference ``parent``."""
    out = [Rule.from_json(str(row[0])[len(MARK):]) for row in rows]
    return [r for r in out if r.parent == parent]
