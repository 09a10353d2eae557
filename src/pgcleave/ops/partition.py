"""``partition``: turn a live plain table into a partitioned table under the same name, online;
``add-partition``: a new partition without scanning a DEFAULT under an exclusive lock;
``unpartition``: the way back while the rows still sit in the old table.

Two in-place shapes (see DESIGN.md, "Converting a live table"):

- ``legacy`` (keys that grow: time, serial ids). ``CHECK (key < cutoff) NOT VALID`` then
  ``VALIDATE`` while writes flow (SHARE UPDATE EXCLUSIVE); then one short transaction renames the
  old table, creates the partitioned parent under the old name, attaches the old table as
  ``[MINVALUE, cutoff)`` (no scan: the validated CHECK proves the bound) and creates the next
  partitions.
- ``default`` (keys with no order, e.g. tenants; seed 000): the same short transaction attaches
  the old table as the DEFAULT partition, which needs no scan at all while it is the only one.

Whatever the shape, the cut-over transaction re-creates on the new parent what the application
relies on: the name, defaults, NOT NULL and CHECK constraints, indexes and keys (under their
original names, so ``ON CONFLICT ON CONSTRAINT`` keeps working), serial and identity sequences
(continuing, not restarting), outbound foreign keys (adopted from the old table without a
scan), triggers, grants, comments, row-level security and the views that read the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql

from .. import journal, preflight
from .. import policy as policy_mod
from ..catalog import Index, TableInfo, relation_exists, snapshot
from ..connection import Connection
from ..ddl import dependents, identity, orm
from ..ddl import inbound_fks as ifk
from ..ddl.bounds import (
    Bound,
    check_new_bound,
    default_name,
    parse_by,
    requested_bound,
)
from ..ddl.exclusion import default_exclusion, drop_default_exclusion
from ..ddl.tables import (
    collist,
    create_partition,
    excludes_by_key,
    index_tail,
    insert_columns,
    is_partition_of,
    part_keys,
    partition_only_keys,
)
from ..errors import Refused
from ..names import QualifiedName, child_name
from ..plan import Lock, LockTaken, Plan, Residue, Statement, Step
from ..schemes import (
    Interval,
    add,
    check_fits,
    floor,
    key_kind,
    literal,
    parse_value,
    ranges,
    suffix,
)
from . import carve as carve_ops
from . import copy as copy_ops
from . import copy_layout
from .inbound import Inbound, classify, mode_of

CUTOFF_CHECK = "pgcleave_cutoff"
STRATEGIES = ("legacy", "default", "copy")
# unpartition moves rows of the other partitions back under ACCESS EXCLUSIVE: only a few.
UNPARTITION_MAX_ROWS = 10_000



















# -- partition ------------------------------------------------------------------------------------
@dataclass
class _Keys:
    """How each index of the old table is carried over."""

    on_parent: list[Index]  # re-created on the parent under the original name
    per_partition: list[Index]  # unique without the partition key: on every partition instead
    renames: list[tuple[str, str]]  # old index name -> its name once the old table is a partition


def plan_partition(conn: Connection, table: str, *, by: str, interval: str | None = None,
                   premake: int = 3, strategy: str | None = None,
                   then: str | None = None, then_interval: str | None = None,
                   cutoff: str | None = None, drop_inbound_fks: bool = False,
                   inbound_fks: str | None = None, require_parent_key: bool = False,
                   old_name: str | None = None,
                   modulus: int | None = None, values: list[str] | None = None,
                   batch_size: int = 10000, jobs: str | int = 1) -> Plan:
    """Plan the in-place conversion of ``table`` into a partitioned table of the same name
    (or, for hash, list value groups and two levels by copy, the copy's job)."""
    method, col = parse_by(by)
    fk_mode = mode_of(inbound_fks, drop_inbound_fks)
    if strategy is not None and strategy not in STRATEGIES:
        raise Refused(f"unknown strategy {strategy!r}", hint="use legacy, default or copy")
    if method == "range" and (values or modulus is not None):
        raise Refused(f"--{'values' if values else 'modulus'} goes with "
                      f"{'list' if values else 'hash'} partitioning; a range layout takes "
                      "--interval; nothing was changed")
    if method == "hash" or values or modulus is not None or (method == "list" and (
            strategy == "copy" or (then is not None and interval is not None))):
        return _plan_layout_copy(conn, table, by=by, method=method, strategy=strategy,
                                 modulus=modulus, values=values, then=then,
                                 interval=interval or then_interval, premake=premake,
                                 batch_size=batch_size, inbound_fks=fk_mode, jobs=jobs)
    if strategy == "copy":
        return copy_ops.plan_partition_copy(conn, table, by=by, interval=interval,
                                            premake=premake, batch_size=batch_size,
                                            inbound_fks=fk_mode, jobs=jobs)
    info = snapshot(conn, table)
    name = info.name
    if info.kind == "p":
        key_text = info.partitioning.key if info.partitioning else "?"
        raise Refused(f"{name} is already partitioned ({key_text})",
                      hint="add partitions with `pgcleave add-partition`, move rows with "
                           "`pgcleave carve`")
    if info.kind != "r":
        raise Refused(f"{name} is not a plain table")
    if info.parent is not None:
        raise Refused(f"{name} is already a partition of {info.parent}")
    if info.primary_key is None:
        raise Refused(f"{name} has no primary key",
                      hint="add one first (pgcleave needs it to keep rows unique and to move "
                           "them safely)")
    key = info.column(col)
    kind = key_kind(key.type)
    iv: Interval | None = None
    if interval is not None:
        if method != "range":
            raise Refused("--interval applies to range partitioning only")
        iv = Interval.parse(interval)
        check_fits(kind, iv, col, key.type)
    journal.refuse_unfinished(conn, name.quoted)

    reason: str
    if strategy is None:
        if method == "list":
            strategy, reason = "default", "list keys have no order: the old table becomes the " \
                                          "DEFAULT partition and each list is carved out later"
        elif then is not None:
            strategy, reason = "default", "two levels: the old table becomes the DEFAULT " \
                                          "partition; maintain creates the sub-partitioned branches"
        elif iv is not None and not key.not_null:
            strategy, reason = "default", f"{col} is nullable and a range partition cannot hold " \
                                          "NULL keys: the old table becomes the DEFAULT partition"
        elif iv is not None:
            strategy, reason = "legacy", f"{col} grows ({key.type}): the old table becomes the " \
                                         "partition [MINVALUE, cutoff) without a scan and new " \
                                         "rows go to new partitions"
        else:
            strategy, reason = "default", f"no --interval for {col} ({key.type}): the old table " \
                                          "becomes the DEFAULT partition; carve ranges out later"
    else:
        reason = "chosen with --strategy"
    if strategy == "legacy":
        if method != "range" or iv is None:
            raise Refused("the legacy strategy needs range partitioning with an --interval",
                          hint="e.g. --by 'range(created_at)' --interval '1 month'")
        if then is not None:
            raise Refused("two-level partitioning (--then) uses the default strategy",
                          hint="drop --strategy legacy")

    sub: tuple[str, str] | None = None
    if then is not None:
        sub = parse_by(then)
        sub_col = info.column(sub[1])
        if then_interval is not None:
            check_fits(key_kind(sub_col.type), Interval.parse(then_interval), sub[1],
                       sub_col.type)
    if premake < 0:
        raise Refused("--premake must be 0 or more")

    # Things that cannot survive, refused before anything changes.
    for c in info.constraints:
        # On 17+ an exclusion constraint that compares the key with = lives on the parent
        # (created on it empty; ATTACH adopts the old table's). Otherwise the partitions
        # created from now on would not carry it: refused rather than silently weakened.
        if c.type == "x" and not (info.server_version >= 170000
                                  and excludes_by_key(c.definition, col)):
            why = (f"it does not compare {col} with =" if info.server_version >= 170000
                   else "PostgreSQL before 17 allows none on a partitioned table")
            raise Refused(f"{name} has an exclusion constraint {c.name} ({c.definition}) that "
                          f"cannot live on the partitioned table ({why}): new partitions "
                          "would not enforce it",
                          hint="use --strategy copy (it warns and keeps it on the retired "
                               f"table only), add {col} WITH = to the constraint on "
                               "PostgreSQL 17+, or drop it first")
    for fk in info.foreign_keys_out:
        if fk.ref_table == name:
            raise Refused(f"{name} has a self-referencing foreign key ({fk.name}); not supported")

    keys = _classify_indexes(info, col, strategy)
    pk_has_key = col in info.primary_key.columns
    warnings: list[str] = []
    notes = [f"strategy {strategy}: {reason}"]
    inbound = classify(info, col, [ix.columns for ix in keys.on_parent if ix.unique
                                   and " WHERE " not in ix.definition], fk_mode, notes, warnings)
    if str(jobs) != "1":
        notes.append(f"--jobs {jobs} is not used: an in-place conversion copies no rows")
    if not pk_has_key:
        if require_parent_key:
            raise Refused(f"the primary key of {name} ({', '.join(info.primary_key.columns)}) "
                          f"does not include the partition key {col}, and --require-parent-key "
                          "was given",
                          hint=f"add {col} to the primary key first, or drop "
                               "--require-parent-key")
        warnings.append(
            f"the primary key ({', '.join(info.primary_key.columns)}) does not include the "
            f"partition key {col}: the partitioned table {name} gets no primary key; every "
            f"partition keeps its own PRIMARY KEY ({', '.join(info.primary_key.columns)}), so "
            "values are unique within a partition but no longer across partitions (a second "
            "row with an existing key can be inserted into another partition). "
            + orm.key_change(name.name, list(info.primary_key.columns), None))
    for ix in keys.per_partition:
        if not ix.primary:
            warnings.append(f"unique index {ix.name} does not include {col}: it stays unique "
                            "per partition only")

    suffix_word = "legacy" if strategy == "legacy" else "old"
    old = name.sibling(old_name or child_name(name.name, suffix_word))
    if relation_exists(conn, old):
        raise Refused(f"{old} already exists", hint="choose another name with --old-name")
    for _, new in keys.renames:
        if relation_exists(conn, name.sibling(new)):
            raise Refused(f"{name.sibling(new)} already exists; the old table's index would be "
                          "renamed to it")

    attach: Bound
    premade: list[tuple[QualifiedName, Bound]] = []
    cut_value: Any = None
    if strategy == "legacy":
        assert iv is not None
        cut_value = _cutoff(conn, info, col, kind, iv, cutoff)
        attach = Bound("range", None, literal(cut_value))
        for lo, hi in ranges(cut_value, premake, iv):
            premade.append((name.sibling(child_name(name.name, suffix(lo, iv))),
                            Bound("range", literal(lo), literal(hi))))
        notes.append(f"cutoff {cut_value}: rows with {col} below it stay in {old}; until the "
                     f"cut-over, rows with {col} >= {cut_value} are refused by the CHECK")
        if _future_dated(conn, info, col, kind):
            warnings.append(
                f"{name} holds rows with {col} in the future: the application writes "
                f"future-dated keys, and one at or past {cut_value} written before the "
                "cut-over would be refused by the CHECK (which reads the whole table first); "
                "--strategy default or copy refuse nothing")
    else:
        attach = Bound("default")
    for pname, _ in premade:
        if relation_exists(conn, pname):
            raise Refused(f"{pname} already exists")

    pol = policy_mod.Policy(
        table=name, strategy=method, key_column=col, interval=str(iv) if iv else None,
        premake=premake, sub_strategy=sub[0] if sub else None,
        sub_key_column=sub[1] if sub else None, sub_interval=then_interval,
        options={"conversion": strategy, "old_table": old.name,
                 "partition_keys": [list(k) for k in part_keys(info, keys.per_partition)]})

    colid = sql.Identifier(col)
    steps: list[Step] = []
    if strategy == "legacy":
        check = Bound("range", None, literal(cut_value)).check(colid, key.type)
        has_check = sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = {} AND conrelid IN "
            "(to_regclass({}), to_regclass({})))").format(
            sql.Literal(CUTOFF_CHECK), name.literal, old.literal)
        steps.append(Step.sql(
            "add-cutoff-check",
            f"add CHECK ({col} < {cut_value}) NOT VALID on {name} (no scan)",
            [sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({}) NOT VALID").format(
                name.ident, sql.Identifier(CUTOFF_CHECK), check)],
            locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, f"{name} (brief, no scan)")],
            guard=has_check,
            undo=[sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                name.ident, sql.Identifier(CUTOFF_CHECK))],
            residue=Residue.REFUSES,
            residue_note=f"refuses rows of {name} with {col} >= {cut_value} (the cut-over that "
                         "gives them a partition has not run)"))
        steps.append(Step.sql(
            "validate-cutoff-check",
            f"validate the CHECK: scans {name} while writes continue",
            [sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                name.ident, sql.Identifier(CUTOFF_CHECK))],
            locks=[LockTaken(Lock.SHARE_UPDATE_EXCLUSIVE, str(name))],
            guard=sql.SQL(
                "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = {} AND convalidated"
                " AND conrelid IN (to_regclass({}), to_regclass({})))").format(
                sql.Literal(CUTOFF_CHECK), name.literal, old.literal),
            nothing_to_undo=True))

    cut = _cutover(info, col, method, old, attach, premade, keys, pol,
                   cutoff_check=strategy == "legacy", inbound=inbound)
    undo = revert_statements(_RevertSpec.from_info(info, old, keys, inbound=inbound))
    locks = [LockTaken(Lock.ACCESS_EXCLUSIVE, str(name)),
             *[LockTaken(Lock.SHARE_ROW_EXCLUSIVE, str(fk.ref_table))
               for fk in info.foreign_keys_out],
             *[LockTaken(Lock.ACCESS_EXCLUSIVE, str(fk.table)) for fk in info.foreign_keys_in]]
    what = (f"[MINVALUE, {cut_value}) partition" if strategy == "legacy"
            else "DEFAULT partition")
    steps.append(Step.sql(
        "cut-over",
        f"one short transaction: rename {name} to {old}, create the partitioned {name}, attach "
        f"{old} as its {what} (no scan)"
        + (f", create {len(premade)} partitions" if premade else ""),
        cut, locks=locks,
        guard=sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = "
                      "to_regclass({}))").format(name.literal),
        undo=undo))
    steps += [ifk.validate_step(r, name, name=f"validate-fk:{r.name}")
              for r in inbound.repoint if r.validated]
    args = {"by": by, "interval": interval, "premake": premake, "strategy": strategy,
            "then": then, "then_interval": then_interval, "cutoff": str(cut_value)
            if cut_value is not None else None, "old_table": old.quoted}
    return Plan("partition", name.quoted, args, steps, notes=notes, warnings=warnings,
                requires=[*preflight.table_change(name),
                          *(preflight.owner(v.name) for v in info.views),
                          *(preflight.owner(fk.table) for fk in info.foreign_keys_in)])


