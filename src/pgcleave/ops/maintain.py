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
from typing import Any, TypedDict, cast

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from .. import journal, preflight, schemes, servers
from .. import levels as lv
from .. import policy as pol
from ..catalog import Partition, TableInfo, snapshot
from ..connection import Connection
from ..ddl.bounds import Bound
from ..ddl.parallel import Jobs, resolve_jobs
from ..ddl.shards import ddl_guard_step, is_superuser, refuse_parent_keys, shard_table_step
from ..errors import Refused
from ..execute import ActionContext
from ..names import QualifiedName, child_name
from ..plan import Lock, LockTaken, Plan, Residue, Statement, Step, render
from .carve import (
    DIRECT_MAX_LOCK_MS,
    DIRECT_ROWS_PER_MS,
    MAX_COPY_JOBS,
    ONE,
    Piece,
    Sub,
    plan_carve,
)
from .retention import detach_step, retention_steps


class CheckItem(TypedDict):
    name: str  # the new partition, quoted
    cond: str  # its rows, as a condition on the DEFAULT


class PremakeValidateParams(TypedDict):
    default: list[str]
    items: list[CheckItem]


class CreateItem(TypedDict):
    name: str
    sql: str  # CREATE TABLE ... PARTITION OF (or the foreign table for a placed one)
    drop_remote: str | None  # drops the shard table of a placed partition that is skipped


class PremakeCreateParams(TypedDict):
    items: list[CreateItem]
    extra: list[str]  # statements after the partitions (sharded_tables bookkeeping)


class PremakeLockedParams(TypedDict):
    parent: list[str]
    default: list[str]
    items: list[CreateItem]
    extra: list[str]

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
    placed: dict[str, str] = field(default_factory=dict)  # new partition -> server

    @property
    def moved_rows(self) -> int:
        return sum(int(d["rows"]) for d in self.drained)

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "created": self.created, "drained": self.drained,
                "moved_rows": self.moved_rows, "finalized": self.finalized,
                "detached": self.detached, "archived": self.archived, "dropped": self.dropped,
                "analyzed": self.analyzed, "late_rows": self.late_rows,
                "skipped": self.skipped, "placed": self.placed}

    def line(self) -> str:
        bits = [f"created {len(self.created)}", f"moved {self.moved_rows} rows",
                f"finalized {len(self.finalized)}", f"detached {len(self.detached)}",
                f"archived {len(self.archived)}", f"dropped {len(self.dropped)}",
                f"analyzed {len(self.analyzed)}"]
        if self.late_rows:
            bits.append(f"{self.late_rows} late rows stay in DEFAULT")
        return ", ".join(bits)


def plan_maintain(conn: Connection, table: str, *, now: datetime | None = None,
                  jobs: str | int = 1, max_rate: float | None = None
                  ) -> tuple[Plan, Summary]:
    """The maintenance of ``table`` due now; ``jobs``: the connections of each DEFAULT
    drain's bulk copy (``carve_state.parallel_copy``), ``max_rate``: its rows per second over
    all of them (each drain's copy on its own: a table's drains run one after the other)."""
    info = snapshot(conn, table)
    policy = pol.load(conn, info.name)
    if policy is None:
        raise Refused(f"{info.name} has no pgcleave policy",
                      hint=f"set one with `pgcleave config {info.name} --interval ...`")
    pol.validate(policy, info)
    summary = Summary(info.name.quoted)
    steps: list[Step] = []
    notes: list[str] = [f"policy: {policy.summary()}"]
    taken = lv.relation_names(conn, info.name.schema)
    assert info.partitioning is not None

    if policy.strategy != "range":
        # pending detaches of whole branches
        for part in info.partitioning.partitions:
            if part.detach_pending:
                steps.append(detach_step(info.name, part.name, concurrently=True, pending=True))
                summary.finalized.append(part.name.quoted)

    nj = ONE if str(jobs) == "1" else resolve_jobs(conn, jobs, limit=MAX_COPY_JOBS)
    for level in lv.levels(conn, policy, info):
        steps += _level_steps(conn, policy, info, level, now, summary, notes, taken, jobs=nj,
                              max_rate=max_rate)

    if policy.strategy in ("list", "hash") and policy.sub_strategy == "range":
        steps += _new_branches(conn, policy, info, now, summary, notes, taken, jobs=nj,
                               max_rate=max_rate)

    if policy.strategy == "list" and policy.sub_strategy is None:
        steps += _placed_lists(conn, policy, info, summary, notes, taken)

    plan = Plan("maintain", info.name.quoted,
                {"now": now.isoformat() if now else None, "summary": summary.to_json(),
                 **({"max_rate": max_rate} if max_rate else {})},
                steps, notes=notes, requires=preflight.table_change(info.name)
                + ([preflight.writable(policy.archive_dir)]
                   if policy.archive_dir and any(s.action == "retention.archive" for s in steps)
                   else []))
    return plan, summary


