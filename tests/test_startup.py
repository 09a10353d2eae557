"""Start-up: a command imports what it needs and no more. ``--version`` and ``--help`` import
neither the driver, nor rich, nor any operation; ``--help`` still lists every command with its
short help, read from ``cli.app.COMMANDS`` (kept true to the modules here). The timings are in
``bench/startup.py``; these tests look at what is imported, which does not depend on the load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

import pgcleave
from pgcleave.cli import app as app_module

SRC = str(Path(pgcleave.__file__).parent.parent)
HEAVY = ("psycopg", "rich", "pgcleave.ops", "pgcleave.execute", "pgcleave.connection",
         "pgcleave.catalog", "pgcleave.cli.cmd_")


def _modules_after(args: list[str]) -> tuple[str, list[str]]:
    """Run the CLI with ``args`` in a fresh interpreter; its stdout and the modules it had
    imported when it exited."""
    code = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: sys.stderr.write(\n"
        "    '\\nMODULES ' + json.dumps(sorted(sys.modules))))\n"
        "from pgcleave.cli.main import run\n"
        f"run({args!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, json.loads(proc.stderr.rsplit("MODULES ", 1)[1])


@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_version_and_help_import_nothing_heavy(args):
    stdout, modules = _modules_after(args)
    assert stdout.strip()
    assert [m for m in modules if m.startswith(HEAVY)] == []


def test_help_lists_every_command_with_its_short_help():
    stdout, _ = _modules_after(["--help"])
    listed = stdout.split("Commands:", 1)[1]
    for name in app_module.COMMANDS:
        assert f"  {name} " in listed, name
    assert "set-primary-key  Give partitioned TABLE a PRIMARY KEY" in listed


def test_a_command_imports_only_its_module():
    """``jobs --help`` loads cmd_jobs, not the other command modules."""
    _, modules = _modules_after(["jobs", "--help"])
    assert [m for m in modules if m.startswith("pgcleave.cli.cmd_")] == ["pgcleave.cli.cmd_jobs"]


def test_the_command_table_is_true_to_the_modules():
    """Every command a module defines is in ``COMMANDS`` under its module with its short help,
    and every entry names a command that exists: the listing without imports is the listing
    with them."""
    app = app_module.app
    for module in sorted({m for m, _ in app_module.COMMANDS.values()}):
        __import__(f"pgcleave.cli.{module}")
    assert set(app.commands) == set(app_module.COMMANDS)
    for name, cmd in app.commands.items():
        assert cmd.callback is not None
        module, short = app_module.COMMANDS[name]
        assert (cmd.callback.__module__, short) == (f"pgcleave.cli.{module}",
                                                   cmd.get_short_help_str(limit=10**6)), name
    # the lazy listing renders as click's own does once every command is loaded
    ctx = click.Context(app, info_name="pgcleave")
    lazy = click.HelpFormatter(width=100)
    app_module.LazyGroup.format_commands(app, ctx, lazy)
    eager = click.HelpFormatter(width=100)
    click.Group.format_commands(app, ctx, eager)
    assert lazy.getvalue() == eager.getvalue()


def test_the_library_imports_its_names_when_used():
    code = ("import sys, pgcleave\n"
            "assert 'psycopg' not in sys.modules\n"
            "from pgcleave import Executor, Plan, Refused\n"
            "from pgcleave.execute import default_registry\n"
            "assert 'copy.fill' in default_registry().actions\n"
            "print(pgcleave.__version__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": SRC}, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_every_action_resolves():
    """The registry names its actions by module and function (imported when they run): each
    name leads to a function that exists."""
    from pgcleave.ops import registry

    for name, (module, function) in registry.TARGETS.items():
        assert callable(registry.resolve(module, function)), name
    for old, new in registry.ALIASES.items():
        assert new in registry.ACTIONS, old


# -- round trips: counted by the loopback proxy, which reads the client's protocol -----------
@pytest.fixture
def proxied(db):
    """``db`` behind a counting proxy: (its DSN through the proxy, the proxy)."""
    from pgcleave.testing.proxy import TcpProxy

    proxy = TcpProxy("127.0.0.1", db.server.port)
    try:
        yield f"postgresql://{db.server.user}@127.0.0.1:{proxy.port}/{db.name}", proxy
    finally:
        proxy.close()


def _round_trips(proxy, cli, *args, dsn):
    """The command's stdout and its round trips past connecting (which takes more or fewer
    with the server's authentication: counted apart, on a connection of its own)."""
    import psycopg

    before = proxy.round_trips
    psycopg.connect(dsn).close()
    connecting = proxy.round_trips - before
    before = proxy.round_trips
    res = cli(*args, dsn=dsn)
    assert res.returncode == 0, res.stderr
    return res.stdout, proxy.round_trips - before - connecting


