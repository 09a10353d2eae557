"""`pgcleave move PARTITION --to SERVER|local` against real servers, with writers running,
kills at every step, and a shard that goes away."""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgcleave.connection import Settings
from pgcleave.execute import Executor
from pgcleave.ops.server import plan_server_add
from pgcleave.testing.workload import Spec, Workload

PARENT = '"Ex"'
PART = '"Ex d"'  # a name that needs quoting everywhere


def make_table(conn, rows: int = 300, *, default: bool = True) -> None:
    conn.execute("""
        CREATE TABLE "Ex" (id uuid NOT NULL DEFAULT gen_random_uuid(), tenant varchar NOT NULL,
                           payload text, CONSTRAINT payload_len CHECK (length(payload) < 100))
            PARTITION BY RANGE (tenant);
        CREATE TABLE "Ex_a" PARTITION OF "Ex" (PRIMARY KEY (id))
            FOR VALUES FROM (MINVALUE) TO ('D');
        CREATE TABLE "Ex d" PARTITION OF "Ex" (PRIMARY KEY (id)) FOR VALUES FROM ('D') TO ('E');
        CREATE INDEX ON "Ex" (tenant);
    """)
    if default:
        conn.execute('CREATE TABLE "Ex_def" PARTITION OF "Ex" (PRIMARY KEY (id)) DEFAULT')
    else:
        conn.execute('CREATE TABLE "Ex_e" PARTITION OF "Ex" (PRIMARY KEY (id))'
                     " FOR VALUES FROM ('E') TO (MAXVALUE)")
    conn.execute("INSERT INTO \"Ex\" (tenant, payload) SELECT (ARRAY['Acme','Dory','Dx','Eggbert'])"
                 "[1 + i %% 4], 'p' || i FROM generate_series(1, %s) i", [rows])


def add_server(db, name: str, other) -> None:
    with db.connect() as c:
        Executor(Settings(dsn=db.dsn)).run(plan_server_add(c, name, other.dsn))


def snapshot_rows(conn) -> list[tuple]:
    return conn.execute('SELECT id::text, tenant, payload FROM "Ex" ORDER BY id').fetchall()


def location(conn, name: str = PART) -> str:
    row = conn.execute("SELECT c.relkind::text, (SELECT inhparent::regclass::text FROM"
                       " pg_inherits WHERE inhrelid = c.oid) FROM pg_class c"
                       " WHERE c.oid = to_regclass(%s)", [name]).fetchone()
    return f"{row[0]}:{row[1]}"


def leftovers(conn, remote_conn) -> list[str]:
    out = []
    out += [f"pub {r[0]}" for r in conn.execute("SELECT pubname FROM pg_publication")]
    mine = ("SELECT subname FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database"
            " WHERE datname = current_database())")
    out += [f"sub {r[0]}" for r in conn.execute(mine)]
    slots = "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()"
    out += [f"slot {r[0]}" for r in conn.execute(slots)]
    out += [f"remote pub {r[0]}" for r in remote_conn.execute("SELECT pubname FROM pg_publication")]
    # pg_subscription and the slots are shared by the whole cluster: only this test's
    # database counts (another test's leftovers are that test's failure)
    out += [f"remote sub {r[0]}" for r in remote_conn.execute(mine)]
    out += [f"remote slot {r[0]}" for r in remote_conn.execute(slots)]
    return out


@pytest.fixture
def sharded(db, db2, conn):
    make_table(conn)
    add_server(db, "db2", db2)
    return conn


def test_round_trip_with_writers(db, db2, sharded, cli):
    conn = sharded
    inside = Spec(table=sql.Identifier("public", "Ex"), key_col="tenant",
                  make_key=lambda r: random.choice(["Dory", "Dx", "Dz", "Duck"]),
                  payload_col="payload")
    across = Spec(table=sql.Identifier("public", "Ex"), key_col="tenant",
                  make_key=lambda r: random.choice(["Acme", "Bob", "Eggbert", "Zed"]),
                  payload_col="payload")
    w1 = Workload(db.dsn, inside, writers=3, seed=1).start()
    w2 = Workload(db.dsn, across, writers=1, seed=2).start()
    try:
        r = cli("--dsn", db.dsn, "move", PART, "--to", "db2", "--yes")
        assert r.returncode == 0, r.stderr
        assert location(conn) == 'f:"Ex"'
        w1.run_for(0.5)
        r = cli("--dsn", db.dsn, "move", PART, "--to", "local", "--yes", "--drop-source")
        assert r.returncode == 0, r.stderr
        w1.run_for(0.3)
    finally:
        w1.stop()
        w2.stop()
    assert location(conn) == 'r:"Ex"'
    w1.verify(conn)
    w2.verify(conn)
    assert w1.ops.get("insert", 0) > 20 and w1.ops.get("move", 0) > 5, w1.summary()
    with db2.connect() as rc:
        assert leftovers(conn, rc) == []
        assert rc.execute("SELECT to_regclass('public.\"Ex d\"')").fetchone()[0] is None
    assert conn.execute("SELECT to_regclass('\"Ex d_pgc_remote\"')").fetchone()[0] is None
    assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgcleave_not_%'"
                        ).fetchone()[0] == 0
    print("stall ms", w1.max_stall_ms, w2.max_stall_ms)