def _plan_layout_copy(conn: Connection, table: str, *, by: str, method: str,
                      strategy: str | None, modulus: int | None, values: list[str] | None,
                      then: str | None, interval: str | None, premake: int,
                      batch_size: int, inbound_fks: str, jobs: str | int = 1) -> Plan:
    """Hash, list value groups and list-then-range: only the copy strategy can build them."""
    warnings: list[str] = []
    if method == "hash":
        reason = ("a hash-partitioned table has no DEFAULT partition and no open-ended range "
                  "to hold the old table, so it cannot be converted in place")
        if strategy in ("legacy", "default"):
            warnings.append(f"--strategy {strategy} asked for in place, but {reason}: the "
                            "rows are copied instead (strategy copy)")
    elif strategy in ("legacy", "default"):
        raise Refused(f"--strategy {strategy} keeps the old table whole as one partition: "
                      "list value groups (--values) and two levels with history split need "
                      "the copy strategy; nothing was changed",
                      hint="drop --strategy, or use --strategy copy")
    else:
        reason = ("list value groups and history split into two levels are built by copying "
                  "the rows into the new layout")
    return copy_layout.plan_partition_layout(
        conn, table, by=by, modulus=modulus, values=values, then=then, interval=interval,
        premake=premake, batch_size=batch_size, jobs=jobs, notes=[f"strategy copy: {reason}"],
        warnings=warnings, inbound_fks=inbound_fks)


