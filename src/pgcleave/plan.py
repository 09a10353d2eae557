"""Plans and steps: inert data describing what an operation will do.

An operation inspects the catalog and *returns* a ``Plan``; it never executes anything itself.
The one executor (``execute.py``) runs plans, the dry run renders them, the journal stores them,
and ``resume`` reloads them. So a step must be fully serialisable: its statements are rendered to
text once, when the plan is made, and steps that are more than SQL (batched copies, waits) name a
registered *action* with JSON parameters instead of carrying a Python closure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from psycopg import sql

from .preflight import Requirement


class Lock(StrEnum):
    """Table lock levels, weakest first, as PostgreSQL names them."""

    NONE = "none"
    ACCESS_SHARE = "ACCESS SHARE"
    ROW_SHARE = "ROW SHARE"
    ROW_EXCLUSIVE = "ROW EXCLUSIVE"
    SHARE_UPDATE_EXCLUSIVE = "SHARE UPDATE EXCLUSIVE"
    SHARE = "SHARE"
    SHARE_ROW_EXCLUSIVE = "SHARE ROW EXCLUSIVE"
    EXCLUSIVE = "EXCLUSIVE"
    ACCESS_EXCLUSIVE = "ACCESS EXCLUSIVE"

    @property
    def blocks_writes(self) -> bool:
        return _ORDER.index(self) >= _ORDER.index(Lock.SHARE)

    @property
    def blocks_reads(self) -> bool:
        return self is Lock.ACCESS_EXCLUSIVE


_ORDER = list(Lock)


class Residue(StrEnum):
    """What a done step's effect does to the application if the job stops there (a failure,
    a kill): nothing, only takes space, refuses some of its statements (a CHECK or foreign key
    being validated), or hides rows (a partition detached before it is archived)."""

    NONE = "none"
    SPACE = "space"
    REFUSES = "refuses"
    HIDES = "hides"

    @property
    def harmful(self) -> bool:
        return self in (Residue.REFUSES, Residue.HIDES)

Statement = str | sql.Composable


def render(stmt: Statement) -> str:
    """Render a composed statement to the exact text that will be sent (no connection needed)."""
    return stmt if isinstance(stmt, str) else stmt.as_string(None)


@dataclass(frozen=True)
class LockTaken:
    """One lock a step takes: its level and on which relation (display name)."""

    level: Lock
    on: str

    def __str__(self) -> str:
        return f"{self.level.value} on {self.on}"


@dataclass(frozen=True)
class Step:
    """One unit of work.

    ``statements`` run in order; when ``transactional`` they run in one transaction together
    with the journal update that marks the step done, so a step is either wholly done and
    recorded, or not at all. Non-transactional steps (``CREATE INDEX CONCURRENTLY``,
    ``DETACH ... CONCURRENTLY``) run one statement at a time in autocommit and rely on ``guard``.

    ``guard`` is a query returning one boolean: true when the step's effect is already in place.
    The executor skips a step whose guard is true, which is what makes a resumed job safe.

    ``undo`` holds the statements that reverse the step. Empty means the step cannot be
    reversed (a DROP), so ``rollback`` stops there, unless ``nothing_to_undo`` says the step
    leaves nothing that needs reversing (validating a constraint, attaching an index whose
    reversal comes with an earlier step's undo).

    ``action`` names a registered Python action run instead of plain statements; ``params``
    are its JSON arguments and ``statements`` then show what it runs, for the dry run.

    ``ddl`` marks steps that take locks the application may wait behind; they run under
    ``lock_timeout`` with retries. Data steps (batched copies) run under their own throttle.
    """

    name: str
    description: str
    statements: Sequence[str] = ()
    locks: Sequence[LockTaken] = ()
    transactional: bool = True
    guard: str | None = None
    undo: Sequence[str] = ()
    action: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    ddl: bool = True
    retry_cleanup: Sequence[str] = ()
    nothing_to_undo: bool = False
    #: what the effect does if the job stops after this step; ``residue_note`` says it in
    #: the application's terms ("refuses INSERTs of tenant in [D, E) into exercises")
    residue: Residue = Residue.NONE
    residue_note: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "residue", Residue(self.residue))
        # Immutable once built: sequences become tuples, params a private copy.
        for f in ("statements", "locks", "undo", "retry_cleanup"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        object.__setattr__(self, "params", dict(self.params))

    @classmethod
    def sql(cls, name: str, description: str, statements: list[Statement], *,
            locks: list[LockTaken] | None = None, transactional: bool = True,
            guard: Statement | None = None, undo: list[Statement] | None = None,
            ddl: bool = True, retry_cleanup: list[Statement] | None = None,
            nothing_to_undo: bool = False, residue: Residue = Residue.NONE,
            residue_note: str = "") -> Step:
        return cls(
            name=name, description=description, statements=[render(s) for s in statements],
            locks=list(locks or []), transactional=transactional,
            guard=render(guard) if guard is not None else None,
            undo=[render(s) for s in (undo or [])], ddl=ddl,
            retry_cleanup=[render(s) for s in (retry_cleanup or [])],
            nothing_to_undo=nothing_to_undo, residue=residue, residue_note=residue_note,
        )

    @classmethod
    def act(cls, name: str, description: str, *, action: str, params: Mapping[str, Any],
            shown: Sequence[Statement] = (), locks: Sequence[LockTaken] = (),
            transactional: bool = True, guard: Statement | None = None,
            undo: Sequence[Statement] = (), ddl: bool = False,
            nothing_to_undo: bool = False) -> Step:
        """A step that runs the registered Python ``action`` with JSON ``params``; ``shown``
        are the statements it runs, for the dry run."""
        return cls(name=name, description=description, statements=[render(s) for s in shown],
                   locks=locks, transactional=transactional,
                   guard=render(guard) if guard is not None else None,
                   undo=[render(s) for s in undo], action=action, params=params, ddl=ddl,
                   nothing_to_undo=nothing_to_undo)

    @property
    def strongest_lock(self) -> LockTaken | None:
        if not self.locks:
            return None
        return max(self.locks, key=lambda lt: _ORDER.index(lt.level))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for f in ("statements", "undo", "retry_cleanup"):
            d[f] = list(d[f])
        d["locks"] = [{"level": lt.level.value, "on": lt.on} for lt in self.locks]
        d["params"] = json.loads(json.dumps(self.params))
        d["residue"] = self.residue.value
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Step:
        d = dict(d)
        d["locks"] = [LockTaken(Lock(x["level"]), x["on"]) for x in d.get("locks", [])]
        return cls(**d)


@dataclass(frozen=True)
class Plan:
    """What an operation will do to one target table, in order. Immutable: a planner that
    learns more after building it makes a new one (``add``)."""

    operation: str
    target: str
    args: Mapping[str, Any]
    steps: Sequence[Step]
    notes: Sequence[str] = ()
    warnings: Sequence[str] = ()
    #: privileges and settings the steps need, checked before the first change (preflight)
    requires: Sequence[Requirement] = ()

    def __post_init__(self) -> None:
        for f in ("steps", "notes", "warnings", "requires"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        object.__setattr__(self, "args", dict(self.args))

    def add(self, *, steps: Sequence[Step] = (), notes: Sequence[str] = (),
            warnings: Sequence[str] = (), requires: Sequence[Requirement] = ()) -> Plan:
        """This plan with more steps, notes, warnings or requirements at the end."""
        return Plan(self.operation, self.target, self.args, (*self.steps, *steps),
                    (*self.notes, *notes), (*self.warnings, *warnings),
                    (*self.requires, *requires))

    def to_json(self) -> dict[str, Any]:
        return {
            "operation": self.operation, "target": self.target, "args": dict(self.args),
            "notes": list(self.notes), "warnings": list(self.warnings),
            "requires": [r.to_json() for r in self.requires],
            "steps": [s.to_json() for s in self.steps],
        }

    def render_sql(self) -> str:
        """The dry run: every statement of every step, with the locks it takes, as SQL text
        that could be pasted into psql."""
        out: list[str] = [f"-- pgcleave {self.operation} {self.target}"]
        for note in self.notes:
            out.append(f"-- note: {note}")
        for w in self.warnings:
            out.append(f"-- WARNING: {w}")
        for r in self.requires:
            out.append(f"-- requires: {r.what}")
        for i, step in enumerate(self.steps, 1):
            out.append("")
            mode = "one transaction" if step.transactional else "autocommit, not in a transaction"
            out.append(f"-- step {i}/{len(self.steps)} [{step.name}]: {step.description}")
            locks = "; ".join(str(lt) for lt in step.locks) or "no table lock"
            out.append(f"--   locks: {locks}")
            retry = ", under lock_timeout with retry" if step.ddl else ""
            out.append(f"--   runs: {mode}{retry}")
            if step.action:
                out.append(f"--   action: {step.action} {json.dumps(step.params, sort_keys=True)}")
            if step.transactional and len(step.statements) > 1:
                out.append("BEGIN;")
            for stmt in step.statements:
                out.append(stmt.rstrip().rstrip(";") + ";")
            if step.transactional and len(step.statements) > 1:
                out.append("COMMIT;")
            if step.undo:
                out.append("--   undo: " + " ".join(u.rstrip(";") + ";" for u in step.undo))
            if step.residue.harmful:
                out.append(f"--   if the job stops here: {step.residue_note or step.residue}"
                           + ("; undone at once on a failure" if step.undo else ""))
        return "\n".join(out) + "\n"
