"""``pgcleave demo``: seed 000 told with pgcleave on throwaway local servers."""

from __future__ import annotations

import click

from ..demo import run_demo
from .app import app


@app.command()
@click.option("--servers", default=2, show_default=True, type=click.IntRange(2, 8))
@click.option("--dir", "directory", default=None, help="Where to put the servers (default: a "
                                                       "new temporary directory).")
@click.option("--keep", is_flag=True, help="Leave the servers running afterwards.")
@click.option("--only", multiple=True, help="Run only chapters whose module name contains this.")
@click.option("--pg", "pg_version", type=click.IntRange(10, 99), default=None,
              help="PostgreSQL major version to run (default: the first installation found).")
def demo(servers: int, directory: str | None, keep: bool, only: tuple[str, ...],
         pg_version: int | None) -> None:
    """Start throwaway servers and walk through seed 000: a plain table grows, is partitioned
    online, carved, altered, and spread over a second server."""
    run_demo(servers=servers, directory=directory, keep=keep, only=only, version=pg_version)
