"""Partition by copy with change capture: pgslice's workflow (prep, add-partitions, fill,
analyze, swap, unswap, unprep) without its losses.

The old table ``T`` stays in service while a new partitioned table ``T_intermediate`` is filled
from it; then the two swap names in one short transaction and the old one is kept as
``T_retired``.

Why nothing is lost:
- *Capture is synchronous.* From ``prep`` on, an AFTER ROW trigger on ``T`` applies each INSERT,
  UPDATE and DELETE to ``T_intermediate`` in the application's own transaction: upserts by the
  new table's key (the old primary key plus the partition key), deletes by the same key, and a
  key-moving UPDATE as a delete of the old key and an upsert of the new row. Both tables commit or
  roll back together, so every snapshot sees them equal once the fill is done; ``verify`` relies
  on that to compare them exactly under live writes.
- *The fill cannot resurrect a row.* A batch reads rows with its snapshot, and the application
  could delete or move one of them before the batch's insert commits: the trigger's DELETE then
  finds nothing in the new table (the copy is not there yet, or not visible yet), and the batch
  would bring back a stale row (even one it deleted from the new table a moment before: the
  batch's plain INSERT waits for that delete to commit and then inserts the old version).
  Rather than lock every row it copies (``FOR SHARE`` writes every tuple and costs ~20%), each
  batch takes an exclusive transaction-level advisory lock of the copy, and the trigger takes
  the same lock in shared mode *before* it deletes from the new table (DELETE, and the delete
  half of a key-moving UPDATE): it waits for a running batch to commit, then deletes the row
  that batch copied; and it holds the lock until its own transaction ends, so the next batch
  starts after it and its snapshot no longer sees the row. Deletes wait at most one batch
  (tens of milliseconds); other writes wait only for a batch that holds the same row. (This
  relies on READ COMMITTED writers, PostgreSQL's default: a REPEATABLE READ writer's DELETE
  would not see the batch's rows; ``verify`` would catch it and refuse the swap.) Batches
  insert with plain INSERT (fastest) and redo with ``ON CONFLICT DO NOTHING`` when a row the
  trigger wrote first (always newer) is in the way.
- *The trigger never fails a write* for lack of a partition: a DEFAULT partition takes rows that
  fit no range, and ``fill`` reports how many landed there.
- *After the swap capture runs the other way* (new -> retired), so ``unswap`` loses nothing
  written in between.

Rows never pass through Python: each batch is one ``INSERT ... SELECT`` on the server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .. import preflight
from ..catalog import TableInfo, relation_exists, relation_exists_sql, snapshot
from ..connection import Connection
from ..ddl import inbound_fks as ifk
from ..ddl import orm
from ..ddl.bounds import parse_by
from ..ddl.parallel import Jobs, resolve_jobs
from ..ddl.renames import NameSwap, derived_name, index_names, taken
from ..ddl.tables import collist, excludes_by_key, parse_indexdef
from ..errors import NotFound, Refused
from ..names import QualifiedName
from ..plan import Lock, LockTaken, Plan, Statement, Step
from ..schemes import (
    add,
    as_key_value,
    floor,
    literal,
)
from .copy_capture import (
    capture_statements,
    drop_capture_statements,
    drop_functions,
)
from .copy_state import (
    MAX_FILL_JOBS,
    PARALLEL_MARK,
    TRIGGER,
    TRIGGER_BACK,
    TRIGGER_TRUNCATE,
    BuildIndexesParams,
    CopyVerifyParams,
    DeferredIndex,
    FillParams,
    Spec,
    check_capture_key,
    layout_statements,
    load_state,
    make_spec,
    policy_steps,
    resolve_copy,
    state_where,
)
from .copy_swap import INCOMING, OUTGOING, inbound_of, swap_steps, unswap_steps

AE = Lock.ACCESS_EXCLUSIVE
SRE = Lock.SHARE_ROW_EXCLUSIVE
SUE = Lock.SHARE_UPDATE_EXCLUSIVE

MAX_PARTITIONS = 5000

ONE = Jobs(1, "--jobs 1")


# -- small SQL helpers -----------------------------------------------------------------------------

def _exists(conn: Connection, q: sql.Composable) -> bool:
    row = conn.execute(sql.Composed([q])).fetchone()
    return bool(row and row[0])



def _trigger_exists(table: QualifiedName, trigger: str) -> sql.Composable:
    return sql.SQL("SELECT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = to_regclass({}) AND "
                   "tgname = {})").format(table.literal, sql.Literal(trigger))


def _st(stmts: list[sql.Composable]) -> list[Statement]:
    return list(stmts)












# -- indexes of the new table ----------------------------------------------------------------------
def _append_columns(tail: str, cols: list[str]) -> str:
    """Add ``cols`` to the key column list of an index tail (the first parenthesised group)."""
    start = tail.index("(")
    depth = 0
    in_quote: str | None = None
    for i in range(start, len(tail)):
        ch = tail[i]
        if in_quote:
            if ch == in_quote:
                in_quote = None
            continue
        if ch in ("'", '"'):
            in_quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                extra = "".join(", " + sql.Identifier(c).as_string(None) for c in cols)
                return tail[:i] + extra + tail[i:]
    raise Refused(f"cannot read index definition {tail!r}")


@dataclass
class NewIndex:
    """An index of the old table as it will exist on the new one."""

    name: str  # the old index's name (for messages)
    tail: str  # "USING btree (a, b) WHERE ..."
    unique: bool
    constraint: bool  # a UNIQUE constraint (not only an index)
    exclusion: str | None = None  # an EXCLUDE constraint: its definition



def new_indexes(info: TableInfo, spec: Spec, notes: list[str],
                warnings: list[str] | None = None) -> list[NewIndex]:
    """The old table's indexes as the new table gets them. A change that weakens uniqueness
    (a unique key widened by the partition key, an exclusion constraint not carried over) is
    a warning: the plan needs --yes."""
    warnings = notes if warnings is None else warnings
    out: list[NewIndex] = []
    cons_types = {c.name: c.type for c in info.constraints}
    cons_defs = {c.name: c.definition for c in info.constraints}
    for ix in info.indexes:
        if ix.primary:
            continue
        if not ix.valid:
            notes.append(f"index {ix.name} is invalid on {info.name} and is not copied")
            continue
        if ix.constraint and cons_types.get(ix.constraint) == "x":
            definition = cons_defs[ix.constraint]
            if info.server_version >= 170000 and excludes_by_key(definition, spec.by):
                out.append(NewIndex(ix.name, "", False, False, exclusion=definition))
                continue
            why = (f"it does not compare {spec.by} with =" if info.server_version >= 170000
                   else "PostgreSQL before 17 allows none on a partitioned table")
            warnings.append(
                f"exclusion constraint {ix.constraint} ({definition}) is not carried to the "
                f"partitioned table ({why}): rows that conflict can be inserted; it stays on "
                f"{spec.retired} only. Add it to each partition by hand, or drop it first")
            continue
        d = parse_indexdef(ix.definition)
        unique, tail = d.unique, d.tail
        if unique:
            missing = [c for c in spec.partition_cols if c not in ix.columns]
            if missing:
                tail = _append_columns(tail, missing)
                warnings.append(
                    f"unique index {ix.name} ({', '.join(ix.columns)}) becomes unique on "
                    f"({', '.join([*ix.columns, *missing])}): ({', '.join(ix.columns)}) alone "
                    "is no longer unique, a second row with existing values can be inserted "
                    "into another partition (a unique key of a partitioned table must include "
                    "the partition key)")
        is_constraint = ix.constraint is not None and cons_types.get(ix.constraint) == "u"
        out.append(NewIndex(ix.name, tail, unique, is_constraint))
    return out


def _index_stmt(name: str | None, table: QualifiedName, ix: NewIndex, *, only: bool,
                concurrently: bool = False) -> sql.Composable:
    return sql.SQL("CREATE {u}INDEX {c}{n} ON {o}{t} {tail}").format(
        u=sql.SQL("UNIQUE " if ix.unique else ""),
        c=sql.SQL("CONCURRENTLY IF NOT EXISTS " if concurrently else ""),
        n=sql.Identifier(name) if name else sql.SQL(""), o=sql.SQL("ONLY " if only else ""),
        t=table.ident, tail=sql.SQL(ix.tail))


def deferred_params(spec: Spec, deferred: list[NewIndex], info: TableInfo
                    ) -> list[DeferredIndex]:
    """Indexes built after the fill: the parent's index name (the old index's, as the
    intermediate carries it until the swap), the suffix of each partition's, and the
    definition tail."""
    return [DeferredIndex(name=incoming_name(info, ix.name), suffix=f"copyidx{i}",
                          tail=ix.tail, unique=ix.unique) for i, ix in enumerate(deferred)]


# -- partitions ------------------------------------------------------------------------------------
def _now_value(conn: Connection, spec: Spec) -> Any:
    """The server's current time as a value of the key's kind, in the copy's time zone."""
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return as_key_value(row[0], spec.kind, spec.time_zone)


