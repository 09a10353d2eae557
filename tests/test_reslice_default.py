"""``split``, ``merge``, ``reslice`` (issue 16) beside a DEFAULT partition, of list partitions,
at the lower level of a two-level table, and as a table owner that is no superuser; each under
application-like writers, killed at the new steps, then resumed or rolled back.

The DEFAULT is never scanned under an exclusive lock: a CHECK excluding the re-cut span is
validated on it first (SHARE UPDATE EXCLUSIVE, writes go on), and its sequential scans do not
grow from the end of that validation to the end of the job (the swap's ATTACHes skipped their
scan)."""

from __future__ import annotations

import time
from datetime import date, timedelta
from typing import Any

import pytest
from psycopg import sql

from pgcleave.connection import Settings
from pgcleave.errors import PgcleaveError, Refused
from pgcleave.execute import Executor
from pgcleave.journal import step_timings
from pgcleave.ops.merge import plan_merge
from pgcleave.ops.reslice import plan_reslice, plan_split
from pgcleave.testing.workload import Spec, Workload
from tests.test_carve import bounds, ok, one
from tests.test_least_privilege import ROLE, app  # noqa: F401 (a fixture)
from tests.test_reslice import _ev, _spec, assert_short_waits, lock_waits_logged  # noqa: F401


def _seq_scans(conn: Any, table: str) -> int:
    """Sequential scans of ``table`` counted so far. A backend flushes its counters when it
    exits, but the exit of a killed or finished command's backends is not synchronous with
    the command's: wait until every pgcleave backend is gone (the writers never scan
    ``table``), then flush this one's own (a backend flushes at most once a second
    otherwise)."""
    deadline = time.monotonic() + 30
    while one(conn, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
                    "'pgcleave%%' AND pid <> pg_backend_pid()"):
        assert time.monotonic() < deadline, "pgcleave backends did not exit"
        time.sleep(0.02)
    conn.execute("SELECT pg_stat_force_next_flush()")
    return int(one(conn, "SELECT seq_scan FROM pg_stat_user_tables WHERE relid = %s::regclass",
                   table))


def _span_checks(conn: Any) -> int:
    return int(one(conn, "SELECT count(*) FROM pg_constraint WHERE conname LIKE "
                         "'pgcleave_span%%'"))


def _last_job(conn: Any) -> int:
    return int(one(conn, "SELECT max(id) FROM pgcleave.jobs"))


def _with_default(conn: Any, rows: int) -> None:
    """``ev`` (see test_reslice) with a DEFAULT holding rows of March."""
    _ev(conn, rows)
    conn.execute("CREATE TABLE ev_default PARTITION OF ev DEFAULT")
    conn.execute("INSERT INTO ev (created_at, payload) SELECT '2026-03-01 UTC'::timestamptz +"
                 " i * interval '1 minute', 'd' || i FROM generate_series(1, 2000) i")
    conn.execute("ANALYZE ev")


def _killed(cli: Any, d: tuple[str, ...], argv: list[str], step: str) -> None:
    r = cli(*d, *argv, "--yes", env={"PGCLEAVE_FAULT": f"kill-after:{step}"})
    assert r.returncode != 0, (step, r.stdout + r.stderr)