def test_out_keeps_definition_and_refuses_leaving_rows(db, db2, sharded, cli):
    conn = sharded
    before = snapshot_rows(conn)
    r = cli("--dsn", db.dsn, "move", PART, "--to", "db2")
    assert r.returncode == 3 and "--yes" in r.stderr  # the first move asks
    assert location(conn) == 'r:"Ex"'
    r = cli("--dsn", db.dsn, "move", PART, "--to", "db2", "--yes", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "done"
    assert snapshot_rows(conn) == before
    with db2.connect() as rc:
        # NOT NULL is a column property (on 18 also a contype 'n' row, compared apart)
        cons = dict(rc.execute("SELECT conname, contype::text FROM pg_constraint"
                               " WHERE conrelid = 'public.\"Ex d\"'::regclass"
                               " AND contype <> 'n'").fetchall())
        assert cons == {"Ex d_pkey": "p", "payload_len": "c", "pgcleave_partition_bound": "c"}
        not_null = [r[0] for r in rc.execute(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = 'public.\"Ex d\"'::regclass"
            " AND attnum > 0 AND attnotnull ORDER BY attnum")]
        assert not_null == ["id", "tenant"]
        idx = rc.execute("SELECT count(*) FROM pg_index WHERE indrelid = 'public.\"Ex d\"'"
                         "::regclass").fetchone()[0]
        assert idx == 2  # the key and the parent's tenant index
    # the old local table is kept, detached
    assert location(conn, '"Ex d_pgc_local"') == "r:None"
    # a key-moving UPDATE out of the remote partition fails instead of silently staying
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE \"Ex\" SET tenant = 'Acme' WHERE tenant = 'Dory'")
    # INSERT ... RETURNING through the parent lands on the shard
    rid = conn.execute("INSERT INTO \"Ex\" (tenant, payload) VALUES ('Dora', 'x') RETURNING id"
                       ).fetchone()[0]
    with db2.connect() as rc:
        assert rc.execute('SELECT tenant FROM "Ex d" WHERE id = %s', [rid]).fetchone() == ("Dora",)
    st = json.loads(cli("--dsn", db.dsn, "status", PARENT, "--json").stdout)
    where = {p["name"]: p["server"] for p in st["partitioning"]["partitions"]}
    assert where['public."Ex d"'] == "db2" and where['public."Ex_a"'] is None
    # a plain ALTER TABLE changing columns is stopped, naming pgcleave alter
    with pytest.raises(psycopg.errors.FeatureNotSupported) as ei:
        conn.execute('ALTER TABLE "Ex" ADD difficulty smallint')
    assert "pgcleave alter" in (ei.value.diag.message_hint or "")
    conn.execute('ALTER TABLE "Ex" ALTER COLUMN payload SET STATISTICS 200')  # harmless: allowed
    r = cli("--dsn", db.dsn, "move", PART, "--to", "db2", "--yes")
    assert r.returncode == 3 and "already on server db2" in r.stderr


