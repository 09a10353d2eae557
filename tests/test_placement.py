"""Placement policy: ``config --place 'range(FROM,TO)=SERVER'`` and ``maintain`` creating new
partitions as foreign partitions on that server (two real servers)."""

from __future__ import annotations

import json
from typing import Any

from psycopg import sql

from tests.test_move import add_server

T = "Me trics"
Q = '"Me trics"'


def make_metrics(conn: Any, *, parent_key: bool = False) -> None:
    """A month-partitioned table (keys per partition, none on the parent) with a DEFAULT."""
    t = sql.Identifier(T)
    pk = ", PRIMARY KEY (id, at)" if parent_key else ""
    conn.execute(sql.SQL("CREATE TABLE {} (id bigserial, at timestamptz NOT NULL, v int,"
                         " note text CHECK (length(note) < 50){}) PARTITION BY RANGE (at)"
                         ).format(t, sql.SQL(pk)))
    conn.execute(sql.SQL("CREATE INDEX ON {} (at)").format(t))
    for lo, hi in [("2025-01-01", "2025-02-01"), ("2025-02-01", "2025-03-01")]:
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})")
                     .format(sql.Identifier(f"{T}_{lo[:7]}"), t, sql.Literal(lo + " 00:00+00"),
                             sql.Literal(hi + " 00:00+00")))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(
        sql.Identifier(T + "_default"), t))
    conn.execute(sql.SQL("INSERT INTO {} (at, v) SELECT '2025-01-01 00:00+00'::timestamptz"
                         " + i * interval '1 hour', i FROM generate_series(0, 1000) i").format(t))


def policy_row(conn: Any) -> Any:
    return conn.execute("SELECT placement, updated_at FROM pgcleave.policies"
                        " WHERE table_name = %s", [T]).fetchone()