def test_split_and_merge_beside_a_default_never_scan_it_locked(db: Any, conn: Any,
                                                               cli: Any) -> None:
    _with_default(conn, 8000)
    d = ("--dsn", db.dsn)
    ex = Executor(Settings(dsn=db.dsn))
    in_default = one(conn, "SELECT count(*) FROM ev_default")
    spec = Spec(**{**_spec().__dict__, "prune_by_key": True})  # writers never reach the DEFAULT
    jan = ["split", "ev_p2026_01", "--at", "2026-01-15", "--names", "ev_jan_a,ev_jan_b"]
    w = Workload(db.dsn, spec, writers=4, max_seconds=90, server_log=db.server.logfile).start()
    try:
        w.run_for(0.3)
        # a kill after the CHECK went on, then rollback: it goes again
        _killed(cli, d, jan, "carve-exclude-default")
        assert _span_checks(conn) == 1
        ex.rollback(_last_job(conn))
        assert _span_checks(conn) == 0
        # killed once the copy is verified: the rest (the swap) scans the DEFAULT no more
        _killed(cli, d, jan, "carve-verify")
        scans = _seq_scans(conn, "ev_default")
        ok(cli(*d, "resume", str(_last_job(conn))))
        assert _seq_scans(conn, "ev_default") == scans
        w.run_for(0.2)
        days = [f"ev_p2026_02_0{i}" for i in range(1, 8)]
        merge = ["merge", *days, "--name", "ev_w2026_02_01"]
        _killed(cli, d, merge, "merge-validate-default")
        ex.rollback(_last_job(conn))
        assert _span_checks(conn) == 0 and len(bounds(conn, "ev")) == 11
        _killed(cli, d, merge, "merge-verify")
        scans = _seq_scans(conn, "ev_default")
        ok(cli(*d, "resume", str(_last_job(conn))))
        assert _seq_scans(conn, "ev_default") == scans
        w.run_for(0.3)
    finally:
        w.stop()
    print("beside the DEFAULT:", w.summary())
    w.verify(conn)
    assert w.ops.get("move", 0) > 5, w.summary()
    assert_short_waits(w)
    b = bounds(conn, "ev")
    assert b["ev_jan_b"] == ("FOR VALUES FROM ('2026-01-15 00:00:00+00') TO "
                             "('2026-02-01 00:00:00+00')")
    assert b["ev_w2026_02_01"] == ("FOR VALUES FROM ('2026-02-01 00:00:00+00') TO "
                                   "('2026-02-08 00:00:00+00')")
    assert b["ev_default"] == "DEFAULT" and len(b) == 5, b
    assert one(conn, "SELECT count(*) FROM ev_default") == in_default
    assert _span_checks(conn) == 0  # dropped after each swap
    assert one(conn, "SELECT count(*) FROM pg_class WHERE relname LIKE '%%pgcleave%%'"
                     " AND relnamespace = 'public'::regnamespace") == 0


def test_reslice_beside_a_default_and_dry_run_shows_the_check(db: Any, conn: Any,
                                                              cli: Any) -> None:
    _with_default(conn, 3000)
    d = ("--dsn", db.dsn)
    r = ok(cli(*d, "split", "ev_p2026_01", "--interval", "1 week", "--dry-run"))
    out = r.stdout
    # the CHECK and its validation, each with the lock it takes, before the copy
    add = out.index('ALTER TABLE "public"."ev_default" ADD CONSTRAINT "pgcleave_span_')
    assert "NOT VALID;" in out[add:add + 300]
    head = out.rindex("-- step", 0, add)
    assert "locks: ACCESS EXCLUSIVE on ev_default (brief, no scan)" in out[head:add]
    val = out.index('ALTER TABLE "public"."ev_default" VALIDATE CONSTRAINT "pgcleave_span_')
    head = out.rindex("-- step", 0, val)
    assert "locks: SHARE UPDATE EXCLUSIVE on ev_default" in out[head:val]
    assert add < val < out.index("[carve-prepare]")
    assert 'DROP CONSTRAINT IF EXISTS "pgcleave_span_' in out[out.index("[carve-drop-old]"):]
    m = ok(cli(*d, "merge", "ev_p2026_02_01", "ev_p2026_02_02", "--dry-run")).stdout
    assert m.index("[merge-exclude-default]") < m.index("[merge-validate-default]") \
        < m.index("[merge-prepare]")
    plan = plan_reslice(conn, "ev", interval="1 month")
    assert [b["kind"] for b in plan.args["batches"]] == ["merge"]
    assert any("DEFAULT ev_default" in n for n in plan.notes)
    w = Workload(db.dsn, Spec(**{**_spec().__dict__, "prune_by_key": True}), writers=3,
                 max_seconds=60, server_log=db.server.logfile).start()
    try:
        w.run_for(0.3)
        _killed(cli, d, ["reslice", "ev", "--interval", "1 month"], "merge-exclude-default:1")
        ok(cli(*d, "resume", str(_last_job(conn))))
        w.run_for(0.2)
    finally:
        w.stop()
    w.verify(conn)
    assert_short_waits(w)
    assert bounds(conn, "ev") == {
        "ev_p2026_01": "FOR VALUES FROM ('2026-01-01 00:00:00+00') TO "
                       "('2026-02-01 00:00:00+00')",
        "ev_p2026_02": "FOR VALUES FROM ('2026-02-01 00:00:00+00') TO "
                       "('2026-03-01 00:00:00+00')",
        "ev_default": "DEFAULT"}
    assert _span_checks(conn) == 0


COUNTRIES = ["RU", "US", "GB", "FR", "DE"]


