"""Issue 18, item 1: no application statement fails while pgcleave adds partitions next to a
DEFAULT that takes writes, including writes of the very range being added (add-partition), and
of a range maintain premakes while it drains the DEFAULT in the same job."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from psycopg import sql

from pgcleave.connection import Settings
from pgcleave.execute import Executor
from pgcleave.ops.maintain import plan_maintain
from pgcleave.testing.workload import Spec, Workload
from tests.test_maintain import make_events, parts

EV = "Ev ents"
EVQ = '"Ev ents"'


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


def months_spec(lo_month: int, hi_month: int) -> Spec:
    def key(r: Any) -> datetime:
        m = r.randint(lo_month, hi_month)
        return datetime(2025, m, 1 + r.randint(0, 27), r.randint(0, 23), tzinfo=UTC)
    return Spec(table=sql.Identifier("public", EV), key_col="at", make_key=key)


def test_maintain_premake_and_drain_never_refuse_inserts(db: Any, conn: Any, cli: Any) -> None:
    """One maintain job drains March-May from the DEFAULT and premakes June-August; writers
    start after it was planned (a writer ahead of premake) and insert, update, delete and move
    rows in March-September the whole time, so rows of the premade months reach the DEFAULT
    while the job copies it: the job ends, no writer statement fails, nothing is lost. A second
    premakes September-November the same way, a third December (one short transaction, no
    drain) with writers into it: it ends too, a month whose rows arrived first being left to
    the next run's drain."""
    make_events(conn)
    # a DEFAULT that takes a while to read (an excluding CHECK's VALIDATE would be a window
    # in which rows of the premade months are refused)
    conn.execute(sql.SQL("INSERT INTO {} (at, payload) SELECT '2025-03-01 00:00+00'::timestamptz"
                         " + i * interval '20 seconds', 'bulk' FROM generate_series(1, 100000) i"
                         ).format(sql.Identifier(EV)))
    d = ("--dsn", db.dsn)
    ok(cli(*d, "config", EVQ, "--premake", "3"))
    jobs = []
    for now, months in ((datetime(2025, 5, 10, tzinfo=UTC), (3, 9)),
                        (datetime(2025, 8, 10, tzinfo=UTC), (3, 11)),
                        (datetime(2025, 9, 10, tzinfo=UTC), (3, 12))):
        with db.connect() as c:
            plan, summary = plan_maintain(c, EVQ, now=now)
        steps = [s.name for s in plan.steps]
        # with a drain, the premade months are carved along; else created under the lock
        assert ("carve-swap" in steps) if now.month < 9 else ("premake:create" in steps), steps
        assert not any(s.residue_note for s in plan.steps), [s.name for s in plan.steps]
        w = Workload(db.dsn, months_spec(*months), writers=4, max_seconds=60).start()
        try:
            w.run_for(0.2)
            jobs.append(Executor(Settings(dsn=db.dsn)).run(plan))
            w.run_for(0.2)
        finally:
            w.stop()
        w.verify(conn)  # no writer error, every committed write present exactly once
        print(f"\nmaintain --now {now:%Y-%m-%d} with writers into premade months: "
              f"{w.summary()}; created {summary.created}")
        assert w.ops.get("insert", 0) > 20
    assert conn.execute("SELECT count(*) FROM pgcleave.jobs WHERE state <> 'done'"
                        ).fetchone()[0] == 0
    names = {n for n, _ in parts(conn, EV)}
    for m in ("2025_03", "2025_06", "2025_07", "2025_08"):
        assert any(m in n for n in names), (m, names)
    # the months premade next to rows that arrived first are drained by the next run
    ok(cli(*d, "maintain", EVQ, "--now", "2025-09-10"))
    assert conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(
        sql.Identifier(EV + "_default"))).fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgcleave%%'"
                        " AND conname <> 'pgcleave_bound' AND conrelid = %s::regclass",
                        [sql.Identifier(EV + "_default").as_string(None)]).fetchone()[0] == 0


def test_partition_in_place_warns_about_future_dated_keys(db: Any, conn: Any, cli: Any
                                                          ) -> None:
    """The legacy cutoff CHECK refuses keys at or past the cutoff until the cut-over: a table
    that already holds future-dated keys gets a warning (a confirmation) naming the
    strategies that refuse nothing; one that does not, none."""
    conn.execute("CREATE TABLE s (id bigserial, due timestamptz NOT NULL, PRIMARY KEY (id, due))")
    conn.execute("CREATE INDEX ON s (due)")
    conn.execute("INSERT INTO s (due) SELECT now() - i * interval '1 day'"
                 " FROM generate_series(1, 50) i")
    d = ("--dsn", db.dsn)
    args = ("partition", "s", "--by", "range(due)", "--interval", "1 month", "--dry-run",
            "--json")
    assert json.loads(ok(cli(*d, *args)).stdout)["warnings"] == []
    conn.execute("INSERT INTO s (due) VALUES (now() + interval '10 days')")
    w = json.loads(ok(cli(*d, *args)).stdout)["warnings"]
    assert any("future-dated" in x and "--strategy default or copy" in x for x in w), w


def test_add_partition_falls_back_with_a_warning(db: Any, conn: Any, cli: Any) -> None:
    """A DEFAULT without a primary key, too large for the direct transaction: carve cannot
    copy it, so the excluding CHECK is used, with a warning that says what it refuses (a
    confirmation; without a terminal it needs --yes)."""
    conn.execute("CREATE TABLE nk (k int NOT NULL, v text) PARTITION BY RANGE (k)")
    conn.execute("CREATE TABLE nk_default PARTITION OF nk DEFAULT")
    conn.execute("INSERT INTO nk SELECT i, 'x' FROM generate_series(1, 1000) i")
    d = ("--dsn", db.dsn)
    plan = json.loads(ok(cli(*d, "add-partition", "nk", "--from", "5000", "--to", "6000",
                             "--max-lock-ms", "0", "--dry-run", "--json")).stdout)
    assert plan["args"]["path"] == "check"
    assert any("carve cannot add" in w and "fails" in w for w in plan["warnings"]), plan
    r = cli(*d, "add-partition", "nk", "--from", "5000", "--to", "6000", "--max-lock-ms", "0")
    assert r.returncode != 0, r.stdout
    ok(cli(*d, "add-partition", "nk", "--from", "5000", "--to", "6000", "--max-lock-ms", "0",
           "--yes"))
    # small enough for the direct transaction: carved, no primary key needed
    plan = json.loads(ok(cli(*d, "add-partition", "nk", "--from", "7000", "--to", "8000",
                             "--dry-run", "--json")).stdout)
    assert plan["args"]["path"] == "carve-direct" and plan["warnings"] == [], plan
