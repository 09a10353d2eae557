"""``pgcleave carve``: rows move out of the DEFAULT (or a legacy range partition) into new
partitions while writers run; no writer sees a row missing or gets an error."""

from __future__ import annotations

import json
import time
from typing import Any

from psycopg import sql

from pgcleave.ops.carve import plan_carve
from pgcleave.testing.workload import Spec, Workload

SEED = [
    ("ac8e6a36-722e-4e53-b9e6-e916aded0b00", "Acme", "jumping"),
    ("284d1166-0bdc-4c66-93c1-43ddbd0491a0", "Acme", "running"),
    ("aa46f49b-5fca-4fc8-bd63-fdf587710c00", "Bobmart", "hopping"),
    ("b9257460-173b-45e8-b4c3-7ec269c8f74d", "Crazytown", "skipping"),
    ("4f32eadf-0abe-480a-93bc-8780fdf85b5d", "Dory", "swimming"),
    ("216b0fd6-5baf-4432-80c6-069243e8cba4", "Eggbert", "sitting"),
]
TENANTS = ["Acme", "Bobmart", "Crazytown", "Dory", "Eggbert", "Fizz", "Gnome"]


def one(conn: Any, q: str, *args: Any) -> Any:
    row = conn.execute(q, list(args) or None).fetchone()
    return row[0] if row else None


