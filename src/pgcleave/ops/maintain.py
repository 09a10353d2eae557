"""``maintain``: keep a partitioned table the way its policy says, safely, every minute.

For each range level (the table, or each branch of a two-level table), in this order:
1. finish detaches left pending by an interrupted run (``DETACH ... FINALIZE``);
2. premake: create the partitions from the period holding "now" up to ``premake`` periods
   ahead, filling only the gaps (bounds are compared as values, so adopted tables whose
   partitions are named or sized differently are fine). With a DEFAULT partition, ``CREATE
   TABLE ... PARTITION OF`` would scan it under ACCESS EXCLUSIVE; so first a CHECK that excludes
   the new ranges is added ``NOT VALID`` and validated (SHARE UPDATE EXCLUSIVE, writers go on),
   then the partitions are created (PostgreSQL logs that the DEFAULT's new constraint "is
   implied by existing constraints": no scan), then the CHECK is dropped;
3. drain: rows sitting in the DEFAULT for periods within retention get their partitions,
   by ``carve``'s swap method (``ops/carve.py``, one implementation): the new partitions are
   the pieces, copied once in bulk with a key log keeping them in sync, then attached in
   short transactions whose ACCESS EXCLUSIVE hold does not grow with the number of periods;
   the old DEFAULT is dropped whole. For a list/hash table with a second range level, a new
   list value in the top DEFAULT gets a new branch (range-partitioned, with its periods) the
   same way; carve's verify step analyzes what it filled;
4. retention (``ops/retention.py``).

Each table gets its own plan (and job); a table with nothing to do gets an empty plan and no job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import sql

from .. import policy as pol
from .. import schemes
from ..catalog import TableInfo, snapshot
from ..connection import Connection
from ..errors import Refused
from ..names import QualifiedName, child_name
from ..plan import Lock, LockTaken, Plan, Statement, Step
from .carve import Piece, Sub, plan_carve
from .partition import Bound
from .retention import detach_step, retention_steps

PREMAKE_CHECK = "pgcleave_premake_guard"


@dataclass
class Target:
    """A new partition the drain fills: a leaf range, or a whole new branch (``sub``)."""

    name: QualifiedName
    bound: Bound
    rows: int
    sub: Sub | None = None


@dataclass
class Summary:
    """What a maintain plan will do, for people and for ``--json``."""

    table: str
    created: list[str] = field(default_factory=list)
    drained: list[dict[str, Any]] = field(default_factory=list)
    finalized: list[str] = field(default_factory=list)
    detached: list[str] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    analyzed: list[str] = field(default_factory=list)
    late_rows: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def moved_rows(self) -> int:
        return sum(int(d["rows"]) for d in self.drained)

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "created": self.created, "drained": self.drained,
                "moved_rows": self.moved_rows, "finalized": self.finalized,
                "detached": self.detached, "archived": self.archived, "dropped": self.dropped,
                "analyzed": self.analyzed, "late_rows": self.late_rows,
                "skipped": self.skipped}

    def line(self) -> str:
        bits = [f"created {len(self.created)}", f"moved {self.moved_rows} rows",
                f"finalized {len(self.finalized)}", f"detached {len(self.detached)}",
                f"archived {len(self.archived)}", f"dropped {len(self.dropped)}",
                f"analyzed {len(self.analyzed)}"]
        if self.late_rows:
            bits.append(f"{self.late_rows} late rows stay in DEFAULT")
        return ", ".join(bits)


def plan_maintain(conn: Connection, table: str, *, now: datetime | None = None
                  ) -> tuple[Plan, Summary]:
    info = snapshot(conn, table)
    policy = pol.load(conn, info.name)
    if policy is None:
        raise Refused(f"{info.name} has no pgcleave policy",
                      hint=f"set one with `pgcleave config {info.name} --interval ...`")
    pol.validate(policy, info)
    summary = Summary(info.name.quoted)
    steps: list[Step] = []
    notes: list[str] = [f"policy: {policy.summary()}"]
    taken = pol.relation_names(conn, info.name.schema)
    assert info.partitioning is not None

    if policy.strategy != "range":
        # pending detaches of whole branches
        for part in info.partitioning.partitions:
            if part.detach_pending:
                steps.append(detach_step(info.name, part.name, concurrently=True, pending=True))
                summary.finalized.append(part.name.quoted)

    for level in pol.levels(conn, policy, info):
        steps += _level_steps(conn, policy, info, level, now, summary, notes, taken)

    if policy.strategy in ("list", "hash") and policy.sub_strategy == "range":
        steps += _new_branches(conn, policy, info, now, summary, notes, taken)

    plan = Plan("maintain", info.name.quoted,
                {"now": now.isoformat() if now else None, "summary": summary.to_json()},
                steps, notes=notes)
    return plan, summary


def _level_steps(conn: Connection, policy: pol.Policy, info: TableInfo, level: pol.Level,
                 now: datetime | None, summary: Summary, notes: list[str], taken: set[str]
                 ) -> list[Step]:
    steps: list[Step] = []
    max_key = (pol.max_key(conn, level.parent, level.key)
               if level.kind in ("integer", "numeric") else None)
    now_v = pol.now_value(conn, level.kind, policy.time_zone, now, max_key)
    cut = pol.cutoff(level, now_v, policy.retention)
    retired = pol.retired(level, cut)
    retired_names = {rp.part.name for rp in retired}

    for p in level.pending:
        if p.name not in retired_names:
            steps.append(detach_step(level.parent, p.name, concurrently=True, pending=True))
            summary.finalized.append(p.name.quoted)

    live = [rp for rp in level.parts if not rp.part.detach_pending]
    view = pol.Level(**{**level.__dict__, "parts": live})
    dperiods = pol.default_periods(conn, view) if view.default is not None else {}

    # premake: gaps from the current period up to the horizon asked for
    wanted: list[tuple[Any, Any]] = []
    if now_v is not None:
        end = schemes.add(view.period(now_v), view.interval, policy.premake + 1)
        for lo, hi in view.periods(now_v, end):
            if cut is not None and hi <= cut:
                continue
            wanted += view.gaps(lo, hi)
    premake = [g for g in wanted if view.period(g[0]) not in dperiods]
    if premake:
        steps += premake_steps(view, premake, taken, summary)

    # drain: periods with rows in the DEFAULT, within retention
    targets: list[Target] = []
    for period, n in sorted(((k, v) for k, v in dperiods.items() if k is not None),
                            key=lambda kv: kv[0]):
        hi = schemes.add(period, view.interval)
        if cut is not None and hi <= cut:
            summary.late_rows += n
            continue
        for glo, ghi in view.gaps(period, hi):
            name = level.parent.sibling(view.name_for(glo, taken))
            targets.append(_range_target(view, name, glo, ghi, n))
    if None in dperiods:
        notes.append(f"{dperiods[None]} rows with a NULL {view.key} stay in "
                     f"{view.default.name if view.default else 'DEFAULT'}")
    if summary.late_rows:
        notes.append(f"{summary.late_rows} rows in the DEFAULT belong to periods past retention"
                     " (late rows): they stay there, visible; `pgcleave check` reports them")
    if targets:
        assert view.default is not None
        steps += drain_steps(conn, info, view.parent, view.default.name, targets, summary,
                             notes, also=[_range_bound(lo, hi) for lo, hi in premake])

    if retired:
        steps += retention_steps(policy, view, retired, policy.archive_dir)
        for rp in retired:
            pname = rp.part.name.quoted
            summary.detached.append(pname)
            if policy.retention_action == "archive":
                summary.archived.append(pname)
            elif policy.retention_action == "drop":
                summary.dropped.append(pname)
    return steps


def _range_target(level: pol.Level, name: QualifiedName, lo: Any, hi: Any, rows: int
                  ) -> Target:
    return Target(name=name, bound=_range_bound(lo, hi), rows=rows)


def _range_bound(lo: Any, hi: Any) -> Bound:
    return Bound("range", schemes.literal(lo) if lo is not None else None,
                 schemes.literal(hi) if hi is not None else None)


# -- premake -----------------------------------------------------------------------------------
def premake_steps(level: pol.Level, ranges: list[tuple[Any, Any]], taken: set[str],
                  summary: Summary) -> list[Step]:
    parent = level.parent
    creates: list[Statement] = []
    names: list[QualifiedName] = []
    for lo, hi in ranges:
        name = parent.sibling(level.name_for(lo, taken))
        names.append(name)
        creates.append(sql.SQL("CREATE TABLE {} PARTITION OF {} {}").format(
            name.ident, parent.ident, level.bound_sql(lo, hi)))
    summary.created += [n.quoted for n in names]
    exists_all = sql.SQL("SELECT bool_and(to_regclass(n) IS NOT NULL) FROM unnest({}::text[]) n"
                         ).format(sql.Literal([n.quoted for n in names]))
    steps: list[Step] = []
    if level.default is not None:
        d = level.default.name
        excl = sql.SQL("NOT ({})").format(sql.SQL(" OR ").join(
            level.range_cond(lo, hi) for lo, hi in ranges))
        con = sql.Identifier(PREMAKE_CHECK)
        steps.append(Step.sql(
            "premake:guard", f"add a CHECK to the DEFAULT {d} excluding the new ranges "
            "(NOT VALID: no scan)",
            [sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(d.ident, con),
             sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({}) NOT VALID").format(
                 d.ident, con, excl)],
            locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, f"{d} (catalog only, no scan)")],
            guard=exists_all,
            undo=[sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(d.ident, con)]))
        steps.append(Step.sql(
            "premake:validate", f"validate that CHECK: scans {d} while writes go on",
            [sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(d.ident, con)],
            locks=[LockTaken(Lock.SHARE_UPDATE_EXCLUSIVE, str(d))], guard=exists_all))
    locks = [LockTaken(Lock.ACCESS_EXCLUSIVE, str(parent))]
    if level.default is not None:
        locks.append(LockTaken(Lock.ACCESS_EXCLUSIVE,
                               f"{level.default.name} (no scan: the validated CHECK proves it)"))
    steps.append(Step.sql(
        "premake:create", f"create {len(names)} partition(s) of {parent}: "
        + ", ".join(n.name for n in names), creates, locks=locks, guard=exists_all,
        undo=[sql.SQL("DROP TABLE IF EXISTS {}").format(n.ident) for n in names]))
    if level.default is not None:
        d = level.default.name
        steps.append(Step.sql(
            "premake:unguard", f"drop the temporary CHECK from {d}",
            [sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                d.ident, sql.Identifier(PREMAKE_CHECK))],
            locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, f"{d} (catalog only)")]))
    return steps


# -- drain -------------------------------------------------------------------------------------
def drain_steps(conn: Connection, info: TableInfo, parent: QualifiedName,
                old_default: QualifiedName, targets: list[Target], summary: Summary,
                notes: list[str], also: list[Bound] | None = None) -> list[Step]:
    """Move the DEFAULT's rows into their new partitions: ``carve``'s copy-and-swap method
    (ops/carve.py) with the new partitions as pieces."""
    if info.primary_key is None:
        notes.append(f"{sum(t.rows for t in targets)} rows in {old_default} need partitions, "
                     f"but {info.name} has no primary key: the online drain needs one to mirror "
                     "writes; the rows stay in the DEFAULT (visible) and `check` reports them")
        return []
    plan = plan_carve(conn, parent.quoted,
                      [Piece(name=t.name.name, bound=t.bound, sub=t.sub) for t in targets],
                      method="swap", also=also or [])
    n_rows = sum(t.rows for t in targets)
    for t in targets:
        summary.drained.append({"partition": t.name.quoted, "rows": t.rows,
                                "bound": t.bound.describe()})
        summary.created.append(t.name.quoted)
        summary.analyzed.append(t.name.quoted)
    notes.append(f"drain {n_rows} rows from {old_default} into {len(targets)} new partition(s)"
                 " by carve's copy + key log + short swaps (rows stay visible, nothing is "
                 "scanned under an exclusive lock)")
    notes += plan.notes
    return plan.steps


def _fresh(name: str, taken: set[str]) -> str:
    out, n = name, 1
    while out in taken:
        out = f"{name[:58]}_{n}"
        n += 1
    taken.add(out)
    return out


# -- two levels: new list values get their branch ----------------------------------------------
def _slug(value: Any) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", str(value).lower()).strip("_")
    return s or "v"


def _new_branches(conn: Connection, policy: pol.Policy, info: TableInfo, now: datetime | None,
                  summary: Summary, notes: list[str], taken: set[str]) -> list[Step]:
    p = info.partitioning
    assert p is not None and policy.sub_key_column and policy.sub_interval
    top_default = p.default
    if top_default is None or policy.strategy != "list":
        return []
    key, sub = policy.key_column, policy.sub_key_column
    sub_col = info.column(sub)
    kind = schemes.key_kind(sub_col.type)
    iv = schemes.Interval.parse(policy.sub_interval)
    tz = policy.time_zone
    if kind == "timestamptz":
        day = sql.SQL("({} AT TIME ZONE {})::date").format(sql.Identifier(sub), sql.Literal(tz))
    elif kind in ("date", "timestamp"):
        day = sql.SQL("{}::date").format(sql.Identifier(sub))
    else:
        notes.append("new list values in the DEFAULT get branches only for time sub-keys")
        return []
    rows = conn.execute(sql.SQL(
        "SELECT {k}, {d}, count(*) FROM ONLY {t} WHERE {k} IS NOT NULL GROUP BY 1, 2").format(
        k=sql.Identifier(key), d=day, t=top_default.name.ident)).fetchall()
    if not rows:
        return []
    # any existing branch with a DEFAULT of its own? new branches then get one too
    mirror_default = any(x.partitioning is not None and x.partitioning.default is not None
                         for x in p.partitions)
    by_value: dict[Any, dict[Any, int]] = {}
    for val, d, n in rows:
        by_value.setdefault(val, {})
        by_value[val][d] = by_value[val].get(d, 0) + int(n)
    targets: list[Target] = []
    for value, days in sorted(by_value.items(), key=lambda kv: str(kv[0])):
        bname = info.name.sibling(_fresh(child_name(info.name.name, _slug(value)), taken))
        dummy = pol.Level(parent=bname, partitioning=p, key=sub, key_type=sub_col.type,
                          kind=kind, interval=iv, tz=tz, parts=[], default=None)
        now_v = pol.now_value(conn, kind, tz, now)
        cut = pol.cutoff(dummy, now_v, policy.retention)
        periods: dict[Any, int] = {}
        for d, n in days.items():
            v: Any = d
            if kind == "timestamptz":
                v = datetime.combine(d, datetime.min.time(), tzinfo=schemes._zone(tz))
            elif kind == "timestamp":
                v = datetime.combine(d, datetime.min.time())
            per = dummy.period(v)
            periods[per] = periods.get(per, 0) + n
        start = dummy.period(now_v)
        for lo, _hi in dummy.periods(now_v, schemes.add(start, iv, policy.premake + 1)):
            periods.setdefault(lo, 0)
        ranges = sorted(lo for lo in periods
                        if cut is None or schemes.add(lo, iv) > cut)
        late = sum(n for lo, n in periods.items() if lo not in ranges)
        summary.late_rows += late
        # Every row of the value routes to its branch: rows of periods the branch gets no
        # partition for (past retention) need a DEFAULT in the branch, else they fit nowhere.
        with_default = mirror_default or late > 0
        if late and not mirror_default:
            summary.late_rows -= late
            notes.append(f"{late} rows of {key} {value!r} are past retention: they go to the "
                         "new branch's DEFAULT")
        subs: list[tuple[str, Bound]] = []
        for lo in ranges:
            leaf = bname.sibling(dummy.name_for(lo, taken))
            subs.append((leaf.name, _range_bound(lo, schemes.add(lo, iv))))
            summary.created.append(leaf.quoted)
        bdef: str | None = None
        if with_default:
            bdef = _fresh(child_name(bname.name, "default"), taken)
            summary.created.append(bname.sibling(bdef).quoted)
        n_rows = sum(days.values())
        targets.append(Target(name=bname, bound=Bound("list", values=[sql.Literal(value)]),
                              rows=n_rows, sub=Sub(sub, subs, bdef)))
        notes.append(f"new {key} value {value!r}: branch {bname} with {len(ranges)} "
                     f"{iv} partition(s)")
    return drain_steps(conn, info, info.name, top_default.name, targets, summary, notes)