def test_the_proxy_counts_a_pipeline_once(proxied):
    """A round trip is a wait for the server: twenty statements one by one are twenty, the
    same twenty in one pipeline are one, however their messages leave."""
    import psycopg

    dsn, proxy = proxied
    with psycopg.connect(dsn, autocommit=True) as c:
        before = proxy.round_trips
        for i in range(20):  # each its own text: psycopg prepares a query run five times
            c.execute(f"SELECT {i}").fetchone()
        alone = proxy.round_trips - before
        before = proxy.round_trips
        with c.pipeline():
            curs = [c.execute("SELECT %s, pg_sleep(0.001)", [i]) for i in range(20)]
        assert [cur.fetchone()[0] for cur in curs] == list(range(20))
        together = proxy.round_trips - before
    assert (alone, together) == (20, 1)


#: what a status past connecting may take: the name, the catalog's pipeline, which of
#: pgcleave's tables exist (with the emulated keys); 18 before the pipelines
STATUS_PLAIN = 3


def test_status_of_a_plain_table_makes_few_round_trips(db, conn, proxied, cli):
    conn.execute("CREATE TABLE t (id bigserial PRIMARY KEY, at timestamptz NOT NULL, v text)")
    conn.execute("INSERT INTO t (at, v) SELECT now(), 'x' FROM generate_series(1, 100)")
    conn.execute("ANALYZE t")  # never analyzed, it would be counted: one more
    dsn, proxy = proxied
    stdout, trips = _round_trips(proxy, cli, "status", "t", dsn=dsn)
    assert "public.t" in stdout and "PRIMARY KEY (id)" in stdout
    assert trips <= STATUS_PLAIN, trips


def test_status_of_a_partitioned_table_with_a_journal(db, conn, proxied, cli):
    """Past the plain table's: the exact counts of the partitions never analyzed (together),
    the partitions' order (asked of the server), and the policy and the residue of unfinished
    jobs once the journal's schema exists (together)."""
    from pgcleave import journal

    conn.execute("CREATE TABLE p (id bigint, at date NOT NULL, PRIMARY KEY (id, at))"
                 " PARTITION BY RANGE (at)")
    for m in (1, 2, 10, 11):
        conn.execute(f"CREATE TABLE p_{m} PARTITION OF p FOR VALUES FROM"
                     f" ('2024-{m:02d}-01') TO ('2024-{m:02d}-01'::date + 31)")
    journal.ensure_schema(conn)
    dsn, proxy = proxied
    stdout, trips = _round_trips(proxy, cli, "status", "p", dsn=dsn)
    assert [ln.split()[1] for ln in stdout.splitlines() if "FOR VALUES" in ln] == \
        ["public.p_1", "public.p_2", "public.p_10", "public.p_11"]
    assert trips <= STATUS_PLAIN + 3, trips


def test_status_asks_for_span_checks_in_its_pipelines(db, conn, proxied, cli):
    """A DEFAULT with a split's CHECK that no job owns, the journal there: status names it
    and asks for it and for its job within the round trips it makes without one."""
    from pgcleave import journal

    conn.execute("CREATE TABLE p (id bigint, at date NOT NULL, PRIMARY KEY (id, at))"
                 " PARTITION BY RANGE (at)")
    for m in (1, 2, 10, 11):
        conn.execute(f"CREATE TABLE p_{m} PARTITION OF p FOR VALUES FROM"
                     f" ('2024-{m:02d}-01') TO ('2024-{m:02d}-01'::date + 31)")
    conn.execute("CREATE TABLE p_default PARTITION OF p DEFAULT")
    conn.execute("ALTER TABLE p_default ADD CONSTRAINT pgcleave_span_1 CHECK (at < '2024-01-01'"
                 " OR at >= '2024-03-01') NOT VALID")
    journal.ensure_schema(conn)
    dsn, proxy = proxied
    stdout, trips = _round_trips(proxy, cli, "status", "p", dsn=dsn)
    assert "LEFTOVER CHECK: CHECK pgcleave_span_1 on the DEFAULT p_default" in stdout, stdout
    print("status round trips:", trips)
    assert trips <= STATUS_PLAIN + 3, trips


def test_status_imports_no_plan_nor_operation(db, conn):
    """``status`` reads the catalog and the journal: neither plans, the executor, the DDL
    recipes nor any operation are imported for it."""
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    stdout, modules = _modules_after(["--dsn", db.dsn, "status", "t"])
    assert "public.t" in stdout
    heavy = ("pgcleave.plan", "pgcleave.preflight", "pgcleave.execute", "pgcleave.ops",
             "pgcleave.ddl", "pgcleave.levels", "pgcleave.schemes")
    assert [m for m in modules if m.startswith(heavy)] == []
    assert [m for m in modules if m.startswith("pgcleave.cli.cmd_")] == ["pgcleave.cli.cmd_status"]
