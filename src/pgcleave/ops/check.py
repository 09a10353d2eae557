"""``check``: is maintenance keeping up? For monitoring (Nagios-style exit status, or
Prometheus text exposition).

Problems, one line each: premake horizon shorter than the policy asks, rows in a DEFAULT
partition (with late rows for retired ranges told apart), a detach left pending, more leaf
partitions than the planner handles well, retention overdue, a failed maintenance job, what
an unfinished job left (a CHECK refusing rows, rows hidden, a split's or merge's CHECK on a
DEFAULT), a table with no policy. Read-only: it takes no lock stronger than ACCESS SHARE. It
reads the table through the same policy view as ``maintain`` so they always agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from .. import journal, schemes, servers, span_checks
from .. import levels as lv
from .. import policy as pol
from ..catalog import Partition, TableInfo, snapshot
from ..catalog.table import foreign_target
from ..connection import Connection
from ..ddl import inbound_fks as ifk
from ..journal import schema_exists

MAX_PARTITIONS = 1000


@dataclass
class Problem:
    kind: str  # premake, default-rows, late-rows, detach-pending, too-many, overdue, job, policy,
    # drift (a shard's table no longer matches its foreign partition), shard-away,
    # residue (an unfinished job left a CHECK that refuses rows, or rows hidden, or a split's
    # or merge's CHECK on a DEFAULT), foreign-key
    # (an emulated foreign key with a trigger missing or disabled, or orphan rows)
    message: str


@dataclass
class Horizon:
    """What check read of one range level, for reports: the period "now" falls in, how far
    ahead partitions are ready (premake) and where retention cuts, in the key's own values."""

    parent: str
    now: Any  # None: an integer key with no row yet
    premake_horizon: Any  # rows up to here have a partition waiting (None: unbounded/unknown)
    retention_cutoff: Any  # partitions ending at or before it are past retention (None: keep)
    past_retention: list[str] = field(default_factory=list)  # partition names, by bounds
    ahead: list[str] = field(default_factory=list)  # partitions of periods after now's
    bounds: dict[str, list[Any]] = field(default_factory=dict)  # name: [lo, hi] (None: MIN/MAX)


@dataclass
class Health:
    table: str
    partitions: int = 0
    default_rows: int = 0
    late_rows: int = 0
    null_key_rows: int = 0
    detach_pending: int = 0
    periods_ahead: int | None = None
    periods_wanted: int | None = None
    overdue: int = 0
    drift: int = 0
    problems: list[Problem] = field(default_factory=list)
    horizons: list[Horizon] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def add(self, kind: str, message: str) -> None:
        self.problems.append(Problem(kind, message))


def _unfinished_jobs(conn: Connection, info: TableInfo, h: Health) -> None:
    """What unfinished jobs left that refuses statements or hides rows, and failed jobs."""
    for r in journal.residue(conn, info.name.quoted):
        if not r.alive:
            h.add("residue", r.message())
    if schema_exists(conn):
        for jid, op, _state in conn.execute(
                "SELECT id, operation, state FROM pgcleave.jobs WHERE target = %s"
                " AND state = 'failed' ORDER BY id", [info.name.quoted]):
            h.add("job", f"job {jid} ({op}) failed; `pgcleave resume {jid}` (maintain resumes "
                         "its own jobs)")


def _span_checks(conn: Connection, info: TableInfo, h: Health) -> None:
    """A split's or merge's CHECK left on a DEFAULT (``span_checks``): it refuses nothing
    while the partitions of its span are attached, but the rows of one of them once it is
    detached (retention), and its job, left unfinished by a kill, blocks every other job on
    the table. Found in the catalog, then its job in the journal (the unfinished one whose
    statements name it), so that one no job owns any more is found too. A live job's is no
    finding: it drops it after its swap."""
    assert info.partitioning is not None
    defaults = {p.oid: p.name for p in _all_partitions(info.partitioning) if p.is_default}
    for sc in span_checks.find(conn, defaults):
        if not sc.alive:
            h.add("residue", sc.message())


def _emulated_keys(conn: Connection, info: TableInfo, h: Health) -> None:
    """Each foreign key emulated by triggers: its triggers there and enabled, no orphan row
    (an anti-join of the child against the table)."""
    for r in ifk.emulated(conn, info.name):
        row = conn.execute(ifk.triggers_ok_sql(r)).fetchone()
        if not (row and row[0]):
            h.add("foreign-key", f"emulated foreign key {r.name} ({r.describe()}): a trigger is "
                                 "missing or disabled, so the key is not enforced")
        row = conn.execute(ifk.orphans_sql(r)).fetchone()
        if row and row[0]:
            h.add("foreign-key", f"emulated foreign key {r.name} ({r.describe()}): {row[0]} "
                                 f"row(s) of {r.child} reference no row of {r.parent}")


