"""A fault campaign (issue 18): an operation that changes the data layout runs under
application-like writers, one fault strikes at a random moment, then the job is resumed (or
rolled back) as an operator would, and the round is judged.

Faults: ``sigkill`` (pgcleave killed -9), ``restart`` (an immediate restart of the server the
job works on), ``cancel`` (``pg_cancel_backend`` of every pgcleave statement running),
``lock`` (a long transaction holding a lock on the table), ``netcut`` (the network to the
shard cut for a few seconds, through a TCP proxy between the servers).

A round passes when: every committed write is present exactly once (a writer whose own server
restarted may lose its connection; its write in flight is not judged), the table is readable
and writable, `check` says what a clean run says, and nothing is left behind that a clean run
of the same operation does not leave (prepared transactions, replication slots, publications,
subscriptions, triggers, pgcleave's work tables). Each round is reproducible from its seed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..sandbox import Sandbox, Server
from .proxy import TcpProxy
from .workload import Spec, Workload

FAULTS = ("sigkill", "restart", "cancel", "lock", "netcut")


@dataclass
class Env:
    """One round's databases: ``db`` on the first server, ``shard`` on the second (through
    ``proxy`` when the operation needs a shard)."""

    sandbox: Sandbox
    local: Server
    dbname: str
    remote: Server | None = None
    proxy: TcpProxy | None = None

    @property
    def dsn(self) -> str:
        return self.local.dsn_for(self.dbname)

    @property
    def shard_dsn(self) -> str:
        assert self.remote is not None
        return self.remote.dsn_for(self.dbname)

    def connect(self, remote: bool = False) -> psycopg.Connection[Any]:
        return psycopg.connect(self.shard_dsn if remote else self.dsn, autocommit=True)

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pgcleave", "--dsn", self.dsn, *args],
                              capture_output=True, text=True, timeout=timeout,
                              env=_env())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PGCLEAVE_FAULT", None)
    env.pop("PGCLEAVE_DSN", None)
    return env


@dataclass(frozen=True)
class Operation:
    name: str
    table: str  # as typed on the command line
    setup: Callable[[Env], None]
    argv: list[str]
    spec: Callable[[], Spec]
    shard: bool = False


# -- the operations ---------------------------------------------------------------------------
def _events(env: Env, rows: int = 3000) -> None:
    with env.connect() as c:
        c.execute("CREATE TABLE events (id bigserial PRIMARY KEY, created_at timestamptz NOT"
                  " NULL, payload text)")
        c.execute("CREATE INDEX ON events (created_at)")
        c.execute("INSERT INTO events (created_at, payload) SELECT now() - (i %% 300) *"
                  " interval '1 day', 'seed' FROM generate_series(1, %s) i", [rows])


def _events_spec() -> Spec:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    return Spec(table=sql.Identifier("public", "events"), key_col="created_at",
                make_key=lambda r: now - timedelta(hours=r.uniform(-24, 24 * 200)))


def _monthly(env: Env, *, default_rows: bool = True, pk: bool = True) -> None:
    with env.connect() as c:
        c.execute("CREATE TABLE m (id bigserial, d date NOT NULL, payload text"
                  + (", PRIMARY KEY (id, d)" if pk else "") + ") PARTITION BY RANGE (d)")
        for i in range(1, 4):
            c.execute(f"CREATE TABLE m_{i:02d} PARTITION OF m FOR VALUES FROM "
                      f"('2025-{i:02d}-01') TO ('2025-{i + 1:02d}-01')")
        c.execute("CREATE TABLE m_default PARTITION OF m DEFAULT")
        last = 180 if default_rows else 89
        c.execute(f"INSERT INTO m (d, payload) SELECT '2025-01-01'::date + (i % {last}),"
                  " 'seed' FROM generate_series(1, 3000) i")
        c.execute("ANALYZE m")


def _monthly_spec() -> Spec:
    from datetime import date, timedelta

    return Spec(table=sql.Identifier("public", "m"), key_col="d",
                make_key=lambda r: date(2025, 1, 1) + timedelta(days=int(r.uniform(0, 180))))


def _drain_setup(env: Env) -> None:
    _monthly(env)
    r = env.cli("config", "m", "--interval", "1 month", "--premake", "0")
    assert r.returncode == 0, r.stderr


def _tenants(env: Env) -> None:
    with env.connect() as c:
        c.execute("""
            CREATE TABLE t (id uuid NOT NULL DEFAULT gen_random_uuid(), tenant text NOT NULL,
                            payload text) PARTITION BY RANGE (tenant);
            CREATE TABLE t_a PARTITION OF t (PRIMARY KEY (id)) FOR VALUES FROM (MINVALUE)
                TO ('D');
            CREATE TABLE t_d PARTITION OF t (PRIMARY KEY (id)) FOR VALUES FROM ('D') TO ('E');
            CREATE TABLE t_e PARTITION OF t (PRIMARY KEY (id)) FOR VALUES FROM ('E')
                TO (MAXVALUE);
            INSERT INTO t (tenant, payload) SELECT (ARRAY['Acme','Dory','Dx','Eggbert'])
                [1 + i % 4], 'seed' FROM generate_series(1, 2000) i;
        """)
    assert env.proxy is not None
    r = env.cli("server", "add", "shard", "--dsn",
                f"host=127.0.0.1 port={env.proxy.port} dbname={env.dbname} user="
                f"{env.remote.user if env.remote else 'postgres'}")
    assert r.returncode == 0, r.stdout + r.stderr


def _moved_setup(env: Env) -> None:
    _tenants(env)
    r = env.cli("move", "t_d", "--to", "shard", "--yes", "--drop-source")
    assert r.returncode == 0, r.stdout + r.stderr


def _tenant_spec() -> Spec:
    # within t_d: a row cannot move between a local and a remote partition
    return Spec(table=sql.Identifier("public", "t"), key_col="tenant",
                make_key=lambda r: r.choice(["Dory", "Dx", "Duck"]))


OPERATIONS: dict[str, Operation] = {o.name: o for o in [
    Operation("partition-inplace", "events", _events,
              ["partition", "events", "--by", "range(created_at)", "--interval", "1 month",
               "--premake", "1", "--yes"], _events_spec),
    Operation("partition-copy", "events", _events,
              ["partition", "events", "--by", "range(created_at)", "--interval", "1 month",
               "--strategy", "copy", "--yes"], _events_spec),
    Operation("carve", "m", _monthly,
              ["carve", "m", "--from", "2025-04-01", "--to", "2025-05-01", "--yes"],
              _monthly_spec),
    Operation("maintain-drain", "m", _drain_setup, ["maintain", "m", "--now", "2025-03-10"],
              _monthly_spec),
    Operation("set-primary-key", "m", lambda env: _monthly(env, pk=False),
              ["set-primary-key", "m", "--columns", "id,d", "--yes"], _monthly_spec),
    Operation("create-index", "m", _monthly, ["create-index", "m", "payload"], _monthly_spec),
    Operation("move-out", "t", _tenants, ["move", "t_d", "--to", "shard", "--yes"],
              _tenant_spec, shard=True),
    Operation("move-back", "t", _moved_setup,
              ["move", "t_d", "--to", "local", "--yes", "--drop-source"], _tenant_spec,
              shard=True),
    Operation("alter", "t", _moved_setup, ["alter", "t", "ADD level smallint", "--yes"],
              _tenant_spec, shard=True),
]}


def _last_job(env: Env) -> int:
    with env.connect() as c:
        journal = c.execute("SELECT to_regclass('pgcleave.jobs') IS NOT NULL").fetchone()
        if not (journal and journal[0]):
            return 0
        row = c.execute("SELECT coalesce(max(id), 0) FROM pgcleave.jobs").fetchone()
        return int(row[0]) if row else 0


def _shard_unreachable(error: str) -> bool:
    """An application statement that failed because its rows' server was cut off or
    restarting: the fault's own doing, whatever pgcleave does."""
    return any(m in error for m in ("could not connect to server", "server closed the"
                                    " connection", "SqlclientUnableToEstablishSqlconnection",
                                    "connection to server", "terminating connection"))