def ok(proc: Any) -> Any:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def bounds(conn: Any, parent: str) -> dict[str, str]:
    return {r[0]: r[1] for r in conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass", [parent])}


def test_seed_000(db: Any, conn: Any, cli: Any) -> None:
    """The local part of seed 000, told with pgcleave."""
    conn.execute("CREATE TABLE exercises (id UUID PRIMARY KEY, tenant VARCHAR NOT NULL,"
                 " name VARCHAR NOT NULL)")
    for r in SEED:
        conn.execute("INSERT INTO exercises VALUES (%s, %s, %s)", r)
    d = ("--dsn", db.dsn)
    ok(cli(*d, "partition", "exercises", "--by", "range(tenant)", "--yes"))
    p1 = ok(cli(*d, "carve", "exercises", "--from", "MINVALUE", "--to", "B", "--yes"))
    assert "method direct" in p1.stderr
    ok(cli(*d, "carve", "exercises", "--from", "B", "--to", "D", "--yes"))
    assert bounds(conn, "exercises") == {
        "exercises_old": "DEFAULT", "exercises_0": "FOR VALUES FROM (MINVALUE) TO ('B')",
        "exercises_1": "FOR VALUES FROM ('B') TO ('D')"}
    counts = dict(conn.execute("SELECT tableoid::regclass::text, count(*) FROM exercises"
                               " GROUP BY 1").fetchall())
    assert counts == {"exercises_0": 2, "exercises_1": 2, "exercises_old": 2}
    conn.execute("ALTER TABLE exercises ADD description VARCHAR")
    assert one(conn, "SELECT count(*) FROM exercises_1 WHERE description IS NULL") == 2
    plan = "\n".join(r[0] for r in conn.execute(
        "EXPLAIN SELECT * FROM exercises WHERE id = '284d1166-0bdc-4c66-93c1-43ddbd0491a0'"
        " AND tenant = 'Acme'"))
    assert "exercises_0" in plan and "exercises_1" not in plan and "exercises_old" not in plan


def _tenants_table(conn: Any, rows: int) -> None:
    conn.execute("CREATE TABLE acc (id bigserial PRIMARY KEY, tenant text NOT NULL,"
                 " payload text, note text)")
    conn.execute("CREATE INDEX acc_payload_idx ON acc (payload)")
    conn.execute("INSERT INTO acc (tenant, payload) SELECT (%s::text[])[1 + i %% 7], 's' || i"
                 " FROM generate_series(1, %s) i", [TENANTS, rows])


def _spec() -> Spec:
    return Spec(table=sql.Identifier("public", "acc"), key_col="tenant",
                make_key=lambda r: r.choice(TENANTS))


def test_carve_swap_and_direct_with_writers(db: Any, conn: Any, cli: Any) -> None:
    _tenants_table(conn, 30000)
    d = ("--dsn", db.dsn)
    ok(cli(*d, "partition", "acc", "--by", "range(tenant)", "--yes"))
    w = Workload(db.dsn, _spec(), writers=4, max_seconds=90).start()
    try:
        w.run_for(0.3)
        t0 = time.monotonic()
        swap = ok(cli(*d, "carve", "acc", "--from", "B", "--to", "D", "--method", "swap",
                      "--batch-size", "2000", "--yes"))
        swap_s = time.monotonic() - t0
        w.run_for(0.2)
        direct = ok(cli(*d, "carve", "acc", "--from", "MINVALUE", "--to", "B", "--method",
                        "direct", "--max-lock-ms", "100000", "--yes"))
        w.run_for(0.3)
    finally:
        w.stop()
    print("carve:", w.summary(), f"swap carve of 30k rows took {swap_s:.2f}s")
    print(swap.stderr)
    assert "verified" in swap.stderr
    assert "method direct" in direct.stderr
    w.verify(conn)
    assert w.ops.get("move", 0) > 20
    b = bounds(conn, "acc")
    assert b["acc_old"] == "DEFAULT"
    assert sorted(b.values()) == sorted(["DEFAULT", "FOR VALUES FROM ('B') TO ('D')",
                                         "FOR VALUES FROM (MINVALUE) TO ('B')"])
    # every row is where its key says, and the retired copy and capture function are gone
    assert one(conn, "SELECT count(*) FROM acc_old WHERE tenant < 'D'") == 0
    assert conn.execute("SELECT relname FROM pg_class WHERE relname LIKE '%%pgcleave%%'"
                        " AND relnamespace = 'public'::regnamespace").fetchall() == []
    assert one(conn, "SELECT count(*) FROM pg_proc WHERE proname LIKE 'carve_%%'") == 0
    assert one(conn, "SELECT count(*) FROM pg_constraint WHERE conrelid = 'acc_old'::regclass"
                     " AND conname = 'pgcleave_bound'") == 0
    # every partition has the primary key and the payload index
    for name in b:
        assert one(conn, "SELECT count(*) FROM pg_indexes WHERE tablename = %s", name) == 2


def test_carve_refuses_long_direct_lock(db: Any, conn: Any, cli: Any) -> None:
    _tenants_table(conn, 20000)
    conn.execute("ANALYZE acc")
    d = ("--dsn", db.dsn)
    ok(cli(*d, "partition", "acc", "--by", "range(tenant)", "--yes"))
    proc = cli(*d, "carve", "acc", "--from", "A", "--to", "B", "--method", "direct",
               "--max-lock-ms", "1", "--yes")
    assert proc.returncode == 3, proc.stderr
    assert "ACCESS EXCLUSIVE" in proc.stderr and "--method swap" in proc.stderr
    auto = ok(cli(*d, "carve", "acc", "--from", "A", "--to", "B", "--max-lock-ms", "1",
                  "--dry-run"))
    assert "method swap" in auto.stdout
    # overlapping an existing partition, or empty: refused, nothing changed
    ok(cli(*d, "carve", "acc", "--from", "A", "--to", "B", "--method", "direct",
           "--max-lock-ms", "100000", "--yes"))
    for args, word in [(("--from", "AA", "--to", "C"), "overlaps"),
                       (("--from", "C", "--to", "B"), "empty range"),
                       (("--values", "x"), "--from and --to")]:
        proc = cli(*d, "carve", "acc", *args, "--yes")
        assert proc.returncode == 3 and word in proc.stderr, proc.stderr


def test_carve_splits_legacy_partition(db: Any, conn: Any, cli: Any) -> None:
    conn.execute("CREATE TABLE ev (id bigserial PRIMARY KEY, n int NOT NULL, note text)")
    conn.execute("INSERT INTO ev (n) SELECT i FROM generate_series(1, 5000) i")
    d = ("--dsn", db.dsn)
    ok(cli(*d, "partition", "ev", "--by", "range(id)", "--interval", "1000", "--cutoff",
           "7000", "--premake", "1"))
    conn.execute("INSERT INTO ev (n) VALUES (0)")  # id 5001, still in the legacy partition
    ok(cli(*d, "carve", "ev", "--from", "2000", "--to", "4000", "--name", "ev_mid", "--yes"))
    b = bounds(conn, "ev")
    assert b == {"ev_legacy": "FOR VALUES FROM (MINVALUE) TO ('2000')",
                 "ev_mid": "FOR VALUES FROM ('2000') TO ('4000')",
                 "ev_legacy_r1": "FOR VALUES FROM ('4000') TO ('7000')",
                 "ev_p7000": "FOR VALUES FROM ('7000') TO ('8000')"}
    assert one(conn, "SELECT count(*) FROM ev") == 5001
    assert one(conn, "SELECT count(*) FROM ev_mid") == 2000
    assert one(conn, "SELECT nextval('ev_id_seq')") == 5002


def test_carve_list_and_library(db: Any, conn: Any, cli: Any) -> None:
    conn.execute("CREATE TABLE l (id bigserial, region text NOT NULL, PRIMARY KEY (id, region))")
    conn.execute("INSERT INTO l (region) SELECT (ARRAY['eu','us','ap'])[1 + i % 3]"
                 " FROM generate_series(1, 300) i")
    d = ("--dsn", db.dsn)
    ok(cli(*d, "partition", "l", "--by", "list(region)"))
    plan = plan_carve(conn, "l", [["eu", "ap"]], names=["l_eu_ap"])
    assert plan.steps[0].name == "carve-direct"
    json.dumps(plan.to_json())
    plan2 = plan_carve(conn, "l", [["eu"], ["us"]], method="swap")
    assert [s.name for s in plan2.steps] == ["carve-prepare", "carve-copy", "carve-verify",
                                            "carve-swap", "carve-drop-old"]
    ok(cli(*d, "carve", "l", "--values", "eu,ap", "--method", "swap", "--yes"))
    counts = dict(conn.execute("SELECT tableoid::regclass::text, count(*) FROM l GROUP BY 1"))
    assert counts == {"l_0": 200, "l_old": 100}