def _level_steps(conn: Connection, policy: pol.Policy, info: TableInfo, level: lv.Level,
                 now: datetime | None, summary: Summary, notes: list[str], taken: set[str],
                 *, jobs: Jobs = ONE, max_rate: float | None = None) -> list[Step]:
    steps: list[Step] = []
    max_key = (lv.max_key(conn, level.parent, level.key)
               if level.kind in ("integer", "numeric") else None)
    now_v = lv.now_value(conn, level.kind, policy.time_zone, now, max_key)
    cut = lv.cutoff(level, now_v, policy.retention)
    retired = lv.retired(level, cut)
    retired_names = {rp.part.name for rp in retired}

    for p in level.pending:
        if p.name not in retired_names:
            steps.append(detach_step(level.parent, p.name, concurrently=True, pending=True))
            summary.finalized.append(p.name.quoted)

    live = [rp for rp in level.parts if not rp.part.detach_pending]
    view = lv.Level(**{**level.__dict__, "parts": live})
    dperiods = lv.default_periods(conn, view) if view.default is not None else {}

    # premake: gaps from the current period up to the horizon asked for
    wanted: list[tuple[Any, Any]] = []
    if now_v is not None:
        end = schemes.add(view.period(now_v), view.interval, policy.premake + 1)
        for lo, hi in view.periods(now_v, end):
            if cut is not None and hi <= cut:
                continue
            wanted += view.gaps(lo, hi)
    premake = [g for g in wanted if view.period(g[0]) not in dperiods]
    top = policy.strategy == "range" and level.parent == info.name
    rules = [r for r in policy.placement if r["kind"] == "range"] if top else []
    rule_vals = pol.range_rule_values(conn, rules, level.key_type)
    placed: list[str | None] = [None] * len(premake)
    if premake:
        placed = [pol.placed_server(rules, rule_vals, lo, hi) for lo, hi in premake]
        if any(placed) and not _can_place(info, notes):
            placed = [None] * len(premake)

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
            srv = pol.placed_server(rules, rule_vals, glo, ghi)
            if srv:
                notes.append(f"{name} is placed on {srv} by the policy but gets rows from the "
                             f"DEFAULT: it is created here (drained like any other); "
                             f"`pgcleave move {name} --to {srv}` then moves it online")
    if None in dperiods:
        notes.append(f"{dperiods[None]} rows with a NULL {view.key} stay in "
                     f"{view.default.name if view.default else 'DEFAULT'}")
    if summary.late_rows:
        notes.append(f"{summary.late_rows} rows in the DEFAULT belong to periods past retention"
                     " (late rows): they stay there, visible; `pgcleave check` reports them")

    # Premade partitions next to a DEFAULT: never a CHECK on the DEFAULT that refuses their
    # rows (a writer ahead of premake would fail). Local ones go into the drain's carve as
    # empty pieces when there is a drain (a row arriving for them meanwhile is captured like
    # any other) or when the DEFAULT is too large to be scanned under the parent's lock; else
    # (and placed ones) one short transaction under the parent's lock creates them, PostgreSQL
    # scanning the small DEFAULT, and a range whose rows reached the DEFAULT meanwhile is left
    # to the next run's drain.
    fold: list[tuple[Any, Any]] = []
    if premake and view.default is not None and view.default.kind == "r" \
            and info.primary_key is not None \
            and (targets or _default_lock_ms(view.default) > DIRECT_MAX_LOCK_MS):
        fold = [g for g, srv in zip(premake, placed, strict=True) if srv is None]
        if not targets:
            notes.append(f"{view.default.name} is too large to be scanned under the lock of "
                         f"{view.parent} (about {_default_lock_ms(view.default):.0f} ms): the "
                         "new partitions are carved out of it (copy and swap) instead")
    for lo, hi in fold:
        name = level.parent.sibling(view.name_for(lo, taken))
        targets.append(_range_target(view, name, lo, hi, 0))
    rest = [(g, srv) for g, srv in zip(premake, placed, strict=True) if g not in fold]
    if targets:
        assert view.default is not None
        steps += drain_steps(conn, info, view.parent, view.default.name, targets, summary,
                             notes, jobs=jobs, max_rate=max_rate)
    if rest:
        steps += premake_steps(view, [g for g, _ in rest], taken, summary,
                               placed=[srv for _, srv in rest], conn=conn, info=info)

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


