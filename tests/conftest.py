"""Fixtures: real PostgreSQL servers started once per test session (initdb + pg_ctl into a
temporary directory, free loopback ports), and a fresh database per test."""

from __future__ import annotations

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

from pgcleave.sandbox import Sandbox, Server

SERVERS = 3


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(tempfile.mkdtemp(prefix="pgcleave-test-"))
    sb.up(SERVERS)
    try:
        yield sb
    finally:
        sb.down()


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
