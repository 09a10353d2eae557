"""``pgcleave server add|list|remove``: the Postgres servers partitions can be moved to."""

from __future__ import annotations

import click
from rich.table import Table

from .. import servers
from ..ops import server as server_ops
from .app import app
from .common import db, dry_run_option, execute, json_option, out, print_json, yes_option


@app.group()
def server() -> None:
    """Remote Postgres servers (postgres_fdw) that can hold partitions."""


@server.command("add")
@click.argument("name")
@click.option("--dsn", "remote_dsn", required=True, metavar="DSN",
              help="Where the shard is (URL or key=value). postgres_fdw, dblink and "
                   "subscriptions use it; a password in it goes into the user mapping only.")
@click.option("--no-tune", is_flag=True,
              help="Do not set enable_partitionwise_aggregate/join on this database.")
@dry_run_option
@yes_option
@json_option
def server_add(name: str, remote_dsn: str, no_tune: bool, dry_run: bool, yes: bool,
               as_json: bool) -> None:
    """Add server NAME: check that it answers (version, settings), then create the
    postgres_fdw server with performance options and a user mapping for the current user."""
    with db() as conn:
        plan = server_ops.plan_server_add(conn, name, remote_dsn, tune_database=not no_tune)
    execute(plan, dry_run=dry_run, yes=yes, as_json=as_json,
            secrets=server_ops.server_secrets(name, remote_dsn))


@server.command("list")
@json_option
def server_list(as_json: bool) -> None:
    """List the servers, where they are, their options and the partitions on each."""
    with db() as conn:
        rows = servers.list_servers(conn)
    if as_json:
        print_json([r.to_json() for r in rows])
        return
    t = Table(show_header=True, header_style="bold")
    for col in ("server", "where", "user", "options", "foreign tables"):
        t.add_column(col)
    for r in rows:
        opts = ", ".join(f"{k}={r.options[k]}" for k in servers.FDW_ONLY_OPTIONS
                         if k in r.options)
        t.add_row(r.name, r.where, (r.mapping_user or "no mapping")
                  + (" (password set)" if r.has_password else ""), opts,
                  ", ".join(r.partitions) or "-")
    out.print(t)


@server.command("remove")
@click.argument("name")
@dry_run_option
@yes_option
@json_option
def server_remove(name: str, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Remove server NAME (refused while partitions live on it)."""
    with db() as conn:
        plan = server_ops.plan_server_remove(conn, name)
    execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)