def test_refusals(db, db2, sharded, cli):
    conn = sharded
    cases = [
        (["move", '"Ex_def"', "--to", "db2"], "DEFAULT partition"),
        (["move", PARENT, "--to", "db2"], "not a partition"),
        (["move", PART, "--to", "nope"], "no server named"),
        (["move", "nosuch", "--to", "db2"], "does not exist"),
        (["move", PART, "--to", "local"], "already local"),
    ]
    for args, msg in cases:
        r = cli("--dsn", db.dsn, *args, "--yes")
        assert r.returncode == 3, (args, r.stderr)
        assert (msg in r.stderr and "hint:" in r.stderr) or msg in r.stderr, (args, r.stderr)
    conn.execute("CREATE TABLE plain (id int)")
    r = cli("--dsn", db.dsn, "move", "plain", "--to", "db2", "--yes")
    assert r.returncode == 3 and "not a partition" in r.stderr
    # an unreachable shard
    from pgcleave.sandbox import free_port

    conn.execute(f"ALTER SERVER db2 OPTIONS (SET port '{free_port()}')")
    r = cli("--dsn", db.dsn, "move", PART, "--to", "db2", "--yes")
    assert r.returncode == 3 and "cannot reach server db2" in r.stderr
    conn.execute(f"ALTER SERVER db2 OPTIONS (SET port '{db2.server.port}')")
    # a unique key on the parent
    conn.execute('ALTER TABLE "Ex" ADD UNIQUE (tenant, id)')
    r = cli("--dsn", db.dsn, "move", PART, "--to", "db2", "--yes")
    assert r.returncode == 3 and "DROP CONSTRAINT" in r.stderr
    assert location(conn) == 'r:"Ex"'
    assert conn.execute("SELECT to_regclass('pgcleave.jobs')").fetchone()[0] is not None
    assert conn.execute("SELECT count(*) FROM pgcleave.jobs WHERE operation = 'move'"
                        ).fetchone()[0] == 0


STEPS_OUT = ["shard-table", "publish", "subscribe", "catch-up", "default-check",
             "default-validate", "foreign-table", "ddl-guard", "cutover", "unsubscribe",
             "unpublish", "default-uncheck"]


@pytest.mark.parametrize("step", STEPS_OUT)
def test_kill_then_resume(db, db2, sharded, cli, step):
    conn = sharded
    before = snapshot_rows(conn)
    r = cli("--dsn", db.dsn, "move", PART, "--to", "db2", "--yes",
            env={"PGCLEAVE_FAULT": f"kill-after:{step}"})
    assert r.returncode == -9, r.stderr
    job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
    conn.execute("INSERT INTO \"Ex\" (tenant, payload) VALUES ('Dory', 'late')")
    r = cli("--dsn", db.dsn, "resume", str(job))
    assert r.returncode == 0, r.stderr
    assert location(conn) == 'f:"Ex"'
    after = snapshot_rows(conn)
    assert len(after) == len(before) + 1 and set(before) <= set(after)
    with db2.connect() as rc:
        assert leftovers(conn, rc) == []


@pytest.mark.parametrize("step", ["subscribe", "catch-up", "foreign-table"])
def test_kill_then_rollback(db, db2, sharded, cli, step):
    conn = sharded
    before = snapshot_rows(conn)
    r = cli("--dsn", db.dsn, "move", PART, "--to", "db2", "--yes",
            env={"PGCLEAVE_FAULT": f"kill-after:{step}"})
    assert r.returncode == -9
    job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
    r = cli("--dsn", db.dsn, "rollback", str(job))
    assert r.returncode == 0, r.stderr
    assert location(conn) == 'r:"Ex"' and snapshot_rows(conn) == before
    with db2.connect() as rc:
        assert leftovers(conn, rc) == []
        assert rc.execute("SELECT to_regclass('public.\"Ex d\"')").fetchone()[0] is None
    assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgcleave_not_%'"
                        ).fetchone()[0] == 0