def _classify_indexes(info: TableInfo, col: str, strategy: str) -> _Keys:
    suffix_word = "legacy" if strategy == "legacy" else "old"
    on_parent: list[Index] = []
    per_part: list[Index] = []
    renames: list[tuple[str, str]] = []
    for ix in info.indexes:
        if not ix.valid:
            continue  # a failed CREATE INDEX CONCURRENTLY: not carried over
        if ix.unique and col not in ix.columns:
            per_part.append(ix)
            continue
        on_parent.append(ix)
        renames.append((ix.name, child_name(ix.name, suffix_word)))
    return _Keys(on_parent, per_part, renames)


def _cutoff(conn: Connection, info: TableInfo, col: str, kind: str, iv: Interval,
            given: str | None) -> Any:
    """The first value the old table will not hold: the start of the interval after both the
    current time (time keys) or sequence (id keys) and the largest key, plus a margin so the
    CHECK never refuses a row the application writes before the cut-over."""
    if given is not None:
        v = parse_value(given, kind)  # type: ignore[arg-type]
        if floor(v, iv) != v:
            raise Refused(f"--cutoff {given} is not aligned to the interval {iv}",
                          hint=f"use {floor(v, iv)} or {add(floor(v, iv), iv)}")
        return v
    ident = sql.Identifier(col)
    base: Any = None
    if any(ix.columns and ix.columns[0] == col and ix.valid for ix in info.indexes):
        row = conn.execute(sql.SQL("SELECT max({}) FROM {}").format(ident, info.name.ident)
                           ).fetchone()
        base = row[0] if row else None
    if kind in ("date", "timestamp", "timestamptz"):
        now_row = conn.execute("SELECT now(), localtimestamp, current_date").fetchone()
        assert now_row is not None
        cur: Any = {"timestamptz": now_row[0], "timestamp": now_row[1], "date": now_row[2]}[kind]
        base = cur if base is None or _lt(base, cur) else base
    else:
        for s in info.sequences:
            if s.column == col and s.last_value is not None:
                base = s.last_value if base is None else max(base, s.last_value)
        if base is None:
            base = 0
    cut = add(floor(base, iv), iv)
    if _too_close(base, cut, iv):
        cut = add(cut, iv)
    if kind in ("date", "timestamp", "timestamptz"):
        # the CHECK refuses rows >= cutoff from the moment it is added: the clock must not
        # reach the cutoff while VALIDATE scans the table (twice the time of a slow scan)
        scan = timedelta(seconds=2 * info.bytes / VALIDATE_BYTES_PER_S)
        while _as_time(cut) - _as_time(cur) < scan:
            cut = add(cut, iv)
    return cut