def _default_lock_ms(default: Partition) -> float:
    """How long PostgreSQL would scan ``default`` under the parent's lock (carve's estimate)."""
    rows = max(default.rows or 0, (default.bytes or 0) // 200)
    return rows / DIRECT_ROWS_PER_MS


def _range_target(level: lv.Level, name: QualifiedName, lo: Any, hi: Any, rows: int
                  ) -> Target:
    return Target(name=name, bound=_range_bound(lo, hi), rows=rows)


def _range_bound(lo: Any, hi: Any) -> Bound:
    return Bound("range", schemes.literal(lo) if lo is not None else None,
                 schemes.literal(hi) if hi is not None else None)


# -- premake -----------------------------------------------------------------------------------
@dataclass
class NewPart:
    """A partition premake creates: local, or a foreign partition on ``server``."""

    name: QualifiedName
    bound: sql.Composable  # FOR VALUES ...
    cond: sql.Composable  # the partition constraint, NULL-free
    server: str | None = None


def premake_steps(level: lv.Level, ranges: list[tuple[Any, Any]], taken: set[str],
                  summary: Summary, *, placed: list[str | None] | None = None,
                  conn: Connection | None = None, info: TableInfo | None = None
                  ) -> list[Step]:
    parent = level.parent
    items: list[NewPart] = []
    for i, (lo, hi) in enumerate(ranges):
        name = parent.sibling(level.name_for(lo, taken))
        items.append(NewPart(name, level.bound_sql(lo, hi), level.range_cond(lo, hi),
                             placed[i] if placed else None))
    return create_steps(parent, level.default, items, summary, conn=conn, info=info)


def create_steps(parent: QualifiedName, default: Partition | None, items: list[NewPart],
                 summary: Summary, *, conn: Connection | None = None,
                 info: TableInfo | None = None, guard_default: bool = False) -> list[Step]:
    """Create new partitions. Next to a DEFAULT: one short transaction that locks the parent
    and the DEFAULT (under lock_timeout, retried) and creates each partition, PostgreSQL
    scanning the DEFAULT under the lock (the caller makes sure it is small: maintain keeps it
    empty); a range whose rows reached the DEFAULT after planning is skipped (left to the next
    run's drain). No CHECK on the DEFAULT ever refuses an application row. ``guard_default``
    keeps the older path (a CHECK excluding the ranges, NOT VALID then validated: refuses
    their INSERTs until the partitions exist), for journals and callers that ask for it. A
    placed partition gets its shard table first (through dblink, from the parent's
    definition, with a CHECK equal to its bound), then ``CREATE FOREIGN TABLE ... PARTITION
    OF ... SERVER``."""
    names = [it.name for it in items]
    summary.created += [n.quoted for n in names]
    exists_all = sql.SQL("SELECT bool_and(to_regclass(n) IS NOT NULL) FROM unnest({}::text[]) n"
                         ).format(sql.Literal([n.quoted for n in names]))
    steps: list[Step] = []
    remote = [it for it in items if it.server]
    if remote:
        assert conn is not None and info is not None
        dbl = servers.dblink_schema(conn)
        for it in remote:
            assert it.server is not None
            summary.placed[it.name.quoted] = it.server
            steps.append(shard_table_step(conn, info, it.server, it.name, it.cond, dbl=dbl,
                                          name="premake:shard-table", markers=False))
    guarded = default is not None and guard_default
    if guarded:
        assert default is not None
        d = default.name
        excl = sql.SQL("NOT ({})").format(sql.SQL(" OR ").join(it.cond for it in items))
        con = sql.Identifier(PREMAKE_CHECK)
        steps.append(Step.sql(
            "premake:guard", f"add a CHECK to the DEFAULT {d} excluding the new ranges "
            "(NOT VALID: no scan)",
            [sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(d.ident, con),
             sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({}) NOT VALID").format(
                 d.ident, con, excl)],
            locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, f"{d} (catalog only, no scan)")],
            guard=exists_all,
            undo=[sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(d.ident, con)],
            residue=Residue.REFUSES,
            residue_note=f"refuses INSERTs of the new ranges (the DEFAULT {d} may not take them, "
                         "and their partitions are not created yet)"))
        steps.append(Step(
            name="premake:validate", description=f"validate that CHECK: scans {d} while "
            "writes go on (ranges whose rows reached the DEFAULT meanwhile are left to the "
            "drain of the next run)",
            statements=[sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                d.ident, con).as_string(None)],
            action="maintain.premake_validate",
            params=PremakeValidateParams(
                default=[d.schema, d.name],
                items=[CheckItem(name=it.name.quoted, cond=it.cond.as_string(None))
                       for it in items]),
            locks=[LockTaken(Lock.SHARE_UPDATE_EXCLUSIVE, str(d))],
            guard=exists_all.as_string(None), transactional=False))
    creates: list[Statement] = []
    undo: list[Statement] = []
    for it in items:
        if it.server:
            creates.append(sql.SQL(
                "CREATE FOREIGN TABLE {} PARTITION OF {} {} SERVER {} OPTIONS (schema_name {}, "
                "table_name {})").format(it.name.ident, parent.ident, it.bound,
                                         sql.Identifier(it.server), sql.Literal(it.name.schema),
                                         sql.Literal(it.name.name)))
            undo.append(sql.SQL("DROP FOREIGN TABLE IF EXISTS {}").format(it.name.ident))
        else:
            creates.append(sql.SQL("CREATE TABLE {} PARTITION OF {} {}").format(
                it.name.ident, parent.ident, it.bound))
            undo.append(sql.SQL("DROP TABLE IF EXISTS {}").format(it.name.ident))
    if remote:
        # the guard that refuses a plain ALTER TABLE changing the columns of a table with
        # remote partitions knows this table from now on (as after a move)
        creates.append(sql.SQL(
            "INSERT INTO pgcleave.sharded_tables (relid, columns) VALUES ({t}::regclass,"
            " pgcleave.columns_signature({t}::regclass)) ON CONFLICT (relid) DO UPDATE SET"
            " columns = excluded.columns, updated_at = clock_timestamp()").format(
            t=parent.literal))
    locks = [LockTaken(Lock.ACCESS_EXCLUSIVE, str(parent))]
    if guarded:
        assert default is not None
        locks.append(LockTaken(Lock.ACCESS_EXCLUSIVE,
                               f"{default.name} (no scan: the validated CHECK proves it)"))
    elif default is not None:
        locks.append(LockTaken(Lock.ACCESS_EXCLUSIVE,
                               f"{default.name} (scanned under the lock: kept small)"))
    what = f"create {len(names)} partition(s) of {parent}: " + ", ".join(
        n.name + (f" (on {it.server})" if it.server else "")
        for n, it in zip(names, items, strict=True))
    dbl = servers.dblink_schema(conn) if remote and conn is not None else "pgcleave"
    citems = [CreateItem(name=it.name.quoted, sql=render(c),
                         drop_remote=servers.remote_sql(dbl, it.server, sql.SQL(
                             "DROP TABLE IF EXISTS {}").format(it.name.ident)).as_string(None)
                         if it.server else None)
              for it, c in zip(items, creates, strict=False)]
    extra = [render(c) for c in creates[len(items):]]
    if default is None:
        steps.append(Step.sql("premake:create", what, creates, locks=locks, guard=exists_all,
                              undo=list(reversed(undo))))
    elif guarded:
        steps.append(Step(
            name="premake:create", description=what,
            statements=[render(c) for c in creates], action="maintain.premake_create",
            params=PremakeCreateParams(items=citems, extra=extra),
            locks=locks, guard=exists_all.as_string(None),
            undo=[render(u) for u in reversed(undo)]))
    else:
        lock = sql.SQL("LOCK TABLE ONLY {}, {} IN ACCESS EXCLUSIVE MODE").format(
            parent.ident, default.name.ident)
        steps.append(Step(
            name="premake:create", description=what + f" in one transaction under the lock "
            f"of {parent} (a range whose rows reached {default.name} after planning is left to "
            "the next run's drain)",
            statements=[render(lock), *(render(c) for c in creates)],
            action="maintain.premake_locked",
            params=PremakeLockedParams(parent=[parent.schema, parent.name],
                                       default=[default.name.schema, default.name.name],
                                       items=citems, extra=extra),
            locks=locks, guard=exists_all.as_string(None),
            undo=[render(u) for u in reversed(undo)]))
    if remote and conn is not None and is_superuser(conn):
        steps.append(ddl_guard_step("premake:ddl-guard"))
    if guarded:
        assert default is not None
        d = default.name
        steps.append(Step.sql(
            "premake:unguard", f"drop the temporary CHECK from {d}",
            [sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                d.ident, sql.Identifier(PREMAKE_CHECK))],
            locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, f"{d} (catalog only)")]))
    return steps