def _minmax(conn: Connection, table: QualifiedName, col: str) -> tuple[Any, Any]:
    row = conn.execute(sql.SQL("SELECT min({c}), max({c}) FROM {t}").format(
        c=sql.Identifier(col), t=table.ident)).fetchone()
    assert row is not None
    return row[0], row[1]


def _to_value(v: Any, spec: Spec) -> Any:
    """A value read from the key column, as ``floor`` takes it."""
    if spec.kind == "timestamp" and isinstance(v, datetime):
        return v.replace(tzinfo=None)
    if spec.kind == "date" and isinstance(v, datetime):
        return v.date()
    return v


def candidate_ranges(conn: Connection, spec: Spec, *, source: QualifiedName,
                     past: int | None, future: int) -> list[tuple[Any, Any]]:
    """Ranges to create. ``past=None``: from the oldest row of ``source`` (all history), else
    ``past`` intervals before the current one; always up to ``future`` intervals after the current
    one (time keys: now on the server; numbers: the largest key), and past the newest row."""
    lo_v, hi_v = _minmax(conn, source, spec.by)
    if spec.interval.is_time:
        current = floor(_now_value(conn, spec), spec.interval, spec.time_zone)
    else:
        current = floor(hi_v if hi_v is not None else 0, spec.interval)
    start = add(current, spec.interval, -(past or 0))
    if past is None and lo_v is not None:
        start = min(start, floor(_to_value(lo_v, spec), spec.interval, spec.time_zone))
    end = add(current, spec.interval, future + 1)
    if hi_v is not None:
        top = add(floor(_to_value(hi_v, spec), spec.interval, spec.time_zone), spec.interval)
        end = max(end, top)
    out: list[tuple[Any, Any]] = []
    lo = start
    while lo < end:
        hi = add(lo, spec.interval)
        out.append((lo, hi))
        lo = hi
        if len(out) > MAX_PARTITIONS:
            raise Refused(f"more than {MAX_PARTITIONS} partitions of {spec.interval} would be "
                          f"needed between {start} and {end}",
                          hint="use a wider --interval, or --past to leave old rows in the "
                               "DEFAULT partition")
    return out


