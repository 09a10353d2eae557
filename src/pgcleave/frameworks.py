"""What the migration-framework integrations (``pgcleave.alembic``, ``pgcleave.django``) and the
CI helpers share: an online operation as inert data, its plan, its reverse, its exact command
line, and its run through the executor.

Nothing here imports Alembic or Django: both adapters translate their framework's operation and
connection into an ``OnlineOperation`` and a libpq DSN, and call ``run`` or ``dry_run_sql``.

A migration re-run after a crash (``kill -9`` in the middle of a conversion) resumes the job the
crash left unfinished instead of refusing: the migration is the user's retry button.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import conninfo

from .catalog import resolve, snapshot
from .connection import Connection, Settings, connect, redact
from .ddl.bounds import parse_by
from .errors import ConfirmationRequired, PgcleaveError, UsageError
from .execute import Event, Executor
from .journal import unfinished_jobs
from .names import quote_ident
from .ops import copy as copy_ops
from .ops import keys, partition
from .ops.copy_state import load_state
from .ops.drop_partition import plan_drop_partition
from .plan import Plan
from .policy import load as load_policy
from .schemes import Interval, add, floor, key_kind, parse_value

#: Operation kinds, named as the CLI commands that run them.
KINDS = ("partition", "add-partition", "create-index", "set-primary-key", "unpartition",
         "drop-index", "drop-partition")


@dataclass(frozen=True)
class OnlineOperation:
    """One pgcleave operation a migration runs: ``kind`` is the CLI command, ``options`` its
    arguments by their library names (``by``, ``interval``, ``strategy``, ``lower``, ``upper``,
    ``values``, ``columns``, ``unique``, ``name``, ``where``, ``method``, ``keep_old_key``).
    ``confirm`` accepts the plan's warnings (what ``--yes`` does on the command line);
    ``reverse_options`` are the options of the reverse operation where it needs more than this
    one knows (the old key's columns, the partitioning to restore)."""

    kind: str
    table: str
    options: Mapping[str, Any] = field(default_factory=dict)
    confirm: bool = False
    reverse_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"unknown pgcleave operation {self.kind!r}",
                             hint=f"one of {', '.join(KINDS)}")

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items() if v is not None)
        return f"pgcleave {self.kind} {self.table}" + (f" ({opts})" if opts else "")

    def reverse(self) -> OnlineOperation:
        """The operation a downgrade runs. Refused (``UsageError``) where the reverse needs
        facts this operation does not carry; the message names the option that supplies them."""
        o, r = dict(self.options), dict(self.reverse_options)
        if self.kind == "partition":
            return OnlineOperation("unpartition", self.table, {}, self.confirm,
                                   reverse_options=o)
        if self.kind == "unpartition":
            if not r.get("by"):
                raise UsageError(f"the reverse of unpartitioning {self.table} needs the "
                                 "partitioning to restore",
                                 hint="give by=... (and interval=...) as the reverse options")
            return OnlineOperation("partition", self.table, r, self.confirm)
        if self.kind == "create-index":
            if not o.get("name"):
                raise UsageError(f"the reverse of an index on {self.table} needs its name",
                                 hint="give name=... so the downgrade can drop it")
            return OnlineOperation("drop-index", self.table, {"name": o["name"]}, self.confirm)
        if self.kind == "set-primary-key":
            if not r.get("columns"):
                raise UsageError(f"the reverse of a primary key change on {self.table} needs "
                                 "the old key's columns", hint="give old_columns=[...]")
            return OnlineOperation("set-primary-key", self.table, r, self.confirm,
                                   reverse_options={"columns": o["columns"]})
        if self.kind == "add-partition":
            if not o.get("name"):
                raise UsageError(f"the reverse of a partition added to {self.table} needs its "
                                 "name", hint="give name=... so the downgrade can drop it")
            return OnlineOperation("drop-partition", self.table, {"name": o["name"]},
                                   self.confirm)
        raise UsageError(f"pgcleave {self.kind} has no reverse here",
                         hint="write the downgrade as an explicit operation")