def premake_validate(ctx: ActionContext) -> None:
    """VALIDATE the CHECK excluding the new ranges from the DEFAULT. Rows for one of them may
    have reached the DEFAULT after planning (a writer ahead of premake): VALIDATE then fails.
    Instead of failing the job (and failing again on every resume), those ranges are dropped
    from this run's premake: the CHECK is rebuilt without them (NOT VALID again, no scan) and
    validated; the next run sees their rows and drains them into their new partition."""
    p = cast(PremakeValidateParams, ctx.params)
    d = QualifiedName(*p["default"])
    con = sql.Identifier(PREMAKE_CHECK)
    skip: list[str] = list(ctx.load().get("skip", []))
    for _ in range(len(p["items"]) + 1):
        left = [it for it in p["items"] if it["name"] not in skip]
        if not left:
            ctx.run_ddl([sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                d.ident, con).as_string(None)])
            break
        try:
            ctx.run_ddl([sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                d.ident, con).as_string(None)], transactional=False)
            break
        except pgerrors.CheckViolation:
            if ctx.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                ctx.conn.rollback()
        for it in left:
            row = ctx.conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM ONLY {} WHERE {})")
                                   .format(d.ident, sql.SQL(it["cond"]))).fetchone()
            if row and row[0]:
                skip.append(it["name"])
        ctx.save({"skip": skip})
        ctx.progress(f"rows arrived in {d} for {', '.join(skip)} after planning: not created "
                     "now; the next run drains them into their partition", final=True)
        left = [it for it in p["items"] if it["name"] not in skip]
        stmts = [sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(d.ident, con)]
        if left:
            stmts.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK (NOT ({})) NOT VALID"
                                 ).format(d.ident, con, sql.SQL(" OR ").join(
                                     sql.SQL(it["cond"]) for it in left)))
        ctx.run_ddl([s.as_string(None) for s in stmts])
    ctx.save({"skip": skip})