#: A slow sequential scan (a busy server, cold cache): sets the cutoff's margin in time
VALIDATE_BYTES_PER_S = 50 * 1024 * 1024


def _as_time(v: Any) -> datetime:
    return v if isinstance(v, datetime) else datetime(v.year, v.month, v.day)


def _future_dated(conn: Connection, info: TableInfo, col: str, kind: str) -> bool:
    """Whether a time key already holds values past now (read from an index on it only)."""
    if kind not in ("date", "timestamp", "timestamptz") or not any(
            ix.columns and ix.columns[0] == col and ix.valid for ix in info.indexes):
        return False
    now = {"timestamptz": "now()", "timestamp": "localtimestamp", "date": "current_date"}[kind]
    row = conn.execute(sql.SQL("SELECT max({}) > {} FROM {}").format(
        sql.Identifier(col), sql.SQL(now), info.name.ident)).fetchone()
    return bool(row and row[0])


def _lt(a: Any, b: Any) -> bool:
    try:
        return bool(a < b)
    except TypeError:
        return False


def _too_close(base: Any, cut: Any, iv: Interval) -> bool:
    """Less than a quarter of an interval left before the cutoff."""
    if iv.number is not None:
        return bool((cut - base) * 4 < iv.number)
    span = add(cut, iv) - cut
    left = cut - base
    if isinstance(left, timedelta) and isinstance(span, timedelta):
        return left * 4 < span
    return False


