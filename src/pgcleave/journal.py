"""The ``pgcleave`` schema: the journal of jobs and steps, and the state other features keep.

Migrations are named and append-only: each runs once, recorded by name in ``pgcleave.meta``,
in the order of ``MIGRATIONS`` (one list, here, not assembled from import side effects). A
feature adds its tables by appending a migration; never edit one that has shipped. The schema
is created on first use by a command that changes something (never by a dry run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from .connection import Connection, pipelined_transaction
from .errors import Busy

if TYPE_CHECKING:
    from .plan import Plan

SCHEMA = "pgcleave"

MIGRATIONS: tuple[tuple[str, str], ...] = (
    ("core:jobs", """
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
    """),
    ("policy:policies", """
    CREATE TABLE pgcleave.policies (
        table_schema     text NOT NULL,
        table_name       text NOT NULL,
        strategy         text NOT NULL CHECK (strategy IN ('range', 'list', 'hash')),
        key_column       text NOT NULL,
        interval         text,
        premake          integer NOT NULL DEFAULT 3 CHECK (premake >= 0),
        retention        text,
        retention_action text NOT NULL DEFAULT 'detach'
                         CHECK (retention_action IN ('detach', 'archive', 'drop')),
        archive_dir      text,
        archive_format   text NOT NULL DEFAULT 'copy'
                         CHECK (archive_format IN ('copy', 'pg_dump')),
        time_zone        text NOT NULL DEFAULT 'UTC',
        sub_strategy     text CHECK (sub_strategy IN ('range', 'list', 'hash')),
        sub_key_column   text,
        sub_interval     text,
        placement        jsonb NOT NULL DEFAULT '[]',
        options          jsonb NOT NULL DEFAULT '{}',
        updated_at       timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (table_schema, table_name)
    );
"""),
    ("copy:copies", """
    CREATE TABLE pgcleave.copies (
        table_schema  text NOT NULL,
        table_name    text NOT NULL,
        table_oid     bigint NOT NULL,
        intermediate  text NOT NULL,
        retired       text NOT NULL,
        by_column     text NOT NULL,
        "interval"    text NOT NULL,
        time_zone     text NOT NULL DEFAULT 'UTC',
        state         text NOT NULL DEFAULT 'prepped'
                      CHECK (state IN ('prepped', 'swapped')),
        deferred      jsonb NOT NULL DEFAULT '[]',
        fill_where    text,
        filled_at     timestamptz,
        default_rows  bigint,
        verified_at   timestamptz,
        swapped_at    timestamptz,
        created_at    timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (table_schema, table_name)
    );
"""),
    ("archive:archives", """
    CREATE TABLE pgcleave.archives (
        id            bigserial PRIMARY KEY,
        table_schema  text NOT NULL,
        table_name    text NOT NULL,
        partition     text NOT NULL,
        bound         text NOT NULL,
        action        text NOT NULL,
        path          text,
        rows          bigint,
        sha256        text,
        created_at    timestamptz NOT NULL DEFAULT now(),
        restored_at   timestamptz
    );
