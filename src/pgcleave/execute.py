"""The one executor. Every plan of every operation runs through ``Executor``.

What it guarantees, in one place:
- every DDL statement runs under a short ``lock_timeout``; a lock it cannot get quickly is given
  up and asked for again after a jittered, growing pause, so pgcleave never sits at the head of a
  lock queue with the application's queries piling up behind it;
- two runs on one table never overlap (a session advisory lock keyed by the table's name);
- each job and step is journaled in ``pgcleave.jobs``/``pgcleave.steps``. A transactional step
  marks itself done in its own transaction, so after a kill it is either done and recorded or not
  done at all; ``resume`` continues from the first step not done, skipping steps whose guard says
  their effect is already there; ``rollback`` runs the undo of done steps in reverse.
"""

from __future__ import annotations

import importlib
import os
import random
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from . import faults, journal, preflight
from .connection import Connection, Settings, connect
from .errors import Busy, LockContention, Overloaded, PgcleaveError, Refused, StepFailed
from .plan import Plan, Step
from .throttle import Pacer, Throttle, validate_limits

T = TypeVar("T")

RETRYABLE = (pgerrors.LockNotAvailable, pgerrors.DeadlockDetected,
             pgerrors.SerializationFailure)


@dataclass
class Event:
    """What the executor reports to its caller (the CLI renders these on stderr)."""

    kind: str  # job-start, step-start, step-done, step-skipped, retry, progress, job-done
    job_id: int | None = None
    index: int = 0
    total: int = 0
    step: Step | None = None
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)


Progress = Callable[[Event], None]

ActionFn = Callable[["ActionContext"], None]
RecoveryHook = Callable[[Connection], object]


@dataclass(frozen=True)
class Registry:
    """What the executor can run besides SQL: the Python actions a journaled step may name,
    and the recovery passes that settle what killed jobs left behind (e.g. prepared
    transactions on shards, a split's CHECK on a DEFAULT whose job is gone; ``resume``,
    ``rollback`` and ``maintain`` run them first, and each must be idempotent and leave an
    unfinished job's work alone).

    ``aliases`` maps the action names earlier versions journaled to today's, so a job planned
    by one of them still resumes. The registry of pgcleave's own operations is
    ``pgcleave.ops.registry.REGISTRY``, the default (``default_registry``)."""

    actions: Mapping[str, ActionFn] = field(default_factory=dict)
    recovery_hooks: tuple[RecoveryHook, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)

    def action(self, name: str) -> ActionFn | None:
        return self.actions.get(self.aliases.get(name, name))

    def recover(self, conn: Connection) -> list[Any]:
        """Run every recovery hook; returns what they settled (the items of the lists the hooks
        return, e.g. ``(gid, 'committed')`` pairs)."""
        settled: list[Any] = []
        for hook in self.recovery_hooks:
            res = hook(conn)
            if isinstance(res, list):
                settled += res
        return settled


#: The composition root, named rather than imported: it imports every operation, which sit
#: above this module, and a command that runs no plan (``--version``, ``status``) should not
#: pay for importing them. Resolved on the first ``default_registry()``.
DEFAULT_REGISTRY = "pgcleave.ops.registry"

_default: Registry | None = None


def use_registry(registry: Registry) -> None:
    """Make ``registry`` the one every ``Executor`` built without its own uses."""
    global _default
    _default = registry


def default_registry() -> Registry:
    """The registry installed by ``use_registry``, else pgcleave's own (``DEFAULT_REGISTRY``)."""
    global _default
    if _default is None:
        registry = importlib.import_module(DEFAULT_REGISTRY).REGISTRY
        assert isinstance(registry, Registry)
        _default = registry
    return _default


def run_recovery(conn: Connection, registry: Registry | None = None) -> list[Any]:
    """Run the recovery hooks of ``registry`` (the default one when None)."""
    return (registry or default_registry()).recover(conn)