def _fix_date(v: Any, spec: Spec) -> Any:
    if spec.kind == "date" and isinstance(v, datetime):
        return v.date()
    return v


def _cast(v: Any, spec: Spec) -> sql.Composable:
    return sql.SQL("{}::{}").format(literal(_fix_date(v, spec)), sql.SQL(spec.key_type))


def missing_ranges(conn: Connection, spec: Spec, parent: QualifiedName,
                   wanted: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """The wanted ranges that overlap no existing partition of ``parent`` (compared on the server
    in the key's type) and whose name is free."""
    if not wanted:
        return []
    existing = conn.execute(
        "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c"
        " ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)", [parent.quoted]).fetchall()
    bounds: list[tuple[str, str]] = []
    for (b,) in existing:
        m = re.match(r"^FOR VALUES FROM \((.*)\) TO \((.*)\)$", b or "", re.S)
        if m:
            bounds.append((m.group(1), m.group(2)))
    keep = list(range(len(wanted)))
    if bounds:
        cands = sql.SQL(", ").join(sql.SQL("({}, {}, {})").format(
            sql.Literal(i), _cast(lo, spec), _cast(hi, spec)) for i, (lo, hi) in enumerate(wanted))

        def side(text: str, inf: str) -> sql.Composable:
            t = text.strip()
            if t.upper() in ("MINVALUE", "MAXVALUE"):
                return sql.SQL("NULL::{}").format(sql.SQL(spec.key_type))
            return sql.SQL("({})::{}").format(sql.SQL(t), sql.SQL(spec.key_type))

        ex = sql.SQL(", ").join(sql.SQL("({}, {}, {}, {})").format(
            side(lo, "min"), side(hi, "max"), sql.Literal(lo.strip().upper() == "MINVALUE"),
            sql.Literal(hi.strip().upper() == "MAXVALUE")) for lo, hi in bounds)
        q = sql.SQL(
            "SELECT c.i FROM (VALUES {}) c(i, lo, hi) WHERE NOT EXISTS (SELECT FROM (VALUES {}) "
            "e(lo, hi, lmin, hmax) WHERE (e.lmin OR e.lo < c.hi) AND (e.hmax OR c.lo < e.hi)) "
            "ORDER BY c.i").format(cands, ex)
        keep = [r[0] for r in conn.execute(q).fetchall()]
    return [wanted[i] for i in keep if not relation_exists(conn, spec.partition_name(wanted[i][0]))]


def partition_statements(spec: Spec, parent: QualifiedName, lo: Any, hi: Any, *,
                         has_default: bool) -> list[sql.Composable]:
    """Create one range partition. Rows of its range already in the DEFAULT partition (captured
    before the partition existed) are moved into it in the same transaction: PostgreSQL would
    otherwise refuse to create it."""
    name = spec.partition_name(lo)
    rng = sql.SQL("{k} >= {lo} AND {k} < {hi}").format(
        k=sql.Identifier(spec.by), lo=_cast(lo, spec), hi=_cast(hi, spec))
    create = sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
        name.ident, parent.ident, literal(_fix_date(lo, spec)), literal(_fix_date(hi, spec)))
    if not has_default:
        return [create]
    tmp = sql.Identifier("pgcleave_moving")
    cols = collist(spec.columns)
    return [
        # the parent first, then the DEFAULT: the order in which writes lock them
        sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(parent.ident),
        sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(spec.default.ident),
        sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WHERE {}").format(
            tmp, cols, spec.default.ident, rng),
        sql.SQL("DELETE FROM {} WHERE {}").format(spec.default.ident, rng),
        create,
        sql.SQL("INSERT INTO {} ({c}) OVERRIDING SYSTEM VALUE SELECT {c} FROM {}").format(
            parent.ident, tmp, c=cols),
        sql.SQL("DROP TABLE {}").format(tmp),
    ]


def add_partition_steps(conn: Connection, spec: Spec, parent: QualifiedName,
                        wanted: list[tuple[Any, Any]], *, has_default: bool,
                        exists: bool = True) -> list[Step]:
    todo = missing_ranges(conn, spec, parent, wanted) if exists else [
        r for r in wanted if not relation_exists(conn, spec.partition_name(r[0]))]
    steps = []
    for lo, hi in todo:
        name = spec.partition_name(lo)
        locks = [LockTaken(AE, str(parent))]
        if has_default:
            locks.append(LockTaken(AE, str(spec.default)))
        steps.append(Step.sql(
            f"partition {name.name}", f"create partition {name} for [{lo}, {hi})",
            _st(partition_statements(spec, parent, lo, hi, has_default=has_default)),
            locks=locks,
            guard=relation_exists_sql(name), undo=[sql.SQL("DROP TABLE {}").format(name.ident)]))
    return steps


# -- prep ------------------------------------------------------------------------------------------
def check_fresh(conn: Connection, info: TableInfo, spec: Spec) -> None:
    st = load_state(conn, info.name)
    if st is not None:
        raise Refused(f"{info.name} is already prepped (state {st.state})",
                      hint="continue with `pgcleave fill`, or undo with `pgcleave unprep`")
    for n in (spec.intermediate, spec.retired, spec.default):
        if relation_exists(conn, n):
            raise Refused(f"{n} already exists",
                          hint="drop or rename it first (a leftover of an earlier copy?)")
    for t in info.triggers:
        if t.name in (TRIGGER, TRIGGER_BACK, TRIGGER_TRUNCATE):
            raise Refused(f"{info.name} already has a pgcleave capture trigger {t.name}",
                          hint="a copy is in progress; `pgcleave unprep` removes it")