def _orders(conn: Any) -> None:
    """``orders`` by list(country), a nullable key: five countries in one partition (its
    own primary key), NULL in another, a DEFAULT holding the rest."""
    conn.execute("CREATE TABLE orders (id bigserial, country text, payload text)"
                 " PARTITION BY LIST (country)")
    conn.execute("CREATE INDEX orders_id ON orders (id)")
    conn.execute("CREATE TABLE orders_main PARTITION OF orders FOR VALUES IN"
                 " ('RU', 'US', 'GB', 'FR', 'DE')")
    conn.execute("ALTER TABLE orders_main ADD PRIMARY KEY (id, country)")
    conn.execute("CREATE TABLE orders_none PARTITION OF orders FOR VALUES IN (NULL)")
    conn.execute("CREATE TABLE orders_other PARTITION OF orders DEFAULT")
    conn.execute("INSERT INTO orders (country, payload) SELECT (ARRAY['RU', 'US', 'GB', 'FR',"
                 " 'DE', 'BR', 'JP'])[1 + i %% 7], 'p' || i FROM generate_series(1, %s) i",
                 [4000])
    conn.execute("ANALYZE orders")


def _orders_spec() -> Spec:
    return Spec(table=sql.Identifier("public", "orders"), key_col="country",
                make_key=lambda r: r.choice(COUNTRIES), prune_by_key=True)


def test_list_split_and_merge_beside_a_default_under_writers(db: Any, conn: Any,
                                                             cli: Any) -> None:
    """One list partition becomes one per --values group plus one keeping the values no
    group names (it keeps the partition's name); then two of them merge again."""
    _orders(conn)
    d = ("--dsn", db.dsn)
    ex = Executor(Settings(dsn=db.dsn))
    others = one(conn, "SELECT count(*) FROM orders_other")
    digest = one(conn, "SELECT sum(hashtextextended(t::text, 0)) FROM orders t")
    argv = ["split", "orders_main", "--values", "RU", "--values", "US,GB"]
    # killed after its swap: rollback is refused (the swap is done), resume finishes
    _killed(cli, d, argv, "carve-swap")
    with pytest.raises(PgcleaveError, match="resume"):
        ex.rollback(_last_job(conn))
    ex.resume(_last_job(conn))
    assert one(conn, "SELECT sum(hashtextextended(t::text, 0)) FROM orders t") == digest
    b = bounds(conn, "orders")
    assert b["orders_ru"] == "FOR VALUES IN ('RU')"
    assert b["orders_us_gb"] == "FOR VALUES IN ('US', 'GB')"
    assert b["orders_main"] == "FOR VALUES IN ('FR', 'DE')"
    # and merged again, then split again, under writers
    scans = _seq_scans(conn, "orders_other")
    w = Workload(db.dsn, _orders_spec(), writers=4, max_seconds=60,
                 server_log=db.server.logfile).start()
    try:
        w.run_for(0.3)
        ok(cli(*d, "merge", "orders_ru", "orders_us_gb", "orders_main", "--name", "orders_eu",
               "--yes"))
        w.run_for(0.2)
        s = ok(cli(*d, "split", "orders_eu", "--values", "DE", "--names", "orders_de",
                   "--yes"))
        w.run_for(0.3)
    finally:
        w.stop()
    print("list:", w.summary())
    print(s.stderr[-1200:])
    for _, steps in step_timings(conn, "public.orders")[1:]:  # what each step held, in ms
        print([(t.name, round(t.held_ms or 0)) for t in steps])
    w.verify(conn)
    assert w.ops.get("move", 0) > 5, w.summary()
    assert_short_waits(w)
    b = bounds(conn, "orders")
    assert b["orders_de"] == "FOR VALUES IN ('DE')"
    assert sorted(b["orders_eu"][len("FOR VALUES IN ("):-1].split(", ")) == [
        "'FR'", "'GB'", "'RU'", "'US'"]
    assert b["orders_none"] == "FOR VALUES IN (NULL)" and b["orders_other"] == "DEFAULT"
    # two validations of the DEFAULT (one per job), nothing else scanned it
    assert _seq_scans(conn, "orders_other") == scans + 2
    assert one(conn, "SELECT count(*) FROM orders_other") == others
    assert _span_checks(conn) == 0


