"""``split`` and ``reslice``: re-cut range partitions online.

``split PARTITION --at V,...`` or ``--interval I``: one range partition becomes several
covering exactly its bound. It is ``carve``'s swap method with pieces that leave no
remainder: the source's rows are copied once into the new tables (capture trigger, key log,
verify by count and row hash), one short transaction detaches the source and attaches them.
``split PARTITION --values A --values B,C`` of a list partition: one new partition per group,
and the values no group names stay together in one more, which keeps the source's name.
Beside a DEFAULT, each split and merge first validates a CHECK on it that excludes the span
(``ddl/exclusion.span_exclusion``), so the swap's ATTACH does not scan it.

``reslice TABLE --interval I [--from A] [--to B]``: one job that re-cuts a span: each
partition that covers more than one period of the new interval (a month into days, the
legacy ``[MINVALUE, cutoff)`` partition of an in-place conversion into months) is split, and
each run of adjacent partitions within one period (days into a month) is merged. One batch
per source partition (or group merged), run one after the other, each dropping its sources
when its swap is done: the extra disk at any moment is one batch's copy.

Why a legacy partition is one batch and not one per month: the rows of a month can leave the
legacy table only with the legacy table itself. Attaching the month's new partition needs the
legacy partition's bound narrowed first, which needs a validated CHECK that its rows of the
month are gone: deleting them before the swap hides them (they are not visible anywhere
else yet), deleting them after needs the narrowed bound before. Carving month after month with
a remainder copies the rest of the legacy every time (n²/2 rows for n months) and needs the
same free disk (a copy of the rest) at the first batch. Splitting it in one batch copies each
row once; its pieces are attached in one transaction of catalog changes.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from psycopg import sql

from .. import journal, preflight, schemes
from ..catalog import Partition, TableInfo, relation_exists, snapshot
from ..connection import Connection
from ..ddl.bounds import Bound, bound_contains, default_name, requested_bound
from ..ddl.parallel import resolve_jobs
from ..errors import Refused
from ..levels import RangePart, evaluate_bounds
from ..names import child_name
from ..plan import Plan, Step
from ..policy import load
from . import branch
from .carve import MAX_COPY_JOBS, Piece, plan_carve
from .merge import copy_bytes, merge_steps, partition_of, refuse_unsplittable

__all__ = ["plan_reslice", "plan_split"]


def _tz(conn: Connection, info: TableInfo) -> str:
    pol = load(conn, info.name)
    if pol is not None:
        return pol.time_zone
    row = conn.execute("SELECT current_setting('TimeZone')").fetchone()
    return str(row[0]) if row else "UTC"


def _literal(v: Any) -> sql.Composable | None:
    return schemes.literal(v) if v is not None else None


def _extent(conn: Connection, part: Partition, key: str) -> tuple[Any, Any]:
    """The smallest and largest key in ``part`` (an index scan each when the key is
    indexed; read outside any lock that blocks writers)."""
    col = sql.Identifier(key)
    row = conn.execute(sql.SQL("SELECT min({}), max({}) FROM {}").format(
        col, col, branch.source_sql(part))).fetchone()
    return (row[0], row[1]) if row else (None, None)


def interval_cuts(conn: Connection, rp: RangePart, key: str, iv: schemes.Interval,
                  tz: str) -> list[Any]:
    """Where ``iv``'s periods start strictly inside ``rp``. An unbounded end (MINVALUE or
    MAXVALUE) is cut where its rows end: ``[MINVALUE, first period)`` stays, empty."""
    lo, hi = rp.lo, rp.hi
    if lo is None or hi is None:
        kmin, kmax = _extent(conn, rp.part, key)
        if kmin is None:
            raise Refused(f"{rp.part.name} ({rp.part.bound}) is empty and unbounded: there is "
                          "nothing to cut it by",
                          hint="give the cut points with --at")
        start = schemes.floor(kmin, iv, tz) if lo is None else lo
        end = schemes.add(schemes.floor(kmax, iv, tz), iv) if hi is None else hi
    else:
        start, end = lo, hi
    cuts: list[Any] = []
    if lo is None:
        cuts.append(start)
    c = schemes.floor(start, iv, tz)
    if c <= start:
        c = schemes.add(c, iv)
    while c < end:
        cuts.append(c)
        c = schemes.add(c, iv)
    if hi is None and (not cuts or cuts[-1] < end):
        cuts.append(end)
    return [x for x in cuts if (lo is None or x > lo) and (hi is None or x < hi)]


def split_pieces(info: TableInfo, rp: RangePart, cuts: list[Any],
                 iv: schemes.Interval | None) -> list[Piece]:
    """The pieces of ``rp`` cut at ``cuts`` (ascending, strictly inside), named by the
    interval's suffix when there is one (else carve names them)."""
    edges = [rp.lo, *cuts, rp.hi]
    out: list[Piece] = []
    for a, b in pairwise(edges):
        name = None
        if iv is not None:
            name = (child_name(info.name.name, schemes.suffix(a, iv)) if a is not None
                    else child_name(info.name.name, "before_" + schemes.suffix(b, iv)))
        out.append(Piece(name=name, bound=Bound("range", _literal(a), _literal(b))))
    return out


