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

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from psycopg import sql

from .. import journal, preflight
from ..catalog import Partition, TableInfo, relation_exists, snapshot
from ..connection import Connection
from ..ddl import dependents, identity
from ..ddl.bounds import (
    Bound,
    bound_contains,
    bounds_overlap,
    cast,
    default_name,
    refuse_empty_range,
    requested_bound,
    same_bound,
    same_value,
)
from ..ddl.capture import key_log_function
from ..ddl.exclusion import run_exclusion, span_exclusion
from ..ddl.parallel import Jobs, resolve_jobs
from ..ddl.standalone import (
    BOUND_CHECK,
    digest_query,
    drop_copied,
    hashes_by_type,
    index_statements,
    like_source,
)
from ..ddl.tables import collist, insert_columns, is_partition_of, overriding
from ..errors import Refused
from ..names import QualifiedName, child_name
from ..plan import Lock, LockTaken, Plan, Statement, Step, render
from .carve_state import (
    CopyParams,
    SwapGroup,
    SwapParams,
    VerifyParams,
    parallel_copy,
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
SUB_CHECK = "pgcleave_sub_bound"
HOLD_CHECK = "pgcleave_hold"
CAPTURE_TRIGGER = "pgcleave_carve"
# Pieces moved from the holder to the parent per swap transaction. Measured at 1,000
# partitions (2 cores, PG 15): detach from the holder ~0.6 ms, attach to the parent ~6 ms (both
# proven by CHECKs), so 4 pieces hold ACCESS EXCLUSIVE for ~25 ms, well under the 100 ms
# writers tolerate, and 12 months take 3 such transactions instead of one of ~14 operations.
SWAP_BATCH = 4
# Replays of the key log stop once fewer keys than this changed during one replay; the last
# replay then runs inside the first swap transaction (index lookups: ~1 ms per 100 keys).
CATCHUP_ROWS = 1000
# Before the first swap transaction, replays run until fewer keys than this are left, so the
# replay inside it (under ACCESS EXCLUSIVE) handles only a handful.
FINAL_REPLAY_ROWS = 100
#: The most connections one bulk copy of carve (drain, split, merge, reslice) uses.
MAX_COPY_JOBS = 8
ONE = Jobs(1, "--jobs 1")


@dataclass
class Sub:
    """A piece that is itself partitioned (a new branch): its partitions by name and bound,
    its DEFAULT's name, and the oid of the table whose indexes each one copies (its source)."""

    key: str
    parts: list[tuple[str, Bound]] = field(default_factory=list)
    default: str | None = None
    strategy: str = "range"  # or list (a branch split by ops/branch.py)
    origin: dict[str, int] = field(default_factory=dict)


@dataclass
class Piece:
    """A new partition asked for: a range (``lower``/``upper``, 'MINVALUE'/'MAXVALUE' allowed)
    or a list of values; ``name`` is chosen from the bound when omitted. Library callers that
    computed the bound already (``maintain``) pass it as ``bound``."""

    lower: str | None = None
    upper: str | None = None
    values: list[str] | None = None
    name: str | None = None
    bound: Bound | None = None
    sub: Sub | None = None


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
    sub: Sub | None = None


def plan_carve(conn: Connection, table: str, ranges_or_values: Sequence[PieceLike], *,
               names: Sequence[str] | None = None, method: str = "auto",
               max_lock_ms: float = DIRECT_MAX_LOCK_MS, batch_size: int = CATCHUP_ROWS,
               sleep_ms: int = 0, also: Sequence[Bound] = (),
               swap_batch: int = SWAP_BATCH, info: TableInfo | None = None,
               jobs: str | int | Jobs = 1, max_rate: float | None = None) -> Plan:
    """Plan moving rows of the given ranges (``("A", "B")``) or value lists (``["x", "y"]``)
    of ``table`` out of the partition that holds them into new partitions.

    ``method`` is ``auto`` (direct when the estimated exclusive-lock time is at most
    ``max_lock_ms``, else swap), ``direct`` (refused when the estimate is larger) or ``swap``.
    ``batch_size``: the swap method's catch-up ends when a replay of the key log handled
    fewer keys than this (the copy itself is one statement). ``also``: bounds of partitions
    that earlier steps of the same job create (``maintain``'s premake), so the new DEFAULT's
    CHECK excludes them too. ``swap_batch``: pieces attached per swap transaction.
    ``info``: the table's catalog snapshot when the caller read it already (``maintain``: a
    snapshot of 1,000 partitions takes ~100-250 ms). ``jobs`` (``--jobs N|auto``): the swap
    method's bulk copy on that many connections (``parallel_copy``); ``max_rate``: rows per
    second over all of them. ``sleep_ms`` is accepted for compatibility and unused.
    """
    del sleep_ms
    if method not in ("auto", "direct", "swap"):
        raise Refused(f"unknown carve method {method!r}", hint="use auto, direct or swap")
    if info is None:
        info = snapshot(conn, table)
    parent = info.name
    part = info.partitioning
    if part is None:
        raise Refused(f"{parent} is not partitioned",
                      hint=f"partition it first: pgcleave partition {parent} --by ...")
    if part.strategy == "hash":
        raise Refused(f"{parent} is hash partitioned: there is no DEFAULT to carve from")
    journal.refuse_unfinished(conn, parent.quoted)
    pieces = [_piece(p) for p in ranges_or_values]
    if not pieces:
        raise Refused("nothing to carve: give at least one range or list of values")
    if names:
        for p, given in zip(pieces, names, strict=False):
            p.name = given
    t = part.key_types[0]
    bounds = [p.bound if p.bound is not None
              else requested_bound(info, lower=p.lower, upper=p.upper, values=p.values)
              for p in pieces]
    for i, b in enumerate(bounds):
        for b2 in bounds[i + 1:]:
            if bounds_overlap(conn, b, b2, t):
                raise Refused(f"{b.describe()} and {b2.describe()} overlap")

    source = _find_source(conn, info, bounds)
    if source.kind != "r" and (source.kind != "p" or not all(p.sub for p in pieces)):
        raise Refused(f"the rows sit in {source.name}, which is "
                      f"{'foreign' if source.kind == 'f' else 'itself partitioned'}",
                      hint="carve works on local, plain partitions")
    # Overlaps with the other partitions were refused by _find_source (in one query).
    for b in bounds:
        refuse_empty_range(conn, b, t)

    targets: list[_Target] = []
    used: set[QualifiedName] = set()
    for p, b in zip(pieces, bounds, strict=True):
        n = parent.sibling(p.name) if p.name else default_name(conn, info, b)
        k = 1
        while n in used or (relation_exists(conn, n) and not p.name):
            n = parent.sibling(child_name(n.name.rsplit("_", 1)[0], str(k)))
            k += 1
        if relation_exists(conn, n):
            raise Refused(f"{n} already exists", hint="choose another --name")
        used.add(n)
        targets.append(_Target(n, n, b, p.sub))

    # reltuples can be missing or stale (a bulk load since the last ANALYZE): the size on
    # disk bounds the estimate from below (at most one row per 200 bytes of table + indexes).
    rows = max(source.rows or 0, (source.bytes or 0) // 200)
    est_ms = rows / DIRECT_ROWS_PER_MS
    src_bound = Bound.of(source)
    direct_ok = source.is_default and all(p.sub is None for p in pieces)
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
    nj = ONE
    if method == "direct":
        steps = [_direct_step(info, src_info, source, targets)]
        if str(getattr(jobs, "n", jobs)) != "1":
            notes.append(f"--jobs {getattr(jobs, 'n', jobs)} is not used: the direct method "
                         "moves the rows in one statement")
    else:
        nj = jobs if isinstance(jobs, Jobs) else resolve_jobs(conn, jobs, limit=MAX_COPY_JOBS)
        if src_info.primary_key is None:
            raise Refused(f"{source.name} has no primary key: the change capture needs one to "
                          "keep copies in sync",
                          hint="add a primary key or unique index to the partition first")
        rest = _remainder(conn, info, source, src_bound, targets)
        steps = _swap_steps(conn, info, src_info, source, targets, rest, list(also),
                            batch_size, swap_batch, jobs=nj, max_rate=max_rate)
        if not source.is_default:  # a partition split beside a DEFAULT
            retired = source.name.sibling(child_name(source.name.name, "pgcleave_retired"))
            pre, post = span_exclusion(
                conn, info, [src_bound], op="carve", tag=str(source.oid),
                done=sql.SQL("to_regclass({}) IS NOT NULL").format(retired.literal))
            steps = [*pre, *steps[:-1], dataclasses.replace(
                steps[-1], statements=(*steps[-1].statements, *map(render, post)))]
        notes.append(f"needs free space for a copy of {source.name} ({_size(source.bytes)})")
    args = {"pieces": [b.describe() for b in bounds], "source": source.name.quoted,
            "method": method, "targets": [tg.name.quoted for tg in targets],
            **({"jobs": nj.n} if str(getattr(jobs, "n", jobs)) != "1" else {}),
            **({"max_rate": max_rate} if max_rate else {})}
    return Plan("carve", parent.quoted, args, steps, notes=notes,
                requires=[*preflight.table_change(parent), preflight.owner(source.name)])


def _size(n: int | None) -> str:
    return "?" if n is None else f"{n / 1024 / 1024:.1f} MB"


def _relations(conn: Connection, reqs: list[Bound], parts: list[Partition], t: str
               ) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """Pairs (request i, partition j) that overlap, and those where partition j contains
    request i. Ranges are compared by the server in the key's type in one query: one query
    per pair took 9 s at 1,000 partitions."""
    pbs = [Bound.of(p) for p in parts]
    if not pbs:
        return set(), set()
    if not all(b.kind == "range" for b in [*reqs, *pbs]):
        over = {(i, j) for i, r in enumerate(reqs) for j, b in enumerate(pbs)
                if bounds_overlap(conn, r, b, t)}
        inside = {(i, j) for i, j in over
                  if reqs[i].kind == pbs[j].kind
                  and bound_contains(conn, pbs[j], reqs[i], t)}
        return over, inside

    def values(bs: list[Bound]) -> sql.Composable:
        null = sql.SQL("NULL::{}").format(sql.SQL(t))
        return sql.SQL(", ").join(sql.SQL("({}, {}, {})").format(
            sql.Literal(i), cast(b.lower, t) if b.lower is not None else null,
            cast(b.upper, t) if b.upper is not None else null) for i, b in enumerate(bs))

    # NULL stands for MINVALUE in lo and MAXVALUE in hi.
    rows = conn.execute(sql.SQL(
        "WITH r(i, lo, hi) AS (VALUES {}), p(j, lo, hi) AS (VALUES {}) "
        "SELECT r.i, p.j, (p.lo IS NULL OR (r.lo IS NOT NULL AND p.lo <= r.lo)) AND "
        "(p.hi IS NULL OR (r.hi IS NOT NULL AND r.hi <= p.hi)) FROM r, p "
        "WHERE (r.hi IS NULL OR p.lo IS NULL OR p.lo < r.hi) "
        "AND (p.hi IS NULL OR r.lo IS NULL OR r.lo < p.hi)").format(
        values(reqs), values(pbs))).fetchall()
    return ({(int(i), int(j)) for i, j, _ in rows},
            {(int(i), int(j)) for i, j, c in rows if c})


def _find_source(conn: Connection, info: TableInfo, bounds: list[Bound]) -> Partition:
    """The one partition that holds every requested bound: a range partition containing them,
    else the DEFAULT."""
    part = info.partitioning
    assert part is not None
    t = part.key_types[0]
    parts = [p for p in part.partitions if not p.is_default]
    over, inside = _relations(conn, bounds, parts, t)
    found: Partition | None = None
    for i, b in enumerate(bounds):
        src: Partition | None = None
        for j, p in enumerate(parts):
            if (i, j) not in over:
                continue
            pb = Bound.of(p)
            if (i, j) in inside:
                if same_bound(conn, pb, b, t):
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


def _remainder(conn: Connection, info: TableInfo, source: Partition, src_bound: Bound,
               targets: list[_Target]) -> list[_Target]:
    """What stays: a new DEFAULT (its CHECK excludes every partition's bound), for a range
    source the gaps its new partitions leave, for a list source one partition of the values
    they do not take; the first takes the source's name at the swap."""
    part = info.partitioning
    assert part is not None
    t = part.key_types[0]
    filling = source.name.sibling(child_name(source.name.name, "pgcleave_new"))
    if relation_exists(conn, filling):
        raise Refused(f"{filling} exists, left over from an earlier run",
                      hint="drop it, or resume/rollback the job that created it")
    if source.is_default:
        return [_Target(source.name, filling, Bound("default"))]
    if src_bound.kind == "list":
        left = _values_left(conn, src_bound, [tg.bound for tg in targets], t)
        return [_Target(source.name, filling, left)] if left is not None else []
    ordered = _order_ranges(conn, targets, t)
    gaps: list[Bound] = []
    lo = src_bound.lower
    for tg in ordered:
        if not same_value(conn, lo, tg.bound.lower, t):
            gaps.append(Bound("range", lo, tg.bound.lower))
        lo = tg.bound.upper
    if not same_value(conn, lo, src_bound.upper, t):
        gaps.append(Bound("range", lo, src_bound.upper))
    out: list[_Target] = []
    for i, g in enumerate(gaps):
        if i == 0:
            out.append(_Target(source.name, filling, g))
        else:
            n = source.name.sibling(child_name(source.name.name, f"r{i}"))
            if relation_exists(conn, n):
                raise Refused(f"{n} already exists")
            out.append(_Target(n, n, g))
    return out


def _values_left(conn: Connection, src: Bound, taken: list[Bound], t: str) -> Bound | None:
    """The values of list bound ``src`` that no bound of ``taken`` names (compared by the
    server in the key's type), as one list bound; None when every value is taken."""
    out = [sql.SQL("{}::{}").format(v, sql.SQL(t)) for v in src.values]
    names = [v for b in taken for v in b.values]
    keep = list(range(len(src.values)))
    if src.values and names:
        keep = [int(r[0]) - 1 for r in conn.execute(sql.SQL(
            "SELECT i FROM unnest(ARRAY[{}]) WITH ORDINALITY u(v, i) WHERE v <> ALL(ARRAY[{}])"
            " ORDER BY i").format(sql.SQL(", ").join(out), sql.SQL(", ").join(
                cast(v, t) for v in names))).fetchall()]
    null = src.has_null and not any(b.has_null for b in taken)
    if not keep and not null:
        return None
    return Bound("list", values=[src.values[i] for i in keep], has_null=null)


def _order_ranges(conn: Connection, targets: list[_Target], t: str) -> list[_Target]:
    """Targets ordered by lower bound, compared by the server in the key's type."""
    rows = [sql.SQL("({}, {})").format(
        sql.Literal(i), cast(tg.bound.lower, t) if tg.bound.lower is not None
        else sql.SQL("NULL::{}").format(sql.SQL(t))) for i, tg in enumerate(targets)]
    order = [int(r[0]) for r in conn.execute(sql.SQL(
        "SELECT i FROM (VALUES {}) v(i, lo) ORDER BY lo NULLS FIRST").format(
        sql.SQL(", ").join(rows))).fetchall()]
    return [targets[i] for i in order]


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
        st += like_source(src, tg.name, tg.bound.check(col, t))
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


def _span_of(strategy: str, ordered: list[_Target]) -> Bound:
    """The bound covering ``ordered`` (contiguous ranges in order, or list pieces)."""
    if strategy == "range":
        return Bound("range", ordered[0].bound.lower, ordered[-1].bound.upper)
    return Bound("list", values=[v for p in ordered for v in p.bound.values],
                 has_null=any(p.bound.has_null for p in ordered))


def _span(conn: Connection, strategy: str, ordered: list[_Target], t: str) -> Bound | None:
    """One bound covering exactly the pieces, if there is one: list pieces, or ranges that
    follow each other without a gap (ordered by lower bound). None otherwise."""
    if not ordered or any(p.bound.kind not in ("range", "list") for p in ordered):
        return None
    if strategy == "list":
        return _span_of(strategy, ordered) if all(p.bound.kind == "list" for p in ordered) \
            else None
    if strategy != "range" or any(p.bound.kind != "range" for p in ordered):
        return None
    for a, b in pairwise(ordered):
        if a.bound.upper is None or b.bound.lower is None \
                or not same_value(conn, a.bound.upper, b.bound.lower, t):
            return None
    return _span_of(strategy, ordered)


def _swap_steps(conn: Connection, info: TableInfo, src: TableInfo, source: Partition,
                targets: list[_Target], rest: list[_Target], also: list[Bound],
                catchup_rows: int, swap_batch: int, *, jobs: Jobs = ONE,
                max_rate: float | None = None) -> list[Step]:
    """Copy with a key log, then swap in short transactions.

    The new tables are the leaves of a standalone partitioned *holder* (same partitioning as
    the parent), each created with a CHECK of its bound. A capture trigger on the source
    logs the primary key of every row it writes (old and new) to a small log table.

    Why nothing is lost or resurrected, although no copied row is ever locked:
    1. the trigger commits before the copy starts; a writer whose write to the source began
       before that commit held ROW EXCLUSIVE on the source, so CREATE TRIGGER waited for its
       transaction to end. Hence every change to the source is either visible to the copy's
       snapshot or made by a transaction that also logged its keys (in the same transaction);
    2. the bulk copy is one ``INSERT INTO holder SELECT ... FROM ONLY source`` (routed into
       the leaves) in one REPEATABLE READ snapshot T0: the holder then equals the source at
       T0, and every key changed after T0 has a log row not yet consumed;
    3. a replay is one REPEATABLE READ transaction (one snapshot T): it deletes from the
       holder the keys logged and visible at T, re-inserts those keys' rows as the source
       holds them at T, and deletes exactly the log rows visible at T. A write committed
       after T has its log row invisible at T, so it stays in the log for the next replay.
       The invariant of 2. holds again: for every key, the holder equals the source, or an
       unconsumed log row names the key (a key-moving UPDATE logs both keys);
    4. the last replay runs in the swap transaction, under ACCESS EXCLUSIVE on the source:
       no write can run, the log empties, and the holder equals the source exactly.
    Replays are idempotent, so replaying log rows the copy already saw, or replaying again
    after a kill, is harmless.

    The swap: (a) one transaction detaches the source and attaches the holder in its place
    (as the DEFAULT; a CHECK on the holder proves its bound, no leaf is visited); (b) a few
    leaves per transaction move from the holder to the parent (detach from the holder, attach
    to the parent: ~6 ms each at 1,000 partitions, proven by their CHECKs); (c) one
    transaction detaches the holder and attaches the last leaf, the rows that belong to no
    partition, as the DEFAULT. So each ACCESS EXCLUSIVE hold is a handful of catalog
    operations, whatever the number of pieces. A range source (no DEFAULT) swaps in one
    transaction: its pieces are the few ranges asked for."""
    part = info.partitioning
    assert part is not None and src.primary_key is not None
    colname = part.key_columns[0]
    t = part.key_types[0]
    col = sql.Identifier(colname)
    parent = info.name
    S = source.name
    pieces = targets + rest
    cols = insert_columns(src)
    pk = src.primary_key.columns
    fname = QualifiedName("pgcleave", f"carve_{source.oid}")
    log = QualifiedName("pgcleave", f"carve_{source.oid}_log")
    hold = S.sibling(child_name(S.name, "pgcleave_hold"))
    retired = S.sibling(child_name(S.name, "pgcleave_retired"))
    as_default = source.is_default
    trig = sql.Identifier(CAPTURE_TRIGGER)
    # A branch (ops/branch.py) is read through its leaves: whole, or (--jobs) leaf by leaf.
    read = sql.SQL("{}" if source.kind == "p" else "ONLY {}").format(S.ident)
    srcs = [x.name for x in source.partitioning.partitions] if source.partitioning else [S]

    # CHECKs: each piece its bound; the rest (a new DEFAULT) excludes every bound there will
    # be once the swap is done; the holder (and so each leaf) excludes the bounds of the
    # other partitions, which proves the holder as the DEFAULT in one step.
    others = [Bound.of(p) for p in part.partitions if not p.is_default and p.oid != source.oid]
    others += also
    hold_check = run_exclusion(conn, part.strategy, others, col, t) if as_default else None
    checks: list[sql.Composable] = []
    for p in pieces:
        if p.bound.kind == "default":
            checks.append(run_exclusion(conn, part.strategy,
                                     [*others, *(tg.bound for tg in targets)], col, t))
        else:
            checks.append(p.bound.check(col, t))

    def with_hold(tab: QualifiedName) -> list[Statement]:
        if hold_check is None:
            return []
        return [sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(
            tab.ident, sql.Identifier(HOLD_CHECK), hold_check)]

    # 17+ with a shared identity: a table attached marks the identity on itself only, so the
    # partitions of every partitioned table attached are attached again (ddl/identity.py).
    # A sub-partition's CHECK of its bound proves it then (dropped at the end).
    shared = identity.partitions_share(info)

    def kids(p: _Target) -> list[tuple[QualifiedName, Bound]]:
        if p.sub is None:
            return []
        return [*((S.sibling(n), b) for n, b in p.sub.parts),
                *([(S.sibling(p.sub.default), Bound("default"))] if p.sub.default else [])]

    def mark(tab: QualifiedName, items: list[_Target]) -> list[Statement]:
        if not shared:
            return []
        return [*identity.mark_partitions(tab, [(p.create_as, p.bound) for p in items]),
                *(x for p in items for x in identity.mark_partitions(p.create_as, kids(p)))]

    def moved(p: _Target) -> list[Statement]:
        return [*move(p), *(identity.mark_partitions(p.name, kids(p)) if shared else [])]

    strategy = sql.SQL("{} ({})").format(sql.SQL(part.strategy.upper()), col)
    prepare: list[Statement] = [
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING "
                "GENERATED INCLUDING STORAGE INCLUDING COMPRESSION) PARTITION BY {}").format(
            hold.ident, S.ident, strategy),
        *drop_copied(src, hold), *with_hold(hold)]
    leaves: list[QualifiedName] = []
    for p, chk in zip(pieces, checks, strict=True):
        if p.sub is None:
            prepare += like_source(src, p.create_as, chk, indexes=False)
            prepare += with_hold(p.create_as)
            mine = [p.create_as]
        else:
            prepare += like_source(src, p.create_as, chk, indexes=False, partition_by=sql.SQL(
                "{} ({})").format(sql.SQL(p.sub.strategy.upper()), sql.Identifier(p.sub.key)))
            prepare += with_hold(p.create_as)
            mine = []
            sub_col, sub_t = sql.Identifier(p.sub.key), src.column(p.sub.key).type
            for child, b in kids(p):
                prepare.append(sql.SQL("CREATE TABLE {} PARTITION OF {} {}").format(
                    child.ident, p.create_as.ident, b.for_values()))
                if shared:
                    prepare.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(
                        child.ident, sql.Identifier(SUB_CHECK), b.check(sub_col, sub_t)
                        if b.kind != "default" else run_exclusion(
                            conn, p.sub.strategy, [x for _, x in p.sub.parts], sub_col, sub_t)))
                mine.append(child)
        for leaf in mine:
            for fk in info.foreign_keys_out:
                prepare.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID").format(
                    leaf.ident, sql.Identifier(fk.name), sql.SQL(fk.definition)))
        leaves += mine
        prepare.append(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(
            hold.ident, p.create_as.ident, p.bound.for_values()))
        prepare += dependents.grants(src, p.create_as)
    pk_ids = collist(pk)
    prepare += [
        sql.SQL("CREATE TABLE {} AS SELECT {} FROM ONLY {} WITH NO DATA").format(
            log.ident, pk_ids, S.ident),
        key_log_function(fname, log, pk),
        sql.SQL("CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW "
                "EXECUTE FUNCTION {}()").format(trig, S.ident, fname.ident)]
    undo_prepare: list[Statement] = [
        # Once the swap has begun the new tables hold the only copy of the rows.
        sql.SQL("DO $pgcleave$ BEGIN IF to_regclass({}) IS NOT NULL THEN RAISE EXCEPTION "
                "'the swap of % has begun: it can only be finished (pgcleave resume)', {}; "
                "END IF; END $pgcleave$").format(retired.literal, S.literal),
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(trig, S.ident),
        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(fname.ident),
        sql.SQL("DROP TABLE IF EXISTS {}").format(log.ident),
        sql.SQL("DROP TABLE IF EXISTS {}").format(hold.ident),
        *[sql.SQL("DROP TABLE IF EXISTS {}").format(p.create_as.ident) for p in pieces]]

    names = ", ".join(p.create_as.name for p in pieces)
    steps = [Step.sql(
        "carve-prepare",
        f"create {names} (CHECKs of their bounds, no index yet) as partitions of a standalone "
        f"{hold.name}, a key log, and a capture trigger on {S} that fills it",
        prepare, locks=[LockTaken(Lock.SHARE_ROW_EXCLUSIVE, f"{S} (CREATE TRIGGER, brief)")],
        guard=sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = {} AND tgrelid = "
                      "to_regclass({}))").format(sql.Literal(CAPTURE_TRIGGER), S.literal),
        undo=undo_prepare)]

    # Replay (see above); planner settings keep it on index lookups of the few logged keys.
    in_log = sql.SQL("({}) IN (SELECT {} FROM {})").format(pk_ids, pk_ids, log.ident)
    replay: list[Statement] = [
        sql.SQL("SET LOCAL enable_seqscan = off"), sql.SQL("SET LOCAL enable_hashjoin = off"),
        sql.SQL("SET LOCAL enable_mergejoin = off"),
        # The disabled plan types make every plan cost ~1e10, which switches JIT on: compiling
        # the expressions of every leaf took ~250 ms per replay (measured, 13 leaves), and the
        # last replay runs under ACCESS EXCLUSIVE. Without JIT a replay of 500 keys takes ms.
        sql.SQL("SET LOCAL jit = off"),
        sql.SQL("DELETE FROM {} WHERE {}").format(hold.ident, in_log),
        sql.SQL("INSERT INTO {} ({}){} SELECT {} FROM {} WHERE {}").format(
            hold.ident, collist(cols), overriding(src), collist(cols), read, in_log),
        sql.SQL("DELETE FROM {}").format(log.ident)]
    head = sql.SQL("INSERT INTO {} ({}){} SELECT {} FROM ").format(
        hold.ident, collist(cols), overriding(src), collist(cols))
    copy_sql = sql.Composed([head, read])
    own = {S.sibling(n): o for p in pieces if p.sub for n, o in p.sub.origin.items()}
    per_leaf, index_top = index_statements(conn, src, hold, leaves, own)
    # Each plain piece is analyzed right after its indexes are built, on the connection that
    # built them; a partitioned piece (two levels) is analyzed whole in the verify step.
    sub_pieces = [p.create_as for p in pieces if p.sub is not None]
    plain = {p.create_as for p in pieces if p.sub is None}
    leaf_jobs = [(leaf, stmts + ([sql.SQL("ANALYZE {}").format(leaf.ident)]
                                 if leaf in plain else []))
                 for leaf, stmts in per_leaf]
    index_sql = [x for _, stmts in leaf_jobs for x in stmts] + index_top
    par, shown, how = parallel_copy(jobs, [(x, sql.Composed([head, sql.SQL("ONLY {}").format(
        x.ident)])) for x in srcs], hold, max_rate)
    copy_step = Step.sql(
        "carve-copy",
        f"copy the rows of {S} into {names} {how}, build and "
        "analyze their indexes (two connections), then replay the logged keys until few are "
        "left", [shown or copy_sql, *index_sql, *replay],
        locks=[LockTaken(Lock.ACCESS_SHARE, f"{S} (reads only)")], ddl=False)
    # A rollback refused once the swap had begun may have marked this step undone; a resume
    # then runs it again: it sees the swap begun and does nothing.
    done_first = sql.SQL("SELECT to_regclass({}) IS NOT NULL").format(retired.literal)
    cp = CopyParams(
        copy=render(copy_sql), index=[render(x) for x in index_sql],
        leaf_jobs=[(leaf.quoted, [render(x) for x in stmts]) for leaf, stmts in leaf_jobs],
        index_top=[render(x) for x in index_top],
        replay=[render(x) for x in replay], catchup_rows=catchup_rows,
        begun=render(done_first))
    if par:
        cp["parallel"] = par
    copy_step = dataclasses.replace(copy_step, action="carve.copy", params=cp)
    steps.append(copy_step)

    verify_stmts: list[Statement] = []
    for leaf in leaves:
        for fk in info.foreign_keys_out:
            verify_stmts.append(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                leaf.ident, sql.Identifier(fk.name)))
    # Not the holder: it is dropped after the swap, its own (inherited) statistics are never
    # used, and computing them took another sample of every leaf (~0.4 s for 1M rows).
    verify_stmts += [sql.SQL("ANALYZE {}").format(x.ident) for x in sub_pieces]
    by_type = hashes_by_type(conn, S)
    count_src = digest_query([S], only=source.kind != "p", by_type=by_type)
    count_copies = digest_query([hold], only=False, by_type=by_type)
    verify = Step.sql(
        "carve-verify",
        f"validate foreign keys and check in one snapshot (after a replay; the source counted "
        f"on a second connection that imports the snapshot) that {names} hold exactly the "
        f"rows of {S}", [*verify_stmts, *replay, count_src, count_copies],
        locks=[LockTaken(Lock.SHARE_UPDATE_EXCLUSIVE, names)], ddl=False)
    verify = dataclasses.replace(verify, action="carve.verify", params=VerifyParams(
        ddl=[render(x) for x in verify_stmts], replay=[render(x) for x in replay],
        count_source=render(count_src), count_copies=render(count_copies),
        begun=render(done_first)))
    steps.append(verify)

    lock_parent = sql.SQL("LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE").format(parent.ident)
    # One request for both (the parent first, the order writers lock them in).
    lock_both = sql.SQL("LOCK TABLE ONLY {}, {} IN ACCESS EXCLUSIVE MODE").format(
        parent.ident, S.ident)
    n_set = 4  # the SET LOCALs that open ``replay``
    first: list[Statement] = [
        *replay[:n_set], lock_both, *replay[n_set:],
        sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent.ident, S.ident),
        sql.SQL("DROP TRIGGER {} ON {}").format(trig, S.ident),
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(S.ident, sql.Identifier(retired.name))]

    def move(p: _Target, bound: Bound | None = None) -> list[Statement]:
        st: list[Statement] = [
            sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(hold.ident, p.create_as.ident)]
        if hold_check is not None:
            st.append(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                p.create_as.ident, sql.Identifier(HOLD_CHECK)))
        if p.create_as != p.name:
            st.append(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                p.create_as.ident, sql.Identifier(p.name.name)))
        st.append(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(
            parent.ident, p.name.ident, (bound or p.bound).for_values()))
        return st

    groups: list[SwapGroup] = []
    batch = max(1, swap_batch)
    ordered = _order_ranges(conn, targets, t) if part.strategy == "range" else list(targets)
    # A range split into more pieces than one swap transaction moves, with no remainder
    # (split, reslice): the holder takes the source's place whole (its leaves' CHECKs prove
    # its bound), then the pieces move to the parent a few per transaction, as below.
    whole = not as_default and not rest and len(ordered) > batch
    span = _span(conn, part.strategy, ordered, t) if as_default or whole else None
    if whole and span is not None:
        first += [sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(
            parent.ident, hold.ident, span.for_values()), *mark(hold, targets)]
    if span is not None:
        # The holder goes in as an ordinary partition covering the new partitions' bounds
        # (one range, or their list values) and the remainder as the new DEFAULT, in the
        # first transaction. Never as the DEFAULT itself: a partitioned DEFAULT that has a
        # DEFAULT of its own makes the planner add the DEFAULT's partition constraint (NOT of
        # every other bound: 1,000 ranges) to the pruning of every statement that reaches it:
        # measured 1.7 s of planning per statement at 1,000 partitions, i.e. writers stalled
        # for seconds while the holder was attached. As a range partition: 0.4 ms.
        # The holder has no CHECK of its span (its DEFAULT leaf holds the remainder until
        # then): PostgreSQL proves the span from each leaf's CHECK, no leaf is scanned.
        r = rest[0] if rest else None
        first += [] if r is None else [
            *move(r)[:-1],
            sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(
                parent.ident, hold.ident, span.for_values()),
            *mark(hold, targets),
            *moved(r)[len(move(r)) - 1:]]
        # Then a few leaves per transaction move from the holder to the parent, the holder
        # shrinking to the bounds it still holds; the last one drops it.
        for i in range(0, len(ordered), batch):
            grp = ordered[i:i + batch]
            left = ordered[i + batch:]
            tail = (sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(
                parent.ident, hold.ident, _span_of(part.strategy, left).for_values())
                if left else sql.SQL("DROP TABLE {}").format(hold.ident))
            groups.append(SwapGroup(
                sql=[render(x) for x in [
                    lock_parent,
                    sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent.ident,
                                                                         hold.ident),
                    *[y for p in grp for y in moved(p)], tail,
                    *(mark(hold, left) if left else [])]],
                done=render(is_partition_of(grp[-1].name, parent)),
                what=", ".join(p.name.name for p in grp)))
    elif as_default:
        # Pieces that are not one contiguous range (other partitions lie between them): the
        # holder becomes the DEFAULT for the time of the moves. Fine with tens of partitions;
        # with hundreds, statements reaching the holder plan slowly (see above).
        first.append(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} DEFAULT").format(
            parent.ident, hold.ident))
        first += mark(hold, pieces)
        # Each transaction locks the parent first: an INSERT that routed its row with the
        # partitions of before an ATTACH would send it to the DEFAULT and fail its (updated)
        # partition constraint; waiting on the parent, it routes after the commit instead.
        for i in range(0, len(targets), batch):
            grp = targets[i:i + batch]
            groups.append(SwapGroup(
                sql=[render(x) for x in [lock_parent, *[y for p in grp for y in moved(p)]]],
                done=render(is_partition_of(grp[-1].name, parent)),
                what=", ".join(p.name.name for p in grp)))
        last = [lock_parent,
                sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent.ident, hold.ident),
                *[x for p in rest for x in moved(p)],
                sql.SQL("DROP TABLE {}").format(hold.ident)]
        groups.append(SwapGroup(sql=[render(x) for x in last],
                                done=render(sql.SQL("SELECT to_regclass({}) IS NULL").format(
                                    hold.literal)),
                                what=f"{rest[0].name.name} as the DEFAULT"))
    else:
        first += [x for p in pieces for x in moved(p)]
        first.append(sql.SQL("DROP TABLE {}").format(hold.ident))
    every = [*first, *[sql.SQL(x) for g in groups for x in g["sql"]]]
    swap = Step.sql(
        "carve-swap",
        f"short transactions: detach {S} and attach "
        + (f"{hold.name} for {span.describe()}"
           + (f" and {rest[0].name.name} as the DEFAULT" if rest else "")
           + f"; then move {swap_batch} piece(s) per transaction from {hold.name} to {parent}"
           if span is not None else
           f"{hold.name} as the DEFAULT; then move {swap_batch} piece(s) per transaction "
           f"from {hold.name} to {parent}; then attach {rest[0].name.name} as the DEFAULT"
           if as_default else ", ".join(p.name.name for p in pieces))
        + " (no scan: CHECKs prove every bound)",
        every, locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, str(parent)),
                      LockTaken(Lock.ACCESS_EXCLUSIVE, str(S))],
        guard=sql.SQL("SELECT to_regclass({}) IS NULL AND EXISTS (SELECT 1 FROM pg_inherits "
                      "WHERE inhrelid = to_regclass({}) AND inhparent = to_regclass({}))").format(
            hold.literal, targets[0].name.literal, parent.literal),
        undo=[])
    swap = dataclasses.replace(swap, action="carve.swap", params=SwapParams(
        first=[render(x) for x in first], first_done=render(done_first),
        groups=groups, replay=[render(x) for x in replay],
        catchup_rows=min(catchup_rows, FINAL_REPLAY_ROWS)))
    steps.append(swap)

    # One (idempotent) statement per transaction, the detached table's drop first: locks on
    # live partitions are never held while its files are removed (that grows with its size).
    drop_old: list[Statement] = [sql.SQL("DROP TABLE IF EXISTS {}").format(retired.ident),
                                 sql.SQL("DROP TABLE IF EXISTS {}").format(log.ident)]
    # A DEFAULT whose CHECK excludes every other bound would refuse rows of a range whose
    # partition is later detached (retention): its CHECK only had to prove the attach.
    drop_old += [sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
        p.name.ident, sql.Identifier(BOUND_CHECK)) for p in pieces if p.bound.kind == "default"]
    # and the CHECKs that proved the sub-partitions attached again (shared identity)
    drop_old += [sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
        c.ident, sql.Identifier(n)) for p in pieces for c, _ in kids(p) if shared
        for n in (SUB_CHECK, HOLD_CHECK)]
    # Indexes made while the table had its temporary name take the final one.
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
    locks = [LockTaken(Lock.ACCESS_EXCLUSIVE, f"{retired} (detached, unused)")]
    locks += [LockTaken(Lock.ACCESS_EXCLUSIVE, "each new partition, catalog only")
              ] * (len(drop_old) > 2)
    drop_old.append(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(fname.ident))  # last
    steps.append(Step.sql(
        "carve-drop-old", f"drop the detached {retired.name}, the key log and the capture "
        "function", drop_old, transactional=False, locks=locks,
        guard=sql.SQL("SELECT to_regclass({}) IS NULL AND to_regclass({}) IS NULL AND "
                      "to_regprocedure({}) IS NULL").format(
            retired.literal, log.literal, sql.Literal(f"{fname.quoted}()")), undo=[]))
    return steps
