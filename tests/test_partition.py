"""``pgcleave partition`` in place (legacy and default strategies), ``add-partition`` and
``unpartition``, on real servers, with application-like writers running during the cut-over."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg import sql

from pgcleave.testing.workload import Spec, Workload

NOW = datetime.now(UTC)


def one(conn: Any, q: str, *args: Any) -> Any:
    row = conn.execute(q, list(args) or None).fetchone()
    return row[0] if row else None


def ok(proc: Any) -> Any:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def refused(proc: Any, *words: str) -> str:
    out: str = proc.stdout + proc.stderr
    assert proc.returncode == 3, out
    for w in words:
        assert w.lower() in out.lower(), out
    return out


ORDERS = """
CREATE TABLE customers (id int PRIMARY KEY);
INSERT INTO customers VALUES (1), (2);
CREATE TABLE orders (
  id bigserial,
  created_at timestamptz NOT NULL DEFAULT now(),
  customer int REFERENCES customers(id),
  payload text CHECK (payload <> ''),
  PRIMARY KEY (id, created_at)
);
CREATE INDEX orders_payload_idx ON orders (payload);
CREATE INDEX orders_created_idx ON orders (created_at);
INSERT INTO orders (created_at, customer, payload)
  SELECT now() - i * interval '37 minutes', 1 + i % 2, 'seed' || i FROM generate_series(1, 2000) i;
CREATE VIEW recent_orders AS
  SELECT id, payload FROM orders WHERE created_at > now() - interval '1 day';
