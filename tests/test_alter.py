"""`pgcleave alter` with remote partitions (two-phase commit), kills, a shard that goes away,
and the whole of seed 000 on two and three servers."""

from __future__ import annotations

import json
import socket
import threading
import time

import psycopg
import pytest
from psycopg import sql

from tests.test_move import PART, add_server, make_table

SEED_ROWS = [
    ("ac8e6a36-722e-4e53-b9e6-e916aded0b00", "Acme", "jumping"),
    ("284d1166-0bdc-4c66-93c1-43ddbd0491a0", "Acme", "running"),
    ("aa46f49b-5fca-4fc8-bd63-fdf587710c00", "Bobmart", "hopping"),
    ("b9257460-173b-45e8-b4c3-7ec269c8f74d", "Crazytown", "skipping"),
    ("4f32eadf-0abe-480a-93bc-8780fdf85b5d", "Dory", "swimming"),
    ("216b0fd6-5baf-4432-80c6-069243e8cba4", "Eggbert", "sitting"),
]


def remote_columns(db2, table: str = "Ex d") -> list[str]:
    with db2.connect() as rc:
        return [r[0] for r in rc.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
            " AND NOT attisdropped ORDER BY attnum", [sql.Identifier(table).as_string(None)])]


def prepared(db2) -> list[str]:
    with db2.connect() as rc:
        return [r[0] for r in rc.execute("SELECT gid FROM pg_prepared_xacts")]


@pytest.fixture
def remote(db, db2, conn, cli):
    make_table(conn, rows=40)
    add_server(db, "db2", db2)
    r = cli("--dsn", db.dsn, "move", PART, "--to", "db2", "--yes", "--drop-source")
    assert r.returncode == 0, r.stderr
    return conn


def test_add_rename_drop_column(db, db2, remote, cli):
    conn = remote
    r = cli("--dsn", db.dsn, "alter", '"Ex"', "ADD difficulty SMALLINT", "--dry-run")
    assert r.returncode == 0 and "PREPARE TRANSACTION" in r.stdout, r.stderr
    assert "difficulty" not in remote_columns(db2)
    r = cli("--dsn", db.dsn, "alter", '"Ex"', "ADD difficulty SMALLINT", "--yes")
    assert r.returncode == 0, r.stderr
    assert remote_columns(db2) == ["id", "tenant", "payload", "difficulty"]
    conn.execute("INSERT INTO \"Ex\" (tenant, payload, difficulty) VALUES ('Dory', 'x', 3),"
                 " ('Acme', 'y', 4)")
    rows = conn.execute('SELECT * FROM "Ex" WHERE difficulty IS NOT NULL ORDER BY tenant'
                        ).fetchall()
    assert [(r[1], r[3]) for r in rows] == [("Acme", 4), ("Dory", 3)]
    r = cli("--dsn", db.dsn, "alter", '"Ex"', 'RENAME COLUMN difficulty TO "Level"', "--yes")
    assert r.returncode == 0, r.stderr
    assert remote_columns(db2)[-1] == "Level"
    assert conn.execute('SELECT sum("Level") FROM "Ex"').fetchone()[0] == 7
    r = cli("--dsn", db.dsn, "alter", '"Ex"', 'DROP COLUMN "Level"', "--yes")
    assert r.returncode == 0, r.stderr
    assert remote_columns(db2) == ["id", "tenant", "payload"]
    assert len(conn.execute('SELECT * FROM "Ex"').fetchall()) == 42
    assert prepared(db2) == []
    # the guard lets pgcleave's own signature through and still stops a plain ALTER
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        conn.execute('ALTER TABLE "Ex" ADD z int')


def test_failed_change_changes_nothing(db, db2, remote, cli):
    conn = remote
    r = cli("--dsn", db.dsn, "alter", '"Ex"', "ADD payload int", "--yes")
    assert r.returncode != 0 and "nothing was changed" in r.stderr, r.stderr
    assert prepared(db2) == [] and remote_columns(db2) == ["id", "tenant", "payload"]
    for bad in ["", "ALTER TABLE x ADD y int", "ADD a int; DROP TABLE x", "DETACH PARTITION x"]:
        r = cli("--dsn", db.dsn, "alter", '"Ex"', bad, "--yes")
        assert r.returncode == 3, (bad, r.stderr)
    r = cli("--dsn", db.dsn, "alter", "nosuch", "ADD a int", "--yes")
    assert r.returncode == 3
    assert conn.execute("SELECT count(*) FROM pgcleave.twophase WHERE state <> 'aborted'"
                        ).fetchone()[0] == 0


