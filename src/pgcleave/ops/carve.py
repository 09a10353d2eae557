"""``carve``: move the rows of a range or list out of the DEFAULT partition (or out of a range
partition, e.g. the legacy ``[MINVALUE, cutoff)`` one) into new partitions, with every row
visible through the parent at every moment and no writer ever finding a row missing.

Two methods:

- ``direct`` (small sources): one transaction that first takes ACCESS EXCLUSIVE on the parent
  (so application statements queue on the table, not on moved rows: they re-plan after the
  commit and find each row in its new partition), moves the rows with ``DELETE ... RETURNING``
  into a new table whose CHECK proves its bound, and attaches it. PostgreSQL scans the rest of
  the DEFAULT under that lock; the plan estimates how long from the DEFAULT's size and only
  goes direct below ``max_lock_ms``.
- ``swap`` (any size; DESIGN.md "Carving"): new standalone tables, one per new partition plus
  the remainder (a new DEFAULT, or the gaps of a split range partition), each created with a
  CHECK of its bound; a capture trigger on the source keeps them in sync (idempotent upserts
  and deletes by primary key); a batched ``INSERT ... SELECT ... FOR SHARE`` copies the rows
  (the row lock orders each batch with concurrent UPDATE/DELETE, so a row deleted or moved
  meanwhile is never resurrected); a check in one snapshot proves the copies hold exactly the
  source's rows; then one short transaction detaches the source and attaches the new tables
  (no scan: the CHECKs prove every bound), and the source is dropped whole afterwards.

``plan_carve`` is reused by ``maintain`` (drain rows found in a DEFAULT into their partitions)
and by ``move`` (carve a range before moving it to another server).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..catalog import Partition, TableInfo, snapshot
from ..connection import Connection
from ..errors import Refused, StepFailed
from ..execute import ActionContext, action
from ..names import QualifiedName, child_name
from ..plan import Lock, LockTaken, Plan, Statement, Step
from . import dependents
from .partition import (
    Bound,
    bounds_overlap,
    cast,
    check_new_bound,
    collist,
    default_name,
    insert_columns,
    is_partition_of,
    overriding,
    refuse_if_busy,
    regclass_exists,
    requested_bound,
    server_bool,
)

# The direct method holds ACCESS EXCLUSIVE on the parent while it moves the carved rows and
# PostgreSQL scans the rest of the DEFAULT. Measured on the reference machine (2 cores, PG 15,
# uuid/bigint key, primary key + one index): 122 ms for a DEFAULT of 80,000 rows of which
# 40,000 moved, i.e. ~650 source rows per ms. We do not know how many rows the range holds
# before scanning, so the estimate assumes the worse case (all of them move): 400 rows per ms.
# With the default limit of 50 ms, sources of up to ~20,000 rows go direct: a stall below the
# cut-over's own (~20-25 ms measured) plus margin; anything larger is copied and swapped.
DIRECT_ROWS_PER_MS = 400.0
DIRECT_MAX_LOCK_MS = 50
BOUND_CHECK = "pgcleave_bound"
CAPTURE_TRIGGER = "pgcleave_carve"
AFTER_MARK = "/*pgcleave:after*/true"


@dataclass
class Piece:
    """A new partition asked for: a range (``lower``/``upper``, 'MINVALUE'/'MAXVALUE' allowed)
    or a list of values; ``name`` is chosen from the bound when omitted."""

    lower: str | None = None
    upper: str | None = None
    values: list[str] | None = None
    name: str | None = None


PieceLike = Piece | tuple[str, str] | list[str]


def _piece(p: PieceLike) -> Piece:
    if isinstance(p, Piece):
        return p
    if isinstance(p, tuple):
        return Piece(lower=p[0], upper=p[1])
    return Piece(values=list(p))


@dataclass
class _Target:
    name: QualifiedName  # final name
    create_as: QualifiedName  # name while it is being filled
    bound: Bound


def plan_carve(conn: Connection, table: str, ranges_or_values: Sequence[PieceLike], *,
               names: Sequence[str] | None = None, method: str = "auto",
               max_lock_ms: float = DIRECT_MAX_LOCK_MS, batch_size: int = 5000,
               sleep_ms: int = 0) -> Plan:
    """Plan moving rows of the given ranges (``("A", "B")``) or value lists (``["x", "y"]``)
    of ``table`` out of the partition that holds them into new partitions.

    ``method`` is ``auto`` (direct when the estimated exclusive-lock time is at most
    ``max_lock_ms``, else swap), ``direct`` (refused when the estimate is larger) or ``swap``.
    """
    if method not in ("auto", "direct", "swap"):
        raise Refused(f"unknown carve method {method!r}", hint="use auto, direct or swap")
    info = snapshot(conn, table)
    parent = info.name
    part = info.partitioning
    if part is None:
        raise Refused(f"{parent} is not partitioned",
                      hint=f"partition it first: pgcleave partition {parent} --by ...")
    if part.strategy == "hash":
        raise Refused(f"{parent} is hash partitioned: there is no DEFAULT to carve from")
    refuse_if_busy(conn, parent)
    pieces = [_piece(p) for p in ranges_or_values]
    if not pieces:
        raise Refused("nothing to carve: give at least one range or list of values")
    if names:
        for p, given in zip(pieces, names, strict=False):
            p.name = given
    t = part.key_types[0]
    bounds = [requested_bound(info, lower=p.lower, upper=p.upper, values=p.values)
              for p in pieces]
    for i, b in enumerate(bounds):
        for b2 in bounds[i + 1:]:
            if bounds_overlap(conn, b, b2, t):
                raise Refused(f"{b.describe()} and {b2.describe()} overlap")

    source = _find_source(conn, info, bounds)
    if source.kind != "r":
        raise Refused(f"the rows sit in {source.name}, which is "
                      f"{'foreign' if source.kind == 'f' else 'itself partitioned'}",
                      hint="carve works on local, plain partitions")
    for b in bounds:
        check_new_bound(conn, info, b, ignore=source)

    targets: list[_Target] = []
    used: set[QualifiedName] = set()
    for p, b in zip(pieces, bounds, strict=True):
        n = parent.sibling(p.name) if p.name else default_name(conn, info, b)
        k = 1
        while n in used or (regclass_exists(conn, n) and not p.name):
            n = parent.sibling(child_name(n.name.rsplit("_", 1)[0], str(k)))
            k += 1
        if regclass_exists(conn, n):
            raise Refused(f"{n} already exists", hint="choose another --name")
        used.add(n)
        targets.append(_Target(n, n, b))

    # reltuples can be missing or stale (a bulk load since the last ANALYZE): the size on
    # disk bounds the estimate from below (at most one row per 200 bytes of table + indexes).
    rows = max(source.rows or 0, (source.bytes or 0) // 200)
    est_ms = rows / DIRECT_ROWS_PER_MS
    src_bound = Bound.of(source)
    direct_ok = source.is_default
    if method == "auto":
        method = "direct" if direct_ok and est_ms <= max_lock_ms else "swap"
        why = (f"{source.name} holds about {rows:,} rows: the direct method would hold ACCESS "
               f"EXCLUSIVE on {parent} for about {est_ms:.0f} ms "
               + ("(within" if method == "direct" else "(over") + f" {max_lock_ms:.0f} ms)")
        if not direct_ok:
            why = f"{source.name} is a range partition: it is split by copy and swap"
    elif method == "direct":
        if not direct_ok:
            raise Refused(f"{source.name} is a range partition; the direct method only carves "
                          "out of a DEFAULT partition", hint="use --method swap")
        if est_ms > max_lock_ms:
            raise Refused(
                f"{source.name} holds about {rows:,} rows ({_size(source.bytes)}): moving rows "
                f"and attaching directly would hold ACCESS EXCLUSIVE on {parent}, blocking "
                f"every read and write, for about {est_ms:,.0f} ms (limit {max_lock_ms:.0f} ms)",
                hint="use --method swap (copy with change capture, then a swap of a few ms), "
                     "or raise --max-lock-ms if the application can wait that long")
        why = "chosen with --method direct"
    else:
        why = "chosen with --method swap"
    notes = [f"carve from {source.name} ({source.bound}): method {method}: {why}"]

    src_info = snapshot(conn, source.name.quoted)
    if method == "direct":
        steps = [_direct_step(info, src_info, source, targets)]
    else:
        if part.default is not None and not source.is_default:
            raise Refused(f"{parent} also has a DEFAULT partition ({part.default.name}); "
                          "splitting a range partition would scan it under an exclusive lock",
                          hint="carve the DEFAULT empty first, or split by hand")
        if src_info.primary_key is None:
            raise Refused(f"{source.name} has no primary key: the change capture needs one to "
                          "keep copies in sync",
                          hint="add a primary key or unique index to the partition first")
        rest = _remainder(conn, info, source, src_bound, targets)
        steps = _swap_steps(info, src_info, source, targets, rest, batch_size, sleep_ms)
        notes.append(f"needs free space for a copy of {source.name} ({_size(source.bytes)})")
    args = {"pieces": [b.describe() for b in bounds], "source": source.name.quoted,
            "method": method, "targets": [tg.name.quoted for tg in targets]}
    return Plan("carve", parent.quoted, args, steps, notes=notes)


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1024 / 1024:.1f} MB"


def _find_source(conn: Connection, info: TableInfo, bounds: list[Bound]) -> Partition:
    """The one partition that holds every requested bound: a range partition containing them,
    else the DEFAULT."""
    part = info.partitioning
    assert part is not None
    t = part.key_types[0]
    found: Partition | None = None
    for b in bounds:
        src: Partition | None = None
        for p in part.partitions:
            if p.is_default:
                continue
            pb = Bound.of(p)
            if not bounds_overlap(conn, b, pb, t):
                continue
            if pb.kind == "range" and b.kind == "range" and _contains(conn, pb, b, t):
                if _same(conn, pb, b, t):
                    raise Refused(f"{p.name} already is the partition {b.describe()}")
                src = p
                break
            raise Refused(f"{b.describe()} overlaps partition {p.name} ({p.bound}) without "
                          "lying inside it",
                          hint="carve ranges that lie inside one partition, or out of the "
                               "DEFAULT partition")
        if src is None:
            src = part.default
        if src is None:
            raise Refused(f"no partition of {info.name} holds {b.describe()}: there is nothing "
                          "to carve",
                          hint="create an empty partition with `pgcleave add-partition`")
        if found is not None and src.oid != found.oid:
            raise Refused("the ranges to carve lie in different partitions "
                          f"({found.name}, {src.name}); carve them one source at a time")
        found = src
    assert found is not None
    return found


def _le(conn: Connection, x: sql.Composable | None, y: sql.Composable | None, t: str, *,
        x_min: bool, y_min: bool) -> bool:
    """x <= y where None means MINVALUE (``*_min``) or MAXVALUE."""
    if x is None and x_min:
        return True
    if y is None and not y_min:
        return True
    if x is None or y is None:
        return False
    return server_bool(conn, sql.SQL("{} <= {}").format(cast(x, t), cast(y, t)))


def _contains(conn: Connection, outer: Bound, inner: Bound, t: str) -> bool:
    return (_le(conn, outer.lower, inner.lower, t, x_min=True, y_min=True)
            and _le(conn, inner.upper, outer.upper, t, x_min=False, y_min=False))


def _same(conn: Connection, a: Bound, b: Bound, t: str) -> bool:
    return _contains(conn, a, b, t) and _contains(conn, b, a, t)


def _remainder(conn: Connection, info: TableInfo, source: Partition, src_bound: Bound,
               targets: list[_Target]) -> list[_Target]:
    """What stays: a new DEFAULT (its CHECK excludes every partition's bound), or for a range
    source the gaps its new partitions leave; the first takes the source's name at the swap."""
    part = info.partitioning
    assert part is not None
    t = part.key_types[0]
    filling = source.name.sibling(child_name(source.name.name, "pgcleave_new"))
    if regclass_exists(conn, filling):
        raise Refused(f"{filling} exists, left over from an earlier run",
                      hint="drop it, or resume/rollback the job that created it")
    if source.is_default:
        return [_Target(source.name, filling, Bound("default"))]
    ordered = _order_ranges(conn, targets, t)
    gaps: list[Bound] = []
    lo = src_bound.lower
    for tg in ordered:
        if not _same_value(conn, lo, tg.bound.lower, t):
            gaps.append(Bound("range", lo, tg.bound.lower))
        lo = tg.bound.upper
    if not _same_value(conn, lo, src_bound.upper, t):
        gaps.append(Bound("range", lo, src_bound.upper))
    out: list[_Target] = []
    for i, g in enumerate(gaps):
        if i == 0:
            out.append(_Target(source.name, filling, g))
        else:
            n = source.name.sibling(child_name(source.name.name, f"r{i}"))
            if regclass_exists(conn, n):
                raise Refused(f"{n} already exists")
            out.append(_Target(n, n, g))
    return out


def _same_value(conn: Connection, a: sql.Composable | None, b: sql.Composable | None, t: str
                ) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return server_bool(conn, sql.SQL("{} = {}").format(cast(a, t), cast(b, t)))


def _order_ranges(conn: Connection, targets: list[_Target], t: str) -> list[_Target]:
    """Targets ordered by lower bound, compared by the server in the key's type."""
    rows = [sql.SQL("({}, {})").format(
        sql.Literal(i), cast(tg.bound.lower, t) if tg.bound.lower is not None
        else sql.SQL("NULL::{}").format(sql.SQL(t))) for i, tg in enumerate(targets)]
    order = [int(r[0]) for r in conn.execute(sql.SQL(
        "SELECT i FROM (VALUES {}) v(i, lo) ORDER BY lo NULLS FIRST").format(
        sql.SQL(", ").join(rows))).fetchall()]
    return [targets[i] for i in order]


def _like(src: TableInfo, new: QualifiedName, check: sql.Composable) -> list[Statement]:
    """A standalone copy of the source's shape (indexes included, so ATTACH finds every index
    of the parent), with a CHECK of its bound: added to the empty table, it is valid at once."""
    return [
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING "
                "GENERATED INCLUDING INDEXES INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING "
                "STATISTICS)").format(new.ident, src.name.ident),
        *_drop_copied(src, new),
        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(
            new.ident, sql.Identifier(BOUND_CHECK), check)]