def incoming_name(info: TableInfo, name: str) -> str:
    """The name the intermediate table's copy of the index or constraint ``name`` carries
    until the swap gives it ``name`` itself."""
    return derived_name(name, info.name.name, INCOMING)


def copied_names(info: TableInfo, indexes: list[NewIndex]) -> list[NameSwap]:
    """The schema-wide names the swap moves: the primary key and each index copied."""
    keep = {ix.name for ix in indexes}
    skip = {ix.name for ix in info.indexes if not ix.primary and ix.name not in keep}
    return index_names(info, incoming_word=INCOMING, outgoing_word=OUTGOING, skip=skip)


def check_names_free(conn: Connection, spec: Spec, wanted: list[str]) -> None:
    """Refuse when a name the copy gives an index is taken in the schema."""
    row = conn.execute(taken(wanted, spec.table.schema)).fetchone()
    used = list(row[0]) if row else []
    if used:
        raise Refused(f"the index name(s) {', '.join(used)} are taken in schema "
                      f"{spec.table.schema}: the copy names {spec.intermediate}'s and "
                      f"{spec.retired}'s indexes after {spec.table}'s",
                      hint="rename or drop those relations first")


def key_change_warning(spec: Spec) -> str:
    """The copy widens the primary key by the partition key: say what that changes."""
    old, new = ", ".join(spec.pk), ", ".join(spec.match)
    return (f"the primary key ({old}) becomes ({new}) on the partitioned table: ({old}) alone "
            f"is no longer unique, a second row with an existing {old} can be inserted into "
            f"another partition. " + orm.key_change(spec.table.name, spec.pk, spec.match))


def prep_steps(conn: Connection, info: TableInfo, spec: Spec, *, defer_indexes: bool,
               notes: list[str], warnings: list[str] | None = None
               ) -> tuple[list[Step], list[NewIndex]]:
    """Create the intermediate table (with its key, indexes and outbound foreign keys) and its
    DEFAULT partition, and record the copy. Capture is installed separately (after partitions).
    Its key and indexes are named after the old table's (``T_intermediate_...``), so the swap
    can give them the old names."""
    t, new = spec.table, spec.intermediate
    warnings = notes if warnings is None else warnings
    indexes = new_indexes(info, spec, notes, warnings)
    inbound_of(info, spec, notes, warnings)  # refuses what the swap could not carry over
    if len(spec.match) > len(spec.pk):
        warnings.append(key_change_warning(spec))
    assert info.primary_key is not None
    names = copied_names(info, indexes)
    check_names_free(conn, spec, [n.incoming for n in names] + [n.outgoing for n in names])
    stmts: list[sql.Composable] = [
        sql.SQL("CREATE TABLE {new} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                "INCLUDING IDENTITY INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMMENTS "
                "INCLUDING STATISTICS INCLUDING COMPRESSION) PARTITION BY {m} ({by})").format(
            new=new.ident, old=t.ident, by=sql.Identifier(spec.by),
            m=sql.SQL(spec.method.upper())),
        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
            new.ident, sql.Identifier(incoming_name(info, info.primary_key.name)),
            collist(spec.match)),
    ]
    deferred: list[NewIndex] = []
    for ix in indexes:
        iname = sql.Identifier(incoming_name(info, ix.name))
        if ix.exclusion is not None:
            stmts.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                new.ident, iname, sql.SQL(ix.exclusion)))
        elif ix.constraint:
            stmts.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} UNIQUE ({})").format(
                new.ident, iname,
                sql.SQL(ix.tail[ix.tail.index("(") + 1:ix.tail.rindex(")")])))
        elif defer_indexes and not ix.unique:
            deferred.append(ix)
        else:
            stmts.append(_index_stmt(incoming_name(info, ix.name), new, ix, only=False))
    for fk in info.foreign_keys_out:
        if not fk.validated:
            notes.append(f"foreign key {fk.name} is NOT VALID on {t} and is not copied")
            continue
        # the same name: a foreign key's name is unique per table only
        stmts.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) {}").format(
            new.ident, sql.Identifier(fk.name), collist(fk.columns),
            sql.SQL(fk.definition[fk.definition.index("REFERENCES"):])))
    if spec.method == "range":  # other layouts create their DEFAULT (if any) with the partitions
        stmts.append(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(
            spec.default.ident, new.ident))
    deferred_json = deferred_params(spec, deferred, info)

    stmts.append(sql.SQL(
        'INSERT INTO pgcleave.copies (table_schema, table_name, table_oid, intermediate, retired,'
        ' by_column, "interval", time_zone, deferred) VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {})'
    ).format(sql.Literal(t.schema), sql.Literal(t.name), sql.Literal(spec.oid),
             sql.Literal(new.name), sql.Literal(spec.retired.name), sql.Literal(spec.by),
             sql.Literal(str(spec.interval)), sql.Literal(spec.time_zone),
             sql.Literal(Jsonb(deferred_json))))
    stmts += layout_statements(spec)
    if spec.inbound_fks != "refuse":
        stmts.append(sql.SQL("UPDATE pgcleave.copies SET inbound_fks = {} WHERE {}").format(
            sql.Literal(spec.inbound_fks), state_where(t)))
    step = Step.sql(
        "create-intermediate", f"create {new} partitioned by {spec.method} ({spec.by}), its key, "
        "indexes and DEFAULT partition", _st(stmts), locks=[LockTaken(Lock.ACCESS_SHARE, str(t))],
        guard=relation_exists_sql(new),
        undo=[sql.SQL("DROP TABLE IF EXISTS {}").format(new.ident),
              sql.SQL("DELETE FROM pgcleave.copies WHERE {}").format(state_where(t))])
    return [step], deferred


