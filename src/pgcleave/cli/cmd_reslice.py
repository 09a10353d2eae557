"""``pgcleave split``, ``merge``, ``reslice``: re-cut partitions online (issue 16)."""

from __future__ import annotations

import click

from ..ops.merge import plan_merge
from ..ops.reslice import plan_reslice, plan_split
from . import common
from .app import app
from .common import dry_run_option, jobs_option, json_option, max_rate_option, yes_option


@app.command()
@click.argument("partition")
@click.option("--at", "at", default=None, metavar="V1,V2",
              help="Cut at these values (ascending, strictly inside the partition's bound).")
@click.option("--interval", default=None, metavar="'1 day'",
              help="Cut at every period start of this interval inside the bound.")
@click.option("--values", "values", multiple=True, metavar="V1,V2",
              help="A list partition: the values of one new partition (repeat for each); "
                   "the values no group names stay in PARTITION.")
@click.option("--names", default=None, metavar="N1,N2", help="Names of the new partitions.")
@jobs_option
@max_rate_option
@dry_run_option
@yes_option
@json_option
def split(partition: str, at: str | None, interval: str | None, values: tuple[str, ...],
          names: str | None, jobs: str, max_rate: float | None, dry_run: bool, yes: bool,
          as_json: bool) -> None:
    """Split PARTITION into several: a range partition into pieces covering exactly its
    bound, a list partition into one per --values group; the rows stay visible and writable
    (copy with change capture, verify, one short swap).

    \b
    pgcleave split events_p2024_01 --interval '1 day'
    pgcleave split events_legacy --at 2024-01-01,2024-02-01
    pgcleave split orders_europe --values RU --values US,GB
    """
    if sum([at is not None, interval is not None, bool(values)]) != 1:
        raise click.UsageError("give one of --at, --interval or --values")
    groups = [common.comma_list(v, "--values") or [] for v in values]
    with common.db() as conn:
        plan = plan_split(conn, partition, at=common.comma_list(at, "--at") or [],
                          interval=interval, names=common.comma_list(names, "--names"),
                          values=groups, jobs=jobs, max_rate=max_rate)
    common.execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)


@app.command()
@click.argument("partitions", nargs=-1, required=True)
@click.option("--name", default=None, help="Name of the merged partition (default: the "
                                           "first one's, by bound).")
@jobs_option
@max_rate_option
@dry_run_option
@yes_option
@json_option
def merge(partitions: tuple[str, ...], name: str | None, jobs: str, max_rate: float | None,
          dry_run: bool, yes: bool, as_json: bool) -> None:
    """Merge adjacent range PARTITIONS (or list partitions) of one table into one; the rows
    stay visible and writable (copy with change capture, verify, one short swap).

    \b
    pgcleave merge events_p2024_01_01 events_p2024_01_02 --name events_w2024_01
    """
    with common.db() as conn:
        plan = plan_merge(conn, list(partitions), name=name, jobs=jobs, max_rate=max_rate)
    common.execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)


@app.command()
@click.argument("table")
@click.option("--interval", required=True, metavar="'1 month'",
              help="The partition interval to re-cut the span to.")
@click.option("--from", "lower", default=None, help="Start of the span (a partition bound).")
@click.option("--to", "upper", default=None, help="End of the span (a partition bound).")
@jobs_option
@max_rate_option
@dry_run_option
@yes_option
@json_option
def reslice(table: str, interval: str, lower: str | None, upper: str | None, jobs: str,
            max_rate: float | None, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Re-cut TABLE's partitions in a span to INTERVAL in one resumable job: partitions wider
    than a period are split, runs of smaller ones merged, one batch at a time (the extra
    disk is one batch's copy). Existing partitions outside the span are not touched; use
    `pgcleave config TABLE --interval` for the partitions maintain creates from now on.

    \b
    pgcleave reslice events --interval '1 month'
    """
    with common.db() as conn:
        plan = plan_reslice(conn, table, interval=interval, lower=lower, upper=upper,
                            jobs=jobs, max_rate=max_rate)
    common.execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)