def check_table(conn: Connection, table: str, *, now: datetime | None = None,
                max_partitions: int = MAX_PARTITIONS) -> Health:
    info = snapshot(conn, table)
    h = Health(info.name.quoted)
    policy = pol.load(conn, info.name)
    _unfinished_jobs(conn, info, h)  # a plain table too: a conversion killed half-way
    _emulated_keys(conn, info, h)
    if info.partitioning is None:
        h.add("policy", f"{info.name} is not partitioned")
        return h
    _span_checks(conn, info, h)
    leaves = info.partitioning.leaves()
    h.partitions = len(leaves)
    if h.partitions > max_partitions:
        h.add("too-many", f"{h.partitions} partitions (more than {max_partitions}): planning "
                          "and locking slow down; lengthen the interval or shorten retention")
    for part in _all_partitions(info.partitioning):
        if part.detach_pending:
            h.detach_pending += 1
            h.add("detach-pending", f"partition {part.name} is detach pending (an interrupted "
                                    "DETACH CONCURRENTLY); `pgcleave maintain` finalizes it")
    for leaf in leaves:
        if leaf.kind == "f":
            _check_shard(conn, leaf, h)
    if policy is None:
        h.add("policy", f"{info.name} has no pgcleave policy: nothing maintains it "
                        f"(`pgcleave config {info.name} ...`)")
        return h
    try:
        pol.validate(policy, info)
    except Exception as exc:
        h.add("policy", f"policy does not fit the table: {exc}")
        return h

    if policy.strategy == "list" and info.partitioning.default is not None \
            and policy.sub_strategy == "range":
        d = info.partitioning.default
        n = _count(conn, d.name)
        if n:
            h.default_rows += n
            h.add("default-rows", f"{n} rows in DEFAULT partition {d.name} (values with no "
                                  "branch yet; `maintain` gives them one)")

    for level in lv.levels(conn, policy, info):
        mk = (lv.max_key(conn, level.parent, level.key)
              if level.kind in ("integer", "numeric") else None)
        now_v = lv.now_value(conn, level.kind, policy.time_zone, now, mk)
        cut = lv.cutoff(level, now_v, policy.retention)
        live = [rp for rp in level.parts if not rp.part.detach_pending]
        view = lv.Level(**{**level.__dict__, "parts": live})
        overdue = lv.retired(view, cut)
        nxt = None if now_v is None else schemes.add(view.period(now_v), view.interval)
        h.horizons.append(Horizon(
            level.parent.quoted, now_v, None if now_v is None else view.horizon(now_v), cut,
            [rp.part.name.quoted for rp in overdue],
            [rp.part.name.quoted for rp in view.parts
             if nxt is not None and rp.lo is not None and rp.lo >= nxt],
            {rp.part.name.quoted: [rp.lo, rp.hi] for rp in view.parts}))
        if now_v is not None:
            horizon = view.horizon(now_v)
            cur = view.period(now_v)
            if horizon is None:
                ahead = policy.premake
            elif horizon <= cur:
                ahead = -1
            else:
                ahead = len(view.periods(cur, horizon)) - 1
            h.periods_ahead = ahead if h.periods_ahead is None else min(h.periods_ahead, ahead)
            h.periods_wanted = policy.premake
            if ahead < policy.premake:
                have = ("no partition for the current period" if ahead < 0 else
                        f"partitions up to {_fmt(horizon)} ({ahead} period(s) ahead)")
                h.add("premake", f"{level.parent}: {have}; the policy asks for "
                                 f"{policy.premake} ahead")
        if view.default is not None:
            periods = lv.default_periods(conn, view)
            late = sum(n for k, n in periods.items() if k is not None and cut is not None
                       and schemes.add(k, view.interval) <= cut)
            nulls = periods.get(None, 0)
            rest = sum(periods.values()) - late - nulls
            h.default_rows += rest + late + nulls
            h.late_rows += late
            h.null_key_rows += nulls
            if rest:
                h.add("default-rows", f"{rest} rows in DEFAULT partition {view.default.name} "
                                      "(`maintain` moves them into their partitions)")
            if late:
                h.add("late-rows", f"{late} late rows in DEFAULT partition {view.default.name}"
                                   f" for ranges before {_fmt(cut)}, past retention: they stay "
                                   "there (visible); delete or archive them by hand")
            if nulls:
                h.add("default-rows", f"{nulls} rows with NULL {view.key} in DEFAULT partition "
                                      f"{view.default.name}: no partition can hold them")
        if overdue:
            h.overdue += len(overdue)
            h.add("overdue", f"retention overdue: {len(overdue)} partition(s) of {level.parent} "
                             f"entirely before {_fmt(cut)} still attached (oldest "
                             f"{overdue[0].part.name})")
    return h


