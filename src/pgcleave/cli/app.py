"""The ``pgcleave`` command group: global options. Each ``cmd_*.py`` module attaches its
commands to it; ``main.py`` lists those modules."""

from __future__ import annotations

import click

from ..errors import UsageError
from ..throttle import parse_limits
from .common import STATE


def _limits(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Read --max-load/--critical-load at once: a typo is a usage error before anything runs."""
    try:
        parse_limits(value, f"--{param.name.replace('_', '-')}" if param.name else "")
    except UsageError as exc:
        raise click.BadParameter(f"{exc.message} ({exc.hint})") from None
    return value



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
@click.option("--batch-time", default=20, show_default=True, type=click.IntRange(min=0),
              metavar="MS", help="Bulk phases (fill) size each batch so its transaction lasts "
                                 "about this long: the longest an application write waits for "
                                 "a batch. 0: fixed batch sizes (--batch-size).")
@click.option("--duty", default=100, show_default=True, type=click.IntRange(1, 100),
              metavar="PERCENT", help="Bulk phases work at most this share of the time and "
                                      "rest the remainder between batches (100: no rest).")
@click.option("--max-load", default=None, callback=_limits, metavar="LIMITS",
              help="Pause bulk phases (fill, carve and DEFAULT-drain copies, move by copy) "
                   "while the database is over any of these, e.g. "
                   "'active=20,lock_waits=5,lag=10s,probe_p95=50ms': active backends and "
                   "sessions waiting on a lock (not counting pgcleave's), replay lag of "
                   "standbys and subscribers, p95 of a small probe query. Going on by itself.")
@click.option("--critical-load", default=None, callback=_limits, metavar="LIMITS",
              help="Same syntax: over any of these the job stops (exit code 6), resumable with "
                   "`pgcleave resume N`.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@click.version_option(package_name="pgcleave")
def app(dsn: str | None, lock_timeout: int, lock_retry_limit: float, statement_timeout: int,
        batch_time: int, duty: int, max_load: str | None, critical_load: str | None,
        quiet: bool) -> None:
    """pgcleave: partition live PostgreSQL tables online, keep their partitions maintained, and
    spread partitions over more servers with postgres_fdw.

    Exit codes: 0 ok, 1 failure, 2 usage, 3 refused (nothing changed), 4 lock contention
    (retry later), 5 cannot connect, 6 stopped at --critical-load (resume later).
    """
    s = STATE.settings
    s.dsn = dsn
    s.lock_timeout_ms = lock_timeout
    s.lock_retry_limit_s = lock_retry_limit
    s.statement_timeout_ms = statement_timeout
    s.batch_time_ms = batch_time
    s.duty_pct = duty
    s.max_load = max_load
    s.critical_load = critical_load
    STATE.quiet = quiet