def _range_part(conn: Connection, info: TableInfo, part: Partition) -> RangePart:
    p = info.partitioning
    assert p is not None
    if p.strategy != "range":
        raise Refused(f"{info.name} is {p.strategy} partitioned: split cuts range and list "
                      "partitions", hint="a hash partition has no bound to cut nor values to "
                      "group")
    return next(rp for rp in evaluate_bounds(conn, p) if rp.part.oid == part.oid)


def _rename(steps: Sequence[Step], suffix: str) -> list[Step]:
    return [dataclasses.replace(s, name=s.name + suffix) for s in steps]


def plan_split(conn: Connection, partition: str, *, at: Sequence[str] = (),
               interval: str | None = None, names: Sequence[str] | None = None,
               values: Sequence[Sequence[str]] = (), jobs: str | int = 1,
               max_rate: float | None = None) -> Plan:
    """Plan splitting range partition ``partition`` at the values ``at`` (ascending, inside
    its bound) or at the period starts of ``interval``; or list partition ``partition`` into
    one partition per group of ``values`` (and one more holding the values no group names).
    ``jobs``, ``max_rate``: the bulk copy's connections and rows per second
    (``carve_state.parallel_copy``)."""
    info, part = partition_of(conn, partition)
    refuse_unsplittable(info, part, "split", branches=True)
    assert info.partitioning is not None
    shape = branch.shape_of(part) if part.kind == "p" else None
    if info.partitioning.strategy == "list":
        if at or interval is not None:
            raise Refused(f"{part.name} is a list partition: --at and --interval cut ranges",
                          hint="give each new partition's values: --values 'A' --values 'B,C'")
        return _split_list(conn, info, part, values, names, jobs=jobs, max_rate=max_rate,
                           shape=shape)
    if values:
        raise Refused(f"{part.name} is a range partition: --values groups list values",
                      hint="cut it with --at VALUE[,VALUE...] or --interval")
    rp = _range_part(conn, info, part)
    p = info.partitioning
    assert p is not None
    key = p.key_columns[0]
    kind = schemes.key_kind(p.key_types[0])
    tz = _tz(conn, info)
    if bool(at) == (interval is not None):
        raise Refused("give either --at VALUE[,VALUE...] or --interval")
    iv: schemes.Interval | None = None
    if interval is not None:
        iv = schemes.Interval.parse(interval)
        schemes.check_fits(kind, iv, key, p.key_types[0])
        cuts = interval_cuts(conn, rp, key, iv, tz)
    else:
        cuts = [schemes.parse_value(v, kind, tz) for v in at]
        for v, c in zip(at, cuts, strict=True):
            if isinstance(c, str) and c in ("MINVALUE", "MAXVALUE"):
                raise Refused(f"--at {v}: a cut is a value of {key}")
            if (rp.lo is not None and c <= rp.lo) or (rp.hi is not None and c >= rp.hi):
                raise Refused(f"--at {v} is outside {part.name} ({part.bound}): a cut must lie "
                              "strictly inside the partition's bound")
        if sorted(cuts) != cuts or len(set(cuts)) != len(cuts):
            raise Refused("--at values must be ascending, each once")
    if not cuts:
        raise Refused(f"{part.name} ({part.bound}) lies within one period of {interval}: "
                      "there is nothing to split", hint="give the cut points with --at")
    pieces = split_pieces(info, rp, cuts, iv)
    if names:
        if len(names) != len(pieces):
            raise Refused(f"{len(pieces)} pieces but {len(names)} --name(s)")
        for pc, n in zip(pieces, names, strict=True):
            pc.name = n
    if shape is not None:
        _branches(conn, info, pieces, shape)
    carve = plan_carve(conn, info.name.quoted, pieces, method="swap", info=info, jobs=jobs,
                       max_rate=max_rate)
    size = copy_bytes(conn, [part])
    args = {"partition": part.name.quoted, "pieces": carve.args["pieces"],
            "targets": carve.args["targets"]}
    return Plan("split", info.name.quoted, args, carve.steps,
                notes=[f"split {part.name} ({part.bound}) into {len(pieces)} partitions",
                       *carve.notes[1:],
                       f"extra disk: a copy of {part.name} ({_mb(size)} with indexes), "
                       "until the swap drops it; free disk: unknown (PostgreSQL shows it to "
                       "no table owner)"],
                requires=carve.requires)


