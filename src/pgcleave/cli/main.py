"""Entry point: the command group with every command module attached, and exit codes."""

from __future__ import annotations

import sys

import click
import psycopg

from ..connection import redact
from ..errors import PgcleaveError, Refused
from . import (
    cmd_copy,
    cmd_demo,
    cmd_doctor,
    cmd_drop_partition,
    cmd_jobs,
    cmd_keys,
    cmd_maintain,
    cmd_partition,
    cmd_sandbox,
    cmd_server,
    cmd_shards,
    cmd_status,
)
from .app import app
from .common import err

#: The modules whose commands are attached to ``app`` (each does so as it is imported).
COMMAND_MODULES = (
    cmd_copy, cmd_demo, cmd_doctor, cmd_drop_partition, cmd_jobs,
    cmd_keys, cmd_maintain, cmd_partition, cmd_sandbox, cmd_server, cmd_shards, cmd_status,
)


def run(argv: list[str] | None = None) -> None:
    """Console script: map errors to exit codes."""
    try:
        app.main(args=argv, prog_name="pgcleave", standalone_mode=False)
    except PgcleaveError as exc:
        err.print(f"error: {redact(exc.message)}", markup=False)
        if exc.hint:
            err.print(f"hint: {exc.hint}", markup=False)
        sys.exit(exc.exit_code)
    except psycopg.errors.InsufficientPrivilege as exc:
        err.print(f"error: {redact(str(exc).strip())}; nothing was changed", markup=False)
        err.print("hint: `pgcleave doctor TABLE` lists what this role can do here and the "
                  "grants that fix the rest", markup=False)
        sys.exit(Refused.exit_code)
    except psycopg.Error as exc:
        err.print(f"error: {redact(str(exc).strip())}", markup=False)
        sys.exit(1)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(0)