def _cutover(info: TableInfo, col: str, method: str, old: QualifiedName, attach: Bound,
             premade: list[tuple[QualifiedName, Bound]], keys: _Keys,
             pol: policy_mod.Policy, *, cutoff_check: bool, inbound: Inbound
             ) -> list[Statement]:
    name = info.name
    st: list[Statement] = [
        sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(name.ident)]
    # Inbound keys leave the old table first; re-pointed and emulated ones come back last,
    # referencing the partitioned table (the old one's rows satisfied them a moment ago).
    for fk in inbound.drop:
        st.append(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
            fk.table.ident, sql.Identifier(fk.name)))
    for r in inbound.changed:
        st.append(ifk.drop_fk(r))
    # The old table's own triggers would fire twice once the parent's are cloned onto it.
    st += dependents.drop_triggers(info, name)
    st.append(sql.SQL("ALTER TABLE {} RENAME TO {}").format(name.ident,
                                                             sql.Identifier(old.name)))
    # Free the index and constraint names for the parent (ON CONFLICT ON CONSTRAINT uses them).
    for cur, new in keys.renames:
        st.append(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
            sql.Identifier(name.schema, cur), sql.Identifier(new)))
    st.append(sql.SQL(
        "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY "
        "INCLUDING GENERATED INCLUDING STATISTICS INCLUDING STORAGE INCLUDING COMPRESSION "
        "INCLUDING COMMENTS) PARTITION BY {} ({})").format(
        name.ident, old.ident, sql.SQL(method.upper()), sql.Identifier(col)))
    if cutoff_check:
        st.append(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
            name.ident, sql.Identifier(CUTOFF_CHECK)))
    # Identity: LIKE ... INCLUDING IDENTITY made a new sequence starting at 1; it continues the
    # old one (on 17+ it also replaces it: a partition may not have an identity of its own).
    st += identity.take_over(info, name, old)
    for ix in keys.on_parent:
        con = next((c for c in info.constraints if c.name == ix.constraint), None)
        if con is not None:
            st.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                name.ident, sql.Identifier(ix.name), sql.SQL(con.definition)))
        else:
            st.append(sql.SQL("CREATE {}INDEX {} ON {} {}").format(
                sql.SQL("UNIQUE " if ix.unique else ""), sql.Identifier(ix.name), name.ident,
                sql.SQL(index_tail(ix.definition))))
    # Outbound foreign keys on the still empty parent; ATTACH then adopts the old table's
    # equal constraints instead of validating them again.
    for fk in info.foreign_keys_out:
        st.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
            name.ident, sql.Identifier(fk.name), sql.SQL(fk.definition)))
    st.append(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(
        name.ident, old.ident, attach.for_values()))
    for pname, b in premade:
        st += create_partition(name, pname, b, part_keys(info, keys.per_partition))
    st += dependents.triggers(info)
    st += dependents.sequence_ownership(info, name)
    st += dependents.grants(info, name)
    st += dependents.comments(info, name)
    st += dependents.row_security(info, name)
    st += dependents.views(info)
    for r in inbound.repoint:
        st.append(ifk.add_not_valid(r, name))
    for r in inbound.emulate:
        st += [*ifk.functions(r), *ifk.triggers(r, name)]
    st.append(pol.upsert())
    return st












# -- revert (undo of the cut-over, and unpartition) -------------------------------------------
@dataclass
class _RevertSpec:
    name: QualifiedName
    old: QualifiedName
    columns: list[str]
    overriding: bool
    index_renames: list[tuple[str, str]]  # current name on old -> original name
    triggers: list[str]
    disabled_triggers: list[str]
    views: list[tuple[QualifiedName, str]]
    serials: list[tuple[QualifiedName, str]]
    identities: list[identity.Identity]
    shared_identity: bool  # 17+: the identity is the partitioned table's (see ddl.identity)
    refk: list[tuple[QualifiedName, str, str]]  # inbound FKs to re-add
    # re-pointed and emulated keys, put back as plain keys on the plain table; validated in
    # the transaction (the cut-over's undo) or by steps after it (unpartition)
    back_fks: list[ifk.Rule]
    emulated: list[ifk.Rule]
    validate_inline: bool = True

    @classmethod
    def from_info(cls, info: TableInfo, old: QualifiedName, keys: _Keys, *, inbound: Inbound
                  ) -> _RevertSpec:
        return cls(
            name=info.name, old=old, columns=insert_columns(info),
            overriding=any(c.identity == "a" for c in info.columns),
            index_renames=[(new, cur) for cur, new in keys.renames],
            triggers=[t.definition for t in info.triggers],
            disabled_triggers=[t.name for t in info.triggers if t.enabled == "D"],
            views=[(v.name, v.definition) for v in info.views if not v.materialized],
            serials=[(s.name, s.column) for s in info.sequences if s.kind == "serial"],
            identities=identity.identities(info),
            shared_identity=identity.shared_by_partitions(info.server_version),
            refk=[(fk.table, fk.name, fk.definition) for fk in inbound.drop],
            back_fks=inbound.changed, emulated=inbound.emulate)