def _split_list(conn: Connection, info: TableInfo, part: Partition,
                groups: Sequence[Sequence[str]], names: Sequence[str] | None, *,
                jobs: str | int = 1, max_rate: float | None = None,
                shape: branch.Shape | None = None) -> Plan:
    """A list partition split by value groups: carve's swap with a list source, whose values
    no group names stay together in one more partition that keeps the source's name."""
    p = info.partitioning
    assert p is not None
    if not groups:
        raise Refused(f"{part.name} is a list partition: give the values of each new "
                      "partition", hint="--values 'A' --values 'B,C' (one --values each)")
    if names and len(names) != len(groups):
        raise Refused(f"{len(groups)} --values group(s) but {len(names)} --name(s)")
    src = Bound.of(part)
    pieces: list[Piece] = []
    for i, g in enumerate(groups):
        b = requested_bound(info, values=list(g))
        if not bound_contains(conn, src, b, p.key_types[0]):
            raise Refused(f"--values {','.join(g)}: not all of them are values of {part.name} "
                          f"({part.bound})", hint="each group names values of the partition")
        name = names[i] if names else _list_name(conn, info, g)
        pieces.append(Piece(values=list(g), name=name))
    named = Bound("list", values=[v for pc in pieces for v in requested_bound(
        info, values=pc.values).values], has_null=any(
        v.upper() == "NULL" for pc in pieces for v in pc.values or []))
    rest = not bound_contains(conn, named, src, p.key_types[0])
    if shape is not None:
        if rest:
            raise Refused(f"{part.name} is itself partitioned: split, every one of its values "
                          "goes to a new branch; the values no --values group names would "
                          "stay behind", hint=f"give a --values group for every value of "
                          f"{part.name} ({part.bound})")
        _branches(conn, info, pieces, shape)
    carve = plan_carve(conn, info.name.quoted, pieces, method="swap", info=info, jobs=jobs,
                       max_rate=max_rate)
    size = copy_bytes(conn, [part])
    notes = [f"split {part.name} ({part.bound}) into {len(pieces) + rest} partitions by value"
             + (f": one per --values group, and {part.name.name} keeps the values no group "
                "names" if rest else ""),
             *carve.notes[1:],
             f"extra disk: a copy of {part.name} ({_mb(size)} with indexes), until the swap "
             "drops it; free disk: unknown (PostgreSQL shows it to no table owner)"]
    args = {"partition": part.name.quoted, "pieces": carve.args["pieces"],
            "targets": carve.args["targets"]}
    return Plan("split", info.name.quoted, args, carve.steps, notes=notes,
                requires=carve.requires)


