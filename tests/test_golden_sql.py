"""Golden SQL: the dry-run text (``Plan.render_sql()``) of every operation's planner, on small
fixed schemas, compared with ``tests/golden/<name>.sql``.

A change to what an operation would run shows up as a diff of these files in review.
Regenerate them after an intended change with

    PGCLEAVE_GOLDEN_UPDATE=1 .venv/bin/pytest tests/test_golden_sql.py

Values that differ from run to run (OIDs, database names, ports, DSNs, archive paths, random
tags) are replaced by placeholders in ``normalize``; time-based plans get fixed dates far in
the past (an explicit ``cutoff`` or ``now``), so nothing depends on today's date.
"""

from __future__ import annotations

import difflib
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgcleave.connection import Settings
from pgcleave.execute import Executor
from pgcleave.ops import (
    alter,
    carve,
    copy,
    keys,
    maintain,
    merge,
    move,
    partition,
    reslice,
    retention,
)
from pgcleave.ops.config import plan_config
from pgcleave.ops.drop_partition import plan_drop_partition
from pgcleave.plan import Plan
from tests.test_move import make_table as make_sharded_table

# The golden files are the SQL PostgreSQL 15 servers give back (pg_get_viewdef, for one, prints
# a view's columns unqualified from 16 on): the tier runs on 15 only.
GOLDEN_PG = 15


@pytest.fixture(autouse=True)
def _golden_version(pg_version: int) -> None:
    if pg_version != GOLDEN_PG:
        pytest.skip(f"golden SQL is recorded on PostgreSQL {GOLDEN_PG}; this server is "
                    f"{pg_version} (pg_get_viewdef and other deparsed SQL differ by version)")

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("PGCLEAVE_GOLDEN_UPDATE") == "1"

# A fixed "now", long ago, for the planners that take one.
NOW = datetime(2001, 3, 10, 12, 0, tzinfo=UTC)

_GENERIC: list[tuple[re.Pattern[str], str]] = [
    # a test database (conftest: "t_" + 12 hex digits) not given by name
    (re.compile(r"\bt_[0-9a-f]{12}\b"), "<db>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<uuid>"),
    # random tags (uuid4().hex)
    (re.compile(r"(?<![0-9A-Za-z])[0-9a-f]{32}(?![0-9A-Za-z])"), "<tag>"),
    # advisory lock keys (derived from OIDs)
    (re.compile(r"(pg_advisory_\w*lock\w*\(|\"advisory\": )\d+"), r"\1<lock>"),
    (re.compile(r"postgresql://[^\s'\"]+"), "<dsn>"),
    (re.compile(r"(\bport\s*=\s*'?|\bport ')\d+"), r"\1<port>"),
]


GOLDEN_MAJOR = 15


@pytest.fixture(autouse=True)
def _golden_server(sandbox: Any) -> None:
    """The golden files hold the SQL planned against PostgreSQL 15. Other versions plan other
    SQL for the same schema, legitimately: the server deparses views differently (18 leaves
    column names unqualified) and on 17+ a cut-over hands an identity over to the partitioned
    table (see ddl/identity.py). Compared on 15 only, never loosened there."""
    with psycopg.connect(sandbox.servers[0].dsn) as c:
        major = c.info.server_version // 10000
    if major != GOLDEN_MAJOR:
        pytest.skip(f"golden SQL was recorded on PostgreSQL {GOLDEN_MAJOR}; this server is "
                    f"{major}, whose planned SQL legitimately differs (view deparsing, identity "
                    "hand-over on 17+)")


def normalize(text: str, **known: Any) -> str:
    """``text`` with each value of ``known`` replaced by ``<key>`` (longest value first; a whole
    number only where no other digit or letter touches it, so OID 16390 also goes in
    ``carve_16390_log`` but not in 163901), then the generic run-to-run values: database
    names, uuids, hex tags, advisory lock keys, DSNs, ports."""
    pairs = sorted(((str(v), k) for k, v in known.items() if v is not None and str(v)),
                   key=lambda p: -len(p[0]))
    for value, key in pairs:
        if value.isdigit():
            text = re.sub(rf"(?<![0-9A-Za-z]){value}(?![0-9A-Za-z])", f"<{key}>", text)
        else:
            text = text.replace(value, f"<{key}>")
    for pattern, repl in _GENERIC:
        text = pattern.sub(repl, text)
    return text


