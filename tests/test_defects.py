"""Defects the repetition in ops/ caused (issue 10), each pinned by a test that failed before
its fix."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from psycopg import errors as pgerrors

import pgcleave
from pgcleave.connection import Settings
from pgcleave.ddl.bounds import parse_by
from pgcleave.ddl.tables import index_tail, parse_indexdef
from pgcleave.errors import Refused, StepFailed
from pgcleave.execute import Executor
from pgcleave.plan import Plan, Step

SRC = Path(pgcleave.__file__).parent


# -- one lock-retry loop ----------------------------------------------------------------------
def test_only_the_executor_retries_locks():
    """alter, copy_run, move and retention each had a retry loop of their own (retention's did
    not retry SerializationFailure): now they all call ``ActionContext.retry_locks``."""
    loops = []
    for path in SRC.rglob("*.py"):
        if path.name == "execute.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            # catching a lock error to try again, or pausing between tries
            if isinstance(node, ast.ExceptHandler) and node.type is not None and any(
                    isinstance(n, ast.Name | ast.Attribute) and getattr(n, "id", getattr(
                        n, "attr", "")) in ("RETRYABLE", "LockNotAvailable", "DeadlockDetected")
                    for n in ast.walk(node.type)):
                loops.append(f"{path.relative_to(SRC)}:{node.lineno} except lock error")
            if isinstance(node, ast.Name) and node.id == "backoff":
                loops.append(f"{path.relative_to(SRC)}:{node.lineno} backoff")
            if isinstance(node, ast.Attribute) and node.attr == "_with_retry":
                loops.append(f"{path.relative_to(SRC)}:{node.lineno} _with_retry")
    assert loops == []


def test_retry_locks_retries_a_real_serialization_failure(db):
    """A SERIALIZABLE conflict from the server is retried like a lock timeout."""
    ex = Executor(Settings(dsn=db.dsn, lock_retry_limit_s=10))
    with db.connect() as c, db.connect() as other:
        c.execute("CREATE TABLE acct (id int PRIMARY KEY, v int)")
        c.execute("INSERT INTO acct VALUES (1, 0), (2, 0)")
        tries = []

        def attempt() -> int:
            tries.append(1)
            with c.transaction():
                c.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                c.execute("SELECT sum(v) FROM acct").fetchone()
                if len(tries) == 1:  # a concurrent writer commits in between, once
                    with other.transaction():
                        other.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                        other.execute("SELECT sum(v) FROM acct").fetchone()
                        other.execute("UPDATE acct SET v = v + 1 WHERE id = 1")
                c.execute("UPDATE acct SET v = v + 10 WHERE id = 2")
            return len(tries)

        assert ex.retry_locks(c, attempt, what="test") == 2
        assert c.execute("SELECT v FROM acct ORDER BY id").fetchall() == [(1,), (10,)]


def test_retry_locks_gives_up_with_the_step_resumable(db):
    ex = Executor(Settings(dsn=db.dsn, lock_timeout_ms=50, lock_retry_limit_s=0.5))
    with db.connect() as c, db.connect() as holder:
        c.execute("CREATE TABLE busy (id int)")
        holder.execute("BEGIN")
        holder.execute("LOCK busy IN ACCESS EXCLUSIVE MODE")

        def attempt() -> None:
            with c.transaction():
                ex.set_lock_timeout(c, 50)
                c.execute("SELECT * FROM busy")

        with pytest.raises(pgcleave.LockContention, match="test lock"):
            ex.retry_locks(c, attempt, what="test lock")
        holder.execute("ROLLBACK")


# -- one range(col) parser --------------------------------------------------------------------
def test_one_parser_folds_like_postgresql():
    assert parse_by("range(ScheduledAt)") == ("range", "scheduledat")
    assert parse_by('range("ScheduledAt")') == ("range", "ScheduledAt")
    assert parse_by(' LIST ( "a ""b" ) ') == ("list", 'a "b')
    with pytest.raises(Refused):
        parse_by("range()")


def test_config_then_stores_the_column_as_partition_then_does(db, conn, cli):
    """``config --then 'range(ScheduledAt)'`` stored ``ScheduledAt`` while ``partition --then``
    stored ``scheduledat``: both fold now, as PostgreSQL does."""
    conn.execute("CREATE TABLE o (id bigint, country text NOT NULL, scheduledat timestamptz "
                 "NOT NULL, PRIMARY KEY (id, country, scheduledat)) PARTITION BY LIST (country)")
    conn.execute("CREATE TABLE o_ru PARTITION OF o FOR VALUES IN ('RU') PARTITION BY RANGE "
                 "(scheduledat)")
    conn.execute("CREATE TABLE o_ru_2026 PARTITION OF o_ru FOR VALUES FROM ('2026-01-01') "
                 "TO ('2026-02-01')")
    r = cli("--dsn", db.dsn, "config", "o", "--then", "range(ScheduledAt)", "--interval",
            "1 month", "--yes")
    assert r.returncode == 0, r.stderr
    assert conn.execute("SELECT sub_key_column FROM pgcleave.policies").fetchone() == (
        "scheduledat",)


def test_prep_accepts_the_range_form(db, conn, cli):
    conn.execute('CREATE TABLE ev (id bigserial PRIMARY KEY, "At" timestamptz NOT NULL)')
    for by in ('range("At")', "At"):
        r = cli("--dsn", db.dsn, "prep", "ev", "--by", by, "--interval", "1 month",
                "--dry-run")
        assert r.returncode == 0, r.stderr
        assert 'PARTITION BY RANGE ("At")' in r.stdout


# -- one index-definition parser --------------------------------------------------------------
def test_index_parser_reads_quoted_names_with_spaces(conn):
    conn.execute('CREATE SCHEMA "my schema"')
    conn.execute('CREATE TABLE "my schema"."the ""t""" (id int, "a b" text)')
    conn.execute('CREATE UNIQUE INDEX "idx. one" ON "my schema"."the ""t""" ("a b") '
                 "WHERE id > 0")
    (d,) = conn.execute("SELECT pg_get_indexdef('\"my schema\".\"idx. one\"'::regclass)"
                        ).fetchone()
    parsed = parse_indexdef(d)
    assert parsed.unique and parsed.name == '"idx. one"'
    assert parsed.table == '"my schema"."the ""t"""'
    assert parsed.tail == 'USING btree ("a b") WHERE (id > 0)'
    assert index_tail(d) == parsed.tail
    with pytest.raises(Refused):
        parse_indexdef("CREATE INDEX broken")