def test_list_split_refusals_change_nothing(db: Any, conn: Any) -> None:
    _orders(conn)
    for kw, said in (({"values": [["BR"]]}, "not all of them are values of"),
                     ({"values": [["RU", "US", "GB", "FR", "DE"]]}, "already is the partition"),
                     ({"values": [["RU"], ["RU", "US"]]}, "overlap"),
                     ({"at": ["RU"]}, "--at and --interval cut ranges"),
                     ({}, "give the values of each new partition"),
                     ({"values": [["RU"]], "names": ["a", "b"]}, "--name")):
        with pytest.raises(Refused, match=said):
            plan_split(conn, "orders_main", **kw)
    dry = plan_split(conn, "orders_main", values=[["RU"]]).render_sql()
    check = dry.index('ALTER TABLE "public"."orders_other" ADD CONSTRAINT "pgcleave_span_')
    assert "NOT VALID" in dry[check:dry.index("\n", check)]
    assert "locks: SHARE UPDATE EXCLUSIVE on orders_other" in dry
    assert 'ALTER TABLE "public"."orders_other" VALIDATE CONSTRAINT "pgcleave_span_' in dry
    with pytest.raises(Refused, match="--values groups list values"):
        _ev(conn, 10)
        plan_split(conn, "ev_p2026_01", values=[["x"]])
    assert one(conn, "SELECT to_regclass('pgcleave.jobs') IS NULL")


def _two_levels(conn: Any) -> None:
    conn.execute("CREATE TABLE tl (id bigserial, region text NOT NULL, d date NOT NULL,"
                 " payload text, PRIMARY KEY (id, region, d)) PARTITION BY LIST (region)")
    conn.execute("CREATE TABLE tl_eu PARTITION OF tl FOR VALUES IN ('eu') PARTITION BY RANGE (d)")
    conn.execute("CREATE TABLE tl_us PARTITION OF tl FOR VALUES IN ('us')")
    conn.execute("CREATE TABLE tl_eu_2026 PARTITION OF tl_eu FOR VALUES FROM ('2026-01-01') TO"
                 " ('2026-03-01')")
    conn.execute("CREATE TABLE tl_eu_2026_03 PARTITION OF tl_eu FOR VALUES FROM ('2026-03-01')"
                 " TO ('2026-04-01')")
    conn.execute("CREATE TABLE tl_eu_rest PARTITION OF tl_eu DEFAULT")
    conn.execute("INSERT INTO tl (region, d, payload) SELECT (ARRAY['eu', 'us'])[1 + i % 2],"
                 " date '2026-01-01' + i % 120, 'p' || i FROM generate_series(1, 3000) i")
    conn.execute("ANALYZE tl")


def test_leaves_of_a_two_level_table_under_writers(db: Any, conn: Any, cli: Any) -> None:
    """Partitions of a sub-partitioned branch split and merge (their parent is the branch,
    which has a DEFAULT of its own) while writers write through the top table."""
    _two_levels(conn)
    d = ("--dsn", db.dsn)
    jan = date(2026, 1, 1)
    spec = Spec(table=sql.Identifier("public", "tl"), key_col="d",
                make_key=lambda r: jan + timedelta(days=r.randrange(0, 90)),
                extra={"region": lambda r: "eu"}, prune_by_key=True)
    # the branch itself re-cuts too (tests/test_reslice_branch.py), but not into itself, nor
    # merged with a plain partition
    with pytest.raises(Refused, match="already is the partition"):
        plan_split(conn, "tl_eu", values=[["eu"]])
    with pytest.raises(Refused, match="themselves partitioned"):
        plan_merge(conn, ["tl_eu", "tl_us"])
    w = Workload(db.dsn, spec, writers=3, max_seconds=60, server_log=db.server.logfile).start()
    try:
        w.run_for(0.3)
        ok(cli(*d, "split", "tl_eu_2026", "--at", "2026-02-01", "--names", "tl_eu_01,tl_eu_02",
               "--yes"))
        w.run_for(0.2)
        ok(cli(*d, "merge", "tl_eu_02", "tl_eu_2026_03", "--name", "tl_eu_02_03", "--yes"))
        w.run_for(0.3)
    finally:
        w.stop()
    print("two levels:", w.summary())
    w.verify(conn)
    assert w.ops.get("move", 0) > 5, w.summary()
    assert_short_waits(w)
    assert bounds(conn, "tl_eu") == {
        "tl_eu_01": "FOR VALUES FROM ('2026-01-01') TO ('2026-02-01')",
        "tl_eu_02_03": "FOR VALUES FROM ('2026-02-01') TO ('2026-04-01')",
        "tl_eu_rest": "DEFAULT"}
    assert one(conn, "SELECT count(*) FROM tl_eu_rest") > 0 and _span_checks(conn) == 0