def known_values(conn: Any, *dbs: Any) -> dict[str, Any]:
    """What ``normalize`` must hide for these databases: every user relation's OID (as
    ``oid:schema.name``), and each database's name, DSN and host:port (``db``, ``dsn``,
    ``host:port`` for the first, ``db2``, ``dsn2``, ``host:port2`` for the next)."""
    known: dict[str, Any] = {}
    for oid, nsp, rel in conn.execute(
            "SELECT c.oid::bigint, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'pg_toast',"
            " 'information_schema') AND n.nspname NOT LIKE 'pg_temp%'"):
        known[f"oid:{nsp}.{rel}"] = oid
    for i, d in enumerate(dbs):
        n = "" if i == 0 else str(i + 1)
        known[f"dsn{n}"] = d.dsn
        known[f"db{n}"] = d.name
        known[f"host:port{n}"] = f"{d.server.host}:{d.server.port}"
    return known


def check_golden(name: str, plan: Plan, conn: Any, *dbs: Any, **extra: Any) -> None:
    """Compare the plan's dry run, normalized, with tests/golden/<name>.sql (or write it when
    PGCLEAVE_GOLDEN_UPDATE=1)."""
    text = normalize(plan.render_sql(), **known_values(conn, *dbs), **extra)
    path = GOLDEN / f"{name}.sql"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
        return
    if not path.exists():
        pytest.fail(f"missing golden file {path}; create it with "
                    "PGCLEAVE_GOLDEN_UPDATE=1 .venv/bin/pytest tests/test_golden_sql.py",
                    pytrace=False)
    expected = path.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(
            expected.splitlines(keepends=True), text.splitlines(keepends=True),
            fromfile=f"tests/golden/{name}.sql", tofile=f"{name} (this run)"))
        pytest.fail(f"the SQL of {name} differs from its golden file (regenerate with "
                    f"PGCLEAVE_GOLDEN_UPDATE=1 if intended):\n{diff}", pytrace=False)


def run(db: Any, plan: Plan) -> None:
    Executor(Settings(dsn=db.dsn)).run(plan)


# -- fixture schemas -------------------------------------------------------------------------------
def event_log(conn: Any) -> None:
    """Odd identifiers: a schema and table with capitals and spaces, a timestamptz key."""
    conn.execute("""
        CREATE SCHEMA "App Data";
        CREATE TABLE "App Data"."Event Log" (
            id bigint GENERATED BY DEFAULT AS IDENTITY,
            "Created At" timestamptz NOT NULL,
            note text,
            PRIMARY KEY (id, "Created At"));
        CREATE INDEX "Event Log by time" ON "App Data"."Event Log" ("Created At");
        INSERT INTO "App Data"."Event Log" ("Created At", note)
            SELECT timestamptz '2001-01-01 00:00+00' + i * interval '7 hours', 'n' || i
            FROM generate_series(1, 200) i;
        ANALYZE "App Data"."Event Log";
    """)


def orders(conn: Any) -> None:
    """A text list key, a serial id, a view and a grant-free check constraint."""
    conn.execute("""
        CREATE TABLE orders (id serial PRIMARY KEY, region text NOT NULL, total int,
                             CONSTRAINT total_positive CHECK (total > 0));
        CREATE INDEX orders_region ON orders (region);
        CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;
        INSERT INTO orders (region, total)
            SELECT (ARRAY['eu', 'us', 'ap'])[1 + i % 3], i FROM generate_series(1, 90) i;
        ANALYZE orders;
    """)


def ledger(conn: Any) -> None:
    """An integer key, for the copy strategy (its ranges follow the largest key, not today)."""
    conn.execute("""
        CREATE TABLE ledger (id bigint PRIMARY KEY, account int NOT NULL, amount numeric);
        CREATE INDEX ledger_account ON ledger (account);
        INSERT INTO ledger SELECT i, i % 7, i * 1.5 FROM generate_series(1, 2500) i;
        ANALYZE ledger;
    """)


def metrics(conn: Any) -> None:
    """Range on an integer key, one partition and a DEFAULT holding rows of later ranges."""
    conn.execute("""
        CREATE TABLE "Metrics" (k int NOT NULL, v text, PRIMARY KEY (k)) PARTITION BY RANGE (k);
        CREATE TABLE "Metrics_0" PARTITION OF "Metrics" FOR VALUES FROM (0) TO (100);
        CREATE TABLE "Metrics_default" PARTITION OF "Metrics" DEFAULT;
        INSERT INTO "Metrics" SELECT i, 'v' || i FROM generate_series(0, 299) i;
        ANALYZE "Metrics";
    """)