def _drop_copied(src: TableInfo, new: QualifiedName) -> list[Statement]:
    """``LIKE ... INCLUDING CONSTRAINTS`` copied the source's own pgcleave CHECKs (a DEFAULT's
    bound, a legacy cutoff, a pending exclusion): the new table has its own bound instead."""
    return [sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(new.ident, sql.Identifier(c.name))
            for c in src.constraints if c.type == "c" and c.name.startswith("pgcleave_")]


def _direct_step(info: TableInfo, src: TableInfo, source: Partition, targets: list[_Target]
                 ) -> Step:
    part = info.partitioning
    assert part is not None
    col = sql.Identifier(part.key_columns[0])
    t = part.key_types[0]
    parent = info.name
    cols = collist(insert_columns(src))
    st: list[Statement] = [
        # First the parent: application statements then wait on the table, not on a moved row,
        # and re-plan after the commit, finding every row in its new partition.
        sql.SQL("LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE").format(parent.ident),
        sql.SQL("LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE").format(source.name.ident)]
    for tg in targets:
        st += _like(src, tg.name, tg.bound.check(col, t))
    for tg in targets:
        st.append(sql.SQL(
            "WITH moved AS (DELETE FROM ONLY {} WHERE {} RETURNING *) "
            "INSERT INTO {} ({}){} SELECT {} FROM moved").format(
            source.name.ident, tg.bound.predicate(col, t), tg.name.ident, cols,
            overriding(src), cols))
    for tg in targets:
        for fk in info.foreign_keys_out:
            st.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                tg.name.ident, sql.Identifier(fk.name), sql.SQL(fk.definition)))
        st.append(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(
            parent.ident, tg.name.ident, tg.bound.for_values()))
        st += dependents.grants(src, tg.name)
    undo: list[Statement] = [
        sql.SQL("LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE").format(parent.ident)]
    for tg in targets:
        undo += [
            sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent.ident, tg.name.ident),
            sql.SQL("INSERT INTO {} ({}){} SELECT {} FROM {}").format(
                source.name.ident, cols, overriding(src), cols, tg.name.ident),
            sql.SQL("DROP TABLE {}").format(tg.name.ident)]
    names = ", ".join(tg.name.name for tg in targets)
    return Step.sql(
        "carve-direct",
        f"one transaction: move the rows into {names} and attach (PostgreSQL scans the rest "
        f"of {source.name} under the lock)",
        st, locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, str(parent)),
                   LockTaken(Lock.ACCESS_EXCLUSIVE, str(source.name))],
        guard=is_partition_of(targets[-1].name, parent), undo=undo)