def test_maintain_places_future_months_on_db2(db: Any, db2: Any, conn: Any, cli: Any) -> None:
    make_metrics(conn)
    add_server(db, "db2", db2)
    r = cli("--dsn", db.dsn, "config", Q, "--premake", "3")
    assert r.returncode == 0, r.stderr
    # the first foreign partition is a consequence to confirm
    r = cli("--dsn", db.dsn, "config", Q, "--place", "range(2025-04-01, 2026-01-01)=db2")
    assert r.returncode != 0 and "ON CONFLICT" in r.stderr + r.stdout, r.stderr
    assert policy_row(conn)[0] == []
    r = cli("--dsn", db.dsn, "config", Q, "--place", "range(2025-04-01, 2026-01-01)=db2",
            "--yes")
    assert r.returncode == 0, r.stderr
    r = cli("--dsn", db.dsn, "config", Q)
    assert "place range(2025-04-01 00:00:00+00, 2026-01-01 00:00:00+00)=db2" in r.stdout, r.stdout

    r = cli("--dsn", db.dsn, "maintain", Q, "--now", "2025-03-10", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "CREATE FOREIGN TABLE" in r.stdout and "dblink_exec" in r.stdout, r.stdout
    # created in one transaction under the parent's lock: no CHECK on the DEFAULT refuses the
    # new months' rows meanwhile
    assert "VALIDATE CONSTRAINT" not in r.stdout and "LOCK TABLE ONLY" in r.stdout, r.stdout
    assert conn.execute("SELECT count(*) FROM pg_foreign_table").fetchone()[0] == 0

    r = cli("--dsn", db.dsn, "maintain", Q, "--now", "2025-03-10", "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)["tables"][0]["done"]
    # March here (outside the rule); April, May, June on db2
    assert len(done["created"]) == 4
    assert sorted(done["placed"].values()) == ["db2"] * 3
    st = json.loads(cli("--dsn", db.dsn, "status", Q, "--json").stdout)
    where = {p["name"]: p["server"] for p in st["partitioning"]["partitions"]}
    assert sum(1 for s in where.values() if s is None) == 4, where  # Jan, Feb, Mar, DEFAULT
    assert sorted(s for s in where.values() if s) == ["db2"] * 3, where
    # no helper CHECK left on the DEFAULT
    assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgcleave%%'"
                        " AND conrelid = %s::regclass",
                        [sql.Identifier(T + "_default").as_string(None)]).fetchone()[0] == 0

    # rows inserted through the parent land on db2; the shard's CHECK equals the bound
    conn.execute(sql.SQL("INSERT INTO {} (at, v) VALUES ('2025-05-15 12:00+00', -1),"
                         " ('2025-03-15 00:00+00', -2)").format(sql.Identifier(T)))
    with db2.connect() as rc:
        tables = [r[0] for r in rc.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace ="
            " 'public'::regnamespace ORDER BY 1")]
        assert len(tables) == 3, tables
        may = next(t for t in tables if "2025_05" in t)
        assert rc.execute(sql.SQL("SELECT v FROM {}").format(sql.Identifier(may))
                          ).fetchall() == [(-1,)]
        checks = [r[0] for r in rc.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid ="
            " %s::regclass AND contype = 'c' ORDER BY conname",
            [sql.Identifier(may).as_string(None)])]
        assert any("2025-05-01" in c and "2025-06-01" in c for c in checks), checks
        assert any("length(note)" in c for c in checks), checks
        assert rc.execute("SELECT count(*) FROM pg_indexes WHERE tablename = %s",
                          [may]).fetchone()[0] == 1
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(T))
                        ).fetchone()[0] == 1003
    r = cli("--dsn", db.dsn, "check", Q, "--now", "2025-03-10")
    assert r.returncode == 0, r.stdout + r.stderr

    # a month later: July on db2 too; idempotent otherwise
    r = cli("--dsn", db.dsn, "maintain", Q, "--now", "2025-04-10", "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)["tables"][0]["done"]
    assert list(done["placed"].values()) == ["db2"] and len(done["created"]) == 1
    r = cli("--dsn", db.dsn, "maintain", Q, "--now", "2025-04-20")
    assert "nothing to do" in r.stdout, r.stdout + r.stderr

    # --no-place clears the rules
    r = cli("--dsn", db.dsn, "config", Q, "--no-place")
    assert r.returncode == 0, r.stderr
    assert policy_row(conn)[0] == []


def test_bad_rules_change_nothing(db: Any, db2: Any, conn: Any, cli: Any) -> None:
    make_metrics(conn)
    add_server(db, "db2", db2)
    r = cli("--dsn", db.dsn, "config", Q, "--premake", "3")
    assert r.returncode == 0, r.stderr
    before = policy_row(conn)
    bad = [
        (["range(2025-04-01, 2026-01-01)=nosuch"], "server add"),
        (["range(2025-04-01, 2026-01-01)=db2", "range(2025-12-01, 2026-06-01)=db2"], "overlap"),
        (["range(banana, 2026-01-01)=db2"], "timestamp"),
        (["range(2026-01-01, 2025-01-01)=db2"], "below"),
        (["list(a, b)=db2"], "range"),
        (["range(2025-04-01)=db2"], "two bounds"),
        (["nonsense"], "range(FROM, TO)"),
    ]
    for rules, expect in bad:
        args = [a for rule in rules for a in ("--place", rule)]
        r = cli("--dsn", db.dsn, "config", Q, *args, "--yes")
        assert r.returncode == 3, (rules, r.returncode, r.stderr)
        assert expect in r.stderr, (rules, r.stderr)
        assert policy_row(conn) == before
    # a rule added later must not overlap the stored ones either
    r = cli("--dsn", db.dsn, "config", Q, "--place", "range(2025-04-01, 2026-01-01)=db2",
            "--yes")
    assert r.returncode == 0, r.stderr
    r = cli("--dsn", db.dsn, "config", Q, "--place", "range(2025-06-01, MAXVALUE)=db2", "--yes")
    assert r.returncode == 3 and "overlap" in r.stderr, r.stderr
    assert conn.execute("SELECT count(*) FROM pg_foreign_table").fetchone()[0] == 0


def test_parent_key_refused(db: Any, db2: Any, conn: Any, cli: Any) -> None:
    make_metrics(conn, parent_key=True)
    add_server(db, "db2", db2)
    r = cli("--dsn", db.dsn, "config", Q, "--premake", "3")
    assert r.returncode == 0, r.stderr
    r = cli("--dsn", db.dsn, "config", Q, "--place", "range(2025-04-01, 2026-01-01)=db2",
            "--yes")
    assert r.returncode == 3 and "unique keys" in r.stderr and "DROP CONSTRAINT" in r.stderr
    assert policy_row(conn)[0] == []


def test_list_rule(db: Any, db2: Any, conn: Any, cli: Any) -> None:
    conn.execute("""
        CREATE TABLE tl (id bigserial, tenant text NOT NULL, v int) PARTITION BY LIST (tenant);
        CREATE TABLE tl_acme PARTITION OF tl FOR VALUES IN ('Acme');
        CREATE TABLE tl_default PARTITION OF tl DEFAULT;
        INSERT INTO tl (tenant, v) VALUES ('Acme', 1), ('Bob', 2);
    """)
    add_server(db, "db2", db2)
    r = cli("--dsn", db.dsn, "config", "tl", "--place", "list('Dory', 'D''x')=db2",
            "--place", "list(Bob)=db2", "--yes")
    assert r.returncode == 0, r.stderr
    r = cli("--dsn", db.dsn, "maintain", "tl", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["tables"][0]
    assert list(res["done"]["placed"].values()) == ["db2"]
    assert "in the DEFAULT" in r.stderr and "pgcleave carve" in r.stderr, r.stderr  # Bob
    conn.execute("INSERT INTO tl (tenant, v) VALUES ('Dory', 3), ('D''x', 4)")
    with db2.connect() as rc:
        assert rc.execute("SELECT tenant FROM tl_d_x_dory ORDER BY 1").fetchall() == \
            [("D'x",), ("Dory",)]
    assert conn.execute("SELECT count(*) FROM ONLY tl_default").fetchone()[0] == 1  # Bob
    r = cli("--dsn", db.dsn, "maintain", "tl")
    assert "nothing to do" in r.stdout, r.stdout + r.stderr
