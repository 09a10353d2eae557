"""``split`` and ``merge`` of a branch of a two-level table (issue 16, "sub-partitioned
tables work at either level"): range over list (seed 001's orders: months by country) and
list over range; new branches shaped like the source, every committed write present once
under writers, kill -9 after each step then resume or rollback, bad input refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import sql

from pgcleave.connection import Settings
from pgcleave.errors import PgcleaveError
from pgcleave.execute import Executor
from pgcleave.ops.merge import plan_merge
from pgcleave.ops.reslice import plan_split
from pgcleave.testing.workload import Spec, Workload
from tests.test_carve import bounds, ok, one
from tests.test_reslice import assert_short_waits, lock_waits_logged  # noqa: F401

JAN = datetime(2026, 1, 1, tzinfo=UTC)
COUNTRIES = ["us", "gb", "de", "fr"]


def _orders(conn: Any, rows: int) -> None:
    """Seed 001's layout: ``orders`` by range(scheduled_at) monthly, each month by
    list(country): us, gb, and a DEFAULT for the rest."""
    conn.execute("DROP TABLE IF EXISTS orders CASCADE")
    conn.execute("CREATE TABLE orders (id bigserial, scheduled_at timestamptz NOT NULL,"
                 " country text NOT NULL, payload text, PRIMARY KEY (id, scheduled_at,"
                 " country)) PARTITION BY RANGE (scheduled_at)")
    conn.execute("CREATE INDEX orders_country ON orders (country, scheduled_at)")
    for m in (1, 2):
        b = f"orders_2026_0{m}"
        conn.execute(f"CREATE TABLE {b} PARTITION OF orders FOR VALUES FROM ('2026-0{m}-01 "
                     f"UTC') TO ('2026-0{m + 1}-01 UTC') PARTITION BY LIST (country)")
        conn.execute(f"CREATE TABLE {b}_us PARTITION OF {b} FOR VALUES IN ('us')")
        conn.execute(f"CREATE TABLE {b}_gb PARTITION OF {b} FOR VALUES IN ('gb')")
        conn.execute(f"CREATE TABLE {b}_other PARTITION OF {b} DEFAULT")
    conn.execute("INSERT INTO orders (scheduled_at, country, payload) SELECT '2026-01-01 UTC'"
                 "::timestamptz + (i %% 59) * interval '1 day' + (i %% 1440) * interval"
                 " '1 minute', (ARRAY['us', 'gb', 'de', 'fr'])[1 + i %% 4], 's' || i"
                 " FROM generate_series(1, %s) i", [rows])
    conn.execute("ANALYZE orders")


def _leftovers(conn: Any) -> int:
    return int(one(conn, "SELECT count(*) FROM pg_class WHERE relname LIKE '%%pgcleave%%'"
                         " AND relnamespace = 'public'::regnamespace"))


def _digest(conn: Any, table: str) -> tuple[Any, Any]:
    return (one(conn, f"SELECT count(*) FROM {table}"),
            one(conn, f"SELECT sum(hashtextextended(t::text, 0)) FROM {table} t"))


def test_split_and_merge_a_month_branch_under_writers(db: Any, conn: Any, cli: Any) -> None:
    _orders(conn, 6000)
    conn.execute("CREATE INDEX us_payload ON orders_2026_01_us (payload)")  # a leaf's own
    d = ("--dsn", db.dsn)
    dry = plan_split(conn, "orders_2026_01", at=["2026-01-16"]).render_sql()
    assert "ACCESS EXCLUSIVE" in dry and "PARTITION BY LIST" in dry
    # the copy, replays and digest read the branch through its leaves (ONLY reads nothing)
    src = '"public"."orders_2026_01"'
    assert f"FROM {src}" in dry and f"FROM ONLY {src} t" not in dry
    assert dry.count(f"FROM ONLY {src}") == dry.count(f"FROM ONLY {src} WITH NO DATA")
    spec = Spec(table=sql.Identifier("public", "orders"), key_col="scheduled_at",
                make_key=lambda r: JAN + timedelta(hours=r.uniform(0, 24 * 58)),
                extra={"country": lambda r: r.choice(COUNTRIES)})
    w = Workload(db.dsn, spec, writers=4, max_seconds=60, server_log=db.server.logfile).start()
    try:
        w.run_for(0.3)
        s = ok(cli(*d, "split", "orders_2026_01", "--at", "2026-01-16", "--names",
                   "orders_2026_01a,orders_2026_01b", "--yes"))
        w.run_for(0.2)
        m = ok(cli(*d, "merge", "orders_2026_01a", "orders_2026_01b", "--name",
                   "orders_2026_01", "--yes"))
        w.run_for(0.2)
        # 5 weeks: more pieces than one swap transaction moves (they go through the holder)
        ok(cli(*d, "split", "orders_2026_02", "--interval", "1 week", "--yes"))
        w.run_for(0.3)
    finally:
        w.stop()
    print("branch split+merge:", w.summary())
    assert "hashes" in s.stderr and "hashes" in m.stderr
    w.verify(conn)
    assert w.ops.get("move", 0) > 5, w.summary()
    assert_short_waits(w)
    b = bounds(conn, "orders")
    assert b["orders_2026_01"] == (
        "FOR VALUES FROM ('2026-01-01 00:00:00+00') TO ('2026-02-01 00:00:00+00')")
    assert len(b) == 1 + 5 and "orders_2026_02" not in b, b
    for name in b:  # every week a branch of the same three leaves, none left empty of rows
        assert len(bounds(conn, name)) == 3, name
        assert one(conn, f"SELECT count(*) FROM {name}") > 0, name
    assert bounds(conn, "orders_2026_01") == {
        "orders_2026_01_us": "FOR VALUES IN ('us')", "orders_2026_01_gb": "FOR VALUES IN ('gb')",
        "orders_2026_01_other": "DEFAULT"}
    # every leaf: its rows, the parent's indexes, the CHECK of its branch's bound
    for leaf in ("orders_2026_01_us", "orders_2026_01_gb", "orders_2026_01_other"):
        assert one(conn, "SELECT count(*) FROM pg_indexes WHERE tablename = %s", leaf) == (
            3 if leaf.endswith("_us") else 2), leaf
        assert one(conn, "SELECT count(*) FROM pg_constraint WHERE conrelid = %s::regclass"
                         " AND contype = 'c'", leaf) == 1
    assert one(conn, "SELECT count(*) FROM orders_2026_01_us WHERE country <> 'us'") == 0
    assert one(conn, "SELECT count(*) FROM orders_2026_01_other WHERE country IN ('de', 'fr')"
               ) > 0
    assert _leftovers(conn) == 0
    assert one(conn, "SELECT count(*) FROM pg_proc WHERE proname ~ '^(carve|merge)_'") == 0


def test_list_over_range_split_and_merge(db: Any, conn: Any, cli: Any) -> None:
    conn.execute("CREATE TABLE tl (id int, region text NOT NULL, d date NOT NULL,"
                 " PRIMARY KEY (id, region, d)) PARTITION BY LIST (region)")
    conn.execute("CREATE TABLE tl_eu PARTITION OF tl FOR VALUES IN ('eu', 'fr') PARTITION BY"
                 " RANGE (d)")
    conn.execute("CREATE TABLE tl_eu_q1 PARTITION OF tl_eu FOR VALUES FROM ('2026-01-01') TO"
                 " ('2026-04-01')")
    conn.execute("CREATE TABLE tl_eu_q2 PARTITION OF tl_eu FOR VALUES FROM ('2026-04-01') TO"
                 " ('2026-07-01')")
    conn.execute("CREATE TABLE tl_us PARTITION OF tl FOR VALUES IN ('us')")
    conn.execute("INSERT INTO tl SELECT i, (ARRAY['eu', 'fr', 'us'])[1 + i % 3], date"
                 " '2026-01-01' + i % 180 FROM generate_series(1, 900) i")
    before = _digest(conn, "tl")
    d = ("--dsn", db.dsn)
    r = cli(*d, "split", "tl_eu", "--values", "eu", "--yes")  # fr would stay behind
    assert r.returncode == 3 and "every value" in r.stderr, r.stderr
    # on two connections: each leaf of the branch cut into block ranges
    s = ok(cli(*d, "split", "tl_eu", "--values", "eu", "--values", "fr", "--names",
               "tl_e,tl_f", "--jobs", "2", "--yes"))
    assert "2 connections" in s.stderr, s.stderr[-2000:]
    assert bounds(conn, "tl_f") == {
        "tl_f_q1": "FOR VALUES FROM ('2026-01-01') TO ('2026-04-01')",
        "tl_f_q2": "FOR VALUES FROM ('2026-04-01') TO ('2026-07-01')"}
    assert one(conn, "SELECT count(*) FROM tl_f WHERE region <> 'fr'") == 0
    assert _digest(conn, "tl") == before
    # a plain partition and a branch do not merge; branches do
    r = cli(*d, "merge", "tl_e", "tl_us", "--yes")
    assert r.returncode == 3 and "themselves partitioned" in r.stderr, r.stderr
    ok(cli(*d, "merge", "tl_e", "tl_f", "--name", "tl_eu", "--jobs", "2", "--yes"))
    assert bounds(conn, "tl")["tl_eu"] in ("FOR VALUES IN ('eu', 'fr')",
                                           "FOR VALUES IN ('fr', 'eu')")
    assert set(bounds(conn, "tl_eu")) == {"tl_eu_q1", "tl_eu_q2"}
    assert _digest(conn, "tl") == before and _leftovers(conn) == 0


def test_branches_of_other_shapes_refused(db: Any, conn: Any, cli: Any) -> None:
    _orders(conn, 200)
    conn.execute("ALTER TABLE orders_2026_02 DETACH PARTITION orders_2026_02_gb")
    conn.execute("DROP TABLE orders_2026_02_gb")
    d = ("--dsn", db.dsn)
    cat = bounds(conn, "orders")
    r = cli(*d, "merge", "orders_2026_01", "orders_2026_02", "--yes")
    assert r.returncode == 3 and "not sub-partitioned alike" in r.stderr, r.stderr
    assert bounds(conn, "orders") == cat and _leftovers(conn) == 0


def test_branch_split_and_merge_killed_after_each_step(db: Any, conn: Any, cli: Any) -> None:
    """kill -9 after every step of a branch split and a branch merge, then resume or
    rollback alternately; rows visible throughout and unchanged after."""
    d = ("--dsn", db.dsn)
    ex = Executor(Settings(dsn=db.dsn))
    for argv in (["split", "orders_2026_01", "--at", "2026-01-16"],
                 ["merge", "orders_2026_01", "orders_2026_02"]):
        conn.execute("DROP SCHEMA IF EXISTS pgcleave CASCADE")
        _orders(conn, 800)
        plan = (plan_split(conn, argv[1], at=[argv[3]]) if argv[0] == "split"
                else plan_merge(conn, argv[1:]))
        steps = [s.name for s in plan.steps]
        assert len(steps) == (5 if argv[0] == "split" else 6), steps
        for i, name in enumerate(steps, 1):
            conn.execute("DROP SCHEMA IF EXISTS pgcleave CASCADE")
            _orders(conn, 800)
            digest = _digest(conn, "orders")
            before = bounds(conn, "orders")
            r = cli(*d, *argv, "--yes", env={"PGCLEAVE_FAULT": f"kill-after:{name}"})
            assert r.returncode != 0, (name, r.stdout + r.stderr)
            job = one(conn, "SELECT max(id) FROM pgcleave.jobs")
            assert _digest(conn, "orders") == digest, name  # visible throughout
            rolled = False
            if i % 2:
                try:
                    ex.rollback(job)
                    rolled = True
                except PgcleaveError as exc:
                    assert "resume" in f"{exc} {exc.hint}", (name, str(exc))
            if rolled:
                assert bounds(conn, "orders") == before, name
            else:
                ex.resume(job)
                assert len(bounds(conn, "orders")) == (3 if argv[0] == "split" else 1), name
            assert _digest(conn, "orders") == digest, name
            assert _leftovers(conn) == 0, name


def test_branch_with_an_identity_split(db: Any, conn: Any, cli: Any) -> None:
    """An identity column (17+: the partitions share the parent's sequence): a split branch's
    new leaves take rows with ids from the same sequence afterwards, and the branches merge
    back with the identity marked down to their leaves."""
    conn.execute("CREATE TABLE oi (id bigint GENERATED ALWAYS AS IDENTITY, at date NOT NULL,"
                 " country text NOT NULL, PRIMARY KEY (id, at, country))"
                 " PARTITION BY RANGE (at)")
    for m in (1, 2):
        conn.execute(f"CREATE TABLE oi_0{m} PARTITION OF oi FOR VALUES FROM ('2026-0{m}-01')"
                     f" TO ('2026-0{m + 1}-01') PARTITION BY LIST (country)")
        conn.execute(f"CREATE TABLE oi_0{m}_us PARTITION OF oi_0{m} FOR VALUES IN ('us')")
        conn.execute(f"CREATE TABLE oi_0{m}_rest PARTITION OF oi_0{m} DEFAULT")
    conn.execute("INSERT INTO oi (at, country) SELECT date '2026-01-01' + i % 59,"
                 " (ARRAY['us', 'gb'])[1 + i % 2] FROM generate_series(1, 500) i")
    before = _digest(conn, "oi")
    d = ("--dsn", db.dsn)
    ok(cli(*d, "split", "oi_01", "--at", "2026-01-16", "--names", "oi_01a,oi_01b", "--yes"))
    assert _digest(conn, "oi") == before and _leftovers(conn) == 0
    conn.execute("INSERT INTO oi (at, country) VALUES ('2026-01-20', 'us'), ('2026-01-02', 'gb')")
    assert one(conn, "SELECT count(DISTINCT id) FROM oi") == 502
    assert one(conn, "SELECT count(*) FROM oi_01b_us WHERE id > 500") == 1
    ok(cli(*d, "merge", "oi_01a", "oi_01b", "--name", "oi_01", "--yes"))
    assert one(conn, "SELECT count(*) FROM oi") == 502 and _leftovers(conn) == 0
    assert set(bounds(conn, "oi_01")) == {"oi_01_us", "oi_01_rest"}
    # the identity is marked down to the leaves: the branch detaches (17+ refuses otherwise)
    conn.execute("ALTER TABLE oi DETACH PARTITION oi_01")
    conn.execute("ALTER TABLE oi ATTACH PARTITION oi_01 FOR VALUES FROM ('2026-01-01') TO"
                 " ('2026-02-01')")
    conn.execute("INSERT INTO oi (at, country) VALUES ('2026-01-03', 'us')")
    assert one(conn, "SELECT count(DISTINCT id) FROM oi") == 503
