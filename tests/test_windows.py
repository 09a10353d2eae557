"""Issue 18, item 1: no application statement fails while pgcleave adds partitions next to a
DEFAULT that takes writes, including writes of the very range being added (add-partition), and
of a range maintain premakes while it drains the DEFAULT in the same job."""

from __future__ import annotations

import json
from typing import Any

import pytest
from psycopg import sql

from pgcleave.testing.workload import Spec, Workload


def ok(proc: Any) -> Any:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def one(conn: Any, q: str, *args: Any) -> Any:
    row = conn.execute(q, args or None).fetchone()
    return row[0] if row else None


def tenants_table(conn: Any, rows: int) -> None:
    conn.execute("CREATE TABLE t (id bigserial, tenant text NOT NULL, payload text,"
                 " PRIMARY KEY (id, tenant)) PARTITION BY RANGE (tenant)")
    conn.execute("CREATE TABLE t_a PARTITION OF t FOR VALUES FROM ('A') TO ('B')")
    conn.execute("CREATE TABLE t_default PARTITION OF t DEFAULT")
    # rows of the ranges about to be added already sit in the DEFAULT, with others
    conn.execute("INSERT INTO t (tenant, payload) SELECT (ARRAY['Dora', 'Mona', 'Zed', 'Fred'])"
                 "[1 + i %% 4], 'p' FROM generate_series(1, %s) i", [rows])


@pytest.mark.parametrize("how", ["direct", "swap"])
def test_add_partition_never_refuses_inserts_of_its_range(db: Any, conn: Any, cli: Any,
                                                           how: str) -> None:
    """Writers insert, update, delete and move rows into the ranges being added and into the
    DEFAULT the whole time: every statement succeeds, nothing is lost, and the rows of each
    range end in its new partition."""
    tenants_table(conn, 2000 if how == "direct" else 40000)
    extra = ("--max-lock-ms", "0") if how == "swap" else ("--max-lock-ms", "1000")
    spec = Spec(table=sql.Identifier("public", "t"), key_col="tenant",
                make_key=lambda r: r.choice(["Dora", "Dx", "Duck", "Fred", "Fx", "Mona",
                                             "Zed"]))
    d = ("--dsn", db.dsn)
    plan = json.loads(ok(cli(*d, "add-partition", "t", "--from", "D", "--to", "E", *extra,
                             "--dry-run", "--json")).stdout)
    assert plan["args"]["path"] == f"carve-{how}", plan["args"]
    assert any(n.startswith("path: carve") for n in plan["notes"]), plan["notes"]
    assert all(s.get("residue") in (None, "none") for s in plan["steps"]), plan["steps"]
    w = Workload(db.dsn, spec, writers=4, max_seconds=60).start()
    try:
        w.run_for(0.3)
        ok(cli(*d, "add-partition", "t", "--from", "D", "--to", "E", *extra))
        ok(cli(*d, "add-partition", "t", "--from", "F", "--to", "G", "--name", "t_f", *extra))
        w.run_for(0.3)
    finally:
        w.stop()
    w.verify(conn)  # no writer error, every committed write present exactly once
    print(f"\nadd-partition ({how}) with writers into its range: {w.summary()}")
    assert w.ops.get("insert", 0) > 20
    assert one(conn, "SELECT count(*) FROM ONLY t_default WHERE tenant >= 'D' AND tenant < 'E'"
               " OR tenant >= 'F' AND tenant < 'G'") == 0
    dname = one(conn, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = "
                "i.inhrelid WHERE i.inhparent = 't'::regclass AND pg_get_expr(c.relpartbound, "
                "c.oid) = 'FOR VALUES FROM (''D'') TO (''E'')'")
    assert dname is not None
    assert one(conn, f"SELECT count(*) FROM {dname} WHERE tenant = 'Dora'") >= 500
    # only the CHECKs of the new partitions' own bounds (they refuse nothing the partition
    # constraint does not): nothing on the DEFAULT
    assert one(conn, "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgcleave%'"
               " AND conname <> 'pgcleave_bound' AND conrelid IN (SELECT inhrelid FROM"
               " pg_inherits WHERE inhparent = 't'::regclass)") == 0
    assert one(conn, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgcleave%'") == 0


def test_add_partition_check_method_is_explicit(db: Any, conn: Any, cli: Any) -> None:
    """The excluding-CHECK path is only taken when asked for, and its plan says what it
    refuses; without a DEFAULT the partition is simply created."""
    tenants_table(conn, 100)
    d = ("--dsn", db.dsn)
    plan = json.loads(ok(cli(*d, "add-partition", "t", "--from", "P", "--to", "Q",
                             "--method", "check", "--dry-run", "--json")).stdout)
    assert plan["args"]["path"] == "check"
    assert [s["name"] for s in plan["steps"]][:2] == ["add-exclusion-check",
                                                      "validate-exclusion-check"]
    conn.execute("CREATE TABLE n (id bigserial, k int NOT NULL, PRIMARY KEY (id, k))"
                 " PARTITION BY RANGE (k)")
    plan = json.loads(ok(cli(*d, "add-partition", "n", "--from", "1", "--to", "10",
                             "--dry-run", "--json")).stdout)
    assert plan["args"]["path"] == "create"
    assert [s["name"] for s in plan["steps"]] == ["create-partition"]
