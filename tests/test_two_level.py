"""Seed 001: orders by country, then by month. A new country shows up in the top DEFAULT and
gets its own range-partitioned branch and its months, with nobody acting."""

from __future__ import annotations

import json
from typing import Any


def test_new_country_gets_its_branch(db: Any, conn: Any, cli: Any) -> None:
    conn.execute("CREATE TABLE orders (id bigserial, country varchar(2) NOT NULL,"
                 " scheduled_at timestamp NOT NULL, cost numeric(10,2) NOT NULL DEFAULT 0,"
                 " PRIMARY KEY (id, country, scheduled_at)) PARTITION BY LIST (country)")
    conn.execute("CREATE INDEX ON orders (country, scheduled_at)")
    for c in ("RU", "US"):
        conn.execute(f"CREATE TABLE orders_{c.lower()} PARTITION OF orders FOR VALUES IN"
                     f" ('{c}') PARTITION BY RANGE (scheduled_at)")
        for m in (1, 2, 3):
            conn.execute(f"CREATE TABLE orders_{c.lower()}_{m} PARTITION OF orders_{c.lower()}"
                         f" FOR VALUES FROM ('2025-{m:02d}-01') TO ('2025-{m + 1:02d}-01')")
    conn.execute("CREATE TABLE orders_default PARTITION OF orders DEFAULT")
    conn.execute("INSERT INTO orders (country, scheduled_at, cost) SELECT c, '2025-01-01'::"
                 "timestamp + (i % 80) * interval '1 day', 10 FROM generate_series(1, 2000) i,"
                 " unnest(ARRAY['RU','US']) c")
    r = cli("--dsn", db.dsn, "config", "orders", "--then", "range(scheduled_at)", "--interval",
            "1 month", "--premake", "1")
    assert r.returncode == 0, r.stderr
    pol = json.loads(cli("--dsn", db.dsn, "config", "orders", "--json").stdout)
    assert (pol["strategy"], pol["sub_strategy"], pol["sub_interval"]) == (
        "list", "range", "1 month")

    # France appears: its rows land in the top DEFAULT
    conn.execute("INSERT INTO orders (country, scheduled_at, cost) SELECT 'FR', '2025-02-10'::"
                 "timestamp + (i % 40) * interval '1 day', 20 FROM generate_series(1, 500) i")
    c = cli("--dsn", db.dsn, "check", "--now", "2025-03-10")
    assert c.returncode == 1 and "default-rows" in c.stdout and "premake" in c.stdout

    r = cli("--dsn", db.dsn, "maintain", "--now", "2025-03-10", "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)["tables"][0]["done"]
    assert done["moved_rows"] == 500
    assert conn.execute("SELECT count(*) FROM ONLY orders_default").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM orders WHERE country = 'FR'").fetchone()[0] == 500
    # FR is a branch partitioned by month, with February, March (rows) and April (premake)
    kids = [r[0] for r in conn.execute(
        "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON"
        " c.oid = i.inhrelid WHERE i.inhparent = 'orders_fr'::regclass ORDER BY 1")]
    assert len(kids) == 3 and "2025-02-01" in kids[0] and "2025-05-01" in kids[2]
    # existing branches got April too
    for b in ("orders_ru", "orders_us"):
        n = conn.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = %s::regclass",
                         [b]).fetchone()[0]
        assert n == 4
    assert cli("--dsn", db.dsn, "check", "--now", "2025-03-10").returncode == 0
    # a new FR order for April routes straight to its partition
    conn.execute("INSERT INTO orders (country, scheduled_at) VALUES ('FR', '2025-04-02')")
    assert conn.execute("SELECT count(*) FROM ONLY orders_default").fetchone()[0] == 0