def _swap_steps(info: TableInfo, src: TableInfo, source: Partition, targets: list[_Target],
                rest: list[_Target], batch_size: int, sleep_ms: int) -> list[Step]:
    part = info.partitioning
    assert part is not None and src.primary_key is not None
    colname = part.key_columns[0]
    t = part.key_types[0]
    parent = info.name
    S = source.name
    pieces = targets + rest
    cols = insert_columns(src)
    pk = src.primary_key.columns
    pk_types = [src.column(c).type for c in pk]
    fname = QualifiedName("pgcleave", f"carve_{source.oid}")

    # Every piece's predicate; the last is "none of the others" so NULL keys and whatever the
    # others do not take land somewhere, identically in the copy and in the trigger.
    def preds(row: sql.Composable | None) -> list[sql.Composable]:
        c = sql.SQL("{}.{}").format(row, sql.Identifier(colname)) if row is not None \
            else sql.Identifier(colname)
        ps = [p.bound.predicate(c, t) for p in pieces[:-1]]
        last = sql.SQL("({}) IS NOT TRUE").format(sql.SQL(" OR ").join(ps)) if ps \
            else sql.SQL("true")
        return [*ps, last]

    # Bound CHECKs; a new DEFAULT excludes the bounds of every other partition, old and new.
    col = sql.Identifier(colname)
    others = [Bound.of(p) for p in part.partitions if not p.is_default and p.oid != source.oid]
    checks: list[sql.Composable] = []
    for p in pieces:
        if p.bound.kind == "default":
            all_b = [*others, *(tg.bound for tg in targets)]
            checks.append(sql.SQL("NOT ({})").format(sql.SQL(" OR ").join(
                b.predicate(col, t) for b in all_b)))
        else:
            checks.append(p.bound.check(col, t))

    prepare: list[Statement] = []
    for p, chk in zip(pieces, checks, strict=True):
        prepare += _like(src, p.create_as, chk)
        for fk in info.foreign_keys_out:
            prepare.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID").format(
                p.create_as.ident, sql.Identifier(fk.name), sql.SQL(fk.definition)))
    prepare += [_capture_function(fname, pieces, preds, cols, pk),
                sql.SQL("CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW "
                        "EXECUTE FUNCTION {}()").format(sql.Identifier(CAPTURE_TRIGGER), S.ident,
                                                       fname.ident)]
    undo_prepare: list[Statement] = [
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(CAPTURE_TRIGGER),
                                                          S.ident),
        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(fname.ident),
        *[sql.SQL("DROP TABLE IF EXISTS {}").format(p.create_as.ident) for p in pieces]]

    pk_ids = collist(pk)
    ins = [sql.SQL("i{} AS (INSERT INTO {} ({}) SELECT {} FROM src WHERE {} "
                   "ON CONFLICT DO NOTHING)").format(
        sql.SQL(str(i)), p.create_as.ident, collist(cols), collist(cols), pr)
        for i, (p, pr) in enumerate(zip(pieces, preds(None), strict=True))]
    copy_sql = sql.SQL(
        "WITH src AS (SELECT * FROM ONLY {S} WHERE {after} ORDER BY {pk} LIMIT {n} FOR SHARE), "
        "{ins} SELECT (SELECT count(*) FROM src), {last} FROM (SELECT {pk} FROM src ORDER BY "
        "{pkdesc} LIMIT 1) l").format(
        S=S.ident, after=sql.SQL(AFTER_MARK), pk=pk_ids, n=sql.Literal(batch_size),
        ins=sql.SQL(", ").join(ins),
        last=sql.SQL(", ").join(sql.SQL("l.{}::text").format(sql.Identifier(c)) for c in pk),
        pkdesc=sql.SQL(", ").join(sql.SQL("{} DESC").format(sql.Identifier(c)) for c in pk))

    names = ", ".join(p.create_as.name for p in pieces)
    steps = [Step.sql(
        "carve-prepare",
        f"create {names} with CHECKs of their bounds, and a capture trigger on {S} that keeps "
        "them in sync",
        prepare, locks=[LockTaken(Lock.SHARE_ROW_EXCLUSIVE, f"{S} (CREATE TRIGGER, brief)")],
        guard=sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = {} AND tgrelid = "
                      "to_regclass({}))").format(sql.Literal(CAPTURE_TRIGGER), S.literal),
        undo=undo_prepare)]
    copy_step = Step.sql(
        "carve-copy", f"copy the rows of {S} into {names} in batches of {batch_size:,}",
        [copy_sql], locks=[LockTaken(Lock.ROW_SHARE, f"{S} (FOR SHARE on one batch at a time)")],
        ddl=False)
    copy_step.action = "carve-copy"
    copy_step.params = {"sql": copy_step.statements[0], "pk_types": pk_types,
                        "pk": pk, "sleep_ms": sleep_ms}
    steps.append(copy_step)

    verify_stmts: list[Statement] = []
    for p in pieces:
        for fk in info.foreign_keys_out:
            verify_stmts.append(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                p.create_as.ident, sql.Identifier(fk.name)))
        verify_stmts.append(sql.SQL("ANALYZE {}").format(p.create_as.ident))
    count_sql = sql.SQL("SELECT (SELECT count(*) FROM ONLY {}), {}").format(
        S.ident, sql.SQL(" + ").join(sql.SQL("(SELECT count(*) FROM {})").format(
            p.create_as.ident) for p in pieces))
    verify = Step.sql(
        "carve-verify",
        f"validate foreign keys, analyze, and check in one snapshot that {names} hold exactly "
        f"the rows of {S}", [*verify_stmts, count_sql],
        locks=[LockTaken(Lock.SHARE_UPDATE_EXCLUSIVE, names)], ddl=False)
    verify.action = "carve-verify"
    verify.params = {"ddl": verify.statements[:-1], "count": verify.statements[-1]}
    steps.append(verify)

    retired = S.sibling(child_name(S.name, "pgcleave_retired"))
    swap: list[Statement] = [
        sql.SQL("LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE").format(parent.ident),
        sql.SQL("LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE").format(S.ident),
        sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent.ident, S.ident),
        sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(CAPTURE_TRIGGER), S.ident),
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(S.ident, sql.Identifier(retired.name))]
    for p in pieces:
        if p.create_as != p.name:
            swap.append(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                p.create_as.ident, sql.Identifier(p.name.name)))
    for p in pieces:
        swap.append(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(
            parent.ident, p.name.ident, p.bound.for_values()))
        swap += dependents.grants(src, p.name)
    steps.append(Step.sql(
        "carve-swap",
        f"one short transaction: detach {S}, attach {', '.join(p.name.name for p in pieces)} "
        "(no scan: their CHECKs prove the bounds)",
        swap, locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, str(parent)),
                     LockTaken(Lock.ACCESS_EXCLUSIVE, str(S))],
        guard=is_partition_of(targets[0].name, parent), undo=[]))
    drop_old: list[Statement] = [sql.SQL("DROP TABLE IF EXISTS {}").format(retired.ident),
                                 sql.SQL("DROP FUNCTION IF EXISTS {}()").format(fname.ident)]
    # A DEFAULT whose CHECK excludes every other bound would refuse rows of a range whose
    # partition is later detached (retention): its CHECK only had to prove the attach.
    drop_old += [sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
        p.name.ident, sql.Identifier(BOUND_CHECK)) for p in pieces if p.bound.kind == "default"]
    # Indexes made by LIKE while the table had its temporary name take the final one.
    for p in pieces:
        if p.create_as == p.name:
            continue
        drop_old.append(sql.SQL(
            "DO $pgcleave$ DECLARE r record; BEGIN FOR r IN SELECT c.relname FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass({t}) AND "
            "starts_with(c.relname, {tmp}) LOOP EXECUTE format('ALTER INDEX %I.%I RENAME TO %I',"
            " {s}, r.relname, left({final} || substr(r.relname, length({tmp}) + 1), 63)); "
            "END LOOP; END $pgcleave$").format(
            t=p.name.literal, tmp=sql.Literal(p.create_as.name), s=sql.Literal(p.name.schema),
            final=sql.Literal(p.name.name)))
    steps.append(Step.sql(
        "carve-drop-old", f"drop the detached {retired.name} and the capture function",
        drop_old,
        locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, f"{retired} (detached, unused)")],
        guard=sql.SQL("SELECT to_regclass({}) IS NULL").format(retired.literal), undo=[]))
    return steps