def capture_step(spec: Spec) -> Step:
    return Step.sql(
        "capture", f"start capturing every change of {spec.table} into {spec.intermediate}",
        _st(capture_statements(spec, spec.table, spec.intermediate, back=False)),
        locks=[LockTaken(SRE, str(spec.table))],
        guard=_trigger_exists(spec.table, TRIGGER),
        undo=[*drop_capture_statements(spec, spec.table, back=False),
              sql.SQL("DROP FUNCTION IF EXISTS {}()").format(spec.fn_forward.ident)])


def plan_prep(conn: Connection, table: str, *, by: str, interval: str, time_zone: str = "UTC",
              defer_indexes: bool = False, past: int | None = None,
              future: int | None = None, inbound_fks: str = "refuse") -> Plan:
    """``pgcleave prep``: create ``T_intermediate`` and start change capture into it. With
    ``past``/``future``, also create partitions (as ``add-partitions`` would); ``inbound_fks``
    is kept for the swap (``ops.inbound``)."""
    info = snapshot(conn, table)
    spec = make_spec(info, _key_column(by), interval, time_zone)
    spec.inbound_fks = inbound_fks
    check_fresh(conn, info, spec)
    notes: list[str] = []
    warnings: list[str] = []
    steps, deferred = prep_steps(conn, info, spec, defer_indexes=defer_indexes, notes=notes,
                                 warnings=warnings)
    if past is not None or future is not None:
        wanted = candidate_ranges(conn, spec, source=spec.table, past=past or 0,
                                  future=future or 0)
        steps += add_partition_steps(conn, spec, spec.intermediate, wanted, has_default=True,
                                     exists=False)
    steps.append(capture_step(spec))
    if deferred:
        notes.append(f"{len(deferred)} secondary index(es) are built after the fill")
    notes.append(f"from now on every write to {spec.table} also writes {spec.intermediate} "
                 "(in the same transaction)")
    return Plan("prep", spec.table.quoted, {"by": by, "interval": interval,
                                            "defer_indexes": defer_indexes}, steps, notes=notes,
                warnings=warnings, requires=preflight.table_change(spec.table))




def plan_add_partitions(conn: Connection, table: str, *, past: int = 0, future: int = 0) -> Plan:
    """``pgcleave add-partitions``: partitions for ``past`` intervals before the current one and
    ``future`` after, on ``T_intermediate`` before the swap and on ``T`` after it."""
    info, st, spec = resolve_copy(conn, table)
    if spec.layout:
        raise Refused(f"{info.name} is copied by {spec.method}; add-partitions is for one range")
    parent = spec.intermediate if st.state == "prepped" else spec.table
    pinfo = snapshot(conn, parent.quoted)
    assert pinfo.partitioning is not None
    wanted = candidate_ranges(conn, spec, source=spec.table if st.state == "prepped" else parent,
                              past=past, future=future)
    if spec.interval.is_time:
        # candidate_ranges reaches back to the oldest row only when past is None
        first = add(floor(_now_value(conn, spec), spec.interval, spec.time_zone), spec.interval,
                    -past)
        wanted = [r for r in wanted if r[0] >= first]
    steps = add_partition_steps(conn, spec, parent, wanted,
                                has_default=pinfo.partitioning.default is not None)
    notes = [] if steps else ["every wanted partition exists already"]
    return Plan("add-partitions", info.name.quoted, {"past": past, "future": future}, steps,
                requires=preflight.table_change(info.name),
                notes=notes)


# -- fill ------------------------------------------------------------------------------------------
def _check_where(conn: Connection, table: QualifiedName, where: str) -> None:
    try:
        with conn.transaction():
            conn.execute(sql.SQL("EXPLAIN SELECT FROM {} WHERE {}").format(table.ident,
                                                                          sql.SQL(where)))
    except psycopg.Error as exc:
        raise Refused(f"--where {where!r} is not valid on {table}: {str(exc).strip()}") from None


def fill_params(spec: Spec, *, batch_size: int, sleep: float, where: str | None,
                max_rate: float | None, order: str, jobs: int = 1) -> FillParams:
    p = FillParams(
        source=[spec.table.schema, spec.table.name],
        target=[spec.intermediate.schema, spec.intermediate.name],
        default=[spec.default.schema, spec.default.name],
        state=[spec.table.schema, spec.table.name],
        columns=spec.columns, pk=spec.pk,
        pk_types=[spec.column_types[c] for c in spec.pk],
        advisory=spec.fill_lock, order=order, batch_size=batch_size, sleep=sleep,
        where=where, max_rate=max_rate,
    )
    if jobs > 1:  # absent for one connection: the plan journaled is the one of before --jobs
        p["jobs"] = jobs
    return p


def resolve_order(conn: Connection, order: str) -> str:
    """``physical`` (block ranges, a TID range scan: as fast as one INSERT ... SELECT) needs
    PostgreSQL 14; ``key`` (keyset on the primary key) works everywhere."""
    if order not in ("auto", "physical", "key"):
        raise Refused(f"unknown fill order {order!r}", hint="use auto, physical or key")
    v = int(conn.info.server_version)
    if order == "physical" and v < 140000:
        raise Refused("--order physical needs PostgreSQL 14 or later (TID range scans)",
                      hint="use --order key")
    if order == "auto":
        return "physical" if v >= 140000 else "key"
    return order