# -- the state a round is judged by -----------------------------------------------------------
def leftovers(conn: psycopg.Connection[Any]) -> list[str]:
    """What a job can leave behind, by name (a set to compare with a clean run's)."""
    q = [
        ("prepared", "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"),
        ("slot", "SELECT slot_name FROM pg_replication_slots WHERE database ="
                 " current_database()"),
        ("publication", "SELECT pubname FROM pg_publication"),
        ("subscription", "SELECT subname FROM pg_subscription WHERE subdbid = (SELECT oid FROM"
                         " pg_database WHERE datname = current_database())"),
        ("trigger", "SELECT tgrelid::regclass || '.' || tgname FROM pg_trigger WHERE NOT"
                    " tgisinternal"),
        ("constraint", "SELECT conrelid::regclass || '.' || conname FROM pg_constraint WHERE"
                       " conname LIKE 'pgcleave%%' AND contype = 'c'"),
        ("relation", "SELECT oid::regclass::text FROM pg_class WHERE relkind IN ('r', 'p', 'f')"
                     " AND relnamespace NOT IN ('pg_catalog'::regnamespace,"
                     " 'information_schema'::regnamespace, 'pg_toast'::regnamespace)"),
    ]
    out = []
    for kind, query in q:
        out += [f"{kind} {r[0]}" for r in conn.execute(query)]
    return sorted(out)