def _capture_function(fname: QualifiedName, pieces: list[_Target],
                      preds: Any, cols: list[str], pk: list[str]) -> sql.Composable:
    """An AFTER ROW trigger function on the source: deletes OLD's copy by primary key, upserts
    NEW's into the piece its key belongs to. Idempotent, so it composes with the batch copy in
    any order."""
    def pk_match(row: str) -> sql.Composable:
        return sql.SQL("({}) = ({})").format(collist(pk), sql.SQL(", ").join(
            sql.SQL("{}.{}").format(sql.SQL(row), sql.Identifier(c)) for c in pk))

    def branches(row: str, body: Any) -> sql.Composable:
        parts: list[sql.Composable] = []
        for i, (p, pr) in enumerate(zip(pieces, preds(sql.SQL(row)), strict=True)):
            kw = "IF" if i == 0 else "ELSIF"
            parts.append(sql.SQL("{} {} THEN {};").format(sql.SQL(kw), pr, body(p)))
        return sql.SQL("{} END IF;").format(sql.SQL(" ").join(parts))

    non_pk = [c for c in cols if c not in pk]
    on_conflict = (sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(
        sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in non_pk))
        if non_pk else sql.SQL("DO NOTHING"))

    def delete(p: _Target) -> sql.Composable:
        return sql.SQL("DELETE FROM {} WHERE {}").format(p.create_as.ident, pk_match("OLD"))

    def upsert(p: _Target) -> sql.Composable:
        return sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) {}").format(
            p.create_as.ident, collist(cols), sql.SQL(", ").join(
                sql.SQL("NEW.{}").format(sql.Identifier(c)) for c in cols),
            collist(pk), on_conflict)

    body = sql.SQL(
        "BEGIN IF TG_OP <> 'INSERT' THEN {} END IF; IF TG_OP <> 'DELETE' THEN {} END IF; "
        "RETURN NULL; END").format(branches("OLD", delete), branches("NEW", upsert))
    return sql.SQL("CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
        fname.ident, sql.Literal(body.as_string(None)))