def premake_create(ctx: ActionContext) -> None:
    """Create the new partitions the validated CHECK covers (all of them, unless the
    validation step left some to the drain); drop the shard tables of skipped placed ones."""
    p = cast(PremakeCreateParams, ctx.params)
    skip = set(journal.load_progress(ctx.conn, ctx.job_id, ctx.index - 1).get("skip", []))
    stmts: list[str] = []
    for it in p["items"]:
        if it["name"] in skip:
            if drop := it.get("drop_remote"):
                ctx.run_ddl([drop], transactional=False)
            continue
        row = ctx.conn.execute("SELECT to_regclass(%s) IS NOT NULL", [it["name"]]).fetchone()
        if not (row and row[0]):
            stmts.append(it["sql"])
    if stmts:
        ctx.run_ddl(stmts + (p["extra"] if any(
            it.get("drop_remote") and it["name"] not in skip for it in p["items"]) else []))


def premake_locked(ctx: ActionContext) -> None:
    """Create the new partitions in one transaction that first locks the parent and the
    DEFAULT (lock_timeout, retried: a waiting request blocks the application no longer than
    that). A ``CREATE ... PARTITION OF`` that finds rows of its range in the DEFAULT (a writer
    ahead of premake) fails its scan: rolled back to its savepoint, that range is skipped and
    left to the next run's drain, which carves it with its rows; the others are created."""
    p = cast(PremakeLockedParams, ctx.params)
    parent, d = QualifiedName(*p["parent"]), QualifiedName(*p["default"])
    conn = ctx.conn
    skip: list[str] = list(ctx.load().get("skip", []))

    def attempt() -> list[str]:
        skipped: list[str] = []
        with conn.transaction():
            ctx.set_lock_timeout(conn)
            conn.execute(sql.SQL("LOCK TABLE ONLY {}, {} IN ACCESS EXCLUSIVE MODE").format(
                parent.ident, d.ident))
            made = 0
            for it in p["items"]:
                if it["name"] in skip:
                    continue
                row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [it["name"]]).fetchone()
                if row and row[0]:
                    continue
                try:
                    with conn.transaction():
                        conn.execute(it["sql"].encode())
                    made += 1
                except pgerrors.CheckViolation:
                    skipped.append(it["name"])
            if made and any(it.get("drop_remote") for it in p["items"]
                            if it["name"] not in skip + skipped):
                for x in p["extra"]:
                    conn.execute(x.encode())
        return skipped

    skipped = ctx.retry_locks(attempt, what=f"create partitions of {parent}")
    if skipped:
        skip += skipped
        ctx.progress(f"rows arrived in {d} for {', '.join(skipped)} after planning: not created "
                     "now; the next run drains them into their partition", final=True)
    for it in p["items"]:
        if it["name"] in skip and (drop := it.get("drop_remote")):
            ctx.run_ddl([drop], transactional=False)
    ctx.save({"skip": skip})