def fill_jobs(conn: Connection, spec: Spec, jobs: str | int) -> Jobs:
    """``--jobs`` of a fill, resolved; more than one needs a capture trigger that waits for
    every fill connection (prepared by this version: older ones wait for one)."""
    n = resolve_jobs(conn, jobs, limit=MAX_FILL_JOBS)
    if n.n > 1:
        row = conn.execute("SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure(%s)",
                           [f"{spec.fn_forward.quoted}()"]).fetchone()
        if row is None or PARALLEL_MARK not in str(row[0]):
            raise Refused(f"the change capture on {spec.table} was installed by an older "
                          "pgcleave and waits for one fill connection only; nothing was "
                          "changed", hint="fill with --jobs 1, or `pgcleave unprep` and "
                          "`pgcleave prep` again")
    return n


def fill_steps(spec: Spec, deferred: list[DeferredIndex], *, batch_size: int, sleep: float,
               where: str | None, max_rate: float | None, order: str,
               jobs: Jobs = ONE) -> list[Step]:
    p = fill_params(spec, batch_size=batch_size, sleep=sleep, where=where, max_rate=max_rate,
                    order=order, jobs=jobs.n)
    cond: sql.Composable
    if order == "key":
        cond = sql.SQL("({}) > ($last) AND ({}) <= ($upper)").format(collist(spec.pk),
                                                                    collist(spec.pk))
        how = f"by ({', '.join(spec.pk)})"
    else:
        cond = sql.SQL("ctid >= '($block,0)' AND ctid < '($block + n,0)'")
        how = "by block ranges"
    shown = sql.SQL(
        "BEGIN; SELECT pg_advisory_xact_lock({lock}); INSERT INTO {t} ({c}) OVERRIDING SYSTEM "
        "VALUE SELECT {c} FROM ONLY {s} WHERE {cond}{w} [ON CONFLICT DO NOTHING]; COMMIT"
    ).format(lock=sql.Literal(spec.fill_lock), t=spec.intermediate.ident,
             c=collist(spec.columns), s=spec.table.ident, cond=cond,
             w=sql.SQL(f" AND ({where})" if where else ""))
    lock, conns = (f"pg_advisory_xact_lock({spec.fill_lock})", "")
    if jobs.n > 1:
        how += f" on {jobs.n} connections at once ({jobs.reason}), each a disjoint share of " \
               + ("the blocks" if order == "physical" else "the key range") \
               + " under its own advisory lock"
        conns = f"-- {jobs.n} connections, each in its own batches:\n"
    steps = [Step(name="fill", description=f"copy the rows of {spec.table} into "
                  f"{spec.intermediate} in batches of ~{batch_size} rows {how}",
                  statements=[conns + shown.as_string(None).replace(
                      lock, "pg_advisory_xact_lock($fill_lock + ($connection << 32))")
                              if jobs.n > 1 else shown.as_string(None)],
                  locks=[LockTaken(Lock.ACCESS_SHARE, str(spec.table)),
                         LockTaken(Lock.ROW_EXCLUSIVE, str(spec.intermediate))],
                  action="copy.fill", params=p, ddl=False)]
    if deferred:
        bp = BuildIndexesParams(parent=[spec.intermediate.schema, spec.intermediate.name],
                                indexes=deferred)
        par = ""
        if jobs.n > 1:
            bp["jobs"] = jobs.n
            par = f", {jobs.n} builds at once"
            if jobs.build_mem_kb:
                bp["mem_kb"] = jobs.build_mem_kb
                par += f" with maintenance_work_mem = {jobs.build_mem} each"
        steps.append(Step(
            name="build-indexes", description=f"build {len(deferred)} secondary index(es) of "
            f"{spec.intermediate} concurrently, partition by partition{par}",
            statements=[f"CREATE INDEX {d['name']} ON ONLY "
                        f"{spec.intermediate.ident.as_string(None)} {d['tail']}"
                        for d in deferred] + ["-- then CREATE INDEX CONCURRENTLY on each "
                                              "partition and ALTER INDEX ... ATTACH PARTITION"],
            locks=[LockTaken(SUE, f"each partition of {spec.intermediate}")],
            transactional=False, action="copy.build_indexes", params=bp, ddl=False))
    return steps


def plan_fill(conn: Connection, table: str, *, batch_size: int = 10000, sleep: float = 0.0,
              where: str | None = None, max_rate: float | None = None,
              order: str = "auto", jobs: str | int = 1) -> Plan:
    """``pgcleave fill``: copy the old table's rows into the intermediate table, batch by batch,
    resumable after a kill. ``order``: ``physical`` (block ranges; PG14+, the default there) or
    ``key`` (keyset on the primary key, any key type)."""
    info, st, spec = resolve_copy(conn, table)
    if st.state != "prepped":
        raise Refused(f"{info.name} was swapped already; nothing to fill",
                      hint=f"`pgcleave unswap {table}` goes back to the old table")
    if not _exists(conn, _trigger_exists(spec.table, TRIGGER)):
        raise Refused(f"change capture is not installed on {spec.table}",
                      hint="the prep job did not finish: `pgcleave jobs`, then resume it")
    if batch_size < 1:
        raise Refused("--batch-size must be at least 1")
    if where:
        _check_where(conn, spec.table, where)
    notes = []
    if st.filled_at is not None:
        notes.append(f"{spec.table} was filled already at {st.filled_at:%Y-%m-%d %H:%M:%S}; "
                     "filling again copies only what is missing")
    order = resolve_order(conn, order)
    n = fill_jobs(conn, spec, jobs)
    steps = fill_steps(spec, st.deferred, batch_size=batch_size, sleep=sleep, where=where,
                       max_rate=max_rate, order=order, jobs=n)
    options: dict[str, Any] = {"batch_size": batch_size, "sleep": sleep, "where": where,
                               "max_rate": max_rate, "order": order}
    if str(jobs) != "1":
        options["jobs"] = n.n
        notes.append(f"the fill copies on {n.n} connection(s) at once ({n.reason})")
    return Plan("fill", info.name.quoted, options, steps, notes=notes,
                requires=[preflight.owner(spec.intermediate)])


