"""Foundation: sandbox servers, status, odd identifiers, errors and exit codes."""

from __future__ import annotations

import json
import tempfile
from typing import Any

import psycopg

from pgcleave.sandbox import Sandbox


def test_sandbox_up_env_down(cli: Any) -> None:
    d = tempfile.mkdtemp(prefix="pgcleave-sb-")
    up = cli("sandbox", "up", "--servers", "2", "--dir", d)
    assert up.returncode == 0, up.stderr
    lines = up.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["db1", "db2"]
    dsns = [ln.split()[1] for ln in lines]
    for dsn in dsns:
        with psycopg.connect(dsn) as c:
            assert c.execute("SHOW wal_level").fetchone() == ("logical",)
            assert int(c.execute("SHOW max_prepared_transactions").fetchone()[0]) > 0
            c.execute("CREATE EXTENSION postgres_fdw")
            c.execute("CREATE EXTENSION dblink")
    env = cli("sandbox", "env", "--dir", d)
    assert f"export PGCLEAVE_DSN='{dsns[0]}'" in env.stdout
    assert f"export PGCLEAVE_DSN_DB2='{dsns[1]}'" in env.stdout
    # a second `up` is idempotent: same servers, still answering
    again = cli("sandbox", "up", "--servers", "2", "--dir", d)
    assert again.stdout == up.stdout
    down = cli("sandbox", "down", "--dir", d)
    assert down.returncode == 0
    assert Sandbox(d).servers == []
    try:
        psycopg.connect(dsns[0], connect_timeout=2).close()
        raise AssertionError("server still answers after sandbox down")
    except psycopg.OperationalError:
        pass


