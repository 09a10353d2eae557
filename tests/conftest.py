"""Fixtures: real PostgreSQL servers started once per test session (initdb + pg_ctl into a
temporary directory, free loopback ports), and a fresh database per test.

The servers run the PostgreSQL major version in $PGCLEAVE_TEST_PG (15, 18, ...); unset, the
first installation found (Debian's when present, as `pgcleave sandbox up` chooses). Tests that
start no server (their fixtures do not reach ``sandbox``) are marked ``nodb``: version-independent,
`make test` runs them once."""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from pgcleave.sandbox import Installation, Sandbox, Server, find_installation

SERVERS = 3


def test_pg_major() -> int | None:
    """The major version asked for by $PGCLEAVE_TEST_PG (None: the first installation found)."""
    env = os.environ.get("PGCLEAVE_TEST_PG", "").strip()
    if not env:
        return None
    if not env.isdigit():
        raise pytest.UsageError(f"PGCLEAVE_TEST_PG={env!r}: give a major version, e.g. 15 or 18")
    return int(env)


test_pg_major.__test__ = False  # type: ignore[attr-defined]


def _installation() -> Installation:
    return find_installation(test_pg_major())


def pytest_configure(config: pytest.Config) -> None:
    """Compile pgcleave's sources once: the tests run the command line in hundreds of
    subprocesses, and where PYTHONDONTWRITEBYTECODE is set (CI images often set it) each would
    compile every module it imports again (about half of a run's start-up CPU)."""
    import pgcleave

    compileall.compile_dir(os.path.dirname(pgcleave.__file__), quiet=1)


def pytest_report_header(config: pytest.Config) -> str:
    try:
        return f"pgcleave test servers: {_installation().describe()}"
    except Exception as exc:  # reported again, as an error, by the first test that needs one
        return f"pgcleave test servers: none ({exc})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "sandbox" not in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.nodb)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config
                            ) -> None:
    inst = _STARTED.get("installation")
    if inst is not None:
        terminalreporter.write_line(f"pgcleave tests ran on {inst.describe()}")


_STARTED: dict[str, Installation] = {}


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(tempfile.mkdtemp(prefix="pgcleave-test-"))
    sb.up(SERVERS, version=test_pg_major())
    for server in sb.servers:
        # every statement over 20 ms is logged with its length as the server measured it: the
        # tests read the writers' from there (Workload(server_log=...)). Not deadlock_timeout
        # and log_lock_waits: a deadlock_timeout under pgcleave's lock_timeout makes the
        # application, not pgcleave, the victim of a lock cycle pgcleave would have left
        with psycopg.connect(server.dsn, autocommit=True) as c:
            c.execute("ALTER SYSTEM SET log_min_duration_statement = 20")
            c.execute("SELECT pg_reload_conf()")
    if sb.installation is not None:
        _STARTED["installation"] = sb.installation
    try:
        yield sb
    finally:
        sb.down()


@pytest.fixture(scope="session")
def pg_version(sandbox: Sandbox) -> int:
    """The test servers' major version (15, 18, ...), as their server_version_num says."""
    with psycopg.connect(sandbox.servers[0].dsn) as c:
        return int(c.info.server_version) // 10000


@dataclass
class Database:
    server: Server
    name: str

    @property
    def dsn(self) -> str:
        return self.server.dsn_for(self.name)

    def connect(self, **kw: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=kw.pop("autocommit", True), **kw)


def _fresh_db(server: Server) -> Iterator[Database]:
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server.dsn, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        yield Database(server, name)
    finally:
        try:
            with psycopg.connect(server.dsn, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg.OperationalError:
            pass  # the server was stopped by the test


@pytest.fixture
def db(sandbox: Sandbox) -> Iterator[Database]:
    """A fresh database on the first server."""
    yield from _fresh_db(sandbox.servers[0])


@pytest.fixture
def db2(sandbox: Sandbox) -> Iterator[Database]:
    """A fresh database on the second server."""
    yield from _fresh_db(sandbox.servers[1])


@pytest.fixture
def db3(sandbox: Sandbox) -> Iterator[Database]:
    """A fresh database on the third server."""
    yield from _fresh_db(sandbox.servers[2])


@pytest.fixture
def conn(db: Database) -> Iterator[psycopg.Connection[Any]]:
    with db.connect() as c:
        yield c


def run_cli(*args: str, dsn: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 300, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a subprocess (as a user would, and killable)."""
    full_env = dict(os.environ)
    full_env.pop("PGCLEAVE_DSN", None)
    full_env.pop("PGCLEAVE_FAULT", None)
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "pgcleave"]
    if dsn is not None:
        cmd += ["--dsn", dsn]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, input=input, stdin=None if input else subprocess.DEVNULL)


@pytest.fixture
def cli() -> Any:
    return run_cli