# -- analyze ---------------------------------------------------------------------------------------
def analyze_step(target: QualifiedName) -> Step:
    return Step.sql("analyze", f"ANALYZE {target} and its partitions",
                    [sql.SQL("ANALYZE {}").format(target.ident)],
                    locks=[LockTaken(SUE, f"{target} and each partition")], ddl=False,
                    transactional=False)


def plan_analyze(conn: Connection, table: str) -> Plan:
    info, st, spec = resolve_copy(conn, table)
    target = spec.intermediate if st.state == "prepped" else spec.table
    return Plan("analyze", info.name.quoted, {}, [analyze_step(target)])


# -- verify ----------------------------------------------------------------------------------------
def verify_step(spec: Spec) -> Step:
    return Step(
        name="verify", description=f"compare {spec.table} and {spec.intermediate}: row count and "
        "hash per partition range, in one snapshot",
        statements=["-- in one REPEATABLE READ snapshot, for each table:",
                    f"SELECT width_bucket({spec.by}, ARRAY[<partition bounds>]), count(*), "
                    "sum(hashtextextended(ROW(...)::text, 0)) ... GROUP BY 1"],
        locks=[LockTaken(Lock.ACCESS_SHARE, f"{spec.table}, {spec.intermediate}")],
        guard=sql.SQL("SELECT EXISTS (SELECT FROM pgcleave.copies WHERE {} AND verified_at IS "
                      "NOT NULL)").format(state_where(spec.table)).as_string(None),
        action="copy.verify", params=CopyVerifyParams(table=[spec.table.schema, spec.table.name]),
        ddl=False)


# -- swap ------------------------------------------------------------------------------------------
def _names_to_swap(conn: Connection, info: TableInfo, spec: Spec, notes: list[str]
                   ) -> list[NameSwap]:
    """The names the swap moves: those the intermediate table carries (a prep by an older
    pgcleave named its indexes otherwise: they keep their names, and the plan says so)."""
    have = {r[0] for r in conn.execute(
        "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = to_regclass(%s)", [spec.intermediate.quoted])}
    names = copied_names(info, new_indexes(info, spec, [], []))
    keep = [n for n in names if n.incoming in have]
    if len(keep) < len(names):
        notes.append(f"{spec.intermediate} does not carry the names "
                     + ", ".join(n.incoming for n in names if n.incoming not in have)
                     + f": the indexes of {spec.table} keep the names they have there")
    check_names_free(conn, spec, [n.outgoing for n in keep])
    return keep


def plan_swap(conn: Connection, table: str) -> Plan:
    """``pgcleave swap``: verify, then make the partitioned table the one the application uses."""
    info, st, spec = resolve_copy(conn, table)
    if st.state == "swapped":
        raise Refused(f"{info.name} is swapped already", hint=f"`pgcleave unswap {table}` reverts")
    if st.filled_at is None:
        raise Refused(f"{spec.intermediate} is not filled yet: swapping now would hide the rows "
                      "not copied", hint=f"run `pgcleave fill {table}` first")
    if not _exists(conn, _trigger_exists(spec.table, TRIGGER)):
        raise Refused(f"change capture is not installed on {spec.table}")
    notes = [f"{spec.table} becomes {spec.retired}; changes keep flowing into it until "
             f"`pgcleave unprep {table}`, so `pgcleave unswap {table}` loses nothing"]
    if st.fill_where:
        notes.append(f"the fill copied only rows matching {st.fill_where!r}: the others stay in "
                     f"{spec.retired} only")
    steps = [verify_step(spec), *swap_steps(conn, info, spec, _names_to_swap(conn, info, spec,
                                                                              notes)),
             *policy_steps(spec)]
    return Plan("swap", info.name.quoted, {}, steps, notes=notes,
                requires=[*preflight.table_change(info.name), preflight.owner(spec.intermediate)])


def plan_unswap(conn: Connection, table: str) -> Plan:
    """``pgcleave unswap``: the old table takes its name back, with every change made since the
    swap (capture ran the other way); capture into the partitioned table resumes."""
    info, st, spec = resolve_copy(conn, table)
    if st.state != "swapped":
        raise Refused(f"{info.name} is not swapped", hint="nothing to undo")
    if not relation_exists(conn, spec.retired):
        raise NotFound(f"{spec.retired} does not exist any more; cannot swap back")
    if not _exists(conn, _trigger_exists(spec.table, TRIGGER_BACK)):
        raise Refused(f"{spec.table} no longer captures changes into {spec.retired}: swapping "
                      "back would lose them", hint="it was unprepped; unswap is not possible")
    old = snapshot(conn, spec.retired.quoted)
    check_capture_key(info, spec)
    emulated = ifk.emulated(conn, info.name)
    dropped = [ifk.Rule.from_json(text) for text in st.dropped_fks]
    notes = [f"{spec.table} is the old table again; capture into {spec.intermediate} resumes, "
             "`pgcleave swap` can run again"]
    if dropped:
        notes.append("the foreign keys the swap dropped come back, validated with writes "
                     "flowing: " + ", ".join(f"{r.child}.{r.name}" for r in dropped))
    return Plan("unswap", info.name.quoted, {},
                [*unswap_steps(info, old, spec, emulated, dropped),
                 *policy_steps(spec, forget=True)],
                requires=[*preflight.table_change(info.name), preflight.owner(spec.retired)],
                notes=notes)


