"""Entry point. Command modules (``cmd_*.py`` in this package) register themselves on ``app``."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from ..connection import redact
from ..errors import PgcleaveError
from .common import STATE, err


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


def _load_commands() -> None:
    from .. import cli

    for mod in sorted(pkgutil.iter_modules(cli.__path__), key=lambda m: m.name):
        if mod.name.startswith("cmd_"):
            importlib.import_module(f"{cli.__name__}.{mod.name}")


def run(argv: list[str] | None = None) -> None:
    """Console script: map errors to exit codes."""
    try:
        app.main(args=argv, prog_name="pgcleave", standalone_mode=False)
    except PgcleaveError as exc:
        err.print(f"error: {redact(exc.message)}", markup=False)
        if exc.hint:
            err.print(f"hint: {exc.hint}", markup=False)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(0)


_load_commands()
