"""pgslice's workflow, without its losses: ``prep``, ``add-partitions``, ``fill``, ``analyze``,
``verify``, ``swap``, ``unswap``, ``unprep`` (see ``pgcleave.ops.copy``)."""

from __future__ import annotations

import click
from rich.table import Table

from ..errors import Refused
from ..ops import copy as ops
from ..ops.copy_run import verify_copy
from . import common
from .app import app
from .common import db, dry_run_option, jobs_option, json_option, out, print_json, yes_option


@app.command()
@click.argument("table")
@click.option("--by", required=True, metavar="'range(COL)'|COLUMN",
              help="The partition key: 'range(column)' as for partition --by, or the bare "
                   "column name (taken as written).")
@click.option("--interval", required=True, metavar="INTERVAL",
              help="day, week, month, quarter, year ('1 month', '3 months', ...) for date and "
                   "timestamp keys; a number for integer keys.")
@click.option("--time-zone", default="UTC", show_default=True,
              help="Zone of the calendar boundaries of timestamptz keys.")
@click.option("--defer-indexes", is_flag=True,
              help="Build the secondary indexes after the fill instead of during it (faster).")
@click.option("--past", type=click.IntRange(min=0), default=None,
              help="Also create partitions for N intervals before the current one.")
@click.option("--future", type=click.IntRange(min=0), default=None,
              help="Also create partitions for N intervals after the current one.")
@click.option("--inbound-fks", "inbound_fks", type=click.Choice(["refuse", "drop", "emulate"]),
              default="refuse", show_default=True,
              help="At the swap, foreign keys referencing TABLE by columns without the "
                   "partition key (those with it are re-pointed): refuse, drop or emulate them "
                   "with constraint triggers.")
@dry_run_option
@yes_option
@json_option
def prep(table: str, by: str, interval: str, time_zone: str, defer_indexes: bool,
         past: int | None, future: int | None, inbound_fks: str, dry_run: bool, yes: bool,
         as_json: bool) -> None:
    """Create TABLE_intermediate, partitioned by range of --by, and capture every INSERT, UPDATE
    and DELETE on TABLE into it from now on."""
    with db() as conn:
        plan = ops.plan_prep(conn, table, by=by, interval=interval, time_zone=time_zone,
                             defer_indexes=defer_indexes, past=past, future=future,
                             inbound_fks=inbound_fks)
    common.execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)


@app.command("add-partitions")
@click.argument("table")
@click.option("--past", type=click.IntRange(min=0), default=0, show_default=True,
              help="Partitions for N intervals before the current one.")
@click.option("--future", type=click.IntRange(min=0), default=0, show_default=True,
              help="Partitions for N intervals after the current one.")
@dry_run_option
@yes_option
@json_option
def add_partitions(table: str, past: int, future: int, dry_run: bool, yes: bool,
                   as_json: bool) -> None:
    """Add range partitions to TABLE_intermediate (before the swap) or TABLE (after). Rows of a
    new range already in the DEFAULT partition move into it."""
    with db() as conn:
        plan = ops.plan_add_partitions(conn, table, past=past, future=future)
    common.execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)


@app.command()
@click.argument("table")
@click.option("--batch-size", type=click.IntRange(min=1), default=10000, show_default=True,
              help="The most rows one batch copies; batches are sized below it so each lasts "
                   "about --batch-time (a global option, 20 ms by default).")
@click.option("--sleep", type=click.FloatRange(min=0), default=0.0, show_default=True,
              metavar="SECONDS", help="Pause between batches.")
@click.option("--where", default=None, metavar="SQL",
              help="Copy only rows matching this condition (e.g. \"created_at >= '2023-01-01'\").")
@click.option("--max-rate", type=click.FloatRange(min=1), default=None, metavar="ROWS/S",
              help="Copy at most this many rows per second.")
@click.option("--order", type=click.Choice(["auto", "physical", "key"]), default="auto",
              show_default=True,
              help="physical: batches of table blocks (TID range scans, PostgreSQL 14+, the "
                   "fastest); key: keyset batches on the primary key; auto: physical when "
                   "available.")
@jobs_option
@dry_run_option
@yes_option
@json_option
def fill(table: str, batch_size: int, sleep: float, where: str | None, max_rate: float | None,
         order: str, jobs: str, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Copy TABLE's rows into TABLE_intermediate in primary-key batches (resumable with
    `pgcleave resume JOB` after an interruption)."""
    with db() as conn:
        plan = ops.plan_fill(conn, table, batch_size=batch_size, sleep=sleep, where=where,
                             max_rate=max_rate, order=order, jobs=jobs)
    common.execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)


@app.command()
@click.argument("table")
@dry_run_option
@yes_option
@json_option
def analyze(table: str, dry_run: bool, yes: bool, as_json: bool) -> None:
    """ANALYZE the partitioned table (the intermediate one before the swap)."""
    with db() as conn:
        plan = ops.plan_analyze(conn, table)
    common.execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)


@app.command()
@click.argument("table")
@json_option
def verify(table: str, as_json: bool) -> None:
    """Compare the old and the new table: rows and a hash per partition range, in one snapshot.
    Exit code 3 when they differ."""
    with db() as conn:
        result = verify_copy(conn, table)
    if as_json:
        print_json(result.to_json())
    else:
        t = Table(show_header=True, header_style="bold")
        for col in ("partition", "rows in old", "rows in new", "match"):
            t.add_column(col)
        for r in result.ranges:
            if r.old_rows or r.new_rows or not r.ok:
                t.add_row(r.partition, f"{r.old_rows:,}", f"{r.new_rows:,}",
                          "yes" if r.ok else "NO")
        out.print(t)
        out.print(f"{result.old} vs {result.new}: "
                  + ("match" if result.ok else f"{len(result.mismatches)} range(s) differ")
                  + f" ({result.seconds:.1f} s)", markup=False)
    if not result.ok:
        raise Refused(f"{result.old} and {result.new} differ",
                      hint="run `pgcleave fill` again to copy what is missing")


@app.command()
@click.argument("table")
@dry_run_option
@yes_option
@json_option
def swap(table: str, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Verify, then swap in one short transaction: TABLE becomes TABLE_retired (kept in sync)
    and TABLE_intermediate becomes TABLE."""
    with db() as conn:
        plan = ops.plan_swap(conn, table)
    common.execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)


@app.command()
@click.argument("table")
@dry_run_option
@yes_option
@json_option
def unswap(table: str, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Swap back: TABLE_retired, with every change made since the swap, becomes TABLE again."""
    with db() as conn:
        plan = ops.plan_unswap(conn, table)
    common.execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)


@app.command()
@click.argument("table")
@dry_run_option
@yes_option
@json_option
def unprep(table: str, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Stop the change capture. Before the swap, drop TABLE_intermediate; after it, keep
    TABLE_retired (no longer kept in sync)."""
    with db() as conn:
        plan = ops.plan_unprep(conn, table)
    common.execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)
