"""`pgcleave move --method copy`: the mover that needs no superuser and no logical replication
(COPY between the servers, a capture trigger and its key log, replays, a short cut-over),
against real servers, with writers running, kills at every step and a shard that goes away;
and `--method auto` choosing it where replication is not possible."""

from __future__ import annotations

import json
import random
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgcleave.ops.move import replication_blockers
from pgcleave.sandbox import Sandbox
from pgcleave.testing.workload import Spec, Workload
from tests.test_move import PART, add_server, leftovers, location, make_table, snapshot_rows


@pytest.fixture
def sharded(db, db2, conn):
    make_table(conn)
    add_server(db, "db2", db2)
    return conn


def capture_leftovers(conn, remote_conn) -> list[str]:
    """Capture triggers, key logs, capture functions and half-made tables, on both sides."""
    out: list[str] = []
    for where, c in (("here", conn), ("remote", remote_conn)):
        out += [f"{where} trigger {r[0]}" for r in c.execute(
            "SELECT tgrelid::regclass::text FROM pg_trigger"
            " WHERE tgname = 'pgcleave_move_capture'")]
        out += [f"{where} table {r[0]}" for r in c.execute(
            "SELECT oid::regclass::text FROM pg_class WHERE relname LIKE 'move\\_%\\_log'"
            " OR relname LIKE '%pgc\\_remote' OR relname = 'pgcleave_replay_keys'")]
        out += [f"{where} function {r[0]}" for r in c.execute(
            "SELECT proname FROM pg_proc WHERE proname LIKE 'move\\_%\\_capture'")]
    return out


def last_job(conn) -> int:
    return conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]


def plan_notes(conn, job: int) -> list[str]:
    row = conn.execute("SELECT plan FROM pgcleave.jobs WHERE id = %s", [job]).fetchone()
    plan = row[0] if isinstance(row[0], dict) else json.loads(row[0])
    return list(plan["notes"])


def move(cli, db, to: str, *extra: str, env: dict[str, str] | None = None, timeout: float = 300):
    return cli("--dsn", db.dsn, "move", PART, "--to", to, "--method", "copy", "--yes", *extra,
               env=env, timeout=timeout)


def test_copy_round_trip_with_writers(db, db2, sharded, cli):
    conn = sharded
    inside = Spec(table=sql.Identifier("public", "Ex"), key_col="tenant",
                  make_key=lambda r: random.choice(["Dory", "Dx", "Dz", "Duck"]),
                  payload_col="payload")
    across = Spec(table=sql.Identifier("public", "Ex"), key_col="tenant",
                  make_key=lambda r: random.choice(["Acme", "Bob", "Eggbert", "Zed"]),
                  payload_col="payload")
    w1 = Workload(db.dsn, inside, writers=3, seed=11).start()
    w2 = Workload(db.dsn, across, writers=1, seed=12).start()
    try:
        w1.run_for(0.3)
        r = move(cli, db, "db2")
        assert r.returncode == 0, r.stderr
        assert location(conn) == 'f:"Ex"'
        notes = plan_notes(conn, last_job(conn))
        assert any(n.startswith("method copy (asked for)") for n in notes), notes
        w1.run_for(0.5)
        r = move(cli, db, "local", "--drop-source")
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
        assert capture_leftovers(conn, rc) == []
        assert rc.execute("SELECT to_regclass('public.\"Ex d\"')").fetchone()[0] is None
    # the CHECK equal to the bound came back with the rows
    assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = '\"Ex d\"'::regclass"
                        " AND conname = 'pgcleave_partition_bound'").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgcleave_not_%'"
                        ).fetchone()[0] == 0
    print("stall ms", w1.max_stall_ms, w2.max_stall_ms)


