"""``pgcleave move``, ``pgcleave alter``, ``pgcleave explain``: partitions on other servers."""

from __future__ import annotations

import click

# imported here, not lazily: their actions and the two-phase recovery hook must be registered
# before `pgcleave resume` runs
from ..ops import alter as _alter
from ..ops import move as _move
from .app import app
from .common import (
    db,
    dry_run_option,
    execute,
    json_option,
    max_rate_option,
    out,
    print_json,
    yes_option,
)


@app.command()
@click.argument("partition")
@click.option("--to", "to", required=True, metavar="SERVER|local",
              help="A server added with `pgcleave server add`, or `local` to bring the "
                   "partition back.")
@click.option("--drop-source", is_flag=True,
              help="Drop the old copy (local table, or foreign table and shard table) once the "
                   "move is done. By default it is kept, detached and renamed *_pgc_local / "
                   "*_pgc_remote.")
@click.option("--origin-dsn", default=None, metavar="DSN",
              help="How the shard reaches this database for replication, when it differs from "
                   "--dsn (e.g. another host name seen from the shard).")
@click.option("--method", type=click.Choice(list(_move.METHODS)), default="auto",
              show_default=True,
              help="replication: logical replication (superuser or, on 16+, "
                   "pg_create_subscription; wal_level = logical). copy: COPY between the "
                   "servers plus a capture trigger and its key log (table ownership and the "
                   "user mapping suffice). auto: replication where possible, else copy.")
@click.option("--jobs", "-j", default="1", show_default=True, metavar="N|auto",
              help="The copy method's bulk copy on N pairs of connections, each a disjoint "
                   "range of the primary key, in one exported snapshot (refused for "
                   "replication: one sync worker copies the table); auto as for fill.")
@max_rate_option
@dry_run_option
@yes_option
@json_option
def move(partition: str, to: str, drop_source: bool, origin_dsn: str | None, method: str,
         jobs: str, max_rate: float | None, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Move PARTITION to another server (a postgres_fdw foreign partition), or back with
    --to local, online: rows are replicated (or copied, with the writes made meanwhile
    replayed from a key log) while the application writes, then a short cut-over verifies
    them (count + hash) and swaps the partitions."""
    with db() as conn:
        plan = _move.plan_move(conn, partition, to=to, drop_source=drop_source,
                               origin_dsn=origin_dsn, method=method, jobs=jobs,
                               max_rate=max_rate)
    execute(plan, dry_run=dry_run, yes=yes, as_json=as_json,
            secrets={_move.ORIGIN_DSN_SECRET: origin_dsn} if origin_dsn else None)


@app.command()
@click.argument("table")
@click.argument("change", metavar='"ALTER TABLE ACTION"')
@dry_run_option
@yes_option
@json_option
def alter(table: str, change: str, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Apply an ALTER TABLE action to TABLE, its local partitions and the tables of its remote
    partitions, atomically (two-phase commit on the shards). Example:

        pgcleave alter exercises "ADD difficulty SMALLINT"
    """
    with db() as conn:
        plan = _alter.plan_alter(conn, table, change)
    execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)


@app.command()
@click.argument("query", metavar='"SQL"')
@click.option("--analyze", is_flag=True,
              help="Run the query (EXPLAIN ANALYZE, inside a transaction that is rolled back).")
@json_option
def explain(query: str, analyze: bool, as_json: bool) -> None:
    """Show the plan of a query annotated with the partitions and servers it touches, and
    which partitions were pruned."""
    from ..ops.explain import explain_query, render

    with db() as conn:
        result = explain_query(conn, query, analyze=analyze)
    if as_json:
        print_json(result.to_json())
    else:
        out.print(render(result), markup=False, end="")