def revert_statements(r: _RevertSpec) -> list[Statement]:
    """One transaction that puts the old table back under its name with every row: detach it,
    move the (few) rows of the other partitions back into it, hand the dependents back, drop
    the partitioned table."""
    name, old = r.name, r.old
    tmp = name.sibling(child_name(name.name, "pgcleave_undo"))
    cols = collist(r.columns)
    st: list[Statement] = [
        sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(name.ident),
        # an emulated key's child-side trigger carries the key's name: it goes first
        *[s for fk in r.emulated for s in (*ifk.drop_triggers(fk, name),
                                           *ifk.drop_functions(fk))],
        *[ifk.drop_fk(fk, if_exists=True) for fk in r.back_fks if fk not in r.emulated],
        sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(name.ident, old.ident),
        sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
            old.ident, sql.Identifier(CUTOFF_CHECK)),
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(name.ident, sql.Identifier(tmp.name)),
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(old.ident, sql.Identifier(name.name)),
        sql.SQL("INSERT INTO {} ({}){} SELECT {} FROM {}").format(
            name.ident, cols, sql.SQL(" OVERRIDING SYSTEM VALUE" if r.overriding else ""),
            cols, tmp.ident),
    ]
    if r.shared_identity:
        st += identity.give_back(r.identities, name)
    for col in ([] if r.shared_identity else [i.column for i in r.identities]):
        st.append(sql.SQL(
            "SELECT setval(pg_get_serial_sequence({n}, {c})::regclass, v) FROM (SELECT greatest("
            "pg_sequence_last_value(pg_get_serial_sequence({n}, {c})::regclass), "
            "pg_sequence_last_value(pg_get_serial_sequence({t}, {c})::regclass)) v) x "
            "WHERE v IS NOT NULL").format(n=name.literal, t=tmp.literal, c=sql.Literal(col)))
    for seq, col in r.serials:
        st.append(sql.SQL("ALTER SEQUENCE {} OWNED BY {}.{}").format(
            seq.ident, name.ident, sql.Identifier(col)))
    for vname, vdef in r.views:
        st.append(sql.SQL("CREATE OR REPLACE VIEW {} AS {}").format(
            vname.ident, sql.SQL(vdef.rstrip().rstrip(";"))))
    st.append(sql.SQL("DROP TABLE {}").format(tmp.ident))
    for cur, orig in r.index_renames:
        st.append(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
            sql.Identifier(name.schema, cur), sql.Identifier(orig)))
    for t in r.triggers:
        st.append(sql.SQL(t))
    for t in r.disabled_triggers:
        st.append(sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(name.ident,
                                                                       sql.Identifier(t)))
    for child, fkname, fkdef in r.refk:
        st.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID").format(
            child.ident, sql.Identifier(fkname), sql.SQL(fkdef)))
        st.append(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
            child.ident, sql.Identifier(fkname)))
    for fk in r.back_fks:
        st.append(ifk.add_not_valid(fk, name))
        if r.validate_inline and fk.validated:
            st.append(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                fk.child.ident, sql.Identifier(fk.name)))
    st.append(policy_mod.Policy.delete(name))
    return st