def dsn_from_params(params: Mapping[str, Any]) -> str:
    """A libpq DSN from connection keywords (``host``, ``port``, ``dbname``, ``user``,
    ``password``, ``sslmode``, ...); empty and None values are left out."""
    return conninfo.make_conninfo(**{k: str(v) for k, v in params.items()
                                     if v is not None and v != ""})


#: What a framework's configuration may set of pgcleave's connection settings.
TUNABLES = {"lock_timeout_ms": int, "lock_retry_limit_s": float, "statement_timeout_ms": int}


def settings_for(dsn: str, overrides: Mapping[str, Any] | None = None) -> Settings:
    """``Settings`` for ``dsn`` with the framework configuration's ``lock_timeout_ms``,
    ``lock_retry_limit_s``, ``statement_timeout_ms`` (what ``--lock-timeout`` etc. set)."""
    given = dict(overrides or {})
    unknown = set(given) - set(TUNABLES)
    if unknown:
        raise UsageError(f"unknown pgcleave settings {sorted(unknown)}",
                         hint=f"allowed: {', '.join(TUNABLES)}")
    return Settings(dsn=dsn, **{k: TUNABLES[k](v) for k, v in given.items()})


def command_line(op: OnlineOperation, *, dsn: str | None = None) -> str:
    """The exact ``pgcleave`` command that runs ``op`` (passwords redacted from ``dsn``)."""
    o = op.options
    args: list[str] = ["pgcleave"]
    if dsn:
        args += ["--dsn", redact(dsn)]
    if op.kind == "drop-index":
        return shlex.join([*args, "drop-index", str(o["name"])])
    if op.kind == "drop-partition":
        return shlex.join([*args, "drop-partition", op.table, str(o["name"])])
    args += [op.kind, op.table]
    if op.kind == "create-index":
        args.append(",".join(o["columns"]))
    if op.kind == "set-primary-key":
        args += ["--columns", ",".join(o["columns"])]
    flags = {"by": "--by", "interval": "--interval", "premake": "--premake",
             "lower": "--from", "upper": "--to", "name": "--name", "where": "--where",
             "method": "--using"}
    if op.kind == "add-partition" and o.get("name") is None:
        flags.pop("name")
    for key, flag in flags.items():
        if o.get(key) is not None:
            args += [flag, str(o[key])]
    if o.get("strategy") not in (None, "auto"):
        args += ["--strategy", str(o["strategy"])]
    if o.get("values"):
        args += ["--values", ",".join(str(v) for v in o["values"])]
    for key in ("unique", "keep_old_key"):
        if o.get(key):
            args.append("--" + key.replace("_", "-"))
    if op.confirm and op.kind != "drop-index":
        args.append("--yes")
    return shlex.join(args)


def _copy_state(conn: Connection, table: str) -> str | None:
    """The state of ``table``'s copy conversion ('swapped': it can swap back; 'prepped': a
    partitioned copy is kept in sync, e.g. after an unswap), or None."""
    st = load_state(conn, resolve(conn, table)[1])
    return st.state if st is not None else None


def _copied(conn: Connection, table: str) -> bool:
    return _copy_state(conn, table) == "swapped"


def plans(conn: Connection, op: OnlineOperation) -> list[Plan]:
    """The plans ``op`` runs, in order (one, except unpartitioning a copy conversion: unswap,
    then stop the capture and drop the partitioned copy)."""
    o = dict(op.options)
    if op.kind == "partition":
        strategy = o.get("strategy")
        return [partition.plan_partition(
            conn, op.table, by=str(o["by"]), interval=o.get("interval"),
            premake=int(o.get("premake", 3)),
            strategy=None if strategy in (None, "auto") else str(strategy))]
    if op.kind == "add-partition":
        return [partition.plan_add_partition(
            conn, op.table, lower=o.get("lower"), upper=o.get("upper"),
            values=o.get("values"), name=o.get("name"))]
    if op.kind == "create-index":
        return [keys.plan_create_index(conn, op.table, list(o["columns"]),
                                       unique=bool(o.get("unique")), name=o.get("name"),
                                       where=o.get("where"), method=o.get("method"))]
    if op.kind == "set-primary-key":
        return [keys.plan_set_primary_key(conn, op.table, list(o["columns"]),
                                          keep_old_key=bool(o.get("keep_old_key")))]
    if op.kind == "drop-index":
        return [keys.plan_drop_index(conn, str(o["name"]))]
    if op.kind == "drop-partition":
        return [plan_drop_partition(conn, op.table, str(o["name"]))]
    # unpartition
    state = _copy_state(conn, op.table)
    if state == "swapped":
        return [copy_ops.plan_unswap(conn, op.table)]  # then unprep, once swapped back
    if state is not None:
        return [copy_ops.plan_unprep(conn, op.table)]  # swapped back already (or never swapped)
    return [partition.plan_unpartition(conn, op.table)]


