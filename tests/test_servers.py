"""`pgcleave server add/list/remove` against real servers."""

from __future__ import annotations

import json

from pgcleave.sandbox import free_port


def test_add_list_remove(db, db2, cli, conn):
    dsn2 = db2.dsn.replace("postgres@", "postgres:s3cret@")
    r = cli("--dsn", db.dsn, "server", "add", "db2", "--dsn", dsn2, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "CREATE SERVER" in r.stdout and "async_capable" in r.stdout
    assert "s3cret" not in r.stdout + r.stderr, r.stdout
    assert "\"password\" '***'" in r.stdout
    assert conn.execute("SELECT count(*) FROM pg_foreign_server").fetchone()[0] == 0

    r = cli("--dsn", db.dsn, "server", "add", "db2", "--dsn", dsn2, "--yes")
    assert r.returncode == 0, r.stderr
    assert "s3cret" not in r.stdout + r.stderr
    opts = conn.execute("SELECT srvoptions FROM pg_foreign_server WHERE srvname = 'db2'"
                        ).fetchone()[0]
    assert {"async_capable=true", "fetch_size=10000", "batch_size=100"} <= set(opts)
    assert f"dbname={db2.name}" in opts
    # the password lives in the user mapping only, not in the journal
    assert conn.execute("SELECT count(*) FROM pgcleave.jobs WHERE plan::text LIKE '%s3cret%'"
                        ).fetchone()[0] == 0
    um = conn.execute("SELECT umoptions FROM pg_user_mappings WHERE srvname = 'db2'").fetchone()
    assert "password=s3cret" in um[0]
    # the remote is reachable through postgres_fdw (trust auth ignores the password)
    assert conn.execute("SELECT * FROM pgcleave.dblink('db2', 'SELECT 41 + 1') AS r(x int)"
                        ).fetchone()[0] == 42
    assert conn.execute("SHOW enable_partitionwise_aggregate").fetchone()[0] == "off"  # session
    setting = conn.execute("SELECT setconfig FROM pg_db_role_setting s JOIN pg_database d"
                           " ON d.oid = s.setdatabase WHERE d.datname = current_database()"
                           ).fetchone()[0]
    assert "enable_partitionwise_aggregate=on" in setting

    r = cli("--dsn", db.dsn, "server", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows[0]["name"] == "db2" and rows[0]["password"] == "***"
    assert "s3cret" not in r.stdout
    r = cli("--dsn", db.dsn, "server", "list")
    assert "db2" in r.stdout and "s3cret" not in r.stdout

    again = cli("--dsn", db.dsn, "server", "add", "db2", "--dsn", db2.dsn, "--yes")
    assert again.returncode == 3 and "already exists" in again.stderr

    # a foreign table on it blocks removal
    conn.execute("CREATE FOREIGN TABLE ft (x int) SERVER db2")
    r = cli("--dsn", db.dsn, "server", "remove", "db2", "--yes")
    assert r.returncode == 3 and "move PARTITION --to local" in r.stderr
    conn.execute("DROP FOREIGN TABLE ft")
    r = cli("--dsn", db.dsn, "server", "remove", "db2", "--yes")
    assert r.returncode == 0, r.stderr
    assert conn.execute("SELECT count(*) FROM pg_foreign_server").fetchone()[0] == 0


def test_refusals(db, db2, cli, conn):
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    r = cli("--dsn", db.dsn, "server", "add", "db9", "--dsn", closed, "--yes")
    assert r.returncode == 3, r.stderr
    assert "cannot reach" in r.stderr and "hint:" in r.stderr
    r = cli("--dsn", db.dsn, "server", "add", "me", "--dsn", db.dsn, "--yes")
    assert r.returncode == 3 and "same PostgreSQL cluster" in r.stderr
    r = cli("--dsn", db.dsn, "server", "add", "local", "--dsn", db2.dsn, "--yes")
    assert r.returncode == 3
    r = cli("--dsn", db.dsn, "server", "remove", "nope", "--yes")
    assert r.returncode == 3 and "no server named" in r.stderr
    r = cli("--dsn", db.dsn, "server", "add", "db2", "--dsn", "password=pw9 nonsense", "--yes")
    assert r.returncode == 3 and "pw9" not in r.stderr
    assert conn.execute("SELECT count(*) FROM pg_foreign_server").fetchone()[0] == 0
    assert conn.execute("SELECT to_regclass('pgcleave.jobs')").fetchone()[0] is None