@dataclass
class ActionContext:
    """What an action gets: the job's connection, its saved progress, and the retry helper."""

    executor: Executor
    conn: Connection
    job_id: int
    index: int
    step: Step
    #: the longest one attempt made through ``retry_locks``/``run_ddl`` lasted (ms): how long
    #: the action held the locks it waited for at most (journaled as the step's held_ms)
    held_ms: float | None = None
    #: the step's saved progress as read when it started, until ``load`` or ``save``
    loaded: dict[str, Any] | None = None
    _throttle: Throttle | None = None  # the last one ``throttle()`` made

    def _held(self, ms: float) -> None:
        self.held_ms = ms if self.held_ms is None else max(self.held_ms, ms)

    @property
    def params(self) -> Mapping[str, Any]:
        return self.step.params

    @property
    def settings(self) -> Settings:
        return self.executor.settings

    def load(self) -> dict[str, Any]:
        if self.loaded is not None:  # read as the step started, nothing saved since
            progress, self.loaded = self.loaded, None
            return progress
        return journal.load_progress(self.conn, self.job_id, self.index)

    def save(self, progress: dict[str, Any]) -> None:
        self.loaded = None
        journal.save_progress(self.conn, self.job_id, self.index, progress)

    def progress(self, message: str = "", **data: Any) -> None:
        self.executor.emit(Event("progress", self.job_id, self.index, 0, self.step, message, data))

    def retry_locks(self, attempt: Callable[[], T], *, what: str | None = None,
                    cap: float = 5.0, hint: str | None = None) -> T:
        """``Executor.retry_locks`` on this job's connection, for this step."""
        def timed() -> T:
            t0 = time.monotonic()
            result = attempt()
            self._held((time.monotonic() - t0) * 1000)
            return result

        return self.executor.retry_locks(self.conn, timed, step=self.step, what=what, cap=cap,
                                         hint=hint)

    def set_lock_timeout(self, conn: Connection, ms: float | None = None, *,
                         local: bool = True) -> None:
        """``SET [LOCAL] lock_timeout`` to ``ms`` (the run's --lock-timeout when None)."""
        self.executor.set_lock_timeout(
            conn, self.settings.lock_timeout_ms if ms is None else ms, local=local)

    def run_ddl(self, statements: list[str], *, transactional: bool = True) -> float:
        ms = self.executor.run_statements(self.conn, statements, transactional=transactional,
                                          step=self.step)
        self._held(ms)
        return ms

    def connect(self, purpose: str) -> Connection:
        return connect(self.settings, purpose=purpose)

    def secret(self, key: str) -> str | None:
        """A secret handed to this run (``Executor(secrets=...)``), or None."""
        return self.executor.secret(key)

    def throttle(self) -> Throttle:
        """The run's ``--max-load``/``--critical-load`` throttle for this action's bulk loop
        (``check()`` between batches; close it, or use it as a context manager). Its pauses
        and its stop are reported as this step's progress. The pacers made after it ask it
        whether the application is at work (``--duty auto``)."""
        self._throttle = Throttle(self.settings, lambda msg, data: self.progress(msg, **data),
                                  job_id=self.job_id)
        return self._throttle

    def pacer(self, cap: int, first: int, floor: int = 1, *,
              target_ms: float | None = None) -> Pacer:
        """Batch sizes for ``--batch-time`` (or ``target_ms``), rests for ``--duty`` (see
        ``throttle.Pacer``); under ``--duty auto``, only while the step's throttle sees the
        application at work."""
        t = self._throttle
        return Pacer(self.settings.batch_time_ms if target_ms is None else target_ms, cap,
                     first, floor, duty=self.settings.duty_pct,
                     busy=t.app_busy if t is not None and self.settings.duty_auto else None)