def dry_run_sql(settings: Settings | str, op: OnlineOperation) -> str:
    """What ``pgcleave ... --dry-run`` prints for ``op``, planned against the server now."""
    with connect(settings, purpose="plan") as conn:
        out = [p.render_sql() for p in plans(conn, op)]
        if op.kind == "unpartition" and _copied(conn, op.table):
            out.append(f"-- then: pgcleave unprep {op.table} (stop the capture into the "
                       "partitioned copy; it is kept, stale, until dropped)\n")
    return "".join(out)


def review_sql(settings: Settings | str, op: OnlineOperation) -> str:
    """``dry_run_sql``, or, when the database as it is now cannot be planned against (the
    migrations before this one have not run there: ``sqlmigrate --backwards``, a planning
    database behind the target), the command and the reason, as SQL comments."""
    try:
        return dry_run_sql(settings, op)
    except PgcleaveError as exc:
        return (f"-- {command_line(op)}\n-- cannot be planned against the database as it is "
                f"now: {exc}\n-- (the plan is made from the catalog when the migration runs)\n")


def offline_sql(op: OnlineOperation, plan_dsn: str | None) -> str:
    """The text offline migration output (``alembic upgrade --sql``) shows for ``op``: with a
    planning database, pgcleave's dry run planned against it now; without one, the exact
    command to run and the reason no SQL is shown (pgcleave decides its statements from the
    catalog and rows at run time: bounds, cutoffs, indexes, keys)."""
    head = [f"-- {op.describe()}: runs outside the migration's transaction, as the job of",
            f"--   {command_line(op)}"]
    if not plan_dsn:
        head += ["-- pgcleave plans from the live catalog (bounds, cutoff, indexes, keys), so",
                 "-- no SQL is shown without a planning database: set PGCLEAVE_PLAN_DSN (or",
                 "-- pgcleave_plan_dsn) to a copy of the target schema, or run the command",
                 "-- above with --dry-run against the target."]
        return "\n".join(head) + "\n"
    head.append(f"-- dry run planned against {redact(plan_dsn)}; the plan at run time is "
                "made again from the target's catalog")
    return "\n".join(head) + "\n" + review_sql(plan_dsn, op)


def _already_done(conn: Connection, op: OnlineOperation) -> bool:
    """A migration re-run after a crash runs every operation of its migration again: the
    conversions that are already in place are skipped (the planners would refuse them)."""
    if op.kind not in ("partition", "unpartition"):
        return False
    info = snapshot(conn, op.table)
    if op.kind == "unpartition":
        return info.kind == "r" and info.parent is None and _copy_state(conn, op.table) is None
    if info.kind != "p" or info.partitioning is None:
        return False
    return info.partitioning.key_columns == [parse_by(str(op.options["by"]))[1]]