@pytest.mark.parametrize("fault", ["kill-in:alter-prepared", "kill-in:alter-before-decision",
                                   "kill-after:alter", "kill-before:commit-prepared"])
def test_kill_then_resume(db, db2, remote, cli, fault):
    conn = remote
    r = cli("--dsn", db.dsn, "alter", '"Ex"', "ADD difficulty SMALLINT", "--yes",
            env={"PGCLEAVE_FAULT": fault})
    assert r.returncode == -9, r.stderr
    job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
    r = cli("--dsn", db.dsn, "resume", str(job))
    assert r.returncode == 0, r.stderr
    assert remote_columns(db2)[-1] == "difficulty"
    assert prepared(db2) == []
    conn.execute("INSERT INTO \"Ex\" (tenant, payload, difficulty) VALUES ('Dory', 'k', 1)")
    assert len(conn.execute('SELECT * FROM "Ex"').fetchall()) == 41


@pytest.mark.parametrize("fault", ["kill-in:alter-prepared", "kill-in:alter-before-decision"])
def test_kill_then_rollback(db, db2, remote, cli, fault):
    conn = remote
    r = cli("--dsn", db.dsn, "alter", '"Ex"', "ADD difficulty SMALLINT", "--yes",
            env={"PGCLEAVE_FAULT": fault})
    assert r.returncode == -9
    assert len(prepared(db2)) == 1  # a prepared transaction holds the shard's table
    job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
    r = cli("--dsn", db.dsn, "rollback", str(job))
    assert r.returncode == 0, r.stderr
    assert prepared(db2) == [] and "difficulty" not in remote_columns(db2)
    cols = [r[0] for r in conn.execute('SELECT * FROM "Ex" LIMIT 0').description or []]
    assert cols == ["id", "tenant", "payload"]


def test_shard_away(db, db2, remote, cli, sandbox):
    from tests.test_move import _restart

    conn = remote
    # away before: refused while planning (exit 3), no job, nothing changed here
    jobs_before = conn.execute("SELECT count(*) FROM pgcleave.jobs").fetchone()
    sandbox.stop("db2", mode="immediate")
    try:
        r = cli("--dsn", db.dsn, "alter", '"Ex"', "ADD difficulty SMALLINT", "--yes")
        assert r.returncode == 3 and "cannot ask server db2" in r.stderr, r.stderr
        cols = [c.name for c in conn.execute('SELECT * FROM "Ex_a" LIMIT 0').description or []]
        assert "difficulty" not in cols
        assert conn.execute("SELECT count(*) FROM pgcleave.jobs").fetchone() == jobs_before
    finally:
        _restart(sandbox, conn)
    r = cli("--dsn", db.dsn, "alter", '"Ex"', "ADD difficulty SMALLINT", "--yes")
    assert r.returncode == 0, r.stderr
    assert remote_columns(db2)[-1] == "difficulty"
    # away after the decision: the commit waits for it, then resume finishes
    r = cli("--dsn", db.dsn, "alter", '"Ex"', "ADD level int", "--yes",
            env={"PGCLEAVE_FAULT": "kill-after:alter"})
    assert r.returncode == -9
    sandbox.stop("db2", mode="immediate")
    job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
    try:
        r = cli("--dsn", db.dsn, "resume", str(job))
        assert r.returncode != 0
    finally:
        _restart(sandbox, conn)
    r = cli("--dsn", db.dsn, "resume", str(job))
    assert r.returncode == 0, r.stderr
    assert remote_columns(db2)[-1] == "level" and prepared(db2) == []
    assert len(conn.execute('SELECT * FROM "Ex"').fetchall()) == 40



def _server_options(conn) -> dict[str, str]:
    return dict(conn.execute("SELECT option_name, option_value FROM pg_options_to_table("
                             "(SELECT srvoptions FROM pg_foreign_server WHERE srvname = 'db2'))"
                             ).fetchall())


