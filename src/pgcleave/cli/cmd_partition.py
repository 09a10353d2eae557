"""``pgcleave partition``, ``add-partition``, ``carve``, ``unpartition``: partition a live table in
place, add partitions without scanning a DEFAULT under an exclusive lock, move rows out of the
DEFAULT (or the legacy partition) into new partitions, and the way back."""

from __future__ import annotations

import click

from ..ops.carve import DIRECT_MAX_LOCK_MS, plan_carve
from ..ops.partition import plan_add_partition, plan_partition, plan_unpartition
from . import common
from .app import app
from .common import dry_run_option, jobs_option, json_option, max_rate_option, yes_option


@app.command()
@click.argument("table")
@click.option("--by", "by", required=True, metavar="'range(COL)'|'list(COL)'|'hash(COL)'",
              help="Partitioning method and key column.")
@click.option("--interval", default=None, metavar="INTERVAL",
              help="Range width: '1 day', '1 week', '1 month', '3 months', '1 year', or a "
                   "number for integer keys.")
@click.option("--premake", default=3, show_default=True, type=click.IntRange(min=0),
              help="Future partitions created at once (legacy strategy).")
@click.option("--modulus", default=None, type=int,
              help="Hash partitioning: the number of partitions (TABLE_p0 .. TABLE_p{N-1}); "
                   "copied, as a hash-partitioned table has no DEFAULT.")
@click.option("--values", "values", multiple=True, metavar="V1,V2",
              help="List partitioning by copy: the values of one partition (repeat for each "
                   "partition); values not listed go to a DEFAULT partition. Without it, one "
                   "partition per distinct value in the table.")
@click.option("--batch-size", default=10000, show_default=True, type=click.IntRange(min=1),
              help="Rows per fill batch (copy strategy).")
@click.option("--strategy", type=click.Choice(["legacy", "default", "copy"]), default=None,
              help="legacy: the old table becomes [MINVALUE, cutoff); default: it becomes the "
                   "DEFAULT partition; copy: rows are copied into a new table. Chosen "
                   "automatically when omitted (the reason is printed).")
@click.option("--then", "then", default=None, metavar="'range(COL)'",
              help="Second level under a list: with --interval, by copy with the history "
                   "split into it; with --then-interval, in place (old table as DEFAULT) and "
                   "stored in the policy for maintain.")
@click.option("--then-interval", default=None, metavar="INTERVAL",
              help="Interval of the second level.")
@click.option("--cutoff", default=None, metavar="VALUE",
              help="Legacy strategy: first key value not kept in the old table (aligned to "
                   "the interval). Default: the interval after now / the largest key.")
@click.option("--old-name", default=None, metavar="NAME",
              help="New name of the old table (default TABLE_legacy or TABLE_old).")
@click.option("--inbound-fks", "inbound_fks", type=click.Choice(["refuse", "drop", "emulate"]),
              default=None,
              help="Foreign keys referencing TABLE by columns without the partition key "
                   "(those with it are re-pointed): refuse (default), drop them in the "
                   "cut-over, or emulate them with constraint triggers.")
@click.option("--drop-inbound-fks", is_flag=True, help="Same as --inbound-fks drop.")
@click.option("--require-parent-key", is_flag=True,
              help="Refuse when the primary key cannot live on the partitioned table.")
