"""Hash, list and list-then-range conversions by copy (issue 13), under application-like
writers: every committed write present exactly once, no writer error, after the swap, after the
unswap, and after kills at every step; a hash partition moved to another server and back; bad
input refused with nothing changed."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from pgcleave.testing.workload import Spec, Workload
from tests.test_move import add_server, location

TENANTS = [f"tenant-{i}" for i in range(40)]
COUNTRIES = ["RU", "US", "GB", "IL", "FR"]
T0 = datetime(2025, 1, 1)


def _ok(r: Any) -> Any:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def _job(stderr: str) -> str:
    m = re.search(r"job (\d+):", stderr)
    assert m, stderr
    return m.group(1)


def _accounts(conn: psycopg.Connection[Any], rows: int = 6000, name: str = "accounts") -> None:
    t = sql.Identifier(name)
    conn.execute(sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, tenant text NOT NULL,"
                         " payload text, created_at timestamptz NOT NULL DEFAULT now())"
                         ).format(t))
    conn.execute(sql.SQL("CREATE INDEX ON {} (tenant)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} (tenant, payload) SELECT 'tenant-' || (i %% 40),"
                         " 'p' || i FROM generate_series(1, %s) i").format(t), [rows])


def _orders(conn: psycopg.Connection[Any], rows: int = 6000) -> None:
    """Seed 001's orders (trimmed): a serial id, a country, a time of order."""
    conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, country varchar(2) NOT NULL,"
                 " type varchar NOT NULL DEFAULT 'delivery', scheduled_at timestamp NOT NULL,"
                 " cost numeric(10,2) NOT NULL DEFAULT 0, payload text)")
    conn.execute("CREATE INDEX index_orders_on_country_and_scheduled_at ON orders"
                 " (country, scheduled_at)")
    conn.execute("INSERT INTO orders (country, scheduled_at, cost, payload) SELECT"
                 " ('{RU,RU,RU,RU,US,GB,GB,IL}'::text[])[1 + i %% 8], %s::timestamp"
                 " + (i %% 150) * interval '1 day', 100 + i %% 200, 'p' || i"
                 " FROM generate_series(1, %s) i", [T0, rows])


def _tenant_spec(name: str = "accounts") -> Spec:
    return Spec(table=sql.Identifier("public", name), key_col="tenant",
                make_key=lambda r: r.choice(TENANTS))


def _country_spec() -> Spec:
    return Spec(table=sql.Identifier("public", "orders"), key_col="country",
                make_key=lambda r: r.choice(COUNTRIES),
                extra={"scheduled_at": lambda r: T0 + timedelta(days=r.uniform(-20, 200))})


def _leaves(conn: psycopg.Connection[Any], table: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_partition_tree(%s) t"
        " JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf ORDER BY 1", [table])]


def test_hash_by_copy_unswap_and_move(db: Any, db2: Any, conn: Any, cli: Any) -> None:
    _accounts(conn)
    d = db.dsn
    r = _ok(cli("--dsn", d, "partition", "accounts", "--by", "hash(tenant)", "--modulus", "4",
                "--dry-run"))
    assert "FOR VALUES WITH (MODULUS 4, REMAINDER 3)" in r.stdout
    assert "strategy copy" in r.stdout
    w = Workload(d, _tenant_spec(), writers=3, max_seconds=120, pause_s=0.002)
    with w:
        w.run_for(0.3)
        _ok(cli("--dsn", d, "partition", "accounts", "--by", "hash(tenant)", "--modulus", "4",
                "--batch-size", "700", "--yes"))
        w.run_for(0.5)
    assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'accounts'::regclass"
                        ).fetchone()[0] == "p"
    leaves = _leaves(conn, "accounts")
    assert [n for n, _ in leaves] == [f"accounts_p{i}" for i in range(4)]
    assert all("modulus 4" in b.lower() for _, b in leaves)
    r = _ok(cli("--dsn", d, "verify", "accounts", "--json"))
    out = json.loads(r.stdout)
    assert out["match"] is True and len(out["ranges"]) == 4
    for name, _ in leaves:  # every partition holds rows
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
                            ).fetchone()[0] > 0
    assert conn.execute("SELECT strategy, key_column FROM pgcleave.policies").fetchone() == (
        "hash", "tenant")

    # one hash partition to the other server and back, writers running (no key-moving
    # UPDATE while it is remote: one leaving a foreign partition fails, as move warns)
    add_server(db, "db2", db2)
    # a foreign partition cannot sit under a unique key of the parent (move says so)
    pk = conn.execute("SELECT conname FROM pg_constraint WHERE conrelid ="
                      " 'accounts'::regclass AND contype = 'p'").fetchone()[0]
    r = cli("--dsn", d, "move", "accounts_p1", "--to", "db2", "--yes")
    assert r.returncode == 3 and pk in r.stderr, r.stderr
    _ok(cli("--dsn", d, "drop-constraint", "accounts", pk, "--yes"))
    # (drop-constraint drops the partitions' copies of the key too: the moved one needs its
    # own for the replication)
    conn.execute("ALTER TABLE accounts_p1 ADD PRIMARY KEY (id, tenant)")
    w2 = Workload(d, _tenant_spec(), writers=3, seed=2, max_seconds=120, pause_s=0.002,
                  weights={"insert": 4, "update": 2, "delete": 1, "read": 2})
    with w2:
        _ok(cli("--dsn", d, "move", "accounts_p1", "--to", "db2", "--yes"))
        assert location(conn, "accounts_p1") == "f:accounts"
        w2.run_for(0.5)
        with db2.connect() as rc:  # rows of remainder 1 only, on the shard
            assert rc.execute("SELECT count(*) FROM accounts_p1").fetchone()[0] > 0
        _ok(cli("--dsn", d, "move", "accounts_p1", "--to", "local", "--yes", "--drop-source"))
        assert location(conn, "accounts_p1") == "r:accounts"
        w2.run_for(0.3)

    w3 = Workload(d, _tenant_spec(), writers=3, seed=3, max_seconds=120, pause_s=0.002)
    with w3:
        w3.run_for(0.3)
        # capture back into the partitioned table needs the key that was dropped for the move
        r = cli("--dsn", d, "unswap", "accounts", "--yes")
        assert r.returncode == 3 and "no unique key on (id, tenant)" in r.stderr, r.stderr
        _ok(cli("--dsn", d, "set-primary-key", "accounts", "--columns", "id,tenant", "--yes"))
        _ok(cli("--dsn", d, "unswap", "accounts", "--yes"))
        assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'accounts'::regclass"
                            ).fetchone()[0] == "r"
        w3.run_for(0.5)
    for x in (w, w2, w3):
        print(x.summary())
        x.verify(conn)
    assert w.ops.get("move", 0) > 5 and w3.ops.get("move", 0) > 5, w.summary()
    # the policy went with the unswap: maintain has nothing to refuse
    assert conn.execute("SELECT count(*) FROM pgcleave.policies").fetchone()[0] == 0
