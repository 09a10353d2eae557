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
3. drain: rows sitting in the DEFAULT for periods within retention get their partitions. The
   recipe (no scan under an exclusive lock, rows visible throughout): new standalone tables
   created with a CHECK of their bound, plus a new DEFAULT; a capture trigger on the old DEFAULT
   mirrors every write; the rows are copied in short batches that lock what they copy (FOR
   SHARE, so a concurrent DELETE cannot be resurrected); then one short transaction detaches the
   old DEFAULT, attaches the new tables (the CHECKs prove the bounds), attaches the new DEFAULT
   (which scans only the rows left in it) and swaps the names; the old DEFAULT is dropped whole.
   For a list/hash table with a second range level, a new list value in the top DEFAULT gets a
   new branch (range-partitioned, with its periods) the same way.
4. retention (``ops/retention.py``);
5. ``ANALYZE`` of the partitions that received rows.

Each table gets its own plan (and job); a table with nothing to do gets an empty plan and no job.
"""

from __future__ import annotations

import re
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from .. import policy as pol
from .. import schemes
from ..catalog import TableInfo, snapshot
from ..connection import Connection
from ..errors import Refused
from ..execute import ActionContext, action
from ..names import QualifiedName, child_name
from ..plan import Lock, LockTaken, Plan, Statement, Step
from .retention import _qd, _qn, detach_step, retention_steps

PREMAKE_CHECK = "pgcleave_premake_guard"
BOUND_CHECK = "pgcleave_bound"
LIKE = ("INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES INCLUDING GENERATED "
        "INCLUDING STORAGE INCLUDING COMMENTS")


@dataclass
class Target:
    """A new partition the drain fills: a leaf range, or a whole new branch."""

    name: QualifiedName
    bound: sql.Composable  # FOR VALUES ...
    check: sql.Composable  # CHECK expression proving the bound
    cond: list[sql.Composable]  # [plain, NEW., OLD.] row routing conditions
    create: list[Statement]  # statements creating it (and its sub-partitions)
    rows: int
    label: str


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
    analyze: list[QualifiedName] = []
    assert info.partitioning is not None

    if policy.strategy != "range":
        # pending detaches of whole branches
        for part in info.partitioning.partitions:
            if part.detach_pending:
                steps.append(detach_step(info.name, part.name, concurrently=True, pending=True))
                summary.finalized.append(part.name.quoted)

    for level in pol.levels(conn, policy, info):
        steps += _level_steps(conn, policy, info, level, now, summary, notes, taken, analyze)

    if policy.strategy in ("list", "hash") and policy.sub_strategy == "range":
        steps += _new_branches(conn, policy, info, now, summary, notes, taken, analyze)

    if analyze:
        steps.append(Step.sql(
            "analyze", "ANALYZE the partitions that received rows",
            [sql.SQL("ANALYZE {}").format(t.ident) for t in analyze],
            locks=[LockTaken(Lock.SHARE_UPDATE_EXCLUSIVE, ", ".join(map(str, analyze)))],
            transactional=False, ddl=False))
        summary.analyzed = [t.quoted for t in analyze]

    plan = Plan("maintain", info.name.quoted,
                {"now": now.isoformat() if now else None, "summary": summary.to_json()},
                steps, notes=notes)
    return plan, summary


def _level_steps(conn: Connection, policy: pol.Policy, info: TableInfo, level: pol.Level,
                 now: datetime | None, summary: Summary, notes: list[str], taken: set[str],
                 analyze: list[QualifiedName]) -> list[Step]:
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
        steps += drain_steps(conn, info, view.parent, view.default.name, targets, taken,
                             summary, notes, analyze)

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
    return Target(
        name=name, bound=level.bound_sql(lo, hi), check=level.range_cond(lo, hi),
        cond=[level.range_cond(lo, hi, p) for p in ("", "NEW.", "OLD.")],
        create=[sql.SQL("CREATE TABLE {} (LIKE {} " + LIKE + ")").format(
            name.ident, level.parent.ident)],
        rows=rows, label=f"{name} {level.bound_sql(lo, hi).as_string(None)}")


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
                old_default: QualifiedName, targets: list[Target], taken: set[str],
                summary: Summary, notes: list[str], analyze: list[QualifiedName]) -> list[Step]:
    if info.primary_key is None:
        notes.append(f"{sum(t.rows for t in targets)} rows in {old_default} need partitions, "
                     f"but {info.name} has no primary key: the online drain needs one to mirror "
                     "writes; the rows stay in the DEFAULT (visible) and `check` reports them")
        return []
    pk = info.primary_key.columns
    types = {c.name: c.type for c in info.columns}
    cols = [c.name for c in info.columns if not c.generated]
    new_default = parent.sibling(_fresh(child_name(old_default.name, "new"), taken))
    drained = parent.sibling(_fresh(child_name(old_default.name, "drained"), taken))
    fn = QualifiedName("pgcleave", f"drain_{info.oid}_{zlib.crc32(old_default.quoted.encode())}")
    n_rows = sum(t.rows for t in targets)
    for t in targets:
        summary.drained.append({"partition": t.name.quoted, "rows": t.rows,
                                "bound": t.bound.as_string(None)})
        summary.created.append(t.name.quoted)
    notes.append(f"drain {n_rows} rows from {old_default} into {len(targets)} new partition(s)"
                 " by copy + capture trigger + short swap (rows stay visible, no scan under "
                 "an exclusive lock except the rows left in the new DEFAULT)")

    sql.SQL(", ").join(map(sql.Identifier, cols))
    create: list[Statement] = []
    for t in targets:
        create += t.create
        create.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK {}").format(
            t.name.ident, sql.Identifier(BOUND_CHECK), t.check))
    create.append(sql.SQL("CREATE TABLE {} (LIKE {} " + LIKE + ")").format(
        new_default.ident, parent.ident))
    create.append(_trigger_function(fn, targets, new_default, pk, cols))
    undo: list[Statement] = [
        sql.SQL("DROP TRIGGER IF EXISTS pgcleave_drain ON {}").format(old_default.ident),
        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(fn.ident),
        sql.SQL("DROP TABLE IF EXISTS {}").format(new_default.ident),
        *[sql.SQL("DROP TABLE IF EXISTS {}").format(t.name.ident) for t in targets]]
    made = sql.SQL("SELECT to_regclass({}) IS NOT NULL").format(new_default.literal)
    steps = [Step.sql(
        "drain:prepare", f"create {len(targets)} new partition table(s) with CHECKs of their "
        f"bounds, a new DEFAULT {new_default.name} and the capture function",
        create, guard=made, undo=undo),
        Step.sql(
        "drain:capture", f"capture trigger on {old_default}: every write there is mirrored "
        "into the new tables from now on",
        [sql.SQL("CREATE TRIGGER pgcleave_drain AFTER INSERT OR UPDATE OR DELETE ON {} "
                 "FOR EACH ROW EXECUTE FUNCTION {}()").format(old_default.ident, fn.ident)],
        locks=[LockTaken(Lock.SHARE_ROW_EXCLUSIVE, f"{old_default} (CREATE TRIGGER)")],
        guard=sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'pgcleave_drain' "
                      "AND tgrelid = to_regclass({})) OR to_regclass({}) IS NOT NULL").format(
            old_default.literal, drained.literal),
        undo=[sql.SQL("DROP TRIGGER IF EXISTS pgcleave_drain ON {}").format(old_default.ident)])]

    conds = [t.cond[0] for t in targets]
    batch_params = {
        "old": _qd(old_default), "new_default": _qd(new_default),
        "targets": [{"name": _qd(t.name), "cond": t.cond[0].as_string(None)} for t in targets],
        "cols": cols, "pk": pk, "pk_types": [types[c] for c in pk], "rows": n_rows}
    shown = _copy_sql(old_default, new_default, [(t.name, c) for t, c in
                                                 zip(targets, conds, strict=True)],
                      cols, pk, [types[c] for c in pk], first=False, limit=5000)
    steps.append(Step(
        name="drain:copy", description=f"copy {n_rows} rows from {old_default} in short "
        "batches (each locks only the rows it copies, FOR SHARE)",
        statements=[shown.as_string(None)],
        locks=[LockTaken(Lock.ROW_SHARE, f"{old_default} (rows of one batch)")],
        transactional=False, ddl=False, action="maintain:drain-copy", params=batch_params))

    swap: list[Statement] = [
        sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent.ident, old_default.ident)]
    swap += [sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(
        parent.ident, t.name.ident, t.bound) for t in targets]
    swap += [
        sql.SQL("DROP TRIGGER pgcleave_drain ON {}").format(old_default.ident),
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(old_default.ident,
                                                      sql.Identifier(drained.name)),
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(new_default.ident,
                                                      sql.Identifier(old_default.name)),
        sql.SQL("ALTER TABLE {} ATTACH PARTITION {} DEFAULT").format(parent.ident,
                                                                     old_default.ident)]
    steps.append(Step.sql(
        "drain:swap", f"swap in one short transaction: detach {old_default}, attach the new "
        "partitions (no scan: their CHECKs prove the bounds) and the new DEFAULT (scans only "
        "the rows left in it)", swap,
        locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, str(parent)),
               LockTaken(Lock.ACCESS_EXCLUSIVE, str(old_default))],
        guard=sql.SQL("SELECT to_regclass({}) IS NOT NULL").format(drained.literal)))
    steps.append(Step.sql(
        "drain:cleanup", f"drop the old DEFAULT (now {drained.name}, detached) and the capture "
        "function", [sql.SQL("DROP TABLE IF EXISTS {}").format(drained.ident),
                     sql.SQL("DROP FUNCTION IF EXISTS {}()").format(fn.ident)],
        locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, f"{drained} (detached)")],
        guard=sql.SQL("SELECT to_regclass({}) IS NULL").format(drained.literal)))
    analyze += [t.name for t in targets] + [old_default]
    return steps


def _fresh(name: str, taken: set[str]) -> str:
    out, n = name, 1
    while out in taken:
        out = f"{name[:58]}_{n}"
        n += 1
    taken.add(out)
    return out


def _trigger_function(fn: QualifiedName, targets: list[Target], new_default: QualifiedName,
                      pk: list[str], cols: list[str]) -> sql.Composable:
    """Mirror each write on the old DEFAULT into the table that will hold the row."""
    def chain(prefix: str, make: Any) -> sql.Composable:
        idx = 1 if prefix == "NEW." else 2
        parts: list[Statement] = []
        for i, t in enumerate(targets):
            parts.append(sql.SQL("{} {} THEN {}").format(
                sql.SQL("IF" if i == 0 else "ELSIF"), t.cond[idx], make(t.name)))
        parts.append(sql.SQL("ELSE {} END IF;").format(make(new_default)))
        return sql.SQL(" ").join(parts)

    pk_match = sql.SQL("({}) = ({})").format(
        sql.SQL(", ").join(map(sql.Identifier, pk)),
        sql.SQL(", ").join(sql.SQL("OLD.{}").format(sql.Identifier(c)) for c in pk))
    ins_vals = sql.SQL(", ").join(sql.SQL("NEW.{}").format(sql.Identifier(c)) for c in cols)
    ins_cols = sql.SQL(", ").join(map(sql.Identifier, cols))

    def delete(t: QualifiedName) -> sql.Composable:
        return sql.SQL("DELETE FROM {} WHERE {};").format(t.ident, pk_match)

    def insert(t: QualifiedName) -> sql.Composable:
        return sql.SQL("INSERT INTO {} ({}) VALUES ({});").format(t.ident, ins_cols, ins_vals)

    body = sql.SQL("BEGIN IF TG_OP <> 'INSERT' THEN {} END IF; IF TG_OP <> 'DELETE' THEN {} "
                   "END IF; RETURN NULL; END").format(chain("OLD.", delete),
                                                      chain("NEW.", insert))
    text = body.as_string(None)
    tag = "$pgcleave$"
    while tag in text:
        tag = tag[:-1] + "x$"
    return sql.SQL("CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
        fn.ident, sql.SQL(tag + text + tag))


def _copy_sql(old: QualifiedName, new_default: QualifiedName,
              targets: list[tuple[QualifiedName, sql.Composable]], cols: list[str],
              pk: list[str], pk_types: list[str], *, first: bool, limit: int) -> sql.Composed:
    ic = sql.SQL(", ").join(map(sql.Identifier, cols))
    pkc = sql.SQL(", ").join(map(sql.Identifier, pk))
    where = sql.SQL("") if first else sql.SQL(" WHERE ({}) > ({})").format(
        pkc, sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(t)) for t in pk_types))
    ctes: list[Statement] = [sql.SQL(
        "src AS (SELECT {ic} FROM ONLY {old}{where} ORDER BY {pk} LIMIT {n} FOR SHARE)").format(
        ic=ic, old=old.ident, where=where, pk=pkc, n=sql.Literal(limit))]
    for i, (t, cond) in enumerate(targets):
        ctes.append(sql.SQL("t{} AS (INSERT INTO {} ({}) SELECT {} FROM src WHERE {} "
                            "ON CONFLICT DO NOTHING)").format(sql.SQL(str(i)), t.ident, ic, ic,
                                                              cond))
    rest = sql.SQL(" OR ").join(c for _, c in targets)
    ctes.append(sql.SQL("d AS (INSERT INTO {} ({}) SELECT {} FROM src WHERE NOT coalesce({}, "
                        "false) ON CONFLICT DO NOTHING)").format(new_default.ident, ic, ic, rest))
    last = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in pk)
    return sql.SQL("WITH {} SELECT count(*) OVER (), {} FROM src ORDER BY {} LIMIT 1").format(
        sql.SQL(", ").join(ctes), last,
        sql.SQL(", ").join(sql.SQL("{} DESC").format(sql.Identifier(c)) for c in pk))


@action("maintain:drain-copy")
def _drain_copy(ctx: ActionContext) -> None:
    """Batched copy; each batch is one transaction sized to take about 50 ms, and saves the
    last key copied so a resumed job continues after it."""
    p = ctx.params
    old, nd = _qn(p["old"]), _qn(p["new_default"])
    targets: list[tuple[QualifiedName, sql.Composable]] = [
        (_qn(t["name"]), sql.SQL(t["cond"])) for t in p["targets"]]
    state = ctx.load()
    last: list[str] | None = state.get("last")
    copied = int(state.get("copied", 0))
    limit = int(state.get("batch", 2000))
    conn = ctx.conn
    total = int(p.get("rows", 0))
    while True:
        q = _copy_sql(old, nd, targets, p["cols"], p["pk"], p["pk_types"],
                      first=last is None, limit=limit)
        t0 = time.monotonic()
        try:
            with conn.transaction():
                row = conn.execute(q, last or None).fetchone()
                if row is not None:
                    copied += int(row[0])
                    last = [str(v) for v in row[1:]]
                ctx.save({"last": last, "copied": copied, "batch": limit})
        except psycopg.errors.DeadlockDetected:
            limit = max(100, limit // 2)
            continue
        ms = (time.monotonic() - t0) * 1000
        if row is None or int(row[0]) < limit:
            break
        # aim at ~50 ms per batch: the rows it locks FOR SHARE make their updaters wait
        limit = int(min(50000, max(200, limit * (50.0 / max(ms, 1.0)) ** 0.5)))
        ctx.progress(f"drained {copied:,} of ~{total:,} rows", copied=copied)
    ctx.progress(f"drained {copied:,} rows", copied=copied, final=True)


# -- two levels: new list values get their branch ----------------------------------------------
def _slug(value: Any) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", str(value).lower()).strip("_")
    return s or "v"


def _new_branches(conn: Connection, policy: pol.Policy, info: TableInfo, now: datetime | None,
                  summary: Summary, notes: list[str], taken: set[str],
                  analyze: list[QualifiedName]) -> list[Step]:
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
    key_type = info.column(key).type
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
        lit = sql.Literal(value)
        vcond: list[sql.Composable] = [sql.SQL("({} = {})").format(pol._col(pre, key), lit)
                 for pre in ("", "NEW.", "OLD.")]
        if not mirror_default:
            vcond = [sql.SQL("({} AND ({}))").format(
                c, sql.SQL(" OR ").join(dummy.range_cond(lo, schemes.add(lo, iv), pre)
                                        for lo in ranges) if ranges else sql.SQL("false"))
                for c, pre in zip(vcond, ("", "NEW.", "OLD."), strict=True)]
        create: list[Statement] = [sql.SQL(
            "CREATE TABLE {} (LIKE {} " + LIKE + ") PARTITION BY RANGE ({})").format(
            bname.ident, info.name.ident, sql.Identifier(sub))]
        for lo in ranges:
            leaf = bname.sibling(dummy.name_for(lo, taken))
            create.append(sql.SQL("CREATE TABLE {} PARTITION OF {} {}").format(
                leaf.ident, bname.ident, dummy.bound_sql(lo, schemes.add(lo, iv))))
            summary.created.append(leaf.quoted)
        if mirror_default:
            bdef = bname.sibling(_fresh(child_name(bname.name, "default"), taken))
            create.append(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(
                bdef.ident, bname.ident))
            summary.created.append(bdef.quoted)
        n_rows = sum(n for lo, n in periods.items() if lo in ranges or mirror_default)
        targets.append(Target(
            name=bname, bound=sql.SQL("FOR VALUES IN ({})").format(
                sql.SQL("{}::{}").format(lit, sql.SQL(key_type))),
            check=sql.SQL("({} IS NOT NULL AND {} = {})").format(
                sql.Identifier(key), sql.Identifier(key), lit),
            cond=vcond, create=create, rows=n_rows, label=f"{bname} (new {key} {value!r})"))
        notes.append(f"new {key} value {value!r}: branch {bname} with {len(ranges)} "
                     f"{iv} partition(s)")
    return drain_steps(conn, info, info.name, top_default.name, targets, taken, summary,
                       notes, analyze)