def test_copy_out_keeps_definition(db, db2, sharded, cli):
    conn = sharded
    before = snapshot_rows(conn)
    r = move(cli, db, "db2", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "done"
    assert snapshot_rows(conn) == before
    with db2.connect() as rc:
        cons = dict(rc.execute("SELECT conname, contype::text FROM pg_constraint"
                               " WHERE conrelid = 'public.\"Ex d\"'::regclass").fetchall())
        assert cons == {"Ex d_pkey": "p", "payload_len": "c", "pgcleave_partition_bound": "c"}
        assert capture_leftovers(conn, rc) == []
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE \"Ex\" SET tenant = 'Acme' WHERE tenant = 'Dory'")
    assert location(conn, '"Ex d_pgc_local"') == "r:None"


def test_copy_dry_run_shows_every_statement(db, db2, sharded, cli):
    r = move(cli, db, "db2", "--dry-run")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for s in ["CREATE TRIGGER \"pgcleave_move_capture\" AFTER INSERT OR UPDATE OR DELETE ON",
              'COPY (SELECT "id", "tenant", "payload" FROM ONLY "public"."Ex d") TO STDOUT'
              " (FORMAT binary)",
              'COPY "public"."Ex d" ("id", "tenant", "payload") FROM STDIN (FORMAT binary)',
              "DELETE FROM ONLY \"public\".\"Ex d\" WHERE (\"id\") IN",
              "LOCK TABLE ONLY \"public\".\"Ex\" IN EXCLUSIVE MODE",
              "locks: SHARE ROW EXCLUSIVE on \"Ex d\"",
              "locks: EXCLUSIVE on \"Ex\"; EXCLUSIVE on \"Ex d\"; ACCESS EXCLUSIVE on \"Ex\"",
              "-- note: method copy (asked for)"]:
        assert s in out, s
    assert "SUBSCRIPTION" not in out and "PUBLICATION" not in out
    assert conn_jobs(sharded) == 0


def conn_jobs(conn) -> int:
    if conn.execute("SELECT to_regclass('pgcleave.jobs')").fetchone()[0] is None:
        return 0
    return conn.execute("SELECT count(*) FROM pgcleave.jobs WHERE operation = 'move'"
                        ).fetchone()[0]


STEPS_OUT = ["shard-table", "capture", "copy", "default-check", "default-validate",
             "foreign-table", "ddl-guard", "cutover", "uncapture", "default-uncheck"]
STEPS_BACK = ["rename-foreign", "local-table", "capture", "copy", "default-check",
              "default-validate", "cutover", "uncapture", "default-uncheck", "drop-source"]


def moved_out(db, conn, cli) -> list[tuple]:
    r = move(cli, db, "db2")
    assert r.returncode == 0, r.stderr
    return snapshot_rows(conn)


@pytest.mark.parametrize("step", STEPS_OUT)
def test_copy_kill_then_resume(db, db2, sharded, cli, step):
    conn = sharded
    before = snapshot_rows(conn)
    r = move(cli, db, "db2", env={"PGCLEAVE_FAULT": f"kill-after:{step}"})
    assert r.returncode == -9, r.stderr
    job = last_job(conn)
    conn.execute("INSERT INTO \"Ex\" (tenant, payload) VALUES ('Dory', 'late')")
    conn.execute("UPDATE \"Ex\" SET payload = 'changed' WHERE id = (SELECT id FROM \"Ex\""
                 " WHERE tenant = 'Dx' ORDER BY id LIMIT 1)")
    conn.execute("DELETE FROM \"Ex\" WHERE id = (SELECT id FROM \"Ex\" WHERE tenant = 'Dx'"
                 " ORDER BY id DESC LIMIT 1)")
    expected = snapshot_rows(conn)
    r = cli("--dsn", db.dsn, "resume", str(job))
    assert r.returncode == 0, r.stderr
    assert location(conn) == 'f:"Ex"'
    after = snapshot_rows(conn)
    assert after == expected and len(after) == len(before)
    with db2.connect() as rc:
        assert capture_leftovers(conn, rc) == []


