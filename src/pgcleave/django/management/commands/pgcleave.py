"""``manage.py pgcleave [--database ALIAS] COMMAND ...``: any pgcleave command against a database
of ``DATABASES``. The connection string (password included) reaches pgcleave through the
environment (``PGCLEAVE_DSN``), never its command line (visible to every user in ``ps``)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections

from pgcleave.django import dsn_from_settings


class _PassThroughParser(CommandParser):  # type: ignore[misc]
    """Everything after ``--database ALIAS`` goes to pgcleave as written, options included
    (``manage.py pgcleave --quiet maintain``): argparse would take ``--quiet`` for its own."""

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        argv = [str(a) for a in (args if args is not None else sys.argv[2:])]
        own: list[str] = []
        if argv[:1] == ["--database"] and len(argv) > 1:
            own, argv = argv[:2], argv[2:]
        elif argv[:1] and argv[0].startswith("--database="):
            own, argv = argv[:1], argv[1:]
        ns = super().parse_args(own, namespace)
        ns.pgcleave_args = argv
        return ns


class Command(BaseCommand):  # type: ignore[misc]
    help = ("Run a pgcleave command against a configured database, e.g. "
            "`manage.py pgcleave status shop_order` or `manage.py pgcleave maintain`.")
    requires_system_checks: list[str] = []  # noqa: RUF012 (Django reads a list)

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.__class__ = _PassThroughParser
        return parser

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS,
                            help="The DATABASES alias to run against (default: default).")
        parser.add_argument("pgcleave_args", nargs=argparse.REMAINDER,
                            help="The pgcleave command and its arguments.")

    def handle(self, *args: Any, **options: Any) -> None:
        conn = connections[options["database"]]
        if conn.vendor != "postgresql":
            raise CommandError(f"database {options['database']!r} is {conn.vendor}, not "
                               "PostgreSQL")
        argv = list(options["pgcleave_args"] or ["--help"])
        env = dict(os.environ, PGCLEAVE_DSN=dsn_from_settings(conn.settings_dict))
        proc = subprocess.run([sys.executable, "-m", "pgcleave", *argv], env=env,
                              capture_output=True, text=True, check=False)
        self.stdout.write(proc.stdout, ending="")
        self.stderr.write(proc.stderr, ending="")
        if proc.returncode:
            raise CommandError(f"pgcleave {' '.join(argv[:1])} exited with "
                               f"{proc.returncode}", returncode=proc.returncode)
