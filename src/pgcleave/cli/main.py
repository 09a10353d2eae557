"""Entry point: the command group and exit codes. The command modules are imported by the
group when their command runs (``app.COMMANDS``)."""

from __future__ import annotations

import sys

import click

from ..errors import PgcleaveError, Refused
from ..settings import redact
from .app import app
from .common import err


def _driver_error(exc: Exception) -> None:
    """Exit with the code of a database error the driver raised; return for anything else.
    The driver is looked up, not imported: a command that never connected raised none."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is None or not isinstance(exc, psycopg.Error):
        return
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        err.print(f"error: {redact(str(exc).strip())}; nothing was changed", markup=False)
        err.print("hint: `pgcleave doctor TABLE` lists what this role can do here and the "
                  "grants that fix the rest", markup=False)
        sys.exit(Refused.exit_code)
    err.print(f"error: {redact(str(exc).strip())}", markup=False)
    sys.exit(1)


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
    except Exception as exc:
        _driver_error(exc)
        raise
    sys.exit(0)