def test_copied_table_whose_sync_slot_is_gone_is_copied_again(db, db2, sharded, cli):
    """PostgreSQL's table sync worker drops its slot on the publisher just before it commits
    the table's next state: a shard that stops between the two comes back with the table in
    state 'f' and a worker retrying a slot that no longer exists, forever. The catch-up sees it
    and copies again from scratch; the rows written meanwhile are there after the cut-over."""
    conn = sharded
    r = cli("--dsn", db.dsn, "move", PART, "--to", "db2", "--yes",
            env={"PGCLEAVE_FAULT": "kill-after:subscribe"})
    assert r.returncode == -9, r.stderr
    job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
    with db2.connect() as rc:
        states = ("SELECT count(*) FILTER (WHERE srsubstate <> 'r') FROM pg_subscription_rel sr"
                  " JOIN pg_subscription s ON s.oid = sr.srsubid WHERE s.subdbid ="
                  " (SELECT oid FROM pg_database WHERE datname = current_database())")
        for _ in range(300):
            if rc.execute(states).fetchone()[0] == 0:
                break
            time.sleep(0.1)
        sub = rc.execute("SELECT subname FROM pg_subscription WHERE subdbid = (SELECT oid"
                         " FROM pg_database WHERE datname = current_database())").fetchone()[0]
        # the state a stop between the slot's drop and the state's commit leaves behind
        rc.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(sql.Identifier(sub)))
        rc.execute("UPDATE pg_subscription_rel SET srsubstate = 'f'"
                   " WHERE srrelid = 'public.\"Ex d\"'::regclass")
        rc.execute(sql.SQL("ALTER SUBSCRIPTION {} ENABLE").format(sql.Identifier(sub)))
    conn.execute("INSERT INTO \"Ex\" (tenant, payload) VALUES ('Dory', 'while stuck')")
    before = snapshot_rows(conn)
    r = cli("--dsn", db.dsn, "resume", str(job), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "synchronization slot is gone" in r.stderr, r.stderr
    assert location(conn) == 'f:"Ex"'
    assert snapshot_rows(conn) == before
    with db2.connect() as rc:
        assert leftovers(conn, rc) == []


def _restart(sandbox, conn, name: str = "db2") -> None:
    s = sandbox.start(name)
    conn.execute(sql.SQL("ALTER SERVER {} OPTIONS (SET port {})").format(
        sql.Identifier(name), sql.Literal(str(s.port))))


@pytest.mark.parametrize("step", STEPS_OUT)
def test_remote_stops_then_resume(db, db2, sharded, cli, sandbox, step):
    """The shard goes away right after STEP (the process killed there too): a resume while it
    is away either fails cleanly naming it or finishes steps that do not need it, and no row
    is lost or hidden; once the shard is back, the job finishes and leaves nothing behind."""
    conn = sharded
    before = snapshot_rows(conn)
    r = cli("--dsn", db.dsn, "move", PART, "--to", "db2", "--yes",
            env={"PGCLEAVE_FAULT": f"kill-after:{step}"})
    assert r.returncode == -9, r.stderr
    job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
    sandbox.stop("db2", mode="immediate")
    try:
        r = cli("--dsn", db.dsn, "resume", str(job), timeout=60)
        if r.returncode != 0:
            assert "db2" in r.stderr, r.stderr
        if location(conn) == 'r:"Ex"':  # not cut over yet: every row still readable here
            assert snapshot_rows(conn) == before
    finally:
        _restart(sandbox, conn)
    state = conn.execute("SELECT state FROM pgcleave.jobs WHERE id = %s", [job]).fetchone()[0]
    if state != "done":
        try:
            r = cli("--dsn", db.dsn, "resume", str(job), timeout=60)
        except subprocess.TimeoutExpired as exc:
            logs = {n: Path(sandbox.server(n).logfile).read_text()[-4000:] for n in ("db1", "db2")}
            raise AssertionError(f"resume hung: {exc.stderr}\nserver logs: {logs}") from None
        assert r.returncode == 0, r.stderr
    assert location(conn) == 'f:"Ex"'
    assert snapshot_rows(conn) == before
    with db2.connect() as rc:
        assert leftovers(conn, rc) == []


def test_three_servers_and_no_default(db, db2, db3, conn, cli):
    make_table(conn, default=False)
    add_server(db, "db2", db2)
    add_server(db, "db3", db3)
    before = snapshot_rows(conn)
    r = cli("--dsn", db.dsn, "move", PART, "--to", "db2", "--yes", "--drop-source")
    assert r.returncode == 0, r.stderr
    r = cli("--dsn", db.dsn, "move", '"Ex_a"', "--to", "db3", "--yes")
    assert r.returncode == 0, r.stderr
    assert snapshot_rows(conn) == before
    assert conn.execute("SELECT count(*) FROM \"Ex\" WHERE tenant = 'Acme'").fetchone()[0] == 75
    st = json.loads(cli("--dsn", db.dsn, "status", PARENT, "--json").stdout)
    servers = sorted(p["server"] for p in st["partitioning"]["partitions"] if p["server"])
    assert servers == ["db2", "db3"]
    assert conn.execute("SELECT to_regclass('\"Ex d_pgc_local\"')").fetchone()[0] is None
    r = cli("--dsn", db.dsn, "server", "remove", "db3", "--yes")
    assert r.returncode == 3