def _can_place(info: TableInfo, notes: list[str]) -> bool:
    """Whether the table can take a foreign partition now (config checked it, but a key may
    have been added since): if not, new partitions are created here, with a note."""
    try:
        refuse_parent_keys(info)
    except Refused as exc:
        notes.append(f"placement rules not applied, partitions are created here: {exc.message}"
                     + (f" ({exc.hint})" if exc.hint else ""))
        return False
    return True


def _placed_lists(conn: Connection, policy: pol.Policy, info: TableInfo, summary: Summary,
                  notes: list[str], taken: set[str]) -> list[Step]:
    """A list rule's values get their partition on the rule's server when no partition holds
    any of them yet and the DEFAULT has no row of them (rows there are carved and moved by
    hand: `pgcleave carve`, then `pgcleave move`)."""
    rules = [r for r in policy.placement if r["kind"] == "list"]
    p = info.partitioning
    if not rules or p is None:
        return []
    typ = p.key_types[0]
    lits = [(part, v) for part in p.partitions if part.values for v in part.values
            if v.upper() != "NULL"]
    have: set[str] = set()
    if lits:
        row = conn.execute(sql.SQL("SELECT ARRAY[{}]::text[]").format(sql.SQL(", ").join(
            sql.SQL("(({})::{})::text").format(sql.SQL(v), sql.SQL(typ)) for _, v in lits))
        ).fetchone()
        assert row is not None
        have = {str(x) for x in row[0]}
    key = sql.Identifier(policy.key_column)
    items: list[NewPart] = []
    for r in rules:
        vals: list[str] = r["values"]
        present = [v for v in vals if v in have]
        if present:
            if len(present) < len(vals):
                notes.append(f"placement rule {pol.rule_text(r)}: {', '.join(present)} already "
                             "have a partition; the other values are left alone")
            continue
        typed = [sql.SQL("({})::{}").format(sql.Literal(v), sql.SQL(typ)) for v in vals]
        in_list = sql.SQL(", ").join(typed)
        if p.default is not None:
            row = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {} WHERE {} IN ({})").format(
                p.default.name.ident, key, in_list)).fetchone()
            n = int(row[0]) if row else 0
            if n:
                notes.append(f"placement rule {pol.rule_text(r)}: {n} rows of these values are "
                             f"in the DEFAULT {p.default.name}; carve them into a partition "
                             f"(`pgcleave carve`), then `pgcleave move PARTITION --to "
                             f"{r['server']}`")
                continue
        slug = "_".join(_slug(v) for v in vals)[:40]
        name = info.name.sibling(_fresh(child_name(info.name.name, slug), taken))
        items.append(NewPart(
            name, sql.SQL("FOR VALUES IN ({})").format(in_list),
            sql.SQL("({k} IS NOT NULL AND {k} IN ({v}))").format(k=key, v=in_list),
            str(r["server"])))
    if not items or not _can_place(info, notes):
        return []
    return create_steps(info.name, p.default, items, summary, conn=conn, info=info)