def run(settings: Settings | str, op: OnlineOperation, *,
        progress: Callable[[Event], None] | None = None) -> list[int]:
    """Run ``op`` through the executor (journal, lock_timeout with retry, advisory lock) and
    return the ids of the jobs it ran (none when there was nothing to do, e.g. a second run).

    A job a crash left unfinished on the table is resumed first (a re-run migration continues
    where it stopped); a conversion already in place is not planned again. Plan warnings (a key
    change, partitions dropped) refuse with ``ConfirmationRequired`` unless ``op.confirm``:
    nothing has changed then.
    """
    if isinstance(settings, str):
        settings = Settings(dsn=settings)
    ex = Executor(settings, progress)
    jobs: list[int] = []
    with connect(settings, purpose="plan") as conn:
        if op.kind != "drop-index":
            for job_id, _operation in unfinished_jobs(conn, resolve(conn, op.table)[1].quoted):
                ex.resume(job_id)
                jobs.append(job_id)
        if _already_done(conn, op):
            return jobs
        todo = plans(conn, op)
        copied = op.kind == "unpartition" and _copied(conn, op.table)
    if copied and not op.confirm:
        raise ConfirmationRequired(
            f"{op.describe()} needs confirmation: after swapping back, the partitioned copy "
            "stops receiving changes and is dropped with its rows (`pgcleave unprep`)",
            hint="pass confirm=True to the operation to accept (what --yes does)")
    for plan in todo:
        if plan.warnings and not op.confirm:
            raise ConfirmationRequired(
                f"{op.describe()} needs confirmation: " + "; ".join(plan.warnings),
                hint="pass confirm=True to the operation to accept (what --yes does)")
        if plan.steps:
            jobs.append(ex.run(plan))
    if copied:
        with connect(settings, purpose="plan") as conn:
            unprep = copy_ops.plan_unprep(conn, op.table)
        jobs.append(ex.run(unprep))
    return jobs


# -- a row for which no partition exists -----------------------------------------------------------
_NO_PARTITION = re.compile(r'no partition of relation "([^"]+)" found for row')
_KEY_DETAIL = re.compile(r"Partition key of the failing row contains \((.+?)\) = \((.*)\)\.?$")


def missing_partition_message(conn: Connection | None, message: str, detail: str | None,
                              *, interval: str | None = None) -> str | None:
    """For PostgreSQL's "no partition of relation ... found for row", a message that names the
    missing partition's bounds and the fix; None for any other error. ``interval`` is the
    table's range width (else read from its stored policy through ``conn``)."""
    m = _NO_PARTITION.search(message)
    if not m:
        return None
    table = quote_ident(m.group(1))  # PostgreSQL names the relation unqualified, unquoted
    km = _KEY_DETAIL.search(detail or "")
    key_text = f" ({km.group(1)} = {km.group(2)})" if km else ""
    fix = (f"add a partition: `pgcleave add-partition {table} --from LOWER --to UPPER` (or "
           "AddPartition / op.add_partition in a migration), or a DEFAULT partition")
    if km and "," not in km.group(1):
        bounds = _bounds(conn, table, km.group(1), km.group(2), interval)
        if bounds is not None:
            lo, hi = bounds
            fix = (f"add a partition: `pgcleave add-partition {table} --from '{lo}' --to "
                   f"'{hi}'` (or AddPartition / op.add_partition in a migration), or a DEFAULT "
                   "partition; in production the same row fails unless maintain's premake or a "
                   "DEFAULT covers it")
    return f"no partition of {table} holds the row{key_text}: {fix}"


def _bounds(conn: Connection | None, table: str, column: str, value: str,
            interval: str | None) -> tuple[str, str] | None:
    try:
        typ, tz = "text", "UTC"
        if conn is not None:
            row = conn.execute(
                "SELECT format_type(a.atttypid, a.atttypmod), current_setting('TimeZone') "
                "FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) AND a.attname = %s",
                [table, column.strip('"')]).fetchone()
            if row:
                typ, tz = str(row[0]), str(row[1])
            if interval is None:
                pol = load_policy(conn, resolve(conn, table)[1])
                interval = pol.interval if pol is not None else None
        if interval is None:
            return None
        iv, kind = Interval.parse(interval), key_kind(typ)
        lower = floor(parse_value(value.replace(" ", "T", 1) if kind != "integer" else value,
                                  kind, tz), iv, tz)
        return str(lower), str(add(lower, iv))
    except (PgcleaveError, psycopg.Error, ValueError, TypeError, LookupError):
        return None  # the bounds are a courtesy: the message without them still names the fix


__all__ = ["KINDS", "TUNABLES", "OnlineOperation", "command_line", "dry_run_sql",
           "dsn_from_params", "missing_partition_message", "offline_sql", "plans", "review_sql",
           "run", "settings_for"]