def plan_unpartition(conn: Connection, table: str) -> Plan:
    """Back to a plain table: possible while the rows sit in the old table (the DEFAULT or the
    ``[MINVALUE, cutoff)`` partition) and the other partitions hold only a few rows."""
    info = snapshot(conn, table)
    name = info.name
    if info.partitioning is None:
        raise Refused(f"{name} is not partitioned")
    journal.refuse_unfinished(conn, name.quoted)
    parts = info.partitioning.partitions
    pol = policy_mod.load(conn, name)
    old_name = pol.options.get("old_table") if pol is not None else None
    old = next((p for p in parts if p.name.name == old_name), None) if old_name else None
    if old is None:
        old = info.partitioning.default or next(
            (p for p in parts if p.lower and p.lower[0].upper() == "MINVALUE"), None)
    if old is None:
        raise Refused(f"cannot tell which partition of {name} is the old table",
                      hint="unpartition works for tables partitioned in place (the old table "
                           "is the DEFAULT or the [MINVALUE, cutoff) partition)")
    for p in parts:
        if p.kind != "r":
            what = "foreign" if p.kind == "f" else "itself partitioned"
            raise Refused(f"partition {p.name} is {what}",
                          hint="move it back or merge it first")
    others = [p for p in parts if p is not old]
    moved = sum(p.rows or 0 for p in others)
    if moved > UNPARTITION_MAX_ROWS:
        raise Refused(f"the other partitions of {name} hold about {moved:,} rows; moving them "
                      "back into the old table would hold an exclusive lock for that long",
                      hint=f"unpartition is the way back while the rows still sit in {old.name}"
                           f" (at most {UNPARTITION_MAX_ROWS:,} rows elsewhere); otherwise "
                           "copy the table out instead")
    # Keys re-pointed at the partitioned table, and emulated ones, become plain keys of the
    # plain table again: NOT VALID in the transaction, validated after it with writes flowing.
    try:
        back = [ifk.Rule.from_fk(fk) for fk in info.foreign_keys_in]
    except ValueError as exc:
        raise Refused(f"a foreign key pointing at {name} cannot be moved back: {exc}",
                      hint="drop it first, and re-create it after unpartition") from exc
    emulated = ifk.emulated(conn, name)
    # Index names: the old table's indexes attached to the parent's take the parent's names back.
    renames = [(r[0], r[1]) for r in conn.execute(
        "SELECT ci.relname, pi.relname FROM pg_index i JOIN pg_class ci ON ci.oid = i.indexrelid"
        " JOIN pg_inherits h ON h.inhrelid = i.indexrelid"
        " JOIN pg_class pi ON pi.oid = h.inhparent WHERE i.indrelid = %s AND ci.relname <> "
        "pi.relname", [old.oid]).fetchall()]
    spec = _RevertSpec(
        name=name, old=old.name, columns=insert_columns(info),
        overriding=any(c.identity == "a" for c in info.columns), index_renames=renames,
        triggers=[t.definition for t in info.triggers if not ifk.is_emulation(t.definition)],
        disabled_triggers=[t.name for t in info.triggers if t.enabled == "D"],
        views=[(v.name, v.definition) for v in info.views if not v.materialized],
        serials=[(s.name, s.column) for s in info.sequences if s.kind == "serial"],
        identities=identity.identities(info),
        shared_identity=identity.shared_by_partitions(info.server_version), refk=[],
        back_fks=[*back, *emulated], emulated=emulated, validate_inline=False)
    stmts = revert_statements(spec)
    # Privileges and comments given to the partitioned table since the cut-over.
    stmts += [s for s in dependents.grants(info, name)]
    stmts += dependents.comments(info, name)
    step = Step.sql(
        "unpartition",
        f"one transaction: detach {old.name}, move {moved:,} rows of {len(others)} other "
        f"partition(s) into it, give it back the name {name.name}",
        stmts, locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, str(name)),
                      *[LockTaken(Lock.ACCESS_EXCLUSIVE, str(r.child)) for r in spec.back_fks]],
        guard=sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = "
                      "to_regclass({}))").format(name.literal),
        undo=[])
    fk_steps = [ifk.validate_step(r, name, name=f"validate-fk:{r.name}")
                for r in spec.back_fks if r.validated]
    notes = [f"{old.name} becomes {name.name} again; partitions dropped: "
             + (", ".join(p.name.name for p in others) or "none")]
    notes += [f"foreign key {r.name} of {r.child} points at the plain {name} again (NOT VALID, "
              "then validated while writes continue)" for r in spec.back_fks]
    return Plan("unpartition", name.quoted, {"old_table": old.name.quoted},
                [step, *fk_steps], notes=notes,
                requires=[*preflight.table_change(name),
                          *(preflight.owner(r.child) for r in spec.back_fks)],
                warnings=[f"the partitions {', '.join(p.name.name for p in others)} are "
                          "dropped after their rows are moved"] if others else [])








ADD_METHODS = ("auto", "carve", "check")


def plan_add_partition(conn: Connection, table: str, *, lower: str | None = None,
                       upper: str | None = None, values: list[str] | None = None,
                       modulus: int | None = None, remainder: int | None = None,
                       name: str | None = None, method: str = "auto",
                       max_lock_ms: float = carve_ops.DIRECT_MAX_LOCK_MS) -> Plan:
    """A new partition, without ever refusing an application statement.

    Next to a plain DEFAULT partition PostgreSQL would scan the DEFAULT under ACCESS EXCLUSIVE
    to prove it holds no row of the new range. Proving it first with a CHECK excluding the
    range (NOT VALID, then VALIDATE) refuses every INSERT of that range from the CHECK's
    creation until the partition exists, and the VALIDATE reads the whole DEFAULT: whenever the
    DEFAULT takes writes (always, for a live table), an application INSERT may hit that window.
    So ``auto`` (and ``carve``) takes ``carve``'s path with the new partition as its one piece:
    for a small DEFAULT one short transaction that locks the parent, moves any rows of the
    range (none, usually) and attaches the new table, PostgreSQL scanning the small DEFAULT
    under the lock (``max_lock_ms``); for a larger one the copy with change capture and short
    swaps (rows stay visible and writable throughout). ``check`` keeps the old CHECK path for
    an operator who knows nothing writes to the range (the plan says what it refuses);
    ``auto`` also falls back to it, with a warning, when carve cannot run (no primary key on a
    DEFAULT too large for the direct transaction)."""
    if method not in ADD_METHODS:
        raise Refused(f"unknown add-partition method {method!r}",
                      hint="use auto, carve or check")
    info = snapshot(conn, table)
    if info.partitioning is None:
        raise Refused(f"{info.name} is not partitioned",
                      hint=f"partition it first: pgcleave partition {info.name} --by ...")
    journal.refuse_unfinished(conn, info.name.quoted)
    b = requested_bound(info, lower=lower, upper=upper, values=values, modulus=modulus,
                        remainder=remainder)
    check_new_bound(conn, info, b)
    part = info.name.sibling(name) if name else default_name(conn, info, b)
    if relation_exists(conn, part):
        raise Refused(f"{part} already exists", hint="choose another --name")
    dflt = info.partitioning.default
    fallback: list[str] = []
    if dflt is not None and dflt.kind == "r" and method != "check":
        try:
            return _add_by_carve(conn, info, b, part, method, max_lock_ms)
        except Refused as exc:
            if method == "carve":
                raise
            fallback = [f"carve cannot add {part.name} ({exc.message}): the excluding CHECK "
                        f"is used instead, and from its creation until {part.name} exists "
                        f"(the validation reads {dflt.name}) an INSERT of a row "
                        f"{b.describe()} fails"]
    elif method == "carve":
        raise Refused(f"{info.name} has no plain DEFAULT partition: there is nothing to carve",
                      hint="use --method auto")
    return _add_by_check(conn, info, b, part, dflt is not None and method == "check",
                         fallback)