def monthly(conn: Any) -> None:
    """Monthly date partitions in 2001, no parent key (for the keys planners)."""
    conn.execute("CREATE TABLE r (id int NOT NULL, d date NOT NULL, ref int, v text)"
                 " PARTITION BY RANGE (d)")
    for m in range(1, 5):
        conn.execute(f"CREATE TABLE r_{m:02d} PARTITION OF r FOR VALUES FROM "
                     f"('2001-{m:02d}-01') TO ('2001-{m + 1:02d}-01')")
    conn.execute("INSERT INTO r SELECT i, date '2001-01-01' + (i % 120), i % 5, 'x'"
                 " FROM generate_series(1, 400) i; ANALYZE r")


# -- partition -------------------------------------------------------------------------------------
def test_partition_legacy(db: Any, conn: Any) -> None:
    event_log(conn)
    plan = partition.plan_partition(conn, '"App Data"."Event Log"', by='range("Created At")',
                                    interval="1 month", premake=2, strategy="legacy",
                                    cutoff="2001-03-01 00:00:00+00")
    check_golden("partition_legacy", plan, conn, db)


def test_partition_default(db: Any, conn: Any) -> None:
    orders(conn)
    plan = partition.plan_partition(conn, "orders", by="list(region)", strategy="default")
    check_golden("partition_default", plan, conn, db)


def test_partition_copy(db: Any, conn: Any) -> None:
    ledger(conn)
    plan = copy.plan_partition_copy(conn, "ledger", by="range(id)", interval="1000", premake=2)
    check_golden("partition_copy", plan, conn, db)


def test_unpartition(db: Any, conn: Any) -> None:
    orders(conn)
    run(db, partition.plan_partition(conn, "orders", by="list(region)", strategy="default"))
    check_golden("unpartition", partition.plan_unpartition(conn, "orders"), conn, db)


def test_add_partition(db: Any, conn: Any) -> None:
    metrics(conn)
    plan = partition.plan_add_partition(conn, '"Metrics"', lower="300", upper="400")
    check_golden("add_partition", plan, conn, db)


def test_drop_partition(db: Any, conn: Any) -> None:
    metrics(conn)
    run(db, partition.plan_add_partition(conn, '"Metrics"', lower="300", upper="400",
                                         name="Metrics 300"))
    check_golden("drop_partition", plan_drop_partition(conn, '"Metrics"', "Metrics 300"), conn,
                 db)


def test_add_partition_check(db: Any, conn: Any) -> None:
    metrics(conn)
    plan = partition.plan_add_partition(conn, '"Metrics"', lower="300", upper="400",
                                        method="check")
    check_golden("add_partition_check", plan, conn, db)


# -- carve -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["direct", "swap"])
def test_carve(db: Any, conn: Any, method: str) -> None:
    metrics(conn)
    plan = carve.plan_carve(conn, '"Metrics"', [("100", "200")], method=method)
    check_golden(f"carve_{method}", plan, conn, db)


# -- split, merge, reslice ------------------------------------------------------------------------
def days(conn: Any) -> None:
    """January 2001 as one partition, February's first three days as days, then the rest."""
    conn.execute("CREATE TABLE s (id int NOT NULL, d date NOT NULL, v text, PRIMARY KEY (id, d))"
                 " PARTITION BY RANGE (d)")
    conn.execute("CREATE TABLE s_01 PARTITION OF s FOR VALUES FROM ('2001-01-01') TO "
                 "('2001-02-01')")
    for n in range(1, 4):
        conn.execute(f"CREATE TABLE s_02_0{n} PARTITION OF s FOR VALUES FROM ('2001-02-0{n}')"
                     f" TO ('2001-02-0{n + 1}')")
    conn.execute("CREATE TABLE s_02_rest PARTITION OF s FOR VALUES FROM ('2001-02-04') TO "
                 "('2001-03-01')")
    conn.execute("INSERT INTO s SELECT i, date '2001-01-01' + (i % 59), 'x'"
                 " FROM generate_series(1, 300) i; ANALYZE s")