# -- drain -------------------------------------------------------------------------------------
def drain_steps(conn: Connection, info: TableInfo, parent: QualifiedName,
                old_default: QualifiedName, targets: list[Target], summary: Summary,
                notes: list[str], also: list[Bound] | None = None, *,
                jobs: Jobs = ONE, max_rate: float | None = None) -> list[Step]:
    """Move the DEFAULT's rows into their new partitions: ``carve``'s copy-and-swap method
    (ops/carve.py) with the new partitions as pieces, its bulk copy on ``jobs``
    connections, at most ``max_rate`` rows per second together."""
    if info.primary_key is None:
        notes.append(f"{sum(t.rows for t in targets)} rows in {old_default} need partitions, "
                     f"but {info.name} has no primary key: the online drain needs one to mirror "
                     "writes; the rows stay in the DEFAULT (visible) and `check` reports them")
        return []
    plan = plan_carve(conn, parent.quoted,
                      [Piece(name=t.name.name, bound=t.bound, sub=t.sub) for t in targets],
                      method="swap", also=also or [], jobs=jobs, max_rate=max_rate,
                      # the snapshot already read, unless the DEFAULT is a branch's
                      info=info if parent == info.name else None)
    n_rows = sum(t.rows for t in targets)
    for t in targets:
        if t.rows:  # premade ranges carved along have none
            summary.drained.append({"partition": t.name.quoted, "rows": t.rows,
                                    "bound": t.bound.describe()})
        summary.created.append(t.name.quoted)
        summary.analyzed.append(t.name.quoted)
    notes.append(f"drain {n_rows} rows from {old_default} into {len(targets)} new partition(s)"
                 " by carve's copy + key log + short swaps (rows stay visible, nothing is "
                 "scanned under an exclusive lock)")
    notes += plan.notes
    return list(plan.steps)


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
                  summary: Summary, notes: list[str], taken: set[str], *,
                  jobs: Jobs = ONE, max_rate: float | None = None) -> list[Step]:
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
        dummy = lv.Level(parent=bname, partitioning=p, key=sub, key_type=sub_col.type,
                          kind=kind, interval=iv, tz=tz, parts=[], default=None)
        now_v = lv.now_value(conn, kind, tz, now)
        cut = lv.cutoff(dummy, now_v, policy.retention)
        periods: dict[Any, int] = {}
        for d, n in days.items():
            v: Any = d
            if kind == "timestamptz":
                v = datetime.combine(d, datetime.min.time(), tzinfo=schemes.time_zone_info(tz))
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
    return drain_steps(conn, info, info.name, top_default.name, targets, summary, notes,
                       jobs=jobs, max_rate=max_rate)


def run_summary(conn: Connection, job: int, planned: dict[str, Any]) -> dict[str, Any]:
    """A maintain job's planned summary with the figures its run measured (rows copied,
    archive files, ranges deferred to the next run)."""
    done = dict(planned)
    archives = []
    steps = journal.step_progress(conn, job)
    # the drains' bulk copies measured what they moved (a direct carve measures nothing)
    copied = [int(p["copied"]) for name, p in steps
              if name in ("carve-copy", "drain:copy") and "copied" in p]
    if copied and not any(name == "carve-direct" for name, _ in steps):
        done["moved_rows"] = sum(copied)
    for name, progress in steps:
        if name.startswith("archive:") and progress:
            archives.append({"partition": name.split(":", 1)[1], **progress})
        if name in ("premake:validate", "premake:create") and progress \
                and progress.get("skip"):
            # rows reached the DEFAULT for these ranges after planning: the next run drains
            skipped = list(progress["skip"])
            done["premake_deferred"] = done.get("premake_deferred", []) + skipped
            done["created"] = [c for c in done["created"] if c not in skipped]
            done["placed"] = {k: v for k, v in done.get("placed", {}).items()
                              if k not in skipped}
    done["archives"] = archives
    return done