def test_split_merge_reslice_as_the_owner_with_a_password(app: Any, db: Any,  # noqa: F811
                                                            cli: Any) -> None:
    """No superuser: the role owns the table and logs in with a password."""
    with app.connect() as c:
        assert one(c, "SELECT NOT rolsuper FROM pg_roles WHERE rolname = current_user")
        _with_default(c, 3000)
        assert one(c, "SELECT relowner::regrole::text FROM pg_class WHERE oid = 'ev'::regclass"
                   ) == ROLE
        d = ("--dsn", app.dsn)
        w = Workload(app.dsn, Spec(**{**_spec().__dict__, "prune_by_key": True}), writers=3,
                     max_seconds=60, server_log=db.server.logfile).start()
        try:
            w.run_for(0.3)
            ok(cli(*d, "split", "ev_rest", "--interval", "1 week", "--yes"))
            w.run_for(0.2)
            ok(cli(*d, "merge", "ev_p2026_02_01", "ev_p2026_02_02", "--yes"))
            w.run_for(0.2)
            ok(cli(*d, "reslice", "ev", "--interval", "1 month", "--yes"))
            w.run_for(0.2)
        finally:
            w.stop()
        print("as the owner:", w.summary())
        w.verify(c)
        assert_short_waits(w)
        assert set(bounds(c, "ev")) == {"ev_p2026_01", "ev_p2026_02", "ev_default"}
        assert one(c, "SELECT count(*) FROM pgcleave.jobs WHERE state <> 'done'") == 0


def test_list_groups_with_null_keep_every_row(db: Any, conn: Any) -> None:
    """A group of NULL alone, another of two values, the rest staying: every row kept, each
    where its key says."""
    conn.execute("CREATE TABLE lv (id int, k text) PARTITION BY LIST (k)")
    conn.execute("CREATE TABLE lv_all PARTITION OF lv FOR VALUES IN ('a', 'b', 'c', 'd', NULL)")
    conn.execute("ALTER TABLE lv_all ADD PRIMARY KEY (id)")
    conn.execute("CREATE TABLE lv_x PARTITION OF lv FOR VALUES IN ('x')")
    conn.execute("INSERT INTO lv SELECT i, (ARRAY['a', 'b', 'c', 'd', NULL, 'x'])[1 + i % 6]"
                 " FROM generate_series(1, 600) i")
    groups = [["NULL"], ["a", "d"]]
    ex = Executor(Settings(dsn=db.dsn))
    ex.run(plan_split(conn, "lv_all", values=groups, names=["lv_g1", "lv_g2"]))
    assert one(conn, "SELECT count(*) FROM lv") == 600
    for part in ("lv_g1", "lv_g2", "lv_all"):
        assert one(conn, sql.SQL("SELECT count(*) FROM {} t WHERE tableoid <> {}::regclass")
                   .format(sql.Identifier(part), sql.Literal(part))) == 0
    assert one(conn, "SELECT count(*) FROM lv_g1") == 100
    assert one(conn, "SELECT count(*) FROM lv_all") == 200


@pytest.mark.parametrize("layout", ["range", "list"])
def test_a_default_refused_with_the_carve_that_does_the_job(db: Any, conn: Any, cli: Any,
                                                            layout: str) -> None:
    """A DEFAULT has no bound to split or merge: refused before anything changes, with the
    command that moves its rows out instead, for the table's kind of partitions (a list
    table's carve takes --values, a range table's --from/--to); run as the hint says, it
    moves them into a partition of their own."""
    if layout == "range":
        _with_default(conn, 500)
        default, table, values = "ev_default", "ev", ["2026-03-01 00:00+00", "2026-04-01 00:00+00"]
    else:
        _orders(conn)
        default, table, values = "orders_other", "orders", ["BR,JP"]
    rows = one(conn, f"SELECT count(*) FROM {default}")
    assert rows > 0
    for refuse in (lambda: plan_split(conn, default, interval="1 day"),
                   lambda: plan_merge(conn, [default, next(n for n in bounds(conn, table)
                                                          if n != default)])):
        with pytest.raises(Refused, match="DEFAULT partition") as e:
            refuse()
        hint = e.value.hint or ""
        assert hint.startswith("move rows out of it"), hint
    command = hint.split("pgcleave ", 1)[1].split(";")[0].split()
    assert command[:2] == ["carve", table], hint
    given = ["--from", values[0], "--to", values[1]] if layout == "range" else ["--values",
                                                                               values[0]]
    assert [a for a in command[2:] if a.startswith("--")] == given[::2], hint
    ok(cli("--dsn", db.dsn, *command[:2], *given, "--name", f"{table}_carved", "--yes"))
    assert one(conn, f"SELECT count(*) FROM {table}_carved") == rows
    assert one(conn, f"SELECT count(*) FROM {default}") == 0
