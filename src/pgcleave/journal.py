"""The ``pgcleave`` schema: the journal of jobs and steps, and the state other features keep.

Migrations are named and append-only: each runs once, recorded by name in ``pgcleave.meta``.
Feature modules register their own (``register_migration``) at import time, so features never
edit a shared list. The schema is created on first use by a command that changes something
(never by a dry run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from .connection import Connection
from .plan import Plan, Step

SCHEMA = "pgcleave"

MIGRATIONS: dict[str, str] = {}


def register_migration(name: str, ddl: str) -> None:
    """Register DDL that creates or changes objects in the ``pgcleave`` schema. Never edit a
    migration that has shipped; add a new one."""
    if name in MIGRATIONS and MIGRATIONS[name] != ddl:
        raise ValueError(f"migration {name!r} registered twice with different DDL")
    MIGRATIONS[name] = ddl


register_migration("core:jobs", """
    CREATE TABLE pgcleave.jobs (
        id          bigserial PRIMARY KEY,
        operation   text NOT NULL,
        target      text NOT NULL,
        args        jsonb NOT NULL DEFAULT '{}',
        plan        jsonb NOT NULL,
        state       text NOT NULL DEFAULT 'running'
                    CHECK (state IN ('running', 'done', 'failed', 'rolled back')),
        client_host text,
        client_pid  integer,
        error       text,
        created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
        updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    CREATE TABLE pgcleave.steps (
        job_id      bigint NOT NULL REFERENCES pgcleave.jobs ON DELETE CASCADE,
        idx         integer NOT NULL,
        name        text NOT NULL,
        step        jsonb NOT NULL,
        state       text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'running', 'done', 'skipped', 'failed', 'undone')),
        progress    jsonb NOT NULL DEFAULT '{}',
        attempts    integer NOT NULL DEFAULT 0,
        started_at  timestamptz,
        finished_at timestamptz,
        duration_ms double precision,
        error       text,
        PRIMARY KEY (job_id, idx)
    );
    """)


def ensure_schema(conn: Connection) -> None:
    """Create or upgrade the ``pgcleave`` schema. Safe under concurrency (advisory xact lock)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('pgcleave:schema', 0))")
        conn.execute("CREATE SCHEMA IF NOT EXISTS pgcleave")
        conn.execute("CREATE TABLE IF NOT EXISTS pgcleave.meta (migration text PRIMARY KEY,"
                     " applied_at timestamptz NOT NULL DEFAULT now())")
        done = {r[0] for r in conn.execute("SELECT migration FROM pgcleave.meta")}
        for name, ddl in MIGRATIONS.items():
            if name not in done:
                conn.execute(ddl.encode())
                conn.execute("INSERT INTO pgcleave.meta (migration) VALUES (%s)", [name])


def schema_exists(conn: Connection) -> bool:
    row = conn.execute("SELECT to_regclass('pgcleave.jobs') IS NOT NULL").fetchone()
    return bool(row and row[0])


@dataclass
class JobRow:
    id: int
    operation: str
    target: str
    state: str
    created_at: datetime
    updated_at: datetime
    steps_done: int
    steps_total: int
    error: str | None
    current_step: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "operation": self.operation, "target": self.target,
            "state": self.state, "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(), "steps_done": self.steps_done,
            "steps_total": self.steps_total, "error": self.error,
            "current_step": self.current_step,
        }


def create_job(conn: Connection, plan: Plan, client_host: str, client_pid: int) -> int:
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO pgcleave.jobs (operation, target, args, plan, client_host, client_pid)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            [plan.operation, plan.target, Jsonb(plan.args), Jsonb(plan.to_json()), client_host,
             client_pid],
        ).fetchone()
        assert row is not None
        job_id = int(row[0])
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO pgcleave.steps (job_id, idx, name, step) VALUES (%s, %s, %s, %s)",
                [(job_id, i, s.name, Jsonb(s.to_json())) for i, s in enumerate(plan.steps)],
            )
    return job_id


def load_plan(conn: Connection, job_id: int) -> tuple[Plan, list[str], str]:
    """The plan of a job, the state of each step, and the job's state."""
    row = conn.execute("SELECT plan, state FROM pgcleave.jobs WHERE id = %s", [job_id]).fetchone()
    if row is None:
        from .errors import NotFound

        raise NotFound(f"no job {job_id}", hint="`pgcleave jobs` lists the jobs of this database")
    data, job_state = row
    states = [r[0] for r in conn.execute(
        "SELECT state FROM pgcleave.steps WHERE job_id = %s ORDER BY idx", [job_id])]
    plan = Plan(operation=data["operation"], target=data["target"], args=data["args"],
                steps=[Step.from_json(s) for s in data["steps"]], notes=data.get("notes", []),
                warnings=data.get("warnings", []))
    return plan, states, str(job_state)


def set_step(conn: Connection, job_id: int, idx: int, state: str, *, error: str | None = None,
             duration_ms: float | None = None, attempts: int | None = None) -> None:
    conn.execute(
        sql.SQL(
            "UPDATE pgcleave.steps SET state = %(state)s, error = %(error)s,"
            " started_at = CASE WHEN %(state)s = 'running' THEN clock_timestamp()"
            "                   ELSE started_at END,"
            " finished_at = CASE WHEN %(state)s IN ('done', 'skipped', 'failed', 'undone')"
            "                    THEN clock_timestamp() ELSE finished_at END,"
            " duration_ms = coalesce(%(dur)s, duration_ms),"
            " attempts = coalesce(%(att)s, attempts)"
            " WHERE job_id = %(job)s AND idx = %(idx)s"
        ),
        {"state": state, "error": error, "dur": duration_ms, "att": attempts, "job": job_id,
         "idx": idx},
    )


def set_job(conn: Connection, job_id: int, state: str, error: str | None = None) -> None:
    conn.execute(
        "UPDATE pgcleave.jobs SET state = %s, error = %s, updated_at = clock_timestamp()"
        " WHERE id = %s", [state, error, job_id])


def save_progress(conn: Connection, job_id: int, idx: int, progress: dict[str, Any]) -> None:
    conn.execute("UPDATE pgcleave.steps SET progress = %s WHERE job_id = %s AND idx = %s",
                 [Jsonb(progress), job_id, idx])


def load_progress(conn: Connection, job_id: int, idx: int) -> dict[str, Any]:
    row = conn.execute("SELECT progress FROM pgcleave.steps WHERE job_id = %s AND idx = %s",
                       [job_id, idx]).fetchone()
    return dict(row[0]) if row and row[0] else {}


def list_jobs(conn: Connection, *, include_finished: bool = True) -> list[JobRow]:
    if not schema_exists(conn):
        return []
    where = "" if include_finished else "WHERE j.state IN ('running', 'failed')"
    rows = conn.execute(
        "SELECT j.id, j.operation, j.target, j.state, j.created_at, j.updated_at,"
        " count(*) FILTER (WHERE s.state IN ('done', 'skipped')), count(s.idx), j.error,"
        " (SELECT s2.name FROM pgcleave.steps s2 WHERE s2.job_id = j.id"
        "   AND s2.state NOT IN ('done', 'skipped') ORDER BY s2.idx LIMIT 1)"
        f" FROM pgcleave.jobs j LEFT JOIN pgcleave.steps s ON s.job_id = j.id {where}"
        " GROUP BY j.id ORDER BY j.id"
    ).fetchall()
    return [JobRow(*r) for r in rows]


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