def test_split_merge_reslice(db: Any, conn: Any) -> None:
    days(conn)
    check_golden("split", reslice.plan_split(conn, "s_01", interval="1 week"), conn, db)
    check_golden("merge", merge.plan_merge(conn, ["s_02_01", "s_02_02", "s_02_03"],
                                           name="s_02_w1"), conn, db)
    check_golden("reslice", reslice.plan_reslice(conn, "s", interval="1 month"), conn, db)


# -- the copy commands, one after the other --------------------------------------------------------
def test_copy_prep_fill_swap(db: Any, conn: Any) -> None:
    ledger(conn)
    prep = copy.plan_prep(conn, "ledger", by="id", interval="1000", past=0, future=2)
    check_golden("copy_prep", prep, conn, db)
    run(db, prep)
    fill = copy.plan_fill(conn, "ledger", batch_size=500, order="key")
    check_golden("copy_fill", fill, conn, db)
    run(db, fill)
    check_golden("copy_swap", copy.plan_swap(conn, "ledger"), conn, db)


# -- keys ------------------------------------------------------------------------------------------
def test_set_primary_key(db: Any, conn: Any) -> None:
    monthly(conn)
    check_golden("set_primary_key", keys.plan_set_primary_key(conn, "r", ["id", "d"]), conn, db)


def test_create_index(db: Any, conn: Any) -> None:
    monthly(conn)
    plan = keys.plan_create_index(conn, "r", ["ref", "d"], name="r by ref")
    check_golden("create_index", plan, conn, db)


def test_add_foreign_key(db: Any, conn: Any) -> None:
    monthly(conn)
    conn.execute("CREATE TABLE refs (id int PRIMARY KEY);"
                 " INSERT INTO refs SELECT generate_series(0, 4)")
    plan = keys.plan_add_foreign_key(conn, "r", ["ref"], "refs", name="r_ref_fk",
                                     on_delete="restrict")
    check_golden("add_foreign_key", plan, conn, db)


def test_drop_index(db: Any, conn: Any) -> None:
    monthly(conn)
    conn.execute("CREATE INDEX r_v ON r (v)")
    check_golden("drop_index", keys.plan_drop_index(conn, "r_v"), conn, db)


# -- policy and maintenance ------------------------------------------------------------------------
def test_config(db: Any, conn: Any) -> None:
    monthly(conn)
    plan, _ = plan_config(conn, "r", interval="1 month", premake=2, retention="2 months",
                          retention_action="drop")
    check_golden("config", plan, conn, db)


def test_maintain_premake(db: Any, conn: Any) -> None:
    monthly(conn)
    run(db, plan_config(conn, "r", interval="1 month", premake=3)[0])
    plan, _ = maintain.plan_maintain(conn, "r", now=NOW)
    check_golden("maintain_premake", plan, conn, db)


def test_retention_archive_and_restore(db: Any, conn: Any, tmp_path: Path) -> None:
    monthly(conn)
    run(db, plan_config(conn, "r", interval="1 month", premake=0, retention="2 months",
                        retention_action="archive", archive_dir=str(tmp_path))[0])
    # two months before 2001-04-10: January is past retention, February not yet
    plan, _ = maintain.plan_maintain(conn, "r", now=datetime(2001, 4, 10, tzinfo=UTC))
    check_golden("maintain_retention", plan, conn, db, archive_dir=tmp_path)
    run(db, plan)
    manifest = tmp_path / "public.r_01.json"
    restore = retention.plan_restore(conn, str(manifest))
    check_golden("restore", restore, conn, db, archive_dir=tmp_path)


# -- two servers -----------------------------------------------------------------------------------
@pytest.fixture
def sharded(db: Any, db2: Any, conn: Any, cli: Any) -> Any:
    make_sharded_table(conn, rows=40)
    r = cli("--dsn", db.dsn, "server", "add", "db2", "--dsn", db2.dsn, "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    return conn


def test_move_out(db: Any, db2: Any, sharded: Any) -> None:
    plan = move.plan_move(sharded, '"Ex d"', to="db2", drop_source=True)
    check_golden("move_out", plan, sharded, db, db2)


def test_alter_with_a_remote_partition(db: Any, db2: Any, sharded: Any) -> None:
    run(db, move.plan_move(sharded, '"Ex d"', to="db2", drop_source=True))
    plan = alter.plan_alter(sharded, '"Ex"', 'ADD COLUMN "Due On" date')
    check_golden("alter", plan, sharded, db, db2)