class Executor:
    def __init__(self, settings: Settings | None = None, progress: Progress | None = None, *,
                 secrets: Mapping[str, str] | None = None,
                 registry: Registry | None = None) -> None:
        """``secrets`` (passwords, connection strings with passwords) reach the actions of
        this run as ``ctx.secret(key)`` and nothing else: never the plan, the journal or the
        output. A job resumed in another process gets only the secrets given to that run."""
        self.settings = settings or Settings()
        self._progress = progress
        self._secrets = dict(secrets or {})
        self.registry = registry or default_registry()

    def secret(self, key: str) -> str | None:
        return self._secrets.get(key)

    def emit(self, event: Event) -> None:
        if self._progress is not None:
            self._progress(event)

    # -- public entry points ------------------------------------------------------------------
    def run(self, plan: Plan) -> int:
        """Journal ``plan`` as a new job and run it to the end. Returns the job id."""
        validate_limits(self.settings)
        with connect(self.settings, purpose="job") as conn:
            validate_limits(self.settings, conn)
            preflight.refuse_missing(conn, [preflight.journal_schema(), preflight.journal_tables(
                preflight.parallel_copy(plan.steps)), *plan.requires],
                f"{plan.operation} {plan.target}")
            journal.ensure_schema(conn)
            with self._table_lock(conn, plan.target, unfinished=True) as jobs:
                journal.refuse_unfinished(conn, plan.target, jobs)
                job_id = journal.create_job(conn, plan, socket.gethostname(), os.getpid())
                self._run_job(conn, job_id, plan, ["pending"] * len(plan.steps))
        return job_id

    def resume(self, job_id: int) -> Plan:
        """Continue a job from the first step not done."""
        validate_limits(self.settings)
        with connect(self.settings, purpose="job") as conn, \
                self._claim(conn, job_id, "resume") as (plan, states):
            validate_limits(self.settings, conn)
            journal.set_job(conn, job_id, "running")
            self._run_job(conn, job_id, plan, states)
        return plan

    def rollback(self, job_id: int) -> Plan:
        """Undo the done steps of an unfinished job, last first."""
        with connect(self.settings, purpose="job") as conn, \
                self._claim(conn, job_id, "roll back") as (plan, states):
            for idx in reversed(range(len(plan.steps))):
                step = plan.steps[idx]
                if states[idx] not in ("done", "running", "failed"):
                    continue
                if states[idx] == "failed" and step.transactional and not step.action:
                    # Its transaction rolled back: nothing of it is there to undo.
                    journal.set_step(conn, job_id, idx, "undone")
                    continue
                if (not step.undo and not step.nothing_to_undo and states[idx] == "done"
                        and step.ddl):
                    raise StepFailed(
                        f"step {step.name!r} of job {job_id} cannot be undone", job_id=job_id,
                        hint=f"finish the job instead: pgcleave resume {job_id}")
                self.emit(Event("step-start", job_id, idx, len(plan.steps), step,
                                f"undo {step.description}"))
                if step.undo:
                    self.run_statements(conn, step.undo, transactional=step.transactional,
                                        step=step)
                journal.set_step(conn, job_id, idx, "undone")
                self.emit(Event("step-done", job_id, idx, len(plan.steps), step, "undone"))
            journal.set_job(conn, job_id, "rolled back")
        return plan

    def undo_residue(self, job_id: int) -> str:
        """For a job whose process died (kill -9, machine lost): what a failure would have done
        at once, done now. Every done step whose effect refuses the application's statements
        or hides its rows is undone; the rest stays for ``resume``. Returns what was undone and
        what is still in place ("" when the job left nothing harmful)."""
        with connect(self.settings, purpose="job") as conn, \
                self._claim(conn, job_id, "clear") as (plan, states):
            done = [i for i, s in enumerate(states) if s in ("done", "skipped")]
            if not any(plan.steps[i].residue.harmful for i in done):
                return ""
            message = self._undo_residue(conn, job_id, plan, done)
            journal.set_job(conn, job_id, "failed", error="stopped; " + message.strip())
            return message.strip()

    @contextmanager
    def _claim(self, conn: Connection, job_id: int, verb: str
               ) -> Iterator[tuple[Plan, list[str]]]:
        """Take the job's table lock, then read its steps' states. Read before the lock they
        could be stale (another process still finishing the job), and a step could run twice."""
        if not journal.schema_exists(conn):
            raise Refused(f"no job {job_id}: this database has no pgcleave journal")
        journal.ensure_schema(conn)  # a job journaled before an upgrade: the columns it writes
        target = journal.load_plan(conn, job_id)[0].target
        with self._table_lock(conn, target):
            plan, states, job_state = journal.load_plan(conn, job_id)
            if job_state in ("done", "rolled back"):
                raise Refused(f"job {job_id} is already {job_state}; nothing to {verb}",
                              hint="an operation that finished has its own reverse command"
                              if verb == "roll back" and job_state == "done" else None)
            # a rollback's undo statements write no range of a copy
            parts = verb == "resume" and preflight.parallel_copy(plan.steps)
            preflight.refuse_missing(conn, [preflight.journal_tables(parts), *plan.requires],
                                     f"{verb} job {job_id}")
            self.registry.recover(conn)
            yield plan, states

    # -- internals -----------------------------------------------------------------------------
    @contextmanager
    def _table_lock(self, conn: Connection, target: str, *, unfinished: bool = False
                    ) -> Iterator[list[tuple[int, str]] | None]:
        """Session advisory lock keyed by the target's name; released when the job ends.
        With ``unfinished``, the target's unfinished jobs are read in the same round trip,
        once the lock is held (a statement of its own after it), and yielded."""
        key = "pgcleave:" + target
        with conn.pipeline():
            got = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [key])
            jobs = conn.execute(journal.UNFINISHED_SQL, [target]) if unfinished else None
        row = got.fetchone()
        if not (row and row[0]):
            holder = conn.execute(
                "SELECT a.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a"
                " USING (pid) WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                " AND l.classid = ((hashtextextended(%s, 0) >> 32) & 4294967295)::oid"
                " AND l.objid = (hashtextextended(%s, 0) & 4294967295)::oid LIMIT 1",
                [key, key]).fetchone()
            who = f" (backend pid {holder[0]}, {holder[1]})" if holder else ""
            raise Busy(f"another pgcleave run is working on {target}{who}",
                       hint="wait for it to finish; `pgcleave jobs` shows what it is doing")
        try:
            yield None if jobs is None else [(int(r[0]), str(r[1])) for r in jobs.fetchall()]
        finally:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [key])

    def _run_job(self, conn: Connection, job_id: int, plan: Plan, states: list[str]) -> None:
        total = len(plan.steps)
        self.emit(Event("job-start", job_id, 0, total, None, f"{plan.operation} {plan.target}"))
        done = [i for i, s in enumerate(states) if s in ("done", "skipped")]
        for idx, step in enumerate(plan.steps):
            if states[idx] in ("done", "skipped"):
                continue
            try:
                _fault("before", step, idx)
                self._run_step(conn, job_id, idx, total, step)
            except PgcleaveError as exc:
                self._fail(conn, job_id, idx, str(exc))
                undo = done + _kept_effect(step, idx)
                if isinstance(exc, Overloaded):
                    exc.job_id = job_id
                    exc.hint = f"resume with pgcleave resume {job_id} once the load is down"
                if isinstance(exc, LockContention):
                    exc.hint = (f"the job stays resumable: pgcleave resume {job_id} "
                                f"(or pgcleave rollback {job_id})")
                exc.message += self._undo_residue(conn, job_id, plan, undo)
                raise
            except (OSError, psycopg.Error) as exc:  # a server error; a file not written
                msg = str(exc).strip()
                self._fail(conn, job_id, idx, msg)
                pg = exc if isinstance(exc, psycopg.Error) else None
                raise StepFailed(f"job {job_id}, step {idx + 1}/{total} ({step.name}: "
                                 f"{step.description}) failed: {msg}"
                                 + self._undo_residue(conn, job_id, plan,
                                                      done + _kept_effect(step, idx)),
                                 job_id=job_id,
                                 hint=f"fix the cause, then `pgcleave resume {job_id}`; or "
                                      f"`pgcleave rollback {job_id}`",
                                 sqlstate=pg.sqlstate if pg else None,
                                 diag=pg.diag if pg else None) from exc
            done.append(idx)
            _fault("after", step, idx)
        journal.set_job(conn, job_id, "done")
        self.emit(Event("job-done", job_id, total, total, None, "done"))

    def _settle(self, conn: Connection) -> str:
        """Run the recovery passes right after a failure: work decided but not finished outside
        this database (a change prepared on a shard and committed here) would otherwise keep
        its locks there until someone resumes."""
        if conn.closed:
            return ""
        try:
            settled = self.registry.recover(conn)
        except (PgcleaveError, psycopg.Error) as exc:
            return f"\nthe recovery pass failed too ({str(exc).strip()}); resume runs it again"
        return ("\nsettled at once: " + ", ".join(
            " ".join(map(str, x)) if isinstance(x, tuple) else str(x) for x in settled)
            if settled else "")

    def _undo_residue(self, conn: Connection, job_id: int, plan: Plan, done: list[int]) -> str:
        """After a failure, undo at once every done step whose effect, left alone, refuses the
        application's statements or hides its rows (a CHECK being validated, a detached
        partition); the rest waits for ``resume``. Later done steps that rested on an undone
        one are set pending again: on resume their guards say whether they are still done.
        Returns what to add to the error message."""
        out = self._settle(conn)
        harmful = [i for i in reversed(done) if plan.steps[i].residue.harmful]
        if not harmful:
            return out
        undone: list[str] = []
        left: list[str] = []
        for i in harmful:
            step = plan.steps[i]
            note = step.residue_note or f"{step.description} ({step.residue})"
            if not step.undo or conn.closed:
                left.append(note)
                continue
            try:
                self.emit(Event("step-start", job_id, i, len(plan.steps), step,
                                f"undo at once: {step.description}"))
                self.run_statements(conn, step.undo, transactional=step.transactional,
                                    step=step)
            except (PgcleaveError, psycopg.Error) as exc:
                if not conn.closed and conn.info.transaction_status != \
                        psycopg.pq.TransactionStatus.IDLE:
                    conn.rollback()
                left.append(f"{note} (its undo failed: {str(exc).strip()})")
                continue
            journal.set_step(conn, job_id, i, "undone")
            for j in done:
                if j > i and (plan.steps[j].guard or plan.steps[j].nothing_to_undo):
                    journal.set_step(conn, job_id, j, "pending")
            self.emit(Event("step-done", job_id, i, len(plan.steps), step, "undone"))
            undone.append(note)
        if undone:
            out += "\nundone at once, so the application is not affected: " + "; ".join(undone)
        if left:
            out += (f"\nSTILL IN PLACE until `pgcleave resume {job_id}` finishes the job"
                    + (f" (or `pgcleave rollback {job_id}` undoes it)"
                       if all(plan.steps[i].undo for i in harmful) else "")
                    + ": " + "; ".join(left))
        return out

    def _fail(self, conn: Connection, job_id: int, idx: int, message: str) -> None:
        if conn.closed:
            return
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        journal.set_step(conn, job_id, idx, "failed", error=message)
        journal.set_job(conn, job_id, "failed", error=message)

    def _guard_holds(self, conn: Connection, step: Step) -> bool:
        if not step.guard:
            return False
        row = conn.execute(step.guard).fetchone()
        return bool(row and row[0])

    def _run_step(self, conn: Connection, job_id: int, idx: int, total: int, step: Step) -> None:
        if self._guard_holds(conn, step):
            journal.set_step(conn, job_id, idx, "skipped")
            self.emit(Event("step-skipped", job_id, idx, total, step, "already done"))
            return
        self.emit(Event("step-start", job_id, idx, total, step, step.description))
        started = time.monotonic()
        if step.action:
            fn = self.registry.action(step.action)
            if fn is None:
                raise StepFailed(f"unknown action {step.action!r} in job {job_id}", job_id=job_id,
                                 hint="this job was planned by a newer pgcleave; upgrade")
            ctx = ActionContext(self, conn, job_id, idx, step)
            ctx.loaded = journal.start_step(conn, job_id, idx)
            fn(ctx)
            journal.set_step(conn, job_id, idx, "done",
                             duration_ms=(time.monotonic() - started) * 1000,
                             held_ms=ctx.held_ms)
        elif step.transactional:
            def mark_done(held_ms: float) -> None:
                journal.set_step(conn, job_id, idx, "done",
                                 duration_ms=(time.monotonic() - started) * 1000,
                                 held_ms=held_ms)

            held = self.run_statements(conn, step.statements, transactional=True, step=step,
                                       finish=mark_done)
            self.emit(Event("step-done", job_id, idx, total, step, step.description,
                            {"held_ms": held}))
            return
        else:
            journal.set_step(conn, job_id, idx, "running")
            held = self.run_statements(conn, step.statements, transactional=False, step=step)
            journal.set_step(conn, job_id, idx, "done",
                             duration_ms=(time.monotonic() - started) * 1000, held_ms=held)
            self.emit(Event("step-done", job_id, idx, total, step, step.description,
                            {"held_ms": held}))
            return
        self.emit(Event("step-done", job_id, idx, total, step, step.description,
                        {"ms": (time.monotonic() - started) * 1000}))

    def run_statements(self, conn: Connection, statements: Sequence[str], *, transactional: bool,
                       step: Step | None = None,
                       finish: Callable[[float], None] | None = None) -> float:
        """Run statements under lock_timeout with jittered exponential retry.

        Returns the duration in ms of the successful attempt: for a transactional step that is
        how long its locks were held (plus the time to get them). ``finish`` runs inside that
        transaction, just before its commit, with the ms its locks have been held so far.
        """
        ddl = step.ddl if step is not None else True
        timeout = self.settings.lock_timeout_ms if ddl else 0
        stmt_timeout = self.settings.statement_timeout_ms
        cleanup = step.retry_cleanup if step is not None else []
        if transactional:
            def attempt() -> float:
                t0 = time.monotonic()
                with conn.transaction():
                    self.set_lock_timeout(conn, timeout)
                    conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(
                        sql.Literal(int(stmt_timeout))))
                    for s in statements:
                        conn.execute(s.encode())
                    if step is not None:
                        _fault("inside", step, -1)
                    if finish is not None:
                        finish((time.monotonic() - t0) * 1000)
                return (time.monotonic() - t0) * 1000

            return self.retry_locks(conn, attempt, step=step, cleanup=cleanup)

        total = 0.0
        for i, s in enumerate(statements):
            def attempt_one(s: str = s) -> float:
                t0 = time.monotonic()
                self.set_lock_timeout(conn, timeout, local=False)
                conn.execute(sql.SQL("SET statement_timeout = {}").format(
                    sql.Literal(int(stmt_timeout))))
                try:
                    conn.execute(s.encode())
                finally:
                    conn.execute("RESET lock_timeout")
                    conn.execute("RESET statement_timeout")
                return (time.monotonic() - t0) * 1000

            total += self.retry_locks(conn, attempt_one, step=step, cleanup=cleanup)
            if step is not None and i < len(statements) - 1:
                _fault("inside", step, -1)  # one statement done (autocommit), not the others
        return total

    @staticmethod
    def set_lock_timeout(conn: Connection, ms: float, *, local: bool = True) -> None:
        """``SET [LOCAL] lock_timeout``: the one place it is written. ``local`` (the default)
        lasts until the end of the current transaction; otherwise until ``RESET``."""
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}" if local else
                             "SET lock_timeout = {}").format(sql.Literal(max(int(ms), 0))))

    @staticmethod
    def once_under_lock_timeout(conn: Connection, ms: float, statement: sql.Composed
                                ) -> bool:
        """Run ``statement`` in a transaction of its own under a ``lock_timeout`` of ``ms``,
        once: False when the lock was not granted in time (no retry: for housekeeping that
        the next run tries again, such as the recovery pass)."""
        try:
            with conn.transaction():
                Executor.set_lock_timeout(conn, ms)
                conn.execute(statement)
            return True
        except pgerrors.LockNotAvailable:
            return False

    def retry_locks(self, conn: Connection, attempt: Callable[[], T], *,
                    step: Step | None = None, what: str | None = None,
                    cleanup: Sequence[str] = (), cap: float = 5.0,
                    hint: str | None = None) -> T:
        """Run ``attempt`` until it does not fail on a lock (lock timeout, deadlock, or a
        serialization failure), pausing ``backoff(n, cap=cap)`` between attempts, up to the
        lock retry limit; then raise ``LockContention``. The one retry loop of pgcleave: every
        step and action that waits on the application's locks goes through it.

        Cut-overs whose lock request blocks writers while it waits (a swap's ACCESS EXCLUSIVE)
        pass a low ``cap``: short, frequent attempts find the moment between two writer
        statements sooner than seconds-long pauses do, and each attempt blocks writers no
        longer than its lock_timeout."""
        deadline = time.monotonic() + self.settings.lock_retry_limit_s
        n = 0
        while True:
            try:
                return attempt()
            except RETRYABLE as exc:
                n += 1
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.rollback()
                for c in cleanup:
                    conn.execute(c.encode())
                pause = backoff(n, cap=cap)
                label = what or (step.description if step else "statement")
                if time.monotonic() + pause > deadline:
                    raise LockContention(
                        f"gave up after {n} attempts over {self.settings.lock_retry_limit_s:.0f}s"
                        f" waiting for a lock ({label}): {str(exc).strip()}",
                        hint=hint or "a long transaction holds the table; find it in "
                                     "pg_stat_activity, or raise --lock-retry-limit") from None
                self.emit(Event("retry", message=f"{type(exc).__name__}: retry {n} in "
                                                 f"{pause * 1000:.0f} ms ({label})", step=step,
                                data={"attempt": n, "pause_s": pause}))
                time.sleep(pause)