COMMENT ON TABLE orders IS 'all orders';
COMMENT ON COLUMN orders.payload IS 'what was ordered';
DO $$ BEGIN CREATE ROLE app_reader; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
GRANT SELECT ON orders TO app_reader;
CREATE TABLE audit (n bigint);
CREATE FUNCTION count_insert() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO audit VALUES (NEW.id); RETURN NEW; END $$;
CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION count_insert();
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY orders_all ON orders USING (true);
"""


def orders_spec() -> Spec:
    return Spec(table=sql.Identifier("public", "orders"), key_col="created_at",
                make_key=lambda r: NOW - timedelta(days=r.uniform(0, 20)),
                extra={"customer": lambda r: r.choice([1, 2])})


@pytest.fixture
def role_cleanup(db: Any) -> Any:
    yield
    with db.connect() as c:
        c.execute("DROP OWNED BY app_reader CASCADE")
        c.execute("DROP ROLE IF EXISTS app_reader")


def test_legacy_with_writers(db: Any, conn: Any, cli: Any, role_cleanup: Any) -> None:
    conn.execute(ORDERS)
    seq_before = one(conn, "SELECT last_value FROM orders_id_seq")
    w = Workload(db.dsn, orders_spec(), writers=4, max_seconds=60).start()
    try:
        w.run_for(0.5)
        proc = ok(cli("--dsn", db.dsn, "partition", "orders", "--by", "range(created_at)",
                      "--interval", "1 month", "--premake", "2", "--yes"))
        w.run_for(0.5)
    finally:
        w.stop()
    print("legacy:", w.summary())
    assert "strategy legacy" in proc.stderr
    w.verify(conn)
    assert w.ops.get("insert", 0) > 20
    # The shape: parent with the old table as [MINVALUE, cutoff) and two more partitions.
    parts = conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c"
        " ON c.oid = i.inhrelid WHERE i.inhparent = 'orders'::regclass ORDER BY 1").fetchall()
    assert len(parts) == 3
    assert ("orders_legacy", parts[0][1]) == parts[0] and "MINVALUE" in parts[0][1]
    # Everything the application relies on survived.
    assert one(conn, "SELECT relkind FROM pg_class WHERE oid = 'orders'::regclass") == "p"
    assert one(conn, "SELECT conname FROM pg_constraint WHERE conrelid = 'orders'::regclass"
                     " AND contype = 'p'") == "orders_pkey"
    assert one(conn, "SELECT count(*) FROM pg_indexes WHERE tablename = 'orders'") == 3
    assert one(conn, "SELECT count(*) FROM pg_constraint WHERE conrelid = 'orders'::regclass"
                     " AND contype IN ('f', 'c')") == 2
    assert one(conn, "SELECT obj_description('orders'::regclass, 'pg_class')") == "all orders"
    assert one(conn, "SELECT has_table_privilege('app_reader', 'orders', 'SELECT')")
    assert one(conn, "SELECT relrowsecurity FROM pg_class WHERE oid = 'orders'::regclass")
    assert one(conn, "SELECT count(*) FROM pg_policy WHERE polrelid = 'orders'::regclass") == 1
    assert one(conn, "SELECT count(*) FROM pg_trigger WHERE tgname = 'orders_audit'"
                     " AND tgrelid = 'orders'::regclass") == 1
    view_dep = one(conn, "SELECT count(*) FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid"
                         " WHERE r.ev_class = 'recent_orders'::regclass"
                         " AND d.refobjid = 'orders'::regclass")
    assert view_dep > 0
    assert one(conn, "SELECT pg_get_serial_sequence('orders', 'id')") == "public.orders_id_seq"
    new_id = one(conn, "INSERT INTO orders (customer, payload) VALUES (1, 'after') RETURNING id")
    assert new_id > seq_before
    # the audit trigger fired exactly once per insert (not twice on the legacy partition)
    assert one(conn, "SELECT count(*) FROM audit WHERE n = %s", new_id) == 1
    pol = one(conn, "SELECT row_to_json(p) FROM pgcleave.policies p WHERE table_name = 'orders'")
    assert pol["strategy"] == "range" and pol["interval"] == "1 month" and pol["premake"] == 2
    assert pol["options"]["conversion"] == "legacy"
    # no row of the workload is invisible through the view either
    assert one(conn, "SELECT count(*) FROM recent_orders") > 0


def test_cutover_never_scans_under_access_exclusive(db: Any, conn: Any, cli: Any) -> None:
    """The cut-over transaction must not depend on the table size: dry-run shows no scan and
    the debug log of the same statements says every ATTACH was proven by constraints."""
    conn.execute("CREATE TABLE big (id bigserial PRIMARY KEY, k int NOT NULL)")
    conn.execute("INSERT INTO big (k) SELECT i FROM generate_series(1, 200000) i")
    out = ok(cli("--dsn", db.dsn, "partition", "big", "--by", "range(id)", "--interval",
                 "100000", "--dry-run", "--json")).stdout
    plan = json.loads(out)
    cut = plan["steps"][-1]
    assert cut["name"] == "cut-over"
    conn.execute("ALTER TABLE big ADD CONSTRAINT pgcleave_cutoff CHECK (id IS NOT NULL AND "
                 "id < 300000) NOT VALID")
    conn.execute("ALTER TABLE big VALIDATE CONSTRAINT pgcleave_cutoff")
    conn.execute("SET client_min_messages = debug1")
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    with conn.transaction():
        for s in cut["statements"]:
            if "pgcleave.policies" in s:
                continue
            conn.execute(s.encode())
    assert any("is implied by existing constraints" in n for n in notices), notices
    assert not any(n.startswith("verifying table") for n in notices), notices


def test_default_strategy_with_writers(db: Any, conn: Any, cli: Any) -> None:
    conn.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, tenant text NOT NULL,"
                 " payload text)")
    conn.execute("INSERT INTO accounts (tenant, payload) SELECT chr(65 + i % 6) || 'corp', 's'"
                 " FROM generate_series(1, 3000) i")
    tenants = ["Acme", "Bobmart", "Crazytown", "Dory", "Eggbert", "Fizz"]
    spec = Spec(table=sql.Identifier("public", "accounts"), key_col="tenant",
                make_key=lambda r: r.choice(tenants))
    w = Workload(db.dsn, spec, writers=4, max_seconds=60).start()
    try:
        w.run_for(0.4)
        proc = ok(cli("--dsn", db.dsn, "partition", "accounts", "--by", "range(tenant)",
                      "--yes"))
        w.run_for(0.4)
    finally:
        w.stop()
    print("default:", w.summary())
    w.verify(conn)
    assert "strategy default" in proc.stderr
    assert "ON CONFLICT (id)" in proc.stderr  # the key warning was shown
    assert one(conn, "SELECT pg_get_expr(relpartbound, oid) FROM pg_class"
                     " WHERE relname = 'accounts_old'") == "DEFAULT"
    # PRIMARY KEY (id) stays on the partition
    assert one(conn, "SELECT count(*) FROM pg_constraint WHERE contype = 'p'"
                     " AND conrelid = 'accounts_old'::regclass") == 1


def test_require_parent_key_and_confirmation(db: Any, conn: Any, cli: Any) -> None:
    conn.execute("CREATE TABLE t (id bigserial PRIMARY KEY, tenant text NOT NULL)")
    refused(cli("--dsn", db.dsn, "partition", "t", "--by", "range(tenant)",
                "--require-parent-key"), "does not include the partition key")
    refused(cli("--dsn", db.dsn, "partition", "t", "--by", "range(tenant)"), "--yes")
    assert one(conn, "SELECT relkind FROM pg_class WHERE oid = 't'::regclass") == "r"


def test_identity_continues_and_unpartition(db: Any, conn: Any, cli: Any) -> None:
    conn.execute("CREATE TABLE ev (id bigint GENERATED ALWAYS AS IDENTITY, at date NOT NULL,"
                 " note text, PRIMARY KEY (id, at))")
    conn.execute("INSERT INTO ev (at, note) SELECT current_date - i, 'x'"
                 " FROM generate_series(1, 500) i")
    ok(cli("--dsn", db.dsn, "partition", "ev", "--by", "range(at)", "--interval", "1 week",
           "--yes"))
    nid = one(conn, "INSERT INTO ev (at) VALUES (current_date) RETURNING id")
    assert nid == 501
    # a row in a premade partition
    conn.execute("INSERT INTO ev (at) SELECT max(upper) FROM (SELECT current_date + 20 upper) x")
    ok(cli("--dsn", db.dsn, "unpartition", "ev", "--yes"))
    assert one(conn, "SELECT relkind FROM pg_class WHERE oid = 'ev'::regclass") == "r"
    assert one(conn, "SELECT count(*) FROM ev") == 502
    assert one(conn, "INSERT INTO ev (at) VALUES (current_date) RETURNING id") == 503
    assert one(conn, "SELECT conname FROM pg_constraint WHERE conrelid = 'ev'::regclass"
                     " AND contype = 'p'") == "ev_pkey"
    assert one(conn, "SELECT count(*) FROM pg_constraint WHERE conname = 'pgcleave_cutoff'") == 0


def test_odd_identifiers(db: Any, conn: Any, cli: Any) -> None:
    conn.execute('CREATE SCHEMA "Sales"')
    conn.execute('CREATE TABLE "Sales"."Order Items" (id serial, "Created At" timestamp NOT NULL'
                 ', "it\'s" text, PRIMARY KEY (id, "Created At"))')
    conn.execute('INSERT INTO "Sales"."Order Items" ("Created At") SELECT localtimestamp - i *'
                 " interval '1 day' FROM generate_series(1, 100) i")
    t = '"Sales"."Order Items"'
    ok(cli("--dsn", db.dsn, "partition", t, "--by", 'range("Created At")', "--interval",
           "1 month", "--yes"))
    assert one(conn, "SELECT count(*) FROM \"Sales\".\"Order Items\"") == 100
    ok(cli("--dsn", db.dsn, "add-partition", t, "--from", "2031-01-01", "--to", "2031-02-01",
           "--name", "Order Items 2031"))
    assert one(conn, "SELECT to_regclass('\"Sales\".\"Order Items 2031\"') IS NOT NULL")
    conn.execute('INSERT INTO "Sales"."Order Items" ("Created At") VALUES (\'2031-01-05\')')
    ok(cli("--dsn", db.dsn, "unpartition", t, "--yes"))
    assert one(conn, "SELECT count(*) FROM \"Sales\".\"Order Items\"") == 101
    assert one(conn, "SELECT relkind FROM pg_class WHERE oid = '\"Sales\".\"Order Items\"'"
                     "::regclass") == "r"


def test_bad_input_refused_nothing_changes(db: Any, conn: Any, cli: Any) -> None:
    conn.execute("CREATE TABLE t (id bigserial PRIMARY KEY, tenant text NOT NULL, at date NOT"
                 " NULL DEFAULT current_date)")
    conn.execute("CREATE TABLE nopk (a int)")
    conn.execute("CREATE TABLE child (id int, t_id bigint REFERENCES t(id))")
    d = ("--dsn", db.dsn)
    refused(cli(*d, "partition", "t", "--by", "range(nope)"), "no column 'nope'")
    refused(cli(*d, "partition", "t", "--by", "range(tenant)", "--interval", "1 month"),
            "time interval")
    refused(cli(*d, "partition", "t", "--by", "range(id)", "--interval", "1 month"),
            "time interval")
    refused(cli(*d, "partition", "nopk", "--by", "range(a)"), "no primary key")
    refused(cli(*d, "partition", "t", "--by", "range(at)", "--interval", "1 month", "--yes"),
            "foreign keys point at", "--drop-inbound-fks")
    refused(cli(*d, "partition", "t", "--by", "frobnicate(at)"), "--by")
    assert one(conn, "SELECT relkind FROM pg_class WHERE oid = 't'::regclass") == "r"
    # the primary key only (on 18 NOT NULLs are pg_constraint rows too, counted apart)
    assert one(conn, "SELECT count(*) FROM pg_constraint WHERE conrelid = 't'::regclass"
                     " AND contype <> 'n'") == 1
    assert one(conn, "SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass"
                     " AND attnum > 0 AND attnotnull") == 3
    # with the option, the inbound key is dropped and its definition printed
    proc = ok(cli(*d, "partition", "t", "--by", "range(at)", "--interval", "1 month",
                  "--drop-inbound-fks", "--yes"))
    assert "child_t_id_fkey" in proc.stderr
    refused(cli(*d, "partition", "t", "--by", "range(at)", "--interval", "1 month"),
            "already partitioned")
    # add-partition: overlapping and empty bounds
    cutoff = one(conn, "SELECT pg_get_expr(relpartbound, oid) FROM pg_class"
                       " WHERE relname = 't_legacy'")
    assert "MINVALUE" in cutoff
    refused(cli(*d, "add-partition", "t", "--from", "2000-01-01", "--to", "2000-02-01"),
            "overlaps")
    refused(cli(*d, "add-partition", "t", "--from", "2040-02-01", "--to", "2040-01-01"),
            "empty range")
    refused(cli(*d, "add-partition", "t", "--values", "a"), "--from and --to")


def test_busy_table_refused(db: Any, conn: Any, cli: Any) -> None:
    conn.execute("CREATE TABLE t (id bigserial PRIMARY KEY, at date NOT NULL)")
    proc = cli("--dsn", db.dsn, "partition", "t", "--by", "range(at)", "--interval", "1 month",
               "--yes", env={"PGCLEAVE_FAULT": "kill-after:add-cutoff-check"})
    assert proc.returncode < 0 or proc.returncode == 137
    refused(cli("--dsn", db.dsn, "partition", "t", "--by", "range(at)", "--interval",
                "1 month", "--yes"), "unfinished")
    # the advisory lock also refuses a run while another one works on the table
    with db.connect() as holder:
        holder.execute("SELECT pg_advisory_lock(hashtextextended('pgcleave:public.t', 0))")
        proc = cli("--dsn", db.dsn, "resume", "1")
        assert proc.returncode == 3 and "another pgcleave run" in proc.stderr
    ok(cli("--dsn", db.dsn, "resume", "1"))
    assert one(conn, "SELECT relkind FROM pg_class WHERE oid = 't'::regclass") == "p"


def test_add_partition_without_scanning_default(db: Any, conn: Any, cli: Any) -> None:
    conn.execute("CREATE TABLE t (id bigserial, tenant text NOT NULL, PRIMARY KEY (id, tenant))")
    conn.execute("INSERT INTO t (tenant) SELECT 'Z' || i FROM generate_series(1, 1000) i")
    d = ("--dsn", db.dsn)
    ok(cli(*d, "partition", "t", "--by", "range(tenant)"))
    # next to a DEFAULT, the partition is carved out of it (nothing refused meanwhile)
    plan = json.loads(ok(cli(*d, "add-partition", "t", "--from", "A", "--to", "B",
                             "--dry-run", "--json")).stdout)
    assert [s["name"] for s in plan["steps"]] == ["carve-direct"]
    ok(cli(*d, "add-partition", "t", "--from", "A", "--to", "B"))
    assert one(conn, "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = 't_0'"
               ) == "FOR VALUES FROM ('A') TO ('B')"
    # rows of the range in the DEFAULT: they move into the new partition
    ok(cli(*d, "add-partition", "t", "--from", "Z", "--to", "ZZ", "--name", "t_z"))
    assert one(conn, "SELECT count(*) FROM t_z") == 1000
    assert one(conn, "SELECT count(*) FROM t") == 1000
    # the excluding CHECK, when asked for: the DEFAULT is validated, not scanned under the
    # exclusive lock; rows of the range make the validation fail and the job roll back cleanly
    plan = json.loads(ok(cli(*d, "add-partition", "t", "--from", "B", "--to", "C",
                             "--method", "check", "--dry-run", "--json")).stdout)
    assert [s["name"] for s in plan["steps"]] == [
        "add-exclusion-check", "validate-exclusion-check", "create-partition",
        "drop-exclusion-check"]
    ok(cli(*d, "add-partition", "t", "--from", "B", "--to", "C", "--method", "check"))
    assert one(conn, "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgcleave_excl%'"
               ) == 0
    conn.execute("INSERT INTO t (tenant) SELECT 'X' || i FROM generate_series(1, 10) i")
    proc = cli(*d, "add-partition", "t", "--from", "X", "--to", "Y", "--method", "check")
    assert proc.returncode == 1, proc.stderr
    job = one(conn, "SELECT max(id) FROM pgcleave.jobs")
    ok(cli(*d, "rollback", str(job)))
    assert one(conn, "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgcleave_excl%'"
               ) == 0
    assert one(conn, "SELECT count(*) FROM t") == 1010


def test_list_two_levels_policy_and_hash(db: Any, conn: Any, cli: Any) -> None:
    conn.execute("CREATE TABLE m (id bigserial, tenant text NOT NULL, at timestamptz NOT NULL"
                 " DEFAULT now(), PRIMARY KEY (id, tenant))")
    d = ("--dsn", db.dsn)
    ok(cli(*d, "partition", "m", "--by", "list(tenant)", "--then", "range(at)",
           "--then-interval", "1 month"))
    pol = one(conn, "SELECT row_to_json(p) FROM pgcleave.policies p WHERE table_name = 'm'")
    assert (pol["strategy"], pol["sub_strategy"], pol["sub_key_column"], pol["sub_interval"]) \
        == ("list", "range", "at", "1 month")
    ok(cli(*d, "add-partition", "m", "--values", "acme,bob"))
    conn.execute("INSERT INTO m (tenant) VALUES ('acme'), ('zed')")
    assert one(conn, "SELECT tableoid::regclass::text FROM m WHERE tenant = 'acme'") == "m_0"
    conn.execute("CREATE TABLE h (id bigserial PRIMARY KEY)")
    proc = cli(*d, "partition", "h", "--by", "hash(id)", "--modulus", "4", "--dry-run")
    # hash needs the copy strategy (issue 4): dispatched to it, or refused with the reason
    assert proc.returncode in (0, 2, 3), proc.stderr
    if proc.returncode == 3:
        assert "copy" in proc.stderr


def test_random_walk_of_plans_is_json(db: Any, conn: Any) -> None:
    """Plans are inert and serialisable (the journal stores them)."""
    from pgcleave.ops.partition import plan_partition

    conn.execute("CREATE TABLE r (id bigserial PRIMARY KEY, n int NOT NULL)")
    rng = random.Random(3)
    for _ in range(3):
        plan = plan_partition(conn, "r", by="range(id)", interval=str(rng.choice([10, 1000])),
                              premake=rng.randint(0, 4))
        json.dumps(plan.to_json())
        assert plan.steps[-1].name == "cut-over"


def test_add_partition_with_writers(db: Any, conn: Any, cli: Any) -> None:
    """Partitions added next to a DEFAULT that keeps receiving INSERT/UPDATE/DELETE and
    key-moving UPDATEs outside the new ranges: nothing lost, no writer error."""
    conn.execute("CREATE TABLE t (id bigserial, tenant text NOT NULL, payload text,"
                 " PRIMARY KEY (id, tenant))")
    conn.execute("INSERT INTO t (tenant, payload) SELECT 'M' || i % 50, 'p'"
                 " FROM generate_series(1, 20000) i")
    d = ("--dsn", db.dsn)
    ok(cli(*d, "partition", "t", "--by", "range(tenant)"))
    spec = Spec(table=sql.Identifier("public", "t"), key_col="tenant",
                make_key=lambda r: r.choice(["Mona", "Nico", "Otto", "Zed", "Quinn"]))
    w = Workload(db.dsn, spec, writers=4, max_seconds=60).start()
    try:
        w.run_for(0.3)
        for lo, hi in (("A", "B"), ("B", "D"), ("D", "E")):
            ok(cli(*d, "add-partition", "t", "--from", lo, "--to", hi))
        w.run_for(0.3)
    finally:
        w.stop()
    w.verify(conn)
    print(f"\nadd-partition with writers: {w.summary()}")
    assert one(conn, "SELECT count(*) FROM pg_inherits WHERE inhparent = 't'::regclass") == 4
    assert one(conn, "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgcleave_excl%'"
               ) == 0