@action("carve-copy")
def _copy(ctx: ActionContext) -> None:
    """Batches of ``INSERT ... SELECT ... FOR SHARE`` in primary-key order; the position is
    saved with each batch, in its transaction, so a resumed job continues after it."""
    conn = ctx.conn
    p = ctx.params
    progress = ctx.load()
    after: list[str] | None = progress.get("after")
    copied = int(progress.get("copied", 0))
    started = time.monotonic()
    while True:
        if after is None:
            cond = "true"
        else:
            cond = sql.SQL("({}) > ({})").format(
                collist(p["pk"]), sql.SQL(", ").join(
                    cast(sql.Literal(v), ty) for v, ty in zip(after, p["pk_types"], strict=True))
            ).as_string(conn)
        query = p["sql"].replace(AFTER_MARK, cond)
        for attempt in range(20):
            try:
                with conn.transaction():
                    row = conn.execute(query.encode()).fetchone()
                    if row is not None:
                        after = [str(v) for v in row[1:]]
                        copied += int(row[0])
                        ctx.save({"after": after, "copied": copied})
                break
            except (psycopg.errors.DeadlockDetected,
                    psycopg.errors.SerializationFailure):
                time.sleep(0.01 * (attempt + 1))
        else:
            raise StepFailed("the copy kept failing on deadlocks", job_id=ctx.job_id)
        if row is None:
            break
        rate = copied / max(time.monotonic() - started, 1e-6)
        ctx.progress(f"copied {copied:,} rows ({rate:,.0f} rows/s)", copied=copied)
        if p.get("sleep_ms"):
            time.sleep(p["sleep_ms"] / 1000)
    ctx.progress(f"copied {copied:,} rows", copied=copied, final=True)


@action("carve-verify")
def _verify(ctx: ActionContext) -> None:
    conn = ctx.conn
    if ctx.params["ddl"]:
        ctx.run_ddl(list(ctx.params["ddl"]), transactional=False)
    # The capture trigger changes the source and its copies in the same transactions, so in
    # any one snapshot they hold the same rows.
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        row = conn.execute(ctx.params["count"].encode()).fetchone()
    assert row is not None
    if int(row[0]) != int(row[1]):
        raise StepFailed(f"the copies hold {row[1]:,} rows but the source {row[0]:,}",
                         job_id=ctx.job_id,
                         hint=f"nothing was swapped; `pgcleave rollback {ctx.job_id}` removes "
                              "the copies")
    ctx.progress(f"verified: {row[0]:,} rows in the source and in the copies", final=True)