def backoff(attempt: int, base: float = 0.05, cap: float = 5.0) -> float:
    """Equal-jitter exponential backoff: half fixed, half random, doubling up to ``cap``."""
    d: float = min(cap, base * 2.0 ** min(attempt, 20))
    return d / 2 + random.uniform(0, d / 2)


def _fault(when: str, step: Step, idx: int) -> None:
    """Fault injection for tests: PGCLEAVE_FAULT=kill-before:STEP, kill-after:STEP, or
    kill-inside:STEP (statements sent, transaction not yet committed; in a step that runs each
    statement in autocommit, once the first one is done), with STEP a step name or
    its 1-based number, sends SIGKILL to this process at that point, like ``kill -9``;
    fail-before:STEP makes that step fail as a server error would (the job stays resumable)."""
    at = (step.name, str(idx + 1))
    faults.kill_at(f"kill-{when}", *at)
    if (which := faults.injected(f"fail-{when}", *at)) is not None:
        raise StepFailed(f"step {step.name} failed (injected by PGCLEAVE_FAULT=fail-{when}:"
                         f"{which})")


def run_plan(plan: Plan, settings: Settings | None = None, progress: Progress | None = None
             ) -> int:
    return Executor(settings, progress).run(plan)


def _kept_effect(step: Step, idx: int) -> list[int]:
    """The failed step itself when what it did before failing stays (it runs outside one
    transaction: a concurrent index build leaves its INVALID index) and that harms the
    application: then it is undone at once with the done steps."""
    return [idx] if not step.transactional and step.residue.harmful else []