@jobs_option
@dry_run_option
@yes_option
@json_option
def partition(table: str, by: str, interval: str | None, premake: int, modulus: int | None,
              values: tuple[str, ...], batch_size: int, strategy: str | None, then: str | None,
              then_interval: str | None, cutoff: str | None, old_name: str | None,
              inbound_fks: str | None, drop_inbound_fks: bool, require_parent_key: bool,
              jobs: str, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Turn the plain TABLE into a partitioned table under the same name, online.

    \b
    pgcleave partition orders --by 'range(created_at)' --interval '1 month'
    pgcleave partition exercises --by 'range(tenant)'          # old table as DEFAULT
    pgcleave partition accounts --by 'hash(tenant)' --modulus 16   # by copy
    pgcleave partition orders --by 'list(country)' --values RU --values US,GB \
        --then 'range(scheduled_at)' --interval '1 month'         # two levels, by copy
    """
    with common.db() as conn:
        plan = plan_partition(conn, table, by=by, interval=interval, premake=premake,
                              strategy=strategy, then=then,
                              then_interval=then_interval, cutoff=cutoff,
                              drop_inbound_fks=drop_inbound_fks, inbound_fks=inbound_fks,
                              require_parent_key=require_parent_key, old_name=old_name,
                              modulus=modulus, values=list(values) or None,
                              batch_size=batch_size, jobs=jobs)
    common.execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)


@app.command("add-partition")
@click.argument("table")
@click.option("--from", "lower", default=None, metavar="VALUE",
              help="Lower bound (inclusive), or MINVALUE.")
@click.option("--to", "upper", default=None, metavar="VALUE",
              help="Upper bound (exclusive), or MAXVALUE.")
@click.option("--values", default=None, metavar="V1,V2", help="List partition values.")
@click.option("--modulus", default=None, type=int, help="Hash partition modulus.")
@click.option("--remainder", default=None, type=int, help="Hash partition remainder.")
@click.option("--name", default=None, help="Partition name (default derived from the bound).")
@click.option("--method", type=click.Choice(["auto", "carve", "check"]), default="auto",
              show_default=True,
              help="Next to a DEFAULT: carve the partition out of it (auto, carve: no "
                   "application statement is refused), or validate a CHECK excluding the "
                   "range on the DEFAULT first (check: refuses INSERTs of the range meanwhile).")
@click.option("--max-lock-ms", default=DIRECT_MAX_LOCK_MS, type=float, show_default=True,
              help="Carve in one transaction under the parent's lock when the DEFAULT is "
                   "scanned within this; else copy and swap.")
@dry_run_option
@yes_option
@json_option
def add_partition(table: str, lower: str | None, upper: str | None, values: str | None,
                  modulus: int | None, remainder: int | None, name: str | None, method: str,
                  max_lock_ms: float, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Create a partition of TABLE. Next to a DEFAULT partition it is carved out of the
    DEFAULT (rows of its range, if any, move into it), so that no INSERT of the range is
    ever refused and the DEFAULT is never scanned at length under an exclusive lock."""
    with common.db() as conn:
        plan = plan_add_partition(conn, table, lower=lower, upper=upper,
                                  values=common.comma_list(values, "--values"),
                                  modulus=modulus, remainder=remainder, name=name,
                                  method=method, max_lock_ms=max_lock_ms)
    common.execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)


@app.command()
@click.argument("table")
@click.option("--from", "lower", default=None, metavar="VALUE",
              help="Lower bound (inclusive), or MINVALUE.")
@click.option("--to", "upper", default=None, metavar="VALUE",
              help="Upper bound (exclusive), or MAXVALUE.")
@click.option("--values", default=None, metavar="V1,V2", help="List partition values.")
@click.option("--name", default=None, help="Name of the new partition.")
@click.option("--method", type=click.Choice(["auto", "direct", "swap"]), default="auto",
              show_default=True,
              help="direct: move and attach in one transaction (small sources only); swap: "
                   "copy with change capture, then a short swap.")
@click.option("--max-lock-ms", default=DIRECT_MAX_LOCK_MS, show_default=True,
              type=click.IntRange(min=0),
              help="Largest estimated exclusive-lock time allowed for the direct method.")
@click.option("--batch-size", default=5000, show_default=True, type=click.IntRange(min=1),
              help="Rows per copy batch (swap).")
@jobs_option
@max_rate_option
@dry_run_option
@yes_option
@json_option
def carve(table: str, lower: str | None, upper: str | None, values: str | None,
          name: str | None, method: str, max_lock_ms: int, batch_size: int, jobs: str,
          max_rate: float | None, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Move the rows of a range or list out of TABLE's DEFAULT (or legacy) partition into a new
    partition; the rows stay visible through TABLE at every moment.

    \b
    pgcleave carve exercises --from MINVALUE --to B
    pgcleave carve exercises --from B --to D
    """
    vals = common.comma_list(values, "--values")
    piece: tuple[str, str] | list[str]
    if vals is not None:
        if lower is not None or upper is not None:
            raise click.UsageError("give either --from/--to or --values")
        piece = vals
    elif lower is None or upper is None:
        raise click.UsageError("give --from and --to, or --values")
    else:
        piece = (lower, upper)
    with common.db() as conn:
        plan = plan_carve(conn, table, [piece], names=[name] if name else None, method=method,
                          max_lock_ms=max_lock_ms, batch_size=batch_size, jobs=jobs,
                          max_rate=max_rate)
    common.execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)


@app.command()
@click.argument("table")
@dry_run_option
@yes_option
@json_option
def unpartition(table: str, dry_run: bool, yes: bool, as_json: bool) -> None:
    """The way back: TABLE becomes the plain old table again, with the (few) rows of its other
    partitions moved back into it, in one short transaction."""
    with common.db() as conn:
        plan = plan_unpartition(conn, table)
    common.execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)