_SIGNATURE = ("SELECT string_agg(quote_ident(attname) || ' ' || format_type(atttypid, atttypmod),"
              " ', ' ORDER BY attnum) FROM pg_attribute WHERE attrelid = {} AND attnum > 0"
              " AND NOT attisdropped")


def _check_shard(conn: Connection, leaf: Partition, h: Health) -> None:
    """The DDL guard where event triggers are not allowed: the columns and types of a foreign
    partition must be those of its shard's table, or every INSERT and ``SELECT *`` through it
    fails. Asked of the shard through dblink and the user mapping."""
    remote = foreign_target(conn, leaf.oid)
    here = conn.execute(sql.SQL(_SIGNATURE).format(sql.Literal(leaf.oid))).fetchone()
    query = sql.SQL(_SIGNATURE).format(sql.SQL("to_regclass({})").format(remote.literal))
    try:
        with conn.transaction():
            there = conn.execute(sql.SQL(
                "SELECT s FROM {}.dblink({}, {}) AS t(s text)").format(
                sql.Identifier(servers.dblink_schema(conn)), sql.Literal(leaf.server),
                sql.Literal(query.as_string(None)))).fetchone()
    except psycopg.Error as exc:
        h.add("shard-away", f"cannot compare {leaf.name} with {remote} on {leaf.server}: "
                            f"{str(exc).strip().splitlines()[0]}")
        return
    mine, theirs = (here[0] if here else None), (there[0] if there else None)
    if mine != theirs:
        h.drift += 1
        h.add("drift", f"{leaf.name} has columns ({mine}) but {remote} on {leaf.server} has "
                       f"({theirs}): queries through it fail; apply the change on every server "
                       f"with `pgcleave alter`")


def _all_partitions(p: Any) -> list[Any]:
    out = []
    for x in p.partitions:
        out.append(x)
        if x.partitioning is not None:
            out += _all_partitions(x.partitioning)
    return out


def _count(conn: Connection, table: Any) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(table.ident)).fetchone()
    return int(row[0]) if row else 0


def _fmt(v: Any) -> str:
    if isinstance(v, datetime):
        return v.isoformat(sep=" ")
    return str(v)


def check_tables(conn: Connection, tables: list[str], *, now: datetime | None = None,
                 max_partitions: int = MAX_PARTITIONS) -> list[Health]:
    if not tables:
        tables = [p.table.quoted for p in pol.load_all(conn)]
    return [check_table(conn, t, now=now, max_partitions=max_partitions) for t in tables]


def prometheus(results: list[Health]) -> str:
    """Text exposition format (one gauge family per measure, labelled by table)."""
    fams: list[tuple[str, str, Callable[[Health], int | None]]] = [
        ("pgcleave_check_problems", "Problems found by pgcleave check.",
         lambda h: len(h.problems)),
        ("pgcleave_partitions", "Leaf partitions.", lambda h: h.partitions),
        ("pgcleave_default_rows", "Rows in DEFAULT partitions.", lambda h: h.default_rows),
        ("pgcleave_default_late_rows", "Rows in DEFAULT partitions for ranges past retention.",
         lambda h: h.late_rows),
        ("pgcleave_detach_pending", "Partitions left detach pending.",
         lambda h: h.detach_pending),
        ("pgcleave_premake_periods_ahead", "Future periods with a partition ready (-1: none "
         "for the current period).", lambda h: h.periods_ahead),
        ("pgcleave_premake_periods_wanted", "Future periods the policy asks for.",
         lambda h: h.periods_wanted),
        ("pgcleave_retention_overdue_partitions", "Partitions past retention still attached.",
         lambda h: h.overdue),
        ("pgcleave_shard_drift", "Foreign partitions whose shard table has other columns.",
         lambda h: h.drift),
    ]
    out: list[str] = []
    for name, help_, fn in fams:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} gauge")
        for h in results:
            v = fn(h)
            if v is None:
                continue
            out.append(f'{name}{{table="{_esc(h.table)}"}} {v}')
    out.append("# HELP pgcleave_check_ok 1 when no table has a problem.")
    out.append("# TYPE pgcleave_check_ok gauge")
    out.append(f"pgcleave_check_ok {0 if any(h.problems for h in results) else 1}")
    return "\n".join(out) + "\n"


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