"""),
    ("shards:move_markers", """
    CREATE TABLE pgcleave.move_markers (
        token text NOT NULL,
        at    timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    ALTER TABLE pgcleave.move_markers REPLICA IDENTITY FULL;
    """),
    ("shards:ddl_guard", """
    CREATE TABLE pgcleave.sharded_tables (
        relid      regclass PRIMARY KEY,
        columns    text NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    CREATE FUNCTION pgcleave.columns_signature(rel regclass) RETURNS text
    LANGUAGE sql STABLE AS $$
        SELECT string_agg(quote_ident(attname) || ' ' || format_type(atttypid, atttypmod), ', '
                          ORDER BY attnum)
        FROM pg_attribute WHERE attrelid = rel AND attnum > 0 AND NOT attisdropped
    $$;
    CREATE FUNCTION pgcleave.guard_ddl() RETURNS event_trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        r record;
        known text;
    BEGIN
        IF coalesce(current_setting('pgcleave.allow_ddl', true), '') = 'on' THEN
            RETURN;
        END IF;
        FOR r IN SELECT DISTINCT objid FROM pg_event_trigger_ddl_commands()
                 WHERE classid = 'pg_class'::regclass LOOP
            SELECT columns INTO known FROM pgcleave.sharded_tables WHERE relid = r.objid;
            IF FOUND AND known IS DISTINCT FROM pgcleave.columns_signature(r.objid) THEN
                RAISE EXCEPTION 'table % has partitions on other servers: ALTER TABLE here would '
                    'change its columns on this server only and break every query on it',
                    r.objid::regclass
                USING HINT = format('run the change with pgcleave, which applies it on every '
                    'server at once: pgcleave alter %s "<action>"', r.objid::regclass),
                      ERRCODE = 'feature_not_supported';
            END IF;
        END LOOP;
    END
    $$;
    """),
    ("shards:twophase", """
    CREATE TABLE pgcleave.twophase (
        gid        text PRIMARY KEY,
        server     text NOT NULL,
        job_id     bigint,
        target     text NOT NULL,
        statement  text NOT NULL,
        state      text NOT NULL DEFAULT 'preparing'
                   CHECK (state IN ('preparing', 'commit', 'done', 'aborted')),
        created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    """),
    # how a copy partitions when not by one range level: {"method": "hash", "modulus": 16} or
    # {"method": "list", "groups": [...], "names": [...], "then": col, "then_interval": iv}
    ("copy:layout", """
    ALTER TABLE pgcleave.copies ADD COLUMN layout jsonb NOT NULL DEFAULT '{}';
    """),
    # how long a statement step held its locks: the successful attempt, from its first
    # statement to its commit (duration_ms also counts the lock retries before it)
    ("core:held_ms", """
    ALTER TABLE pgcleave.steps ADD COLUMN held_ms double precision;
    """),
    # what the swap does with inbound foreign keys it cannot re-point: refuse, drop, emulate
    ("copy:inbound_fks", """
    ALTER TABLE pgcleave.copies ADD COLUMN inbound_fks text NOT NULL DEFAULT 'refuse';
    """),
    # the parts of a parallel step that share one exported snapshot (carve --jobs): each part
    # is written once, by an INSERT in the transaction that did its work (in a REPEATABLE
    # READ snapshot an UPDATE of a row another connection changed since would fail)
    ("core:step_parts", """
    CREATE TABLE pgcleave.step_parts (
        job_id   bigint NOT NULL,
        idx      integer NOT NULL,
        part     text NOT NULL,
        progress jsonb NOT NULL,
        saved_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (job_id, idx, part),
        FOREIGN KEY (job_id, idx) REFERENCES pgcleave.steps ON DELETE CASCADE
    );
    """),
    # the inbound foreign keys a swap dropped (--inbound-fks drop), as emulated_fks.Rule JSON
    # texts: unswap puts them back on the plain table
    ("copy:dropped_fks", """
    ALTER TABLE pgcleave.copies ADD COLUMN dropped_fks jsonb NOT NULL DEFAULT '[]';
    """),
)


def ensure_schema(conn: Connection) -> None:
    """Create or upgrade the ``pgcleave`` schema. Safe under concurrency (advisory xact lock).
    Every command runs this first: when every migration is applied already (each is only ever
    added), one read says so, without a transaction or a lock."""
    applied = _applied(conn)
    if all(name in applied for name, _ in MIGRATIONS):
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('pgcleave:schema', 0))")
        # CREATE SCHEMA IF NOT EXISTS checks CREATE on the database before it looks: a role
        # that may only use a schema an administrator made for it would be refused
        if conn.execute("SELECT to_regnamespace('pgcleave') IS NULL").fetchone() == (True,):
            conn.execute("CREATE SCHEMA pgcleave")
        conn.execute("CREATE TABLE IF NOT EXISTS pgcleave.meta (migration text PRIMARY KEY,"
                     " applied_at timestamptz NOT NULL DEFAULT now())")
        done = {r[0] for r in conn.execute("SELECT migration FROM pgcleave.meta")}
        for name, ddl in MIGRATIONS:
            if name not in done:
                conn.execute(ddl.encode())
                conn.execute("INSERT INTO pgcleave.meta (migration) VALUES (%s)", [name])


def _applied(conn: Connection) -> set[str]:
    """The migrations applied, in one query: on an idle autocommit connection the table is
    read at once (a database that never had the schema answers with an error, once; a
    failed statement of its own changes nothing), else after asking whether it exists."""
    if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
        try:
            return {r[0] for r in conn.execute("SELECT migration FROM pgcleave.meta")}
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            return set()
    if conn.execute("SELECT to_regclass('pgcleave.meta') IS NOT NULL").fetchone() != (True,):
        return set()
    return {r[0] for r in conn.execute("SELECT migration FROM pgcleave.meta")}


def schema_exists(conn: Connection) -> bool:
    row = conn.execute("SELECT to_regclass('pgcleave.jobs') IS NOT NULL").fetchone()
    return bool(row and row[0])


def unfinished_jobs(conn: Connection, target: str) -> list[tuple[int, str]]:
    """``(id, operation)`` of the jobs on ``target`` that a kill or a failure left running or
    failed, oldest first: they must be resumed or rolled back before anything else runs."""
    if not schema_exists(conn):
        return []
    return [(int(r[0]), str(r[1])) for r in conn.execute(UNFINISHED_SQL, [target])]


#: The query of ``unfinished_jobs`` once the schema exists (parameter: the target), for a
#: caller that sends it in a pipeline (the executor, right after taking the table's lock).
UNFINISHED_SQL = ("SELECT id, operation FROM pgcleave.jobs WHERE target = %s"
                  " AND state IN ('running', 'failed') ORDER BY id")


def refuse_unfinished(conn: Connection, target: str,
                      jobs: list[tuple[int, str]] | None = None) -> None:
    """Refuse to plan or start work on ``target`` while an earlier job on it is unfinished
    (``jobs``: ``UNFINISHED_SQL``'s answer when the caller asked it already)."""
    if jobs is None:
        jobs = unfinished_jobs(conn, target)
    if jobs:
        jid, op = jobs[0]
        raise Busy(f"job {jid} ({op}) on {target} is unfinished",
                   hint=f"finish it with `pgcleave resume {jid}` or undo it with "
                        f"`pgcleave rollback {jid}`")


@dataclass
class Residue:
    """A done step of an unfinished job whose effect still acts on the application."""

    job_id: int
    operation: str
    step: str
    kind: str  # refuses or hides
    note: str
    alive: bool  # the job's process still runs it (holds the table's advisory lock)
    undoable: bool  # the step has an undo (rollback clears it)

    def message(self) -> str:
        how = ((f"`pgcleave rollback {self.job_id}` clears it, " if self.undoable else "")
               + f"`pgcleave resume {self.job_id}` finishes the job")
        return (f"{self.note}: left by job {self.job_id} ({self.operation}), step {self.step}"
                + (" (the job is still running)" if self.alive else f"; {how}"))


def residue(conn: Connection, target: str) -> list[Residue]:
    """What unfinished jobs on ``target`` left that refuses statements or hides rows."""
    if not schema_exists(conn):
        return []
    return residue_from(conn.execute(residue_sql(target)).fetchall())


#: Whether the process running job ``j`` is alive: it holds the advisory lock of the job's
#: target (``j``: a row of pgcleave.jobs in the query this is part of).
JOB_ALIVE_SQL = (
    "EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
    " AND l.objsubid = 1 AND l.classid = ((hashtextextended('pgcleave:' || j.target, 0)"
    " >> 32) & 4294967295)::oid AND l.objid = (hashtextextended('pgcleave:' || j.target, 0)"
    " & 4294967295)::oid)")


def residue_sql(target: str) -> sql.Composed:
    """The query of ``residue`` (when the schema exists), for a caller that sends it with
    others in one pipeline; ``residue_from`` reads its rows."""
    return sql.SQL(
        "SELECT j.id, j.operation, s.name, s.step->>'residue', coalesce(s.step->>'residue_note',"
        " ''), " + JOB_ALIVE_SQL + ", jsonb_array_length(coalesce(s.step->'undo', '[]')) > 0"
        " FROM pgcleave.jobs j JOIN pgcleave.steps s ON s.job_id = j.id"
        " WHERE j.target = {} AND j.state IN ('running', 'failed')"
        " AND s.state IN ('done', 'skipped') AND s.step->>'residue' IN ('refuses', 'hides')"
        " ORDER BY j.id, s.idx").format(sql.Literal(target))


def residue_from(rows: list[tuple[Any, ...]]) -> list[Residue]:
    return [Residue(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), bool(r[5]),
                    bool(r[6])) for r in rows]


def step_progress(conn: Connection, job_id: int) -> list[tuple[str, dict[str, Any]]]:
    """``(step name, saved progress)`` of every step of a job, in order."""
    return [(str(r[0]), dict(r[1] or {})) for r in conn.execute(
        "SELECT name, progress FROM pgcleave.steps WHERE job_id = %s ORDER BY idx", [job_id])]


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
    args: dict[str, Any] = field(default_factory=dict)  # the options it was started with

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "operation": self.operation, "target": self.target,
            "state": self.state, "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(), "steps_done": self.steps_done,
            "steps_total": self.steps_total, "error": self.error,
            "current_step": self.current_step, "args": self.args,
        }


def args_text(args: dict[str, Any]) -> str:
    """A job's args on one line for people (``jobs``, ``report``): ``key=value``, by key."""
    def one(v: Any) -> str:
        return ",".join(map(str, v)) if isinstance(v, list) else str(v)

    return " ".join(f"{k}={one(v)}" for k, v in sorted(args.items()))


def create_job(conn: Connection, plan: Plan, client_host: str, client_pid: int) -> int:
    """The job and its steps, in one transaction of two round trips."""
    with pipelined_transaction(conn) as sync:
        cur = conn.execute(
            "INSERT INTO pgcleave.jobs (operation, target, args, plan, client_host, client_pid)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            [plan.operation, plan.target, Jsonb(plan.args), Jsonb(plan.to_json()), client_host,
             client_pid],
        )
        sync()
        row = cur.fetchone()
        assert row is not None
        job_id = int(row[0])
        with conn.cursor() as steps:
            steps.executemany(
                "INSERT INTO pgcleave.steps (job_id, idx, name, step) VALUES (%s, %s, %s, %s)",
                [(job_id, i, s.name, Jsonb(s.to_json())) for i, s in enumerate(plan.steps)],
            )
    return job_id


def load_plan(conn: Connection, job_id: int) -> tuple[Plan, list[str], str]:
    """The plan of a job, the state of each step, and the job's state."""
    # imported when a plan is read: ``status`` reads the journal, never a plan
    from .plan import Plan, Step
    from .preflight import Requirement

    row = conn.execute("SELECT plan, state FROM pgcleave.jobs WHERE id = %s", [job_id]).fetchone()
    if row is None:
        from .errors import NotFound

        raise NotFound(f"no job {job_id}", hint="`pgcleave jobs` lists the jobs of this database")
    data, job_state = row
    states = [r[0] for r in conn.execute(
        "SELECT state FROM pgcleave.steps WHERE job_id = %s ORDER BY idx", [job_id])]
    plan = Plan(operation=data["operation"], target=data["target"], args=data["args"],
                steps=[Step.from_json(s) for s in data["steps"]], notes=data.get("notes", []),
                warnings=data.get("warnings", []),
                requires=[Requirement.from_json(r) for r in data.get("requires", [])])
    return plan, states, str(job_state)


def set_step(conn: Connection, job_id: int, idx: int, state: str, *, error: str | None = None,
             duration_ms: float | None = None, attempts: int | None = None,
             held_ms: float | None = None) -> None:
    conn.execute(
        sql.SQL(
            "UPDATE pgcleave.steps SET state = %(state)s, error = %(error)s,"
            " started_at = CASE WHEN %(state)s = 'running' THEN clock_timestamp()"
            "                   ELSE started_at END,"
            " finished_at = CASE WHEN %(state)s IN ('done', 'skipped', 'failed', 'undone')"
            "                    THEN clock_timestamp() ELSE finished_at END,"
            " duration_ms = coalesce(%(dur)s, duration_ms),"
            " attempts = coalesce(%(att)s, attempts),"
            " held_ms = coalesce(%(held)s, held_ms)"
            " WHERE job_id = %(job)s AND idx = %(idx)s"
        ),
        {"state": state, "error": error, "dur": duration_ms, "att": attempts, "held": held_ms,
         "job": job_id, "idx": idx},
    )


def start_step(conn: Connection, job_id: int, idx: int) -> dict[str, Any]:
    """Mark a step running and return its saved progress (one round trip: an action reads
    it first thing)."""
    row = conn.execute(
        "UPDATE pgcleave.steps SET state = 'running', error = NULL,"
        " started_at = clock_timestamp() WHERE job_id = %s AND idx = %s RETURNING progress",
        [job_id, idx]).fetchone()
    return dict(row[0]) if row and row[0] else {}


def set_job(conn: Connection, job_id: int, state: str, error: str | None = None) -> None:
    conn.execute(
        "UPDATE pgcleave.jobs SET state = %s, error = %s, updated_at = clock_timestamp()"
        " WHERE id = %s", [state, error, job_id])


def save_progress(conn: Connection, job_id: int, idx: int, progress: dict[str, Any]) -> None:
    conn.execute("UPDATE pgcleave.steps SET progress = %s WHERE job_id = %s AND idx = %s",
                 [Jsonb(progress), job_id, idx])


def save_progress_part(conn: Connection, job_id: int, idx: int, key: str, part: str,
                       progress: dict[str, Any]) -> None:
    """Save ``progress[key][part]`` of a step alone, leaving the rest as it is in the row's
    latest version: the connections of a parallel action each save their own part (an
    UPDATE in READ COMMITTED applies ``jsonb_set`` to the version another one committed)."""
    conn.execute("UPDATE pgcleave.steps SET progress = jsonb_set(coalesce(progress, '{}'),"
                 " ARRAY[%s, %s], %s) WHERE job_id = %s AND idx = %s",
                 [key, part, Jsonb(progress), job_id, idx])


def insert_part(conn: Connection, job_id: int, idx: int, part: str,
                progress: dict[str, Any]) -> None:
    """Record one finished part of a parallel step, in the transaction that did its work
    (an INSERT of a new row: safe in a snapshot the parts' transactions share)."""
    conn.execute("INSERT INTO pgcleave.step_parts (job_id, idx, part, progress)"
                 " VALUES (%s, %s, %s, %s)", [job_id, idx, part, Jsonb(progress)])


def load_parts(conn: Connection, job_id: int, idx: int) -> dict[str, dict[str, Any]]:
    return {str(r[0]): dict(r[1]) for r in conn.execute(
        "SELECT part, progress FROM pgcleave.step_parts WHERE job_id = %s AND idx = %s",
        [job_id, idx])}


def clear_parts(conn: Connection, job_id: int, idx: int) -> None:
    conn.execute("DELETE FROM pgcleave.step_parts WHERE job_id = %s AND idx = %s",
                 [job_id, idx])


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
        "   AND s2.state NOT IN ('done', 'skipped') ORDER BY s2.idx LIMIT 1), j.args"
        f" FROM pgcleave.jobs j LEFT JOIN pgcleave.steps s ON s.job_id = j.id {where}"
        " GROUP BY j.id ORDER BY j.id"
    ).fetchall()
    return [_job_row(r) for r in rows]


