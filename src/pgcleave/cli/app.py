"""The ``pgcleave`` command group: global options. Each ``cmd_*.py`` module attaches its
commands to it; ``main.py`` lists those modules."""

from __future__ import annotations

import click

from .common import STATE


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--dsn", default=None, metavar="DSN",
              help="Connection string (URL or key=value). Default: $PGCLEAVE_DSN, else libpq's "
                   "PG* variables, service file and .pgpass.")
@click.option("--lock-timeout", default=100, show_default=True, type=click.IntRange(min=1),
              metavar="MS", help="lock_timeout for every DDL statement.")
@click.option("--lock-retry-limit", default=300.0, show_default=True,
              type=click.FloatRange(min=0), metavar="SECONDS",
              help="How long to keep retrying a lock before giving up (exit code 4).")
@click.option("--statement-timeout", default=0, show_default=True, type=click.IntRange(min=0),
              metavar="MS", help="statement_timeout for DDL steps (0: none).")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@click.version_option(package_name="pgcleave")
def app(dsn: str | None, lock_timeout: int, lock_retry_limit: float, statement_timeout: int,
        quiet: bool) -> None:
    """pgcleave: partition live PostgreSQL tables online, keep their partitions maintained, and
    spread partitions over more servers with postgres_fdw.

    Exit codes: 0 ok, 1 failure, 2 usage, 3 refused (nothing changed), 4 lock contention
    (retry later), 5 cannot connect.
    """
    s = STATE.settings
    s.dsn = dsn
    s.lock_timeout_ms = lock_timeout
    s.lock_retry_limit_s = lock_retry_limit
    s.statement_timeout_ms = statement_timeout
    STATE.quiet = quiet
