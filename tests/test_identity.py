"""Identity columns through every conversion, on 15/16 (a partition may keep its own identity)
and on 17+ (it may not: the partitioned table owns the identity and its partitions share the
sequence). Under application-like writers (``INSERT ... RETURNING id``): nothing lost, no id
reused, ids continue; the sequence keeps its name and privileges; the way back gives a plain
table whose inserts go on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg import sql

from pgcleave.connection import Settings
from pgcleave.execute import Executor
from pgcleave.ops.carve import plan_carve
from pgcleave.testing.workload import Spec, Workload

NOW = datetime.now(UTC)
ROLE = "app_ident"


def one(conn: Any, q: str, *args: Any) -> Any:
    row = conn.execute(q, list(args) or None).fetchone()
    return row[0] if row else None


def ok(proc: Any) -> Any:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def role(db: Any) -> Any:
    with db.connect() as c:
        c.execute(f"DO $$ BEGIN CREATE ROLE {ROLE}; EXCEPTION WHEN duplicate_object THEN NULL;"
                  " END $$")
    yield ROLE
    with db.connect() as c:
        c.execute(f"DROP OWNED BY {ROLE} CASCADE")
        c.execute(f"DROP ROLE IF EXISTS {ROLE}")


def _ledger(conn: Any, generated: str) -> int:
    conn.execute(f"CREATE TABLE ledger (id bigint GENERATED {generated} AS IDENTITY,"
                 " created_at timestamptz NOT NULL DEFAULT now(), payload text,"
                 " PRIMARY KEY (id, created_at))")
    conn.execute("INSERT INTO ledger (created_at, payload) SELECT now() - i * interval"
                 " '13 minutes', 'seed' || i FROM generate_series(1, 2000) i")
    conn.execute(f"GRANT SELECT, INSERT ON ledger TO {ROLE}")
    conn.execute(f"GRANT USAGE ON SEQUENCE ledger_id_seq TO {ROLE}")
    return int(one(conn, "SELECT max(id) FROM ledger"))


def _spec() -> Spec:
    return Spec(table=sql.Identifier("public", "ledger"), key_col="created_at",
                make_key=lambda r: NOW - timedelta(days=r.uniform(0, 20)))


def _ids_continue(w: Workload, before: int) -> None:
    inserted = [i for r in w.results for i in (*r.expected, *r.deleted)]
    assert inserted, "the writers inserted nothing"
    assert min(inserted) > before, "an id below the old maximum was handed out again"
    assert len(inserted) == len(set(inserted)), "an id was handed out twice"


def _sequence_kept(conn: Any, *, partitioned: bool = False) -> None:
    """The application's sequence is ``ledger_id_seq`` with its privileges. On 15/16 a table
    partitioned in place draws from a new sequence of the partitioned table (``ledger_id_seq1``,
    continuing), the old one staying with the old table, now a partition."""
    if partitioned and conn.info.server_version < 170000:
        assert one(conn, "SELECT pg_get_serial_sequence('ledger', 'id')") == \
            "public.ledger_id_seq1"
        return
    assert one(conn, "SELECT pg_get_serial_sequence('ledger', 'id')") == "public.ledger_id_seq"
    assert one(conn, f"SELECT has_sequence_privilege('{ROLE}', 'ledger_id_seq', 'USAGE')")
    assert one(conn, "SELECT currval('ledger_id_seq') IS NOT NULL FROM"
                     " (SELECT nextval('ledger_id_seq')) x")


@pytest.mark.parametrize(("generated", "strategy"), [("ALWAYS", "legacy"),
                                                     ("BY DEFAULT", "default")])
def test_in_place_and_back_under_writers(db: Any, conn: Any, cli: Any, role: str,
                                         generated: str, strategy: str) -> None:
    before = _ledger(conn, generated)
    w = Workload(db.dsn, _spec(), writers=4, max_seconds=120, pause_s=0.002)
    with w:
        w.run_for(0.5)
        args = ["--interval", "1 month"] if strategy == "legacy" else []
        ok(cli("--dsn", db.dsn, "partition", "ledger", "--by", "range(created_at)", *args,
               "--strategy", strategy, "--yes"))
        w.run_for(1.0)
        assert one(conn, "SELECT relkind FROM pg_class WHERE oid = 'ledger'::regclass") == "p"
        _sequence_kept(conn, partitioned=True)
        mid = int(one(conn, "SELECT max(id) FROM ledger"))
        ok(cli("--dsn", db.dsn, "unpartition", "ledger", "--yes"))
        w.run_for(1.0)
    print(w.summary())
    w.verify(conn)
    _ids_continue(w, before)
    assert one(conn, "SELECT relkind FROM pg_class WHERE oid = 'ledger'::regclass") == "r"
    assert one(conn, "SELECT attidentity FROM pg_attribute WHERE attrelid = 'ledger'::regclass"
                     " AND attname = 'id'") == ("a" if generated == "ALWAYS" else "d")
    _sequence_kept(conn)
    after = one(conn, "INSERT INTO ledger (payload) VALUES ('after') RETURNING id")
    assert after > max(mid, int(one(conn, "SELECT max(id) FROM ledger WHERE id <> %s", after)))
    assert one(conn, "SELECT count(*) FROM (SELECT id FROM ledger GROUP BY id HAVING"
                     " count(*) > 1) d") == 0
    assert one(conn, "SELECT count(*) FROM pg_class WHERE relname LIKE 'ledger%%'"
                     " AND relkind = 'S'") == 1


def test_cut_over_rolled_back(db: Any, conn: Any, cli: Any, role: str) -> None:
    """The undo of the cut-over (rollback of the job) gives back a working identity."""
    _ledger(conn, "ALWAYS")
    proc = cli("--dsn", db.dsn, "partition", "ledger", "--by", "range(created_at)",
               "--interval", "1 month", "--yes", env={"PGCLEAVE_FAULT": "kill-after:cut-over"})
    assert proc.returncode != 0, proc.stderr
    mid = one(conn, "INSERT INTO ledger (payload) VALUES ('between') RETURNING id")
    job = one(conn, "SELECT max(id) FROM pgcleave.jobs")
    ok(cli("--dsn", db.dsn, "rollback", str(job)))
    assert one(conn, "SELECT relkind FROM pg_class WHERE oid = 'ledger'::regclass") == "r"
    _sequence_kept(conn)
    after = one(conn, "INSERT INTO ledger (payload) VALUES ('after') RETURNING id")
    assert after > mid
    assert one(conn, "SELECT count(*) FROM ledger") == 2002


def test_copy_swap_and_unswap_under_writers(db: Any, conn: Any, cli: Any, role: str) -> None:
    before = _ledger(conn, "BY DEFAULT")
    w = Workload(db.dsn, _spec(), writers=4, max_seconds=120, pause_s=0.002)
    with w:
        w.run_for(0.5)
        ok(cli("--dsn", db.dsn, "partition", "ledger", "--by", "range(created_at)",
               "--interval", "1 month", "--strategy", "copy", "--yes"))
        w.run_for(1.0)
        assert one(conn, "SELECT relkind FROM pg_class WHERE oid = 'ledger'::regclass") == "p"
        mid = int(one(conn, "SELECT max(id) FROM ledger"))
        ok(cli("--dsn", db.dsn, "unswap", "ledger", "--yes"))
        w.run_for(1.0)
    print(w.summary())
    w.verify(conn)
    _ids_continue(w, before)
    assert one(conn, "SELECT relkind FROM pg_class WHERE oid = 'ledger'::regclass") == "r"
    _sequence_kept(conn)
    after = one(conn, "INSERT INTO ledger (payload) VALUES ('after') RETURNING id")
    assert after > mid
    assert one(conn, "SELECT count(*) FROM (SELECT id FROM ledger GROUP BY id HAVING"
                     " count(*) > 1) d") == 0


@pytest.mark.parametrize("method", ["swap", "direct", "swap-around", "swap-batches"])
def test_carve_keeps_the_identity_under_writers(db: Any, conn: Any, cli: Any, role: str,
                                                method: str) -> None:
    """Carve attaches tables made LIKE a partition: on 17+ they must not bring an identity of
    their own; on every version the rows they take keep their ids and new ids continue."""
    conn.execute("CREATE TABLE acct (id bigint GENERATED ALWAYS AS IDENTITY, tenant text NOT"
                 " NULL, payload text, PRIMARY KEY (id, tenant))")
    conn.execute("INSERT INTO acct (tenant, payload) SELECT (ARRAY['Acme', 'Bob', 'Cat',"
                 " 'Dory'])[1 + i % 4], 'seed' || i FROM generate_series(1, 2000) i")
    before = int(one(conn, "SELECT max(id) FROM acct"))
    ok(cli("--dsn", db.dsn, "partition", "acct", "--by", "range(tenant)", "--yes"))
    spec = Spec(table=sql.Identifier("public", "acct"), key_col="tenant",
                make_key=lambda r: r.choice(["Acme", "Bob", "Cat", "Dory"]))
    w = Workload(db.dsn, spec, writers=4, max_seconds=120, pause_s=0.002)
    with w:
        w.run_for(0.5)
        if method == "swap-around":  # two pieces with a partition between them
            ok(cli("--dsn", db.dsn, "carve", "acct", "--from", "B", "--to", "C", "--method",
                   "direct", "--yes"))
            with db.connect() as c:
                Executor(Settings(dsn=db.dsn)).run(plan_carve(
                    c, "acct", [("A", "B"), ("C", "D")], method="swap"))
        elif method == "swap-batches":  # one piece per transaction: the holder shrinks
            with db.connect() as c:
                Executor(Settings(dsn=db.dsn)).run(plan_carve(
                    c, "acct", [("A", "B"), ("B", "C"), ("C", "D")], method="swap",
                    swap_batch=1))
        else:
            ok(cli("--dsn", db.dsn, "carve", "acct", "--from", "B", "--to", "D", "--method",
                   method, "--yes"))
        w.run_for(1.0)
    print(w.summary())
    w.verify(conn)
    _ids_continue(w, before)
    parts = [r[0] for r in conn.execute(
        "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'acct'::regclass")]
    assert len(parts) == (4 if method.startswith("swap-") else 2)
    with conn.transaction(force_rollback=True):  # each partition can be detached again
        for rel in parts:
            conn.execute(sql.SQL("ALTER TABLE acct DETACH PARTITION {}").format(sql.SQL(rel)))
    top = int(one(conn, "SELECT max(id) FROM acct"))
    assert one(conn, "INSERT INTO acct (tenant) VALUES ('Bob') RETURNING id") > top
    assert one(conn, "INSERT INTO acct (tenant) VALUES ('Acme') RETURNING id") > top + 1
    assert one(conn, "SELECT count(*) FROM (SELECT id FROM acct GROUP BY id HAVING"
                     " count(*) > 1) d") == 0


def test_two_level_drain_keeps_the_identity(db: Any, conn: Any, cli: Any) -> None:
    """maintain drains a new country from the top DEFAULT into a new sub-partitioned branch
    (carve with sub-partitioned pieces): afterwards every branch and leaf can be detached
    (on 17+ each must carry the shared identity), new ids continue, no CHECK of the swap stays."""
    conn.execute("CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY, country"
                 " varchar(2) NOT NULL, scheduled_at timestamp NOT NULL, PRIMARY KEY (id,"
                 " country, scheduled_at)) PARTITION BY LIST (country)")
    conn.execute("CREATE TABLE orders_ru PARTITION OF orders FOR VALUES IN ('RU')"
                 " PARTITION BY RANGE (scheduled_at)")
    for m in (1, 2, 3):
        conn.execute(f"CREATE TABLE orders_ru_{m} PARTITION OF orders_ru FOR VALUES FROM"
                     f" ('2025-{m:02d}-01') TO ('2025-{m + 1:02d}-01')")
    conn.execute("CREATE TABLE orders_default PARTITION OF orders DEFAULT")
    conn.execute("INSERT INTO orders (country, scheduled_at) SELECT c, '2025-01-01'::timestamp"
                 " + (i % 80) * interval '1 day' FROM generate_series(1, 600) i,"
                 " unnest(ARRAY['RU', 'FR']) c")
    ok(cli("--dsn", db.dsn, "config", "orders", "--then", "range(scheduled_at)", "--interval",
           "1 month", "--premake", "1"))
    before = int(one(conn, "SELECT max(id) FROM orders"))
    ok(cli("--dsn", db.dsn, "maintain", "--now", "2025-03-10"))
    assert one(conn, "SELECT count(*) FROM ONLY orders_default") == 0
    assert one(conn, "SELECT count(*) FROM orders WHERE country = 'FR'") == 600
    assert one(conn, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'orders_fr'"
                     "::regclass") >= 2
    # only the branch's CHECK of its bound (as on 15, inherited by its partitions)
    assert conn.execute("SELECT conname, conislocal, count(*) FROM pg_constraint WHERE conname"
                        " LIKE 'pgcleave%%' GROUP BY 1, 2 ORDER BY 1, 2").fetchall() == [
        ("pgcleave_bound", False, 4), ("pgcleave_bound", True, 1)]
    tree = [r[0] for r in conn.execute(
        "SELECT relid::regclass::text FROM pg_partition_tree('orders') WHERE level > 0"
        " ORDER BY level DESC, relid::regclass::text")]
    with conn.transaction(force_rollback=True):  # leaves first, then branches
        for rel in tree:
            parent = one(conn, "SELECT inhparent::regclass::text FROM pg_inherits"
                               " WHERE inhrelid = %s::regclass", rel)
            conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                sql.SQL(parent), sql.SQL(rel)))
    fr = one(conn, "INSERT INTO orders (country, scheduled_at) VALUES ('FR', '2025-03-02')"
                   " RETURNING id")
    assert fr > before
    assert one(conn, "SELECT count(*) FROM (SELECT id FROM orders GROUP BY id HAVING"
                     " count(*) > 1) d") == 0