def _job_row(r: tuple[Any, ...]) -> JobRow:
    job = JobRow(*r[:-1])
    job.args = dict(r[-1] or {})
    return job


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


@dataclass
class StepTiming:
    """When one step of a job ran and how long it held its locks."""

    job_id: int
    idx: int
    name: str
    description: str
    state: str
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    attempts: int
    lock: str | None  # the strongest lock the plan says the step takes
    lock_on: str | None
    action: str | None
    #: ms the step held its locks: for statement steps the successful attempt's transaction
    #: (the executor measures it); for an action, what its cut-over saved in its progress
    #: (move, carve: one figure or a list, summed), else its longest attempt through
    #: retry_locks/run_ddl; None when nothing measured it (or a job older than held_ms)
    held_ms: float | None

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for k in ("started_at", "finished_at"):
            d[k] = d[k].isoformat() if d[k] is not None else None
        return d


def step_timings(conn: Connection, target: str) -> list[tuple[JobRow, list[StepTiming]]]:
    """The jobs on ``target`` (oldest first), each with its steps' timings, in order."""
    from .plan import Step

    jobs = [j for j in list_jobs(conn) if j.target == target]
    if not jobs:
        return []
    has_held = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'pgcleave.steps'::regclass"
        " AND attname = 'held_ms' AND NOT attisdropped)").fetchone() == (True,)
    rows = conn.execute(
        "SELECT job_id, idx, name, step, state, started_at, finished_at, duration_ms, attempts,"
        f" progress, {'held_ms' if has_held else 'NULL::float8'} FROM pgcleave.steps"
        " WHERE job_id = ANY(%s) ORDER BY job_id, idx", [[j.id for j in jobs]]).fetchall()
    by_job: dict[int, list[StepTiming]] = {j.id: [] for j in jobs}
    for job_id, idx, name, step, state, started, finished, dur, att, progress, held in rows:
        s = Step.from_json(step)
        lock = s.strongest_lock
        saved = _saved_held(progress or {}) if s.action else None
        held = saved if saved is not None else held
        by_job[int(job_id)].append(StepTiming(
            int(job_id), int(idx), str(name), s.description, str(state), started, finished,
            None if dur is None else float(dur), int(att or 0),
            None if lock is None else lock.level.value, None if lock is None else lock.on,
            s.action, None if held is None else float(held)))
    return [(j, by_job[j.id]) for j in jobs]


def _saved_held(progress: dict[str, Any]) -> float | None:
    v = progress.get("held_ms")
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, list) and v and all(isinstance(x, int | float) for x in v):
        return float(sum(v))
    return None
