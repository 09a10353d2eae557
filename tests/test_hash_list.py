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


def test_hash_kill_after_every_step_then_resume(db: Any, conn: Any, cli: Any) -> None:
    """The job killed (SIGKILL) after each of its steps in turn, and inside the fill; each
    resume picks up where it stopped; writers never notice."""
    _accounts(conn, 4000)
    d = db.dsn
    plan = json.loads(_ok(cli("--dsn", d, "partition", "accounts", "--by", "hash(tenant)",
                              "--modulus", "3", "--dry-run", "--json")).stdout)
    names = [s["name"] for s in plan["steps"]]
    assert names[:5] == ["create-intermediate", "partition accounts_p0", "partition accounts_p1",
                         "partition accounts_p2", "capture"], names
    assert names[-2:] == ["swap", "policy"], names
    w = Workload(d, _tenant_spec(), writers=3, max_seconds=180, pause_s=0.002)
    with w:
        r = cli("--dsn", d, "partition", "accounts", "--by", "hash(tenant)", "--modulus", "3",
                "--batch-size", "500", "--yes", env={"PGCLEAVE_FAULT": "kill-after:1"})
        assert r.returncode == -9, r.stderr
        job = _job(r.stderr)
        fill = names.index("fill") + 1
        for k in range(2, len(names)):
            fault = f"kill-after:{k}"
            if k == fill:  # inside the fill first, then after it
                r = cli("--dsn", d, "resume", job,
                        env={"PGCLEAVE_FAULT": "kill-fill-after-batches:2"})
                assert r.returncode == -9, r.stderr
            r = cli("--dsn", d, "resume", job, env={"PGCLEAVE_FAULT": fault})
            assert r.returncode == -9, (k, r.stderr)
            w.run_for(0.2)
        _ok(cli("--dsn", d, "resume", job))
        w.run_for(0.5)
        assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'accounts'::regclass"
                            ).fetchone()[0] == "p"
        assert json.loads(_ok(cli("--dsn", d, "verify", "accounts", "--json")).stdout)["match"]
        _ok(cli("--dsn", d, "unswap", "accounts", "--yes"))
        w.run_for(0.5)
    print(w.summary())
    w.verify(conn)
    assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'accounts'::regclass"
                        ).fetchone()[0] == "r"


def test_list_by_copy_with_value_groups_and_unswap(db: Any, conn: Any, cli: Any) -> None:
    _orders(conn)
    d = db.dsn
    w = Workload(d, _country_spec(), writers=3, max_seconds=120, pause_s=0.002)
    with w:
        w.run_for(0.3)
        r = _ok(cli("--dsn", d, "partition", "orders", "--by", "list(country)", "--values", "RU",
                    "--values", "US, GB", "--yes"))
        assert "2 list partitions on country plus a DEFAULT" in r.stdout + r.stderr
        w.run_for(0.5)
        leaves = dict(_leaves(conn, "orders"))
        assert leaves == {"orders_default": "DEFAULT", "orders_ru": "FOR VALUES IN ('RU')",
                          "orders_us_gb": "FOR VALUES IN ('US', 'GB')"}
        # IL (in the data) and FR (written by the application) live in the DEFAULT
        assert {r[0] for r in conn.execute("SELECT DISTINCT country FROM orders_default")} <= {
            "IL", "FR"}
        out = json.loads(_ok(cli("--dsn", d, "verify", "orders", "--json")).stdout)
        assert out["match"] is True and len(out["ranges"]) == 3
        # seed 001: the id sequence goes on, INSERT ... RETURNING works through the parent
        row = conn.execute("INSERT INTO orders (country, scheduled_at) VALUES ('GB', now())"
                           " RETURNING id, tableoid::regclass::text").fetchone()
        assert row[0] > 6000 and row[1] == "orders_us_gb"
        _ok(cli("--dsn", d, "unswap", "orders", "--yes"))
        w.run_for(0.5)
    print(w.summary())
    w.verify(conn)
    assert w.ops.get("move", 0) > 5, w.summary()


def test_two_levels_by_copy_then_maintain_and_unswap(db: Any, conn: Any, cli: Any) -> None:
    """Seed 001's layout in one job: by country (from the data), then by month, the history
    split into months, a DEFAULT at each level; maintain keeps it afterwards."""
    _orders(conn, 5000)
    d = db.dsn
    w = Workload(d, _country_spec(), writers=3, max_seconds=180, pause_s=0.002)
    with w:
        w.run_for(0.3)
        _ok(cli("--dsn", d, "partition", "orders", "--by", "list(country)", "--then",
                "range(scheduled_at)", "--interval", "1 month", "--premake", "1", "--yes"))
        w.run_for(0.5)
        kids = {r[0]: r[1] for r in conn.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN"
            " pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'orders'::regclass")}
        # FR too when a writer wrote one before the job read the values
        assert set(kids) - {"orders_fr"} == {"orders_gb", "orders_il", "orders_ru", "orders_us",
                                             "orders_default"}, kids
        ru = dict(_leaves(conn, "orders_ru"))
        for m in range(1, 6):  # history: January to May 2025, each its own month
            assert ru[f"orders_ru_p2025_{m:02d}"] == (
                f"FOR VALUES FROM ('2025-{m:02d}-01 00:00:00') TO "
                f"('{2025 + m // 12}-{m % 12 + 1:02d}-01 00:00:00')")
        assert "orders_ru_default" in ru and "orders_default_default" in dict(
            _leaves(conn, "orders_default"))
        assert conn.execute("SELECT count(*) FROM ONLY orders_ru_p2025_02").fetchone()[0] > 0
        out = json.loads(_ok(cli("--dsn", d, "verify", "orders", "--json")).stdout)
        assert out["match"] is True
        pol = json.loads(_ok(cli("--dsn", d, "config", "orders", "--json")).stdout)
        assert (pol["strategy"], pol["key_column"], pol["sub_strategy"], pol["sub_key_column"],
                pol["sub_interval"]) == ("list", "country", "range", "scheduled_at", "1 month")
        _ok(cli("--dsn", d, "maintain", "--json"))
        w.run_for(0.3)
        _ok(cli("--dsn", d, "unswap", "orders", "--yes"))
        w.run_for(0.5)
    print(w.summary())
    w.verify(conn)
    assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'orders'::regclass"
                        ).fetchone()[0] == "r"