def _branches(conn: Connection, info: TableInfo, pieces: list[Piece],
              shape: branch.Shape) -> None:
    """Each piece of a split branch becomes a branch shaped like it (``branch.sub_for``),
    named now (its partitions' names derive from its own)."""
    names: set[str] = set()
    for pc in pieces:
        if pc.name is None:
            b = pc.bound or requested_bound(info, lower=pc.lower, upper=pc.upper,
                                            values=pc.values)
            n = default_name(conn, info, b).name
            k = 1
            while n in names or relation_exists(conn, info.name.sibling(n)):
                n, k = child_name(info.name.name, f"{k}"), k + 1
            pc.name = n
        names.add(pc.name)
        pc.sub = branch.sub_for(conn, shape, info.name.sibling(pc.name))


def _list_name(conn: Connection, info: TableInfo, values: Sequence[str]) -> str | None:
    """``t_ru`` or ``t_us_gb`` for a group of values, if free and short (else carve names
    it)."""
    slug = re.sub(r"[^a-z0-9]+", "_", "_".join(values).lower()).strip("_")
    if not slug or len(slug) > 30:
        return None
    name = child_name(info.name.name, slug)
    return None if relation_exists(conn, info.name.sibling(name)) else name


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


@dataclass
class Batch:
    """One batch of a reslice: a split of one partition or a merge of adjacent ones."""

    kind: str  # split, merge
    sources: list[Partition]
    bytes: int
    steps: list[Step]


