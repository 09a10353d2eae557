"""The state of one copy (pgslice's prep ... swap): its row in ``pgcleave.copies``, the
``Spec`` every copy planner and action derives its names and ranges from, and the trigger
names and advisory-lock base the fill and the capture trigger share."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NotRequired, TypedDict

from psycopg import sql
from psycopg.types.json import Jsonb

from .. import policy as policy_mod
from ..catalog import TableInfo, snapshot
from ..connection import Connection
from ..errors import NotFound, Refused
from ..names import QualifiedName, child_name
from ..plan import Step
from ..schemes import (
    Interval,
    KeyKind,
    check_fits,
    key_kind,
    suffix,
)

TRIGGER = "pgcleave_capture"


TRIGGER_BACK = "pgcleave_capture_back"


TRIGGER_TRUNCATE = "pgcleave_capture_truncate"


FILL_LOCK_BASE = 0x7067_636C_0000_0000  # 'pgcl' << 32, plus the table's OID

#: The most connections one fill copies with (``fill --jobs``): each holds its own advisory
#: key while a batch runs, and the capture trigger's DELETE waits for every one of them.
MAX_FILL_JOBS = 8

#: What a capture function written before parallel fills lacks (it waits for one key only).
PARALLEL_MARK = "generate_series"


def fill_lock_key(base: int, worker: int) -> int:
    """The advisory key of fill connection ``worker`` (0-based): the copy's key for the first,
    the same OID under 'pgcm', 'pgcn', ... for the next ones (no other copy's key)."""
    return base + (worker << 32)


# -- the shape of one copy ------------------------------------------------------------------------
class DeferredIndex(TypedDict):
    """An index built after the fill (``prep --defer-indexes``)."""

    name: str  # the parent's index
    suffix: str  # of each partition's index name
    tail: str  # USING ... of its definition
    unique: bool


@dataclass
class CopyState:
    """The row of ``pgcleave.copies`` for one table (None when the table was never prepped)."""

    table: QualifiedName
    table_oid: int
    intermediate: QualifiedName
    retired: QualifiedName
    by: str
    interval: str
    time_zone: str
    state: str
    deferred: list[DeferredIndex]
    fill_where: str | None
    filled_at: datetime | None
    default_rows: int | None
    verified_at: datetime | None
    layout: dict[str, Any] = field(default_factory=dict)
    inbound_fks: str = "refuse"
    dropped_fks: list[str] = field(default_factory=list)  # Rule JSON texts (copy_swap)


def load_state(conn: Connection, table: QualifiedName) -> CopyState | None:
    row = conn.execute("SELECT to_regclass('pgcleave.jobs') IS NOT NULL"
                       " AND to_regclass('pgcleave.copies') IS NOT NULL").fetchone()
    if not (row and row[0]):
        return None
    r = conn.execute(
        'SELECT table_oid, intermediate, retired, by_column, "interval", time_zone, state,'
        # the layout through to_jsonb: a schema not migrated yet has no such column
        " deferred, fill_where, filled_at, default_rows, verified_at, to_jsonb(c) -> 'layout',"
        " coalesce(to_jsonb(c) ->> 'inbound_fks', 'refuse'),"
        " coalesce(to_jsonb(c) -> 'dropped_fks', '[]')"
        " FROM pgcleave.copies c WHERE table_schema = %s AND table_name = %s",
        [table.schema, table.name]).fetchone()
    if r is None:
        return None
    return CopyState(table, int(r[0]), table.sibling(r[1]), table.sibling(r[2]), r[3], r[4], r[5],
                     r[6], list(r[7] or []), r[8], r[9], r[10], r[11], dict(r[12] or {}),
                     str(r[13]), [json.dumps(x) for x in r[14]])


def state_where(table: QualifiedName) -> sql.Composable:
    return sql.SQL("table_schema = {} AND table_name = {}").format(
        sql.Literal(table.schema), sql.Literal(table.name))


def set_state(table: QualifiedName, assignments: str) -> sql.Composable:
    return sql.SQL("UPDATE pgcleave.copies SET {} WHERE {}").format(
        sql.SQL(assignments), state_where(table))


@dataclass
class Spec:
    """Everything the statements of a copy need, derived from the old table's snapshot."""

    table: QualifiedName  # the name the application uses
    oid: int  # the old table's OID (stable across renames): names the capture functions
    intermediate: QualifiedName
    retired: QualifiedName
    by: str
    key_type: str
    kind: KeyKind
    interval: Interval
    time_zone: str
    pk: list[str]  # the old table's primary key
    match: list[str]  # the new table's key: pk + partition key
    columns: list[str]  # insertable columns (generated columns are recomputed)
    column_types: dict[str, str]
    identity_always: list[str]
    # {} for one range level; else how the copy partitions (see ``copy_layout``)
    layout: dict[str, Any] = field(default_factory=dict)
    # inbound foreign keys the swap cannot re-point: refuse, drop or emulate (ops.inbound)
    inbound_fks: str = "refuse"
    default: QualifiedName = field(init=False)

    def __post_init__(self) -> None:
        self.default = self.table.sibling(child_name(self.table.name, "default"))

    def partition_name(self, lower: Any) -> QualifiedName:
        return self.table.sibling(child_name(self.table.name, suffix(lower, self.interval)))

    @property
    def method(self) -> str:
        """range, list or hash: the top level's method."""
        return str(self.layout.get("method", "range"))

    @property
    def sub(self) -> str | None:
        """The second level's range column (two levels: list, then range), or None."""
        v = self.layout.get("then")
        return str(v) if v else None

    @property
    def partition_cols(self) -> list[str]:
        """The columns every unique key of the new table must contain."""
        return [self.by] + ([self.sub] if self.sub and self.sub != self.by else [])

    @property
    def fill_lock(self) -> int:
        """The advisory lock key that fill batches (exclusive) and the capture trigger's
        not-found path (shared) use; derived from the old table's OID."""
        return FILL_LOCK_BASE + self.oid

    @property
    def fn_forward(self) -> QualifiedName:
        return QualifiedName("pgcleave", f"copy_capture_{self.oid}")

    @property
    def fn_back(self) -> QualifiedName:
        return QualifiedName("pgcleave", f"copy_capture_back_{self.oid}")

    @property
    def fn_truncate(self) -> QualifiedName:
        return QualifiedName("pgcleave", f"copy_truncate_{self.oid}")


def make_spec(info: TableInfo, by: str, interval: str, time_zone: str = "UTC",
              layout: dict[str, Any] | None = None) -> Spec:
    """Validate the old table for a copy by ``by`` and ``interval``; refuse what cannot work.

    With a ``layout`` (hash, list, or list then range), ``interval`` is the second level's
    (empty when there is none: the spec's ``interval`` is then a placeholder nothing reads)."""
    layout = dict(layout or {})
    method = str(layout.get("method", "range"))
    if info.kind == "p":
        raise Refused(f"{info.name} is already partitioned",
                      hint="`pgcleave status` shows its partitions; `pgcleave maintain` adds more")
    if info.kind != "r":
        raise Refused(f"{info.name} is not a plain table")
    if info.primary_key is None:
        raise Refused(f"{info.name} has no primary key: the fill batches and the change capture "
                      "match rows by it",
                      hint="add one first (e.g. ALTER TABLE ... ADD PRIMARY KEY USING INDEX "
                           "after CREATE UNIQUE INDEX CONCURRENTLY)")
    pk = list(info.primary_key.columns)
    col = info.column(by)
    kind = key_kind(col.type)
    range_col = str(layout["then"]) if layout.get("then") else (by if method == "range" else None)
    if range_col is not None:
        rc = info.column(range_col)
        iv = Interval.parse(interval)
        check_fits(key_kind(rc.type), iv, range_col, rc.type)
    else:
        iv = Interval.parse(interval or "1")  # placeholder: hash and list have no interval
    for name in dict.fromkeys([by, *([range_col] if range_col else [])]):
        c = info.column(name)
        if c.generated:
            raise Refused(f"column {name} is generated; partition by a stored column")
        if not c.not_null and name not in pk:
            raise Refused(f"column {name} allows NULL: the new primary key must include it (and "
                          "range partitions cannot hold NULL keys)",
                          hint=f"make it NOT NULL first (ADD CHECK ({name} IS NOT NULL) NOT "
                               "VALID, VALIDATE, then SET NOT NULL)")
    match = pk + [c for c in dict.fromkeys([by, *([range_col] if range_col else [])])
                  if c not in pk]
    columns = [c.name for c in info.columns if not c.generated]
    types = {c.name: c.type for c in info.columns}
    return Spec(
        table=info.name, oid=info.oid,
        intermediate=info.name.sibling(child_name(info.name.name, "intermediate")),
        retired=info.name.sibling(child_name(info.name.name, "retired")),
        by=by, key_type=col.type, kind=kind, interval=iv, time_zone=time_zone, pk=pk,
        match=match, columns=columns, column_types=types,
        identity_always=[c.name for c in info.columns if c.identity == "a"], layout=layout)


def spec_from_state(info: TableInfo, st: CopyState) -> Spec:
    s = make_spec(info, st.by, st.interval, st.time_zone, st.layout)
    s.oid = st.table_oid
    s.inbound_fks = st.inbound_fks
    s.table = st.table
    s.intermediate = st.intermediate
    s.retired = st.retired
    s.__post_init__()
    return s


# -- add-partitions --------------------------------------------------------------------------------
def resolve_copy(conn: Connection, table: str) -> tuple[TableInfo, CopyState, Spec]:
    """The copy state of ``table`` (the name the application uses), and the spec built from the
    old table (``table`` before the swap, ``T_retired`` after)."""
    info = snapshot(conn, table)
    st = load_state(conn, info.name)
    if st is None:
        raise NotFound(f"{info.name} is not being copied (no prep)",
                       hint=f"start with `pgcleave prep {table} --by COLUMN --interval ...`")
    old = info if st.state == "prepped" else snapshot(conn, st.retired.quoted)
    return info, st, spec_from_state(old, st)


def check_capture_key(new: TableInfo, spec: Spec) -> None:
    """Before an unswap: capture into the partitioned table resumes, and its upserts need the
    key they were planned with (``ON CONFLICT (pk + partition key)``). Dropped meanwhile (to
    move a partition to another server, say), every write of the application would fail."""
    keys = [ix.columns for ix in new.indexes if ix.unique and ix.valid]
    if not any(set(k) == set(spec.match) for k in keys):
        raise Refused(f"{new.name} has no unique key on ({', '.join(spec.match)}) any more: "
                      "capture into it after the unswap would fail every write; nothing was "
                      "changed", hint=f"add it back first (pgcleave set-primary-key {new.name} "
                      f"--columns {','.join(spec.match)}), or keep {new.name} and `pgcleave "
                      "unprep` instead")


# -- the parameters of the copy's actions (copy_run.py), as journaled ---------------------------
class FillParams(TypedDict):
    source: list[str]  # [schema, name]
    target: list[str]
    default: list[str]
    state: list[str]
    columns: list[str]
    pk: list[str]
    pk_types: list[str]
    advisory: int  # the lock a batch and the capture trigger's second DELETE share
    order: str  # key or physical
    batch_size: int
    sleep: float
    where: str | None
    max_rate: float | None
    jobs: NotRequired[int]  # connections copying at once (absent in plans before --jobs: 1)


class BuildIndexesParams(TypedDict):
    parent: list[str]
    indexes: list[DeferredIndex]
    jobs: NotRequired[int]  # builds at once, each on its own connection (absent: 1)
    mem_kb: NotRequired[int]  # the maintenance_work_mem of each (absent: the server's)


class CopyVerifyParams(TypedDict):
    table: list[str]


# -- layouts other than one range level (see copy_layout) --------------------------------------
def layout_statements(spec: Spec) -> list[sql.Composable]:
    """Record the layout of a copy that is not by one range level (its ``interval`` is the
    second level's, or '' when there is none)."""
    if not spec.layout:
        return []
    return [set_state(spec.table, sql.SQL('layout = {}, "interval" = {}').format(
        sql.Literal(Jsonb(spec.layout)),
        sql.Literal(str(spec.interval) if spec.sub else "")).as_string(None))]


def layout_policy(spec: Spec) -> policy_mod.Policy:
    """The maintenance policy of a table copied into a hash, list or list-then-range layout,
    as ``maintain`` reads it (a range copy stores none)."""
    lay = spec.layout
    return policy_mod.Policy(
        table=spec.table, strategy=spec.method, key_column=spec.by,
        premake=int(lay.get("premake", 3)), time_zone=spec.time_zone,
        sub_strategy="range" if spec.sub else None, sub_key_column=spec.sub,
        sub_interval=str(spec.interval) if spec.sub else None,
        options={"conversion": "copy"})


def policy_steps(spec: Spec, *, forget: bool = False) -> list[Step]:
    """After a swap, store the policy of a layout copy (so ``maintain`` keeps the table);
    after an unswap, forget it (the table is plain again)."""
    if not spec.layout:
        return []
    pol = layout_policy(spec)
    exists = sql.SQL("SELECT {}EXISTS (SELECT FROM pgcleave.policies WHERE table_schema = {} "
                     "AND table_name = {})").format(sql.SQL("NOT " if forget else ""),
                                                   sql.Literal(spec.table.schema),
                                                   sql.Literal(spec.table.name))
    if forget:
        return [Step.sql("forget-policy", f"forget the maintenance policy of {spec.table}",
                         [policy_mod.Policy.delete(spec.table)], guard=exists,
                         nothing_to_undo=True, ddl=False)]
    return [Step.sql("policy", f"store the maintenance policy of {spec.table}: {pol.summary()}",
                     [pol.upsert()], guard=exists, undo=[policy_mod.Policy.delete(spec.table)],
                     ddl=False)]