@dataclass
class Outcome:
    op: str
    fault: str
    seed: int
    delay_s: float
    struck: bool  # the fault hit while the job ran (not after it ended)
    recovered_by: str  # "done" (no recovery needed), "resume", "rollback"
    ok: bool
    problems: list[str] = field(default_factory=list)
    writer_ops: int = 0

    def line(self) -> str:
        head = (f"{'ok  ' if self.ok else 'FAIL'} {self.op:18} {self.fault:8} seed={self.seed}"
                f" at {self.delay_s:.2f}s{'' if self.struck else ' (after the end)'}"
                f" -> {self.recovered_by}, {self.writer_ops} writes")
        return head + "".join(f"\n     {p}" for p in self.problems)


class Campaign:
    """Rounds against one sandbox (two servers). ``calibrate`` runs each operation once
    without a fault: its duration bounds the fault's moment, its end state is the reference."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.reference: dict[str, tuple[list[str], list[str], int, float]] = {}

    @contextmanager
    def env(self, op: Operation) -> Iterator[Env]:
        name = "c_" + uuid.uuid4().hex[:10]
        local = self.sandbox.servers[0]
        remote = self.sandbox.servers[1] if op.shard else None
        for s in [local, *([remote] if remote else [])]:
            with psycopg.connect(s.dsn, autocommit=True) as c:
                c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        proxy = TcpProxy("127.0.0.1", remote.port) if remote else None
        env = Env(self.sandbox, local, name, remote, proxy)
        try:
            yield env
        finally:
            if proxy:
                proxy.close()
            for s in [local, *([remote] if remote else [])]:
                if not self.sandbox.is_running(s.name):
                    self.sandbox.start(s.name)
                with psycopg.connect(s.dsn, autocommit=True) as c:
                    for sub in c.execute(
                            "SELECT subname FROM pg_subscription s JOIN pg_database d ON"
                            " d.oid = s.subdbid WHERE d.datname = %s", [name]).fetchall():
                        with psycopg.connect(s.dsn_for(name), autocommit=True) as cc:
                            cc.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(
                                sql.Identifier(sub[0])))
                            cc.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)")
                                       .format(sql.Identifier(sub[0])))
                    for gid in c.execute("SELECT gid FROM pg_prepared_xacts WHERE database ="
                                         " %s", [name]).fetchall():
                        with psycopg.connect(s.dsn_for(name), autocommit=True) as cc:
                            cc.execute(sql.SQL("ROLLBACK PREPARED {}").format(
                                sql.Literal(gid[0])))
                    c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(name)))
                    for slot in c.execute("SELECT slot_name FROM pg_replication_slots WHERE"
                                          " NOT active AND database IS NULL OR database = %s",
                                          [name]).fetchall():
                        c.execute("SELECT pg_drop_replication_slot(%s)", [slot[0]])

    def _state(self, env: Env, op: Operation) -> tuple[list[str], int]:
        with env.connect() as c:
            left = leftovers(c)
        if op.shard:
            with env.connect(remote=True) as c:
                left += [f"shard {x}" for x in leftovers(c)]
        return left, env.cli("check", op.table).returncode

    def calibrate(self, op: Operation) -> None:
        with self.env(op) as env:
            op.setup(env)
            before, _ = self._state(env, op)
            r = env.cli(*op.argv)
            if r.returncode != 0:
                raise AssertionError(f"{op.name} fails without a fault: {r.stderr}")
            with env.connect() as c:  # how long the job ran, from its first change
                row = c.execute("SELECT extract(epoch FROM updated_at - created_at) FROM"
                                " pgcleave.jobs ORDER BY id DESC LIMIT 1").fetchone()
            took = float(row[0]) if row else 1.0
            after, check_rc = self._state(env, op)
        self.reference[op.name] = (before, after, check_rc, took)

    def round(self, op_name: str, fault: str, seed: int, *, at: float | None = None
              ) -> Outcome:
        """One round; the fault strikes at a random moment of the calibrated duration, or at
        fraction ``at`` of it."""
        op = OPERATIONS[op_name]
        if op.name not in self.reference:
            self.calibrate(op)
        before, after, check_rc, took = self.reference[op.name]
        rng = random.Random(seed)
        delay = rng.uniform(0.0, max(took, 0.2)) if at is None else at * took
        with self.env(op) as env:
            op.setup(env)
            w = Workload(env.dsn, op.spec(), writers=2, seed=seed, max_seconds=120).start()
            try:
                jobs_before = _last_job(env)
                proc = subprocess.Popen([sys.executable, "-m", "pgcleave", "--dsn", env.dsn,
                                         *op.argv], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=_env())
                # the moment is counted from the job's start (its journal row), not from the
                # process's: the fault strikes while the job changes things
                deadline = time.monotonic() + 120
                while (proc.poll() is None and _last_job(env) == jobs_before
                       and time.monotonic() < deadline):
                    time.sleep(0.01)
                time.sleep(delay)
                struck = proc.poll() is None
                if struck:
                    self._strike(env, op, fault, proc, rng)
                out, err = proc.communicate(timeout=300)
                recovered_by, problems = self._recover(env, op, proc.returncode, out + err,
                                                       since=jobs_before)
                w.run_for(0.3)
            finally:
                w.stop()
            outcome = Outcome(op.name, fault, seed, delay, struck, recovered_by, True,
                              problems, writer_ops=sum(w.ops.values()))
            try:
                with env.connect() as c:
                    w.verify(c, connection_loss_ok=fault == "restart",
                             fault_error=_shard_unreachable if op.shard and fault in (
                                 "netcut", "restart") else None)
            except (AssertionError, psycopg.Error) as exc:
                outcome.problems.append(f"writers: {exc}")
            self._judge(env, op, outcome, before if recovered_by == "rollback" else after,
                        check_rc, seed)
        outcome.ok = not outcome.problems
        return outcome

    # -- the faults --------------------------------------------------------------------------
    def _strike(self, env: Env, op: Operation, fault: str, proc: subprocess.Popen[str],
                rng: random.Random) -> None:
        if fault == "sigkill":
            proc.send_signal(signal.SIGKILL)
        elif fault == "restart":
            target = env.remote if op.shard and env.remote and rng.random() < 0.5 else env.local
            self.sandbox.stop(target.name, mode="immediate")
            self.sandbox.start(target.name)
            if target is env.remote and env.proxy is not None:
                env.proxy.target = ("127.0.0.1", env.remote.port)
        elif fault == "cancel":
            with env.connect() as c:
                c.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE"
                          " application_name LIKE 'pgcleave%%' AND pid <> pg_backend_pid()"
                          " AND state = 'active'")
        elif fault == "lock":
            holder = env.connect()
            holder.autocommit = False
            holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
                sql.SQL(op.table)))
            time.sleep(rng.uniform(1.0, 3.0))  # a long report
            holder.rollback()
            holder.close()
        elif fault == "netcut":
            if env.proxy is not None:
                env.proxy.cut(rng.uniform(1.0, 3.0))
            else:  # no shard: cut the job's own connections instead
                with env.connect() as c:
                    c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE"
                              " application_name LIKE 'pgcleave%%' AND pid <> pg_backend_pid()")
        else:
            raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")

    # -- recovery, as an operator would --------------------------------------------------------
    def _recover(self, env: Env, op: Operation, rc: int | None, out: str, *, since: int
                 ) -> tuple[str, list[str]]:
        for _ in range(60):  # the servers and the network come back before anything else
            if (self.sandbox.is_running(env.local.name) and not (env.proxy and env.proxy.is_cut)
                    and (env.remote is None or self.sandbox.is_running(env.remote.name))):
                break
            time.sleep(0.5)
        if rc == 0:
            return "done", []
        with env.connect() as c:
            journal = c.execute("SELECT to_regclass('pgcleave.jobs') IS NOT NULL").fetchone()
            ran = c.execute("SELECT id, state FROM pgcleave.jobs WHERE id > %s ORDER BY id",
                            [since]).fetchall() if journal and journal[0] else []
        jobs = [r for r in ran if r[1] in ("running", "failed")]
        if ran and not jobs:
            return "done", []  # killed after its job had finished
        if not jobs:
            # refused or failed before its first change (a server it checks was away): the
            # operator runs it again
            if rc not in (1, 3, 4, 5, -9):
                return "rerun", [f"exit {rc} without a job: {out[-300:]}"]
            for _attempt in range(4):
                r = env.cli(*op.argv)
                if r.returncode == 0:
                    return "rerun", []
                time.sleep(1.0)
            return "rerun", [f"fails again without a fault: {(r.stdout + r.stderr)[-400:]}"]
        last = ""
        for job in [j[0] for j in jobs]:
            for _attempt in range(4):
                r = env.cli("resume", str(job))
                if r.returncode == 0:
                    break
                last = r.stdout + r.stderr
                time.sleep(1.0)
            else:
                r = env.cli("rollback", str(job))
                if r.returncode != 0:
                    return "stuck", [f"job {job}: neither resume nor rollback works: {last[-400:]}"
                                     f" / {(r.stdout + r.stderr)[-400:]}"]
                return "rollback", []
        return "resume", []

    def _judge(self, env: Env, op: Operation, outcome: Outcome, reference: list[str],
               check_rc: int, seed: int) -> None:
        left, rc = self._state(env, op)
        extra = sorted(set(left) - set(reference))
        if extra:
            outcome.problems.append(f"left behind: {extra}")
        if rc != check_rc and outcome.recovered_by != "rollback":
            outcome.problems.append(f"check exits {rc}, a clean run {check_rc}")
        w = Workload(env.dsn, op.spec(), writers=1, seed=seed + 1, max_seconds=10).start()
        try:
            w.run_for(0.3)
        finally:
            w.stop()
        try:
            with env.connect() as c:
                w.verify(c)
        except (AssertionError, psycopg.Error) as exc:
            outcome.problems.append(f"not writable after recovery: {exc}")