def test_odd_identifiers(db: Any, conn: Any, cli: Any) -> None:
    conn.execute('CREATE SCHEMA "Odd Schema"')
    conn.execute('CREATE TABLE "Odd Schema"."My Acc""ounts" (id bigserial PRIMARY KEY,'
                 ' "Tenant Id" text NOT NULL, payload text)')
    conn.execute('INSERT INTO "Odd Schema"."My Acc""ounts" ("Tenant Id", payload) SELECT'
                 " (ARRAY['O''Hara', 'Big Co', 'x\"y'])[1 + i % 3], 'p' || i"
                 " FROM generate_series(1, 900) i")
    d = db.dsn
    name = '"Odd Schema"."My Acc""ounts"'
    _ok(cli("--dsn", d, "partition", name, "--by", 'hash("Tenant Id")', "--modulus", "2",
            "--yes"))
    assert json.loads(_ok(cli("--dsn", d, "verify", name, "--json")).stdout)["match"]
    _ok(cli("--dsn", d, "unswap", name, "--yes"))
    _ok(cli("--dsn", d, "unprep", name, "--yes"))
    # a list from the data with the same odd values: names sanitized, values exact
    _ok(cli("--dsn", d, "partition", name, "--by", 'list("Tenant Id")', "--strategy", "copy",
            "--yes"))
    leaves = dict(_leaves(conn, name))
    assert leaves['My Acc"ounts_o_hara'] == "FOR VALUES IN ('O''Hara')", leaves
    assert leaves["My Acc\"ounts_x_y"] == "FOR VALUES IN ('x\"y')", leaves
    assert conn.execute('SELECT count(*) FROM "Odd Schema"."My Acc""ounts_big_co"'
                        ).fetchone()[0] == 300
    assert json.loads(_ok(cli("--dsn", d, "verify", name, "--json")).stdout)["match"]


def test_bad_input_is_refused_and_changes_nothing(db: Any, conn: Any, cli: Any) -> None:
    _orders(conn, 300)
    conn.execute("CREATE TABLE many (id int PRIMARY KEY, k int NOT NULL)")
    conn.execute("INSERT INTO many SELECT i, i FROM generate_series(1, 150) i")
    d = db.dsn
    cases = [
        (["orders", "--by", "hash(country)"], "needs --modulus"),
        (["orders", "--by", "hash(country)", "--modulus", "1"], "between 2 and"),
        (["orders", "--by", "hash(country)", "--modulus", "0"], "between 2 and"),
        (["orders", "--by", "range(scheduled_at)", "--values", "RU"], "goes with list"),
        (["orders", "--by", "hash(country)", "--modulus", "4", "--values", "RU"],
         "goes with list"),
        (["orders", "--by", "range(scheduled_at)", "--modulus", "4"], "goes with hash"),
        (["orders", "--by", "list(country)", "--values", "RU,US", "--values", "GB,RU"],
         "is listed in"),
        (["orders", "--by", "list(country)", "--values", "RU,RU"], "twice in one group"),
        (["orders", "--by", "list(country)", "--values", "USA"], "does not fit"),
        (["many", "--by", "list(k)", "--values", "1", "--values", "abc"], "does not fit"),
        (["many", "--by", "list(k)", "--strategy", "copy"], "more than 100 distinct"),
        (["orders", "--by", "list(country)", "--values", "RU", "--then", "list(type)",
          "--interval", "1 month"], "must be range"),
        (["orders", "--by", "list(country)", "--values", "RU", "--then",
          "range(scheduled_at)"], "needs --interval"),
        (["orders", "--by", "list(country)", "--values", "RU", "--strategy", "default"],
         "need the copy strategy"),
        (["orders", "--by", "hash(nosuch)", "--modulus", "4"], "no column"),
        (["orders", "--by", "list(country)", "--values", "RU", "--then", "range(nosuch)",
          "--interval", "1 month"], "no column"),
    ]
    for args, msg in cases:
        r = cli("--dsn", d, "partition", *args, "--yes")
        assert r.returncode in (2, 3) and msg in r.stderr, (args, r.returncode, r.stderr)
    assert conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE '%%intermediate%%'"
                        " OR relkind = 'p'").fetchone()[0] == 0
    if conn.execute("SELECT to_regclass('pgcleave.copies')").fetchone()[0] is not None:
        assert conn.execute("SELECT count(*) FROM pgcleave.copies").fetchone()[0] == 0
    # in place was asked for: the plan says why it copies instead, and asks first
    r = cli("--dsn", d, "partition", "orders", "--by", "hash(country)", "--modulus", "4",
            "--strategy", "default", "--dry-run")
    assert r.returncode == 0 and "has no DEFAULT partition" in r.stdout + r.stderr, r.stderr