def plan_reslice(conn: Connection, table: str, *, interval: str, lower: str | None = None,
                 upper: str | None = None, jobs: str | int = 1,
                 max_rate: float | None = None) -> Plan:
    """Plan re-cutting the partitions of ``table`` within ``[lower, upper)`` (default: all)
    to ``interval``: splits of the partitions wider than a period, merges of runs of
    partitions within one period; ``jobs``, ``max_rate``: each batch's bulk copy
    (``carve_state.parallel_copy``)."""
    info = snapshot(conn, table)
    p = info.partitioning
    if p is None or p.strategy != "range":
        raise Refused(f"{info.name} is not range partitioned: reslice re-cuts range partitions")
    journal.refuse_unfinished(conn, info.name.quoted)
    key = p.key_columns[0]
    kind = schemes.key_kind(p.key_types[0])
    tz = _tz(conn, info)
    iv = schemes.Interval.parse(interval)
    schemes.check_fits(kind, iv, key, p.key_types[0])
    lo_v = schemes.parse_value(lower, kind, tz) if lower else None
    hi_v = schemes.parse_value(upper, kind, tz) if upper else None
    parts = evaluate_bounds(conn, p)
    parts.sort(key=lambda r: (r.lo is not None, r.lo))
    span: list[RangePart] = []
    notes: list[str] = []
    for rp in parts:
        inside_lo = lo_v is None or (rp.lo is not None and rp.lo >= lo_v)
        inside_hi = hi_v is None or (rp.hi is not None and rp.hi <= hi_v)
        touches = ((hi_v is None or rp.lo is None or rp.lo < hi_v)
                   and (lo_v is None or rp.hi is None or rp.hi > lo_v))
        if not touches:
            continue
        if not (inside_lo and inside_hi):
            raise Refused(f"{rp.part.name} ({rp.part.bound}) lies partly outside --from/--to",
                          hint="widen the span to whole partitions")
        if rp.part.kind == "f":
            refuse_unsplittable(info, rp.part, "resliced")
        if rp.part.kind != "r":
            notes.append(f"{rp.part.name} is itself partitioned: left as it is (re-cut its "
                         f"partitions with pgcleave reslice {rp.part.name})")
            continue
        span.append(rp)
    if p.default is not None:
        notes.append(f"beside the DEFAULT {p.default.name}: each batch first proves it holds "
                     "no row of the batch's span (a CHECK validated while writes go on), so "
                     "the swap's ATTACH does not scan it; the CHECK is dropped after the swap")

    par = resolve_jobs(conn, jobs, limit=MAX_COPY_JOBS)

    def period(v: Any) -> Any:
        return schemes.floor(v, iv, tz)

    batches: list[Batch] = []
    run: list[RangePart] = []

    def flush() -> None:
        if len(run) >= 2:
            srcs = [r.part for r in run]
            infos = [snapshot(conn, x.name.quoted) for x in srcs]
            if any(i.primary_key is None for i in infos):
                raise Refused(f"{srcs[0].name} has no primary key: the change capture needs one")
            lo = run[0].lo
            final = info.name.sibling(child_name(info.name.name, schemes.suffix(lo, iv)))
            if relation_exists(conn, final) and final not in {x.name for x in srcs}:
                final = srcs[0].name
            tmp = final.sibling(child_name(final.name, "pgcleave_new"))
            bound = Bound("range", Bound.of(srcs[0]).lower, Bound.of(srcs[-1]).upper)
            n = len(batches) + 1
            steps = merge_steps(conn, info, srcs, infos, bound, final, tmp,
                                suffix=f":{n}", copy_jobs=par, max_rate=max_rate)
            batches.append(Batch("merge", srcs, copy_bytes(conn, srcs), steps))
        run.clear()

    for rp in span:
        small = (rp.lo is not None and rp.hi is not None
                 and rp.hi <= schemes.add(period(rp.lo), iv))
        if small:
            aligned = rp.lo == period(rp.lo) and rp.hi == schemes.add(period(rp.lo), iv)
            if aligned:  # already one whole period
                flush()
                continue
            if run and (run[-1].hi != rp.lo or period(run[-1].lo) != period(rp.lo)):
                flush()
            run.append(rp)
            continue
        flush()
        if (rp.lo is None or rp.hi is None) and _extent(conn, rp.part, key)[0] is None:
            continue  # empty and unbounded: nothing tells where to cut it
        cuts = interval_cuts(conn, rp, key, iv, tz)
        if not cuts:
            continue
        pieces = split_pieces(info, rp, cuts, iv)
        carve = plan_carve(conn, info.name.quoted, pieces, method="swap", info=info,
                           jobs=par, max_rate=max_rate)
        n = len(batches) + 1
        batches.append(Batch("split", [rp.part], copy_bytes(conn, [rp.part]),
                             _rename(carve.steps, f":{n}")))
    flush()
    steps = [s for b in batches for s in b.steps]
    for i, b in enumerate(batches, 1):
        notes.append(f"batch {i}: {b.kind} {', '.join(x.name.name for x in b.sources)}: extra "
                     f"disk {_mb(b.bytes)} (a copy of the rows it moves, with indexes) until "
                     "its swap drops the source")
    if batches:
        peak = max(b.bytes for b in batches)
        notes.append(f"peak extra disk {_mb(peak)} (one batch at a time); free disk: unknown "
                     "(PostgreSQL shows it to no table owner): make sure that much is free")
        edges = [r for r in span if r.lo is not None and r.lo != period(r.lo)]
        if any(b.kind == "split" for b in batches) and edges:
            notes.append("partitions split at a bound that is not a period start leave an "
                         "edge piece shorter than a period: run reslice again to merge it")
    args = {"interval": str(iv), "from": lower, "to": upper,
            "batches": [{"kind": b.kind, "sources": [x.name.quoted for x in b.sources],
                         "bytes": b.bytes} for b in batches]}
    requires = [*preflight.table_change(info.name),
                *(preflight.owner(x.name) for b in batches for x in b.sources)]
    return Plan("reslice", info.name.quoted, args, steps, notes=notes, requires=requires)