# -- hash: by copy, and --modulus never silently ignored --------------------------------------
def test_hash_needs_modulus_and_modulus_is_not_silently_ignored(db, conn, cli):
    conn.execute("CREATE TABLE h (id int PRIMARY KEY, v text)")
    r = cli("--dsn", db.dsn, "partition", "h", "--by", "hash(id)", "--dry-run")
    assert r.returncode == 3 and "--modulus" in r.stderr, (r.returncode, r.stderr)
    r = cli("--dsn", db.dsn, "partition", "h", "--by", "hash(id)", "--modulus", "4",
            "--dry-run")
    assert r.returncode == 0 and "MODULUS 4, REMAINDER 3" in r.stdout, r.stderr
    r = cli("--dsn", db.dsn, "partition", "h", "--by", "range(id)", "--modulus", "4",
            "--dry-run")
    assert r.returncode == 3 and "--modulus" in r.stderr
    assert conn.execute("SELECT relkind FROM pg_class WHERE relname = 'h'").fetchone() == ("r",)


# -- a StepFailed keeps what caused it --------------------------------------------------------
def test_step_failed_keeps_sqlstate_and_diagnostics(db):
    plan = Plan("test", "public.x", {}, [Step.sql("boom", "divide by zero", ["SELECT 1/0"])])
    with pytest.raises(StepFailed) as info:
        Executor(Settings(dsn=db.dsn)).run(plan)
    assert info.value.sqlstate == "22012"
    assert info.value.diag is not None and info.value.diag.message_primary == "division by zero"
    assert isinstance(info.value.__cause__, pgerrors.DivisionByZero)


# -- secrets reach the run, never a global ----------------------------------------------------
def test_no_process_globals_hold_secrets():
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert "_ORIGIN_DSNS" not in text and "_PENDING_PASSWORDS" not in text, path


def test_a_secret_is_given_to_the_run_only(db):
    seen: list[Any] = []
    reg = pgcleave.execute.Registry(actions={"test.peek": lambda ctx: seen.append(
        ctx.secret("password:x"))})
    step = Step.act("peek", "read the secret", action="test.peek", params={})
    plan = Plan("test", "public.y", {}, [step])
    job = Executor(Settings(dsn=db.dsn), registry=reg, secrets={"password:x": "s3cret"}).run(plan)
    assert seen == ["s3cret"]
    with db.connect() as c:
        assert "s3cret" not in str(c.execute("SELECT plan FROM pgcleave.jobs WHERE id = %s",
                                             [job]).fetchone())


def test_a_server_older_than_the_minimum_is_refused_naming_it(db, monkeypatch):
    """No server older than 15 is available here: the bar is raised past the real one."""
    from pgcleave import connection

    monkeypatch.setattr(connection, "MIN_SERVER_VERSION", 990000)
    with pytest.raises(Refused, match="needs PostgreSQL 99 or newer"):
        connection.connect(Settings(dsn=db.dsn))
