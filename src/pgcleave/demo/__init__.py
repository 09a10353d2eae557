"""``pgcleave demo``: the story of seed 000 told with pgcleave, against throwaway local servers.

Chapters are modules named ``ch*.py`` in this package, run in name order. Each defines ``TITLE``
and ``run(demo)``; a chapter prints every command it runs (SQL or pgcleave) and what came out.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import psycopg
from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from ..sandbox import Sandbox, Server


class Demo:
    """What a chapter can do: run SQL on a server, run pgcleave, say something."""

    def __init__(self, sandbox: Sandbox, console: Console, dbname: str = "experiment") -> None:
        self.sandbox = sandbox
        self.console = console
        self.dbname = dbname
        self.state: dict[str, Any] = {}

    @property
    def servers(self) -> list[Server]:
        return self.sandbox.servers

    def dsn(self, server: int = 0) -> str:
        return self.servers[server].dsn_for(self.dbname)

    def say(self, text: str) -> None:
        self.console.print(f"\n{text}", markup=False)

    def sql(self, query: str, server: int = 0, *, show: bool = True) -> list[tuple[Any, ...]]:
        """Run one statement, print it (psql style) and its result."""
        name = self.servers[server].name
        if show:
            self.console.print(f"\n{name}=# {query.strip()}", markup=False, style="bold")
        with psycopg.connect(self.dsn(server), autocommit=True) as conn:
            cur = conn.execute(query.encode())
            if cur.description is None:
                if show:
                    self.console.print(cur.statusmessage or "", markup=False)
                return []
            rows = cur.fetchall()
            if show:
                t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
                for col in cur.description:
                    t.add_column(col.name)
                for r in rows:
                    t.add_row(*["" if v is None else str(v) for v in r])
                self.console.print(t)
                self.console.print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})",
                                   markup=False)
            return [tuple(r) for r in rows]

    def pgcleave(self, *args: str, server: int = 0, check: bool = True) -> str:
        """Run the real pgcleave command line and print what it prints."""
        shown = " ".join(_shell_quote(a) for a in args)
        self.console.print(f"\n$ pgcleave {shown}", markup=False, style="bold")
        env = dict(os.environ, PGCLEAVE_DSN=self.dsn(server), COLUMNS="200")
        proc = subprocess.run([sys.executable, "-m", "pgcleave", *args], capture_output=True,
                              text=True, env=env, stdin=subprocess.DEVNULL)
        for stream in (proc.stderr, proc.stdout):  # progress happened before the result
            if stream.strip():
                self.console.print(stream.rstrip(), markup=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"pgcleave {shown} exited with {proc.returncode}")
        return proc.stdout


def _shell_quote(a: str) -> str:
    import shlex

    return shlex.quote(a)


def chapters() -> list[Any]:
    from .. import demo as pkg

    mods = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("ch"))
    return [importlib.import_module(f"{pkg.__name__}.{m}") for m in mods]


def run_demo(*, servers: int = 2, directory: str | None = None, keep: bool = False,
             only: Sequence[str] = (), console: Console | None = None,
             version: int | None = None) -> None:
    if console is None:
        # Off a terminal (CI logs, `| less`), rich would crop tables at 80 columns.
        width = None if Console().is_terminal else 160
        console = Console(highlight=False, soft_wrap=True, width=width)
    sb = Sandbox(directory or tempfile.mkdtemp(prefix="pgcleave-demo-"))
    console.print(f"Starting {servers} throwaway PostgreSQL servers in {sb.dir} ...",
                  markup=False)
    sb.up(servers, version=version)
    if sb.installation is not None:
        console.print(f"  using {sb.installation.describe()}", markup=False)
    for s in sb.servers:
        console.print(f"  {s.name} {s.dsn}", markup=False)
    demo = Demo(sb, console)
    try:
        for s in sb.servers:
            with psycopg.connect(s.dsn, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{demo.dbname}" WITH (FORCE)')
                c.execute(f'CREATE DATABASE "{demo.dbname}"')
        for ch in chapters():
            if only and not any(o in ch.__name__ for o in only):
                continue
            console.print(Rule(ch.TITLE))
            ch.run(demo)
        console.print(Rule("The end"))
    finally:
        if keep:
            console.print("Servers kept running. Connect with:", markup=False)
            for line in sb.env_lines():
                console.print(f"  {line}", markup=False)
            console.print(f"Stop them with: pgcleave sandbox down --dir {sb.dir}", markup=False)
        else:
            sb.down()
