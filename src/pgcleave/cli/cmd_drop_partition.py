"""``pgcleave drop-partition``: the way back from ``add-partition`` (a migration's downgrade)."""

from __future__ import annotations

import click

from ..ops.drop_partition import plan_drop_partition
from . import common
from .app import app
from .common import dry_run_option, json_option, yes_option


@app.command("drop-partition")
@click.argument("table")
@click.argument("partition")
@dry_run_option
@yes_option
@json_option
def drop_partition(table: str, partition: str, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Drop PARTITION of TABLE if it is empty (refused if it holds a row), in one short
    transaction under lock_timeout with retry."""
    with common.db() as conn:
        plan = plan_drop_partition(conn, table, partition)
    common.execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)