def _add_by_carve(conn: Connection, info: TableInfo, b: Bound, part: QualifiedName,
                  method: str, max_lock_ms: float) -> Plan:
    """``add-partition`` as a carve of one piece out of the DEFAULT."""
    dflt = info.partitioning.default if info.partitioning else None
    assert dflt is not None
    plan = carve_ops.plan_carve(conn, info.name.quoted,
                                [carve_ops.Piece(name=part.name, bound=b)],
                                method="auto", max_lock_ms=max_lock_ms, info=info)
    how = plan.args.get("method")
    why = (f"{dflt.name} takes writes, so a row {b.describe()} may arrive while the partition "
           "is added; a CHECK excluding the range from the DEFAULT would refuse it (from its "
           "creation until the partition exists, the validation reading the whole DEFAULT), so "
           f"the partition is carved out of {dflt.name} instead ({how}: "
           + ("one short transaction under the parent's lock, any rows of the range moved "
              "into the new partition)" if how == "direct" else
              "a copy with change capture and short swaps: rows stay visible and writable)")
           + ": no application statement is refused")
    notes = [f"path: carve ({'--method carve' if method == 'carve' else 'auto'}): {why}",
             *plan.notes]
    return Plan("add-partition", info.name.quoted,
                {"partition": part.quoted, "bound": b.describe(), "path": f"carve-{how}"},
                plan.steps, notes=notes, warnings=plan.warnings, requires=plan.requires)


def _add_by_check(conn: Connection, info: TableInfo, b: Bound, part: QualifiedName,
                  chosen: bool, warnings: list[str]) -> Plan:
    """The partition created with ``CREATE TABLE ... PARTITION OF``; next to a DEFAULT, after
    a validated CHECK excluding its range from it (which refuses rows of that range until
    the partition exists: chosen with ``--method check`` or as a fallback, with a warning)."""
    assert info.partitioning is not None
    col = info.partitioning.key_columns[0]
    t = info.partitioning.key_types[0]
    colid = sql.Identifier(col)
    parent = info.name
    per_part = partition_only_keys(conn, info)
    steps: list[Step] = []
    dflt = info.partitioning.default
    notes: list[str] = []
    if chosen:
        notes.append("path: check (chosen with --method check)")
    if dflt is not None and dflt.kind == "r":
        steps += default_exclusion(
            dflt.name, child_name("pgcleave_excl", part.name), b.predicate(colid, t),
            names=("add-exclusion-check", "validate-exclusion-check"), what=b.describe(),
            done=sql.SQL("EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass({}))"
                         ).format(part.literal))
        create_locks = [LockTaken(Lock.ACCESS_EXCLUSIVE, str(parent)),
                        LockTaken(Lock.ACCESS_EXCLUSIVE, f"{dflt.name} (no scan)")]
        notes.append(f"{dflt.name} is not scanned under the exclusive lock: the validated CHECK "
                     "proves it holds no row of the new partition")
        notes.append(f"from the CHECK's creation until {part.name} exists (the validation "
                     f"reads {dflt.name}), an INSERT of a row of the new range fails: it may "
                     "not go to the DEFAULT and has no partition yet. For a range that is "
                     "receiving rows, use `pgcleave carve`, which keeps accepting them")
    else:
        create_locks = [LockTaken(Lock.ACCESS_EXCLUSIVE, str(parent))]
        if dflt is not None:
            notes.append(f"the DEFAULT {dflt.name} is {dflt.kind!r}: PostgreSQL checks it "
                         "when the partition is created")
    steps.append(Step.sql(
        "create-partition", f"create {part.name} {b.describe()}",
        create_partition(parent, part, b, per_part), locks=create_locks,
        guard=is_partition_of(part, parent),
        undo=[sql.SQL(
            "DO $pgcleave$ BEGIN IF EXISTS (SELECT 1 FROM {}) THEN RAISE EXCEPTION "
            "'partition % holds rows; carve them back before undoing', {}; END IF; END "
            "$pgcleave$").format(part.ident, part.literal),
            sql.SQL("DROP TABLE {}").format(part.ident)]))
    if dflt is not None and dflt.kind == "r":
        steps.append(drop_default_exclusion(
            dflt.name, child_name("pgcleave_excl", part.name), b.predicate(colid, t),
            name="drop-exclusion-check"))
    return Plan("add-partition", parent.quoted, {"partition": part.quoted,
                                                  "bound": b.describe(), "path": "create"
                                                  if dflt is None or dflt.kind != "r"
                                                  else "check"}, steps, notes=notes,
                warnings=warnings, requires=[*preflight.table_change(parent),
                          *(preflight.owner(p.name) for p in
                            (info.partitioning.partitions if info.partitioning else [])
                            if p.is_default)])






__all__ = ["Bound", "parse_by", "plan_add_partition", "plan_partition", "plan_unpartition"]