@pytest.mark.parametrize("step", STEPS_BACK)
def test_copy_back_kill_then_resume(db, db2, sharded, cli, step):
    conn = sharded
    moved_out(db, conn, cli)
    r = move(cli, db, "local", "--drop-source", env={"PGCLEAVE_FAULT": f"kill-after:{step}"})
    assert r.returncode == -9, r.stderr
    job = last_job(conn)
    if location(conn, '"Ex"') == "p:None" and step not in ("cutover", "uncapture",
                                                            "default-uncheck", "drop-source"):
        # writes through the foreign partition while the job is stopped reach the log
        conn.execute("INSERT INTO \"Ex\" (tenant, payload) VALUES ('Dory', 'late')")
        conn.execute("UPDATE \"Ex\" SET payload = 'changed' WHERE tenant = 'Dx'")
    expected = snapshot_rows(conn)
    r = cli("--dsn", db.dsn, "resume", str(job))
    assert r.returncode == 0, r.stderr
    assert location(conn) == 'r:"Ex"'
    assert snapshot_rows(conn) == expected
    with db2.connect() as rc:
        assert capture_leftovers(conn, rc) == []
        assert rc.execute("SELECT to_regclass('public.\"Ex d\"')").fetchone()[0] is None


@pytest.mark.parametrize("step", ["shard-table", "capture", "copy", "foreign-table"])
def test_copy_kill_then_rollback(db, db2, sharded, cli, step):
    conn = sharded
    before = snapshot_rows(conn)
    r = move(cli, db, "db2", env={"PGCLEAVE_FAULT": f"kill-after:{step}"})
    assert r.returncode == -9
    r = cli("--dsn", db.dsn, "rollback", str(last_job(conn)))
    assert r.returncode == 0, r.stderr
    assert location(conn) == 'r:"Ex"' and snapshot_rows(conn) == before
    with db2.connect() as rc:
        assert capture_leftovers(conn, rc) == []
        assert rc.execute("SELECT to_regclass('public.\"Ex d\"')").fetchone()[0] is None
    assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgcleave_not_%'"
                        ).fetchone()[0] == 0


@pytest.mark.parametrize("step", ["rename-foreign", "local-table", "capture", "copy",
                                  "default-validate"])
def test_copy_back_kill_then_rollback(db, db2, sharded, cli, step):
    conn = sharded
    before = moved_out(db, conn, cli)
    r = move(cli, db, "local", env={"PGCLEAVE_FAULT": f"kill-after:{step}"})
    assert r.returncode == -9
    r = cli("--dsn", db.dsn, "rollback", str(last_job(conn)))
    assert r.returncode == 0, r.stderr
    assert location(conn) == 'f:"Ex"' and snapshot_rows(conn) == before
    with db2.connect() as rc:
        assert capture_leftovers(conn, rc) == []
    # a half-copied local table is gone, the foreign partition has its name back
    assert conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'Ex d%'"
                        " AND relkind = 'r'").fetchone()[0] == 1  # "Ex d_pgc_local" only


def _restart(sandbox, conn, name: str = "db2") -> None:
    s = sandbox.start(name)
    conn.execute(sql.SQL("ALTER SERVER {} OPTIONS (SET port {})").format(
        sql.Identifier(name), sql.Literal(str(s.port))))


def _stop_resume_start_resume(db, conn, cli, sandbox, job: int, before: list[tuple],
                              local_kind: str) -> None:
    sandbox.stop("db2", mode="immediate")
    try:
        r = cli("--dsn", db.dsn, "resume", str(job), timeout=60)
        if r.returncode != 0:
            assert "db2" in r.stderr, r.stderr
        if location(conn) == local_kind:  # not cut over yet: every row still readable
            assert snapshot_rows(conn) == before
    finally:
        _restart(sandbox, conn)
    state = conn.execute("SELECT state FROM pgcleave.jobs WHERE id = %s", [job]).fetchone()[0]
    if state != "done":
        try:
            r = cli("--dsn", db.dsn, "resume", str(job), timeout=60)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"resume hung: {exc.stderr}") from None
        assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("step", STEPS_OUT)