# -- unprep ----------------------------------------------------------------------------------------
def plan_unprep(conn: Connection, table: str) -> Plan:
    """``pgcleave unprep``: before the swap, stop capture and drop the intermediate table. After
    the swap, stop the capture into ``T_retired`` (which is kept, and from then on goes stale)."""
    info, st, spec = resolve_copy(conn, table)
    forget = sql.SQL("DELETE FROM pgcleave.copies WHERE {}").format(state_where(spec.table))
    if st.state == "swapped":
        steps = [Step.sql(
            "stop-capture", f"stop capturing changes of {spec.table} into {spec.retired}",
            [*drop_capture_statements(spec, spec.table, back=True), *drop_functions(spec),
             forget], locks=[LockTaken(SRE, str(spec.table))])]
        return Plan("unprep", info.name.quoted, {}, steps,
                requires=[preflight.owner(spec.table)], warnings=[
            f"{spec.retired} is kept but no longer receives changes: `pgcleave unswap` will not "
            f"be possible; drop {spec.retired} when you no longer need it"])
    steps = [Step.sql(
        "stop-capture", f"stop capturing changes of {spec.table}",
        [*drop_capture_statements(spec, spec.table, back=False)],
        locks=[LockTaken(SRE, str(spec.table))]),
        Step.sql("drop-intermediate", f"drop {spec.intermediate} and its partitions",
                 [sql.SQL("DROP TABLE IF EXISTS {}").format(spec.intermediate.ident),
                  *drop_functions(spec), forget],
                 locks=[LockTaken(AE, str(spec.intermediate))])]
    return Plan("unprep", info.name.quoted, {}, steps,
                requires=[preflight.owner(spec.table)],
                warnings=[f"{spec.intermediate} and every row copied into it are dropped"])


# -- the whole chain -------------------------------------------------------------------------------
def _key_column(by: str) -> str:
    """``created_at``, ``range(created_at)`` or ``range("Ordered On")`` -> the column name. The
    ``range(...)`` form is read by the one parser (SQL's folding and quoting apply); a bare
    name, the shorthand ``prep --by`` has always taken, is taken as written."""
    if "(" not in by:
        return by
    method, col = parse_by(by)
    if method != "range":
        raise Refused(f"the copy strategy partitions by range; {method} partitioning is not "
                      "supported by it yet", hint="use --by 'range(column)' with --interval")
    return col


def plan_partition_copy(conn: Connection, table: str, *, by: str, interval: str | None,
                        premake: int, past: int | None = None, batch_size: int = 10000,
                        sleep: float = 0.0, where: str | None = None,
                        max_rate: float | None = None, defer_indexes: bool = False,
                        time_zone: str = "UTC", swap: bool = True, order: str = "auto",
                        inbound_fks: str = "refuse", jobs: str | int = 1) -> Plan:
    """``pgcleave partition TABLE --strategy copy``: prep, partitions, capture, fill, (deferred
    indexes), analyze, verify and swap as one resumable job.

    Partitions cover every row of the table (``past=None``) or ``past`` intervals before the
    current one (older rows go to the DEFAULT partition and are reported), and ``premake``
    intervals ahead.
    """
    by = _key_column(by)
    if interval is None:
        raise Refused("--strategy copy needs --interval (e.g. '1 month', or a number for integer "
                      "keys)")
    info = snapshot(conn, table)
    spec = make_spec(info, by, interval, time_zone)
    spec.inbound_fks = inbound_fks
    check_fresh(conn, info, spec)
    if where:
        _check_where(conn, spec.table, where)
    notes: list[str] = []
    warnings: list[str] = []
    steps, deferred = prep_steps(conn, info, spec, defer_indexes=defer_indexes, notes=notes,
                                 warnings=warnings)
    wanted = candidate_ranges(conn, spec, source=spec.table, past=past, future=premake)
    steps += add_partition_steps(conn, spec, spec.intermediate, wanted, has_default=False,
                                 exists=False)
    steps.append(capture_step(spec))
    deferred_json = deferred_params(spec, deferred, info)
    # the capture is installed by this job itself: it waits for every fill connection
    n = resolve_jobs(conn, jobs, limit=MAX_FILL_JOBS)
    steps += fill_steps(spec, deferred_json, batch_size=batch_size, sleep=sleep, where=where,
                        max_rate=max_rate, order=resolve_order(conn, order), jobs=n)
    steps.append(analyze_step(spec.intermediate))
    steps.append(verify_step(spec))
    if swap:
        steps += swap_steps(conn, info, spec,
                            copied_names(info, new_indexes(info, spec, [], [])))
    notes.append(f"{len(wanted)} partitions of {spec.interval} plus a DEFAULT partition; "
                 f"{spec.table} is kept as {spec.retired}, in sync, until `pgcleave unprep`")
    return Plan("partition", spec.table.quoted,
                {"strategy": "copy", "by": by, "interval": interval, "premake": premake,
                 "past": past, "batch_size": batch_size,
                 **({"jobs": n.n} if str(jobs) != "1" else {})}, steps, notes=notes,
                warnings=warnings, requires=preflight.table_change(spec.table))


__all__ = ["plan_add_partitions", "plan_analyze", "plan_fill", "plan_partition_copy",
           "plan_prep", "plan_swap", "plan_unprep", "plan_unswap"]