def test_status_plain_table(db: Any, cli: Any) -> None:
    with db.connect() as c:
        c.execute("CREATE TABLE exercises (id uuid PRIMARY KEY, tenant varchar NOT NULL,"
                  " name varchar NOT NULL)")
        c.execute("INSERT INTO exercises SELECT gen_random_uuid(), 't' || i % 5, 'n'"
                  " FROM generate_series(1, 500) i")
    r = cli("--dsn", db.dsn, "status", "exercises", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["kind"] == "table"
    assert st["rows"] == 500
    assert st["bytes"] > 0
    assert st["primary_key"] == "PRIMARY KEY (id)"
    assert "partitioning" not in st
    human = cli("--dsn", db.dsn, "status", "exercises")
    assert "public.exercises" in human.stdout and "500" in human.stdout


def test_status_partition_tree_ordered_by_bounds(db: Any, db2: Any, cli: Any) -> None:
    """Partitions appear in bound order, not name order; sub-partitions nest; foreign partitions
    show their server."""
    with db.connect() as c:
        c.execute("""
            CREATE SCHEMA "Sales";
            CREATE TABLE "Sales"."Order Items" (id bigserial, country text NOT NULL,
                created_at timestamptz NOT NULL)
                PARTITION BY RANGE (created_at);
            CREATE TABLE "Sales"."p10" PARTITION OF "Sales"."Order Items"
                FOR VALUES FROM ('2024-10-01') TO ('2024-11-01');
            CREATE TABLE "Sales"."p9" PARTITION OF "Sales"."Order Items"
                FOR VALUES FROM ('2024-09-01') TO ('2024-10-01');
            CREATE TABLE "Sales"."a_last" PARTITION OF "Sales"."Order Items"
                FOR VALUES FROM ('2024-11-01') TO ('2024-12-01') PARTITION BY LIST (country);
            CREATE TABLE "Sales"."a_last_de" PARTITION OF "Sales"."a_last" FOR VALUES IN ('DE');
            CREATE TABLE "Sales"."a_last_at" PARTITION OF "Sales"."a_last" FOR VALUES IN ('AT');
            CREATE TABLE "Sales"."Order Items default" PARTITION OF "Sales"."Order Items" DEFAULT;
            INSERT INTO "Sales"."Order Items" (country, created_at)
                SELECT 'DE', '2024-09-01'::timestamptz + i * interval '1 hour'
                FROM generate_series(0, 99) i;
            INSERT INTO "Sales"."Order Items" (country, created_at) VALUES ('AT', '2024-11-05');
        """)
        c.execute("CREATE EXTENSION postgres_fdw")
        c.execute(f"CREATE SERVER shard2 FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host "
                  f"'127.0.0.1', port '{db2.server.port}', dbname '{db2.name}')")
        c.execute("CREATE USER MAPPING FOR CURRENT_USER SERVER shard2 OPTIONS (user 'postgres')")
        c.execute("""CREATE FOREIGN TABLE "Sales".p8 PARTITION OF "Sales"."Order Items"
                     FOR VALUES FROM ('2024-08-01') TO ('2024-09-01') SERVER shard2
                     OPTIONS (table_name 'p8')""")
    r = cli("--dsn", db.dsn, "status", '"Sales"."Order Items"', "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    parts = st["partitioning"]["partitions"]
    assert [p["name"] for p in parts] == [
        '"Sales".p8', '"Sales".p9', '"Sales".p10', '"Sales".a_last',
        '"Sales"."Order Items default"']
    assert parts[0]["location"] == "shard2" and parts[1]["location"] == "local"
    assert parts[-1]["is_default"] is True
    assert parts[1]["rows"] == 100  # every row of the insert is in September
    sub = parts[3]["partitioning"]
    assert sub["strategy"] == "list"
    assert [p["name"] for p in sub["partitions"]] == ['"Sales".a_last_at', '"Sales".a_last_de']
    assert parts[3]["rows"] == 1
    assert st["rows"] == 101
    human = cli("--dsn", db.dsn, "status", '"Sales"."Order Items"')
    assert human.returncode == 0
    out = human.stdout
    assert out.index("p8") < out.index("p9") < out.index("p10") < out.index("a_last")
    assert "on shard2" in out and "(DEFAULT)" in out


def test_unknown_table_is_refused(db: Any, cli: Any) -> None:
    r = cli("--dsn", db.dsn, "status", "no_such_table")
    assert r.returncode == 3
    assert "table no_such_table does not exist" in r.stderr
    assert "hint:" in r.stderr
    r = cli("--dsn", db.dsn, "status", '"unterminated')
    assert r.returncode == 3


def test_refused_connection_is_clear_and_hides_password(cli: Any) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = cli("--dsn", f"postgresql://app:s3cret@127.0.0.1:{port}/x", "status", "t")
    assert r.returncode == 5
    assert "cannot connect" in r.stderr and "Connection refused" in r.stderr
    assert "s3cret" not in r.stderr + r.stdout
    r = cli("--dsn", f"host=127.0.0.1 port={port} password=s3cret user=app", "status", "t")
    assert r.returncode == 5 and "s3cret" not in r.stderr


def test_dsn_from_environment_and_application_name(db: Any, cli: Any) -> None:
    with db.connect() as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY)")
    r = cli("status", "t", "--json", env={"PGCLEAVE_DSN": db.dsn})
    assert r.returncode == 0, r.stderr
    from pgcleave.connection import connect

    with connect(db.dsn) as c:
        name = c.execute("SELECT application_name FROM pg_stat_activity WHERE pid = "
                         "pg_backend_pid()").fetchone()
        assert name == ("pgcleave",)


def test_usage_error_exit_code(cli: Any) -> None:
    r = cli("status")
    assert r.returncode == 2
    r = cli("no-such-command")
    assert r.returncode == 2


def test_status_counts_rows_on_shards(db: Any, db2: Any, sandbox: Any, cli: Any) -> None:
    """A remote partition's rows and size come from its server; with the server away, status
    still answers (rows unknown) instead of failing."""
    from tests.test_move import add_server, make_table

    with db.connect() as c:
        make_table(c, rows=200)
        expected = c.execute("""SELECT count(*) FROM "Ex d" """).fetchone()[0]
    add_server(db, "db2", db2)
    assert cli("--dsn", db.dsn, "move", '"Ex d"', "--to", "db2", "--yes").returncode == 0
    st = json.loads(cli("--dsn", db.dsn, "status", '"Ex"', "--json").stdout)
    remote = next(p for p in st["partitioning"]["partitions"] if p["server"] == "db2")
    assert remote["rows"] == expected and remote["bytes"] > 0
    assert st["rows"] == 200
    sandbox.stop("db2", mode="immediate")
    try:
        r = cli("--dsn", db.dsn, "status", '"Ex"', "--json")
        assert r.returncode == 0, r.stderr
        remote = next(p for p in json.loads(r.stdout)["partitioning"]["partitions"]
                      if p["server"] == "db2")
        assert remote["rows"] is None
    finally:
        sandbox.start("db2")