def test_copy_remote_stops_then_resume(db, db2, sharded, cli, sandbox, step):
    conn = sharded
    before = snapshot_rows(conn)
    r = move(cli, db, "db2", env={"PGCLEAVE_FAULT": f"kill-after:{step}"})
    assert r.returncode == -9, r.stderr
    _stop_resume_start_resume(db, conn, cli, sandbox, last_job(conn), before, 'r:"Ex"')
    assert location(conn) == 'f:"Ex"'
    assert snapshot_rows(conn) == before
    with db2.connect() as rc:
        assert capture_leftovers(conn, rc) == []


@pytest.mark.parametrize("step", STEPS_BACK)
def test_copy_back_remote_stops_then_resume(db, db2, sharded, cli, sandbox, step):
    conn = sharded
    before = moved_out(db, conn, cli)
    r = move(cli, db, "local", "--drop-source", env={"PGCLEAVE_FAULT": f"kill-after:{step}"})
    assert r.returncode == -9, r.stderr
    _stop_resume_start_resume(db, conn, cli, sandbox, last_job(conn), before, 'f:"Ex"')
    assert location(conn) == 'r:"Ex"'
    assert snapshot_rows(conn) == before
    with db2.connect() as rc:
        assert capture_leftovers(conn, rc) == []
        assert rc.execute("SELECT to_regclass('public.\"Ex d\"')").fetchone()[0] is None