class _DeadLink:
    """A port that takes each connection and never answers, then drops it after ``seconds``:
    a shard behind a dead link, as a client sees it, failing after the same wait on every
    PostgreSQL version (libpq's connect_timeout alone does not bound a dblink connection the
    same way on all of them)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True, name="dead-link").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Timer(self.seconds, client.close).start()

    def close(self) -> None:
        self._sock.close()


def test_resume_with_a_shard_out_of_reach_waits_for_it_once(db, db2, remote, cli):
    """A resumed job asks its questions again before it goes on, those of the shard through
    dblink. A shard behind a dead link (a port that takes the connection and answers nothing
    for ``wait`` seconds) is waited for once, not once for all the questions asked together
    and then once more for each of them: the refusal names the server, and the resume ends
    once the shard is reachable again."""
    conn = remote
    r = cli("--dsn", db.dsn, "alter", '"Ex"', "ADD level int", "--yes",
            env={"PGCLEAVE_FAULT": "kill-after:alter"})
    assert r.returncode == -9
    job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
    before = _server_options(conn)
    wait = 3
    hole = _DeadLink(wait)
    conn.execute(sql.SQL("ALTER SERVER db2 OPTIONS (SET host '127.0.0.1', SET port {})").format(
        sql.Literal(str(hole.port))))
    try:
        t0 = time.monotonic()
        r = cli("--dsn", db.dsn, "resume", str(job))
        took = time.monotonic() - t0
    finally:
        conn.execute(sql.SQL("ALTER SERVER db2 OPTIONS (SET host {}, SET port {})").format(
            sql.Literal(before["host"]), sql.Literal(before["port"])))
        hole.close()
    # the questions of the shard are two (owner of its table, prepared transactions): each
    # asked again after the failed batch, they made three waits
    assert wait <= took < 2 * wait, (took, r.stderr)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "server db2 is out of reach" in r.stderr and "nothing was changed" in r.stderr, \
        r.stderr
    assert _server_options(conn) == before
    r = cli("--dsn", db.dsn, "resume", str(job))
    assert r.returncode == 0, r.stderr
    assert remote_columns(db2)[-1] == "level" and prepared(db2) == []


def test_resume_with_a_shard_that_never_answers_is_refused_in_time(db, db2, remote, cli):
    """A link that takes the connection and never answers (no drop at all): the shard's
    questions are given up after its server's connect_timeout and REMOTE_GRACE_S more, on 15
    (libpq's connect_timeout) as on 18 (which kept dblink waiting past it: the
    statement_timeout ends it), and the refusal names the server."""
    from pgcleave.preflight import REMOTE_GRACE_S

    conn = remote
    r = cli("--dsn", db.dsn, "alter", '"Ex"', "ADD level int", "--yes",
            env={"PGCLEAVE_FAULT": "kill-after:alter"})
    assert r.returncode == -9
    job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
    before = _server_options(conn)
    hole = _DeadLink(3600)
    conn.execute(sql.SQL("ALTER SERVER db2 OPTIONS (SET host '127.0.0.1', SET port {}, {} "
                         "connect_timeout '2')").format(
        sql.Literal(str(hole.port)), sql.SQL("SET" if "connect_timeout" in before else "ADD")))
    try:
        t0 = time.monotonic()
        r = cli("--dsn", db.dsn, "resume", str(job))
        took = time.monotonic() - t0
    finally:
        conn.execute(sql.SQL("ALTER SERVER db2 OPTIONS (SET host {}, SET port {}, DROP "
                             "connect_timeout)").format(sql.Literal(before["host"]),
                                                        sql.Literal(before["port"])))
        if "connect_timeout" in before:
            conn.execute(sql.SQL("ALTER SERVER db2 OPTIONS (ADD connect_timeout {})").format(
                sql.Literal(before["connect_timeout"])))
        hole.close()
    assert took < 2 + REMOTE_GRACE_S + 4, (took, r.stderr)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "server db2 is out of reach" in r.stderr, r.stderr
    assert _server_options(conn) == before
    r = cli("--dsn", db.dsn, "resume", str(job))
    assert r.returncode == 0, r.stderr
    assert remote_columns(db2)[-1] == "level" and prepared(db2) == []


def test_seed_000(db, db2, db3, conn, cli):
    """The whole seed, including the remote half that breaks it, and one step further."""
    conn.execute("CREATE TABLE exercises (id UUID PRIMARY KEY, tenant VARCHAR NOT NULL,"
                 " name VARCHAR NOT NULL)")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO exercises (id, tenant, name) VALUES (%s, %s, %s)", SEED_ROWS)
    conn.execute("""
        BEGIN;
        ALTER TABLE exercises RENAME TO exercises_old;
        CREATE TABLE exercises (LIKE exercises_old) PARTITION BY RANGE (tenant);
        ALTER TABLE exercises ATTACH PARTITION exercises_old DEFAULT;
        COMMIT;
        BEGIN;
        CREATE TABLE exercises_0 (LIKE exercises_old INCLUDING ALL);
        WITH x AS (DELETE FROM exercises_old WHERE tenant < 'B' RETURNING *)
            INSERT INTO exercises_0 SELECT * FROM x;
        ALTER TABLE exercises ATTACH PARTITION exercises_0 FOR VALUES FROM (MINVALUE) TO ('B');
        COMMIT;
        ALTER TABLE exercises ADD description VARCHAR;
        BEGIN;
        CREATE TABLE exercises_1 (LIKE exercises_old INCLUDING ALL);
        WITH x AS (DELETE FROM exercises_old WHERE tenant < 'D' RETURNING *)
            INSERT INTO exercises_1 SELECT * FROM x;
        ALTER TABLE exercises ATTACH PARTITION exercises_1 FOR VALUES FROM ('B') TO ('D');
        COMMIT;
        -- the seed carves D..E out of the DEFAULT; here into a local partition first
        BEGIN;
        CREATE TABLE exercises_2 (LIKE exercises_old INCLUDING ALL);
        WITH x AS (DELETE FROM exercises_old WHERE tenant >= 'D' AND tenant < 'E' RETURNING *)
            INSERT INTO exercises_2 SELECT * FROM x;
        ALTER TABLE exercises ATTACH PARTITION exercises_2 FOR VALUES FROM ('D') TO ('E');
        COMMIT;
    """)
    add_server(db, "db2", db2)
    add_server(db, "db3", db3)
    r = cli("--dsn", db.dsn, "move", "exercises_2", "--to", "db2", "--yes")
    assert r.returncode == 0, r.stderr
    r = cli("--dsn", db.dsn, "move", "exercises_1", "--to", "db3", "--yes")
    assert r.returncode == 0, r.stderr
    st = json.loads(cli("--dsn", db.dsn, "status", "exercises", "--json").stdout)
    assert {p["name"]: p["location"] for p in st["partitioning"]["partitions"]} == {
        "public.exercises_0": "local", "public.exercises_1": "db3",
        "public.exercises_2": "db2", "public.exercises_old": "local"}
    rows = conn.execute("SELECT id::text, tenant, name FROM exercises ORDER BY tenant, name"
                        ).fetchall()
    assert sorted(rows, key=lambda r: (r[1], r[2])) == sorted(SEED_ROWS, key=lambda r: (r[1], r[2]))
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        conn.execute("ALTER TABLE exercises ADD difficulty SMALLINT")  # the seed's breakage
    r = cli("--dsn", db.dsn, "alter", "exercises", "ADD difficulty SMALLINT", "--yes")
    assert r.returncode == 0, r.stderr
    cur = conn.execute("SELECT * FROM exercises ORDER BY tenant, name")
    assert [c.name for c in cur.description or []] == ["id", "tenant", "name", "description",
                                                        "difficulty"]
    assert len(cur.fetchall()) == 6
    conn.execute("INSERT INTO exercises VALUES (gen_random_uuid(), 'Dory', 'diving', NULL, 2)")
    with db2.connect() as rc:
        assert rc.execute("SELECT name, difficulty FROM exercises_2 ORDER BY name").fetchall() \
            == [("diving", 2), ("swimming", None)]


def test_alter_with_writers(db, db2, remote, cli):
    """ADD then DROP COLUMN on every server while the application writes to local and remote
    partitions: nothing lost, no writer error, and the longest writer wait is reported."""
    import random

    from pgcleave.testing.workload import Spec, Workload

    table = sql.Identifier("public", "Ex")
    local = Spec(table=table, key_col="tenant", payload_col="payload",
                 make_key=lambda r: random.choice(["Acme", "Bob", "Eggbert", "Zed"]))
    # rows on the shard stay in its range: a key-moving UPDATE out of it is refused by design
    shard = Spec(table=table, key_col="tenant", payload_col="payload",
                 make_key=lambda r: random.choice(["Dory", "Dx", "Duck"]))
    w1 = Workload(db.dsn, local, writers=2, seed=3).start()
    w2 = Workload(db.dsn, shard, writers=2, seed=4).start()
    try:
        w1.run_for(0.3)
        r = cli("--dsn", db.dsn, "alter", '"Ex"', "ADD COLUMN note2 text", "--yes")
        assert r.returncode == 0, r.stderr
        w1.run_for(0.3)
        r = cli("--dsn", db.dsn, "alter", '"Ex"', "DROP COLUMN note2", "--yes")
        assert r.returncode == 0, r.stderr
        w1.run_for(0.3)
    finally:
        w1.stop()
        w2.stop()
    w1.verify(remote)
    w2.verify(remote)
    assert w2.ops.get("insert", 0) > 5 and w2.ops.get("move", 0) > 0, w2.summary()
    assert "note2" not in remote_columns(db2) and prepared(db2) == []
    print(f"\nalter with writers: {w1.summary()} | {w2.summary()}")
