"""``pgcleave sandbox up|env|down``: throwaway local servers for trying pgcleave out."""

from __future__ import annotations

from pathlib import Path

import click

from ..sandbox import Sandbox
from .app import app
from .common import out

dir_option = click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
                          help="State directory (default: one per user).")


@app.group()
def sandbox() -> None:
    """Throwaway local PostgreSQL servers (initdb + pg_ctl) on free loopback ports."""


@sandbox.command("up")
@click.option("--servers", "-n", default=2, show_default=True, type=click.IntRange(1, 16))
@dir_option
def up(servers: int, directory: Path | None) -> None:
    """Start N servers; print one `NAME DSN` line each."""
    for s in Sandbox(directory).up(servers):
        out.print(f"{s.name} {s.dsn}", markup=False)


@sandbox.command("env")
@dir_option
def env(directory: Path | None) -> None:
    """Print `export` lines: PGCLEAVE_DSN for the first server, PGCLEAVE_DSN_<NAME> for each."""
    for line in Sandbox(directory).env_lines():
        out.print(line, markup=False)


@sandbox.command("down")
@dir_option
def down(directory: Path | None) -> None:
    """Stop the servers and remove their directory."""
    sb = Sandbox(directory)
    n = len(sb.servers)
    sb.down()
    out.print(f"stopped and removed {n} server(s) in {sb.dir}", markup=False)