# -- choosing the method -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def replica_server():
    """A server of its own with wal_level = replica (no logical decoding) and password
    authentication for the members of pgc_movers (regular expressions in pg_hba.conf need
    PostgreSQL 16)."""
    sb = Sandbox(tempfile.mkdtemp(prefix="pgcleave-replica-"))
    sb.up(1)
    try:
        s = sb.servers[0]
        with psycopg.connect(s.dsn, autocommit=True) as c:
            c.execute("ALTER SYSTEM SET wal_level = replica")
            c.execute("CREATE ROLE pgc_movers NOLOGIN")
        hba = Path(s.datadir) / "pg_hba.conf"
        hba.write_text("host all +pgc_movers 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        sb.stop(s.name)
        sb.start(s.name)
        yield sb.servers[0]
    finally:
        sb.down()


def test_auto_copies_when_wal_level_is_not_logical(replica_server, db2, cli):
    """This database has wal_level = replica: auto moves out by copy and says why; back, the
    shard (wal_level = logical, superuser) publishes and this database subscribes: auto
    replicates."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(replica_server.dsn, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    dsn = replica_server.dsn_for(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        make_table(conn)
        before = snapshot_rows(conn)
        r = cli("--dsn", dsn, "server", "add", "db2", "--dsn", db2.dsn, "--yes")
        assert r.returncode == 0, r.stderr
        r = cli("--dsn", dsn, "move", PART, "--to", "db2", "--dry-run")
        assert "method copy: logical replication is not possible (wal_level = replica on this" \
               " database" in r.stdout, r.stdout
        r = cli("--dsn", dsn, "move", PART, "--to", "db2", "--method", "replication", "--yes")
        assert r.returncode == 3 and "--method copy" in r.stderr, r.stderr
        r = cli("--dsn", dsn, "move", PART, "--to", "db2", "--yes")
        assert r.returncode == 0, r.stderr
        assert location(conn) == 'f:"Ex"' and snapshot_rows(conn) == before
        r = cli("--dsn", dsn, "move", PART, "--to", "local", "--yes", "--drop-source")
        assert r.returncode == 0, r.stderr
        assert location(conn) == 'r:"Ex"' and snapshot_rows(conn) == before
        notes = [n for j in (1, 2) for n in plan_notes(conn, last_job(conn) - 2 + j)]
        assert any(n.startswith("method copy: ") for n in notes), notes
        assert any(n.startswith("method replication: ") for n in notes), notes
        with db2.connect() as rc:
            assert leftovers(conn, rc) == [] and capture_leftovers(conn, rc) == []


def test_blockers_of_an_ordinary_role(db, conn):
    """With the real catalog of a role with LOGIN and nothing else: it may neither be the
    replication connection of a publisher nor create subscriptions."""
    role = "pgc_plain_" + uuid.uuid4().hex[:8]
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        dsn = psycopg.conninfo.make_conninfo(db.dsn, user=role)
        with psycopg.connect(dsn, autocommit=True) as c:
            got = replication_blockers(c, c, pub_where="P", sub_where="S", pub_password=False)
        assert any(f"role {role} on P has neither SUPERUSER nor REPLICATION" in b for b in got), got
        assert any(f"role {role} on S may not create subscriptions" in b for b in got), got
        assert not any("wal_level" in b for b in got), got
        got = replication_blockers(conn, conn, pub_where="P", sub_where="S", pub_password=False)
        assert got == []
    finally:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_ordinary_role_moves_out_and_back(db, conn, replica_server, cli):
    """No superuser anywhere: a role that owns the table here and the database on the shard
    (which asks it for a password, as non-superuser postgres_fdw and dblink require) moves a
    partition out and back; auto picks copy, naming why replication is not possible."""
    role = "mover_" + uuid.uuid4().hex[:8]
    shard_db = "s_" + uuid.uuid4().hex[:12]
    pw = uuid.uuid4().hex
    ident = sql.Identifier(role)
    with psycopg.connect(replica_server.dsn, autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE pgc_movers").format(
            ident, sql.Literal(pw)))
        c.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(shard_db), ident))
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
    try:
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(db.name),
                                                                     ident))
        conn.execute(sql.SQL("CREATE SCHEMA pgcleave AUTHORIZATION {}").format(ident))
        conn.execute("CREATE EXTENSION postgres_fdw")
        conn.execute("CREATE EXTENSION dblink SCHEMA pgcleave")
        conn.execute(sql.SQL("GRANT USAGE ON FOREIGN DATA WRAPPER postgres_fdw TO {}").format(
            ident))
        mine = psycopg.conninfo.make_conninfo(db.dsn, user=role)
        shard = psycopg.conninfo.make_conninfo(replica_server.dsn_for(shard_db), user=role,
                                               password=pw)
        with psycopg.connect(mine, autocommit=True) as mc:
            make_table(mc)
            before = snapshot_rows(mc)
            r = cli("--dsn", mine, "server", "add", "db2", "--dsn", shard, "--yes")
            assert r.returncode == 0, r.stdout + r.stderr
            r = cli("--dsn", mine, "move", PART, "--to", "db2", "--yes")
            assert r.returncode == 0, r.stderr
            assert location(mc) == 'f:"Ex"' and snapshot_rows(mc) == before
            notes = plan_notes(mc, last_job(mc))
            assert any(n.startswith("method copy: ") and f"role {role} on server db2 may not "
                       "create subscriptions" in n for n in notes), notes
            mc.execute("INSERT INTO \"Ex\" (tenant, payload) VALUES ('Dora', 'remote')")
            before = snapshot_rows(mc)
            r = cli("--dsn", mine, "move", PART, "--to", "local", "--yes", "--drop-source")
            assert r.returncode == 0, r.stderr
            assert location(mc) == 'r:"Ex"' and snapshot_rows(mc) == before
            with psycopg.connect(shard, autocommit=True) as rc:
                assert capture_leftovers(mc, rc) == []
    finally:
        conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(ident))
        conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        conn.execute(sql.SQL("DROP ROLE {}").format(ident))
        with psycopg.connect(replica_server.dsn, autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(shard_db)))
            c.execute(sql.SQL("DROP ROLE {}").format(ident))
