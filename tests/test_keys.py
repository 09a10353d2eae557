"""Keys, indexes and foreign keys of partitioned tables, changed online (issue 7, seed 004)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgcleave.names import parse_columns
from pgcleave.ops import keys
from pgcleave.testing.workload import Spec, Workload

START = datetime(2024, 1, 1, tzinfo=UTC)


def make_table(conn: Any, *, parts: int = 12, rows: int = 3000, table: str = "events",
               schema: str = "public", key_col: str = "created_at", nullable: bool = True,
               per_partition_pk: bool = True, default: bool = True) -> sql.Identifier:
    """The seed 004 shape: monthly range partitions, a primary key on (id) per partition,
    none on the parent; the partition key column nullable in the catalog."""
    t = sql.Identifier(schema, table)
    k = sql.Identifier(key_col)
    if schema != "public":
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("CREATE TABLE {} (id bigserial, {} timestamptz{}, payload text,"
                         " ref_id int) PARTITION BY RANGE ({})").format(
        t, k, sql.SQL("" if nullable else " NOT NULL"), k))
    for i in range(parts):
        lo, hi = _month(i), _month(i + 1)
        p = sql.Identifier(schema, f"{table}_p{i:02d}")
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})")
                     .format(p, t, sql.Literal(lo), sql.Literal(hi)))
        if per_partition_pk:
            conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(p))
    if default:
        p = sql.Identifier(schema, f"{table}_default")
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(p, t))
        if per_partition_pk:
            conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(p))
    span = (_month(parts) - START).total_seconds()
    conn.execute(sql.SQL("INSERT INTO {} ({}, payload, ref_id) SELECT {} + g * {} * interval"
                         " '1 second', 'seed', g % 10 FROM generate_series(0, {}) g").format(
        t, k, sql.Literal(START), sql.Literal(span / rows), sql.Literal(rows - 1)))
    return t


def _month(i: int) -> datetime:
    return datetime(2024 + i // 12, i % 12 + 1, 1, tzinfo=UTC)


def key_in(parts: int) -> Any:
    span = (_month(parts) - START).total_seconds()
    return lambda rng: START + timedelta(seconds=rng.uniform(0, span))


def constraint_cols(conn: Any, table: str, contype: str = "p") -> list[list[str]]:
    return [list(r[0]) for r in conn.execute(
        "SELECT (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM unnest(c.conkey)"
        " WITH ORDINALITY k(n, ord) JOIN pg_attribute a ON a.attrelid = c.conrelid"
        " AND a.attnum = k.n) FROM pg_constraint c WHERE c.conrelid = to_regclass(%s)"
        " AND c.contype = %s", [table, contype])]


def leaf_pks(conn: Any, table: str) -> dict[str, tuple[list[str], bool]]:
    """Each leaf's primary key columns and whether it is attached to the parent's key."""
    return {r[0]: (list(r[1]), r[2]) for r in conn.execute(
        "SELECT pt.relid::regclass::text, (SELECT array_agg(a.attname::text ORDER BY k.ord)"
        " FROM unnest(c.conkey) WITH ORDINALITY k(n, ord) JOIN pg_attribute a"
        " ON a.attrelid = c.conrelid AND a.attnum = k.n), c.conparentid <> 0"
        " FROM pg_partition_tree(to_regclass(%s)) pt JOIN pg_constraint c"
        " ON c.conrelid = pt.relid AND c.contype = 'p' WHERE pt.isleaf", [table])}


def schema_fingerprint(conn: Any) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT conrelid::regclass::text, conname, contype::text, convalidated FROM pg_constraint"
        " c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname NOT IN"
        " ('pg_catalog', 'information_schema', 'pgcleave') UNION ALL"
        " SELECT indrelid::regclass::text, indexrelid::regclass::text, 'i', indisvalid"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema',"
        " 'pg_toast', 'pgcleave') ORDER BY 1, 2, 3").fetchall()


def job_id(res: subprocess.CompletedProcess[str]) -> int:
    m = re.search(r"job (\d+)", res.stderr + res.stdout)
    assert m, res.stderr + res.stdout
    return int(m.group(1))


def ok(res: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


# -- set-primary-key ---------------------------------------------------------------------------
def test_seed_004_primary_key_with_writers(db: Any, conn: Any, cli: Any) -> None:
    """12 monthly partitions + DEFAULT with per-partition PRIMARY KEY (id) and a nullable
    created_at; four writers insert, update, delete and move rows across partitions while the
    parent gets PRIMARY KEY (id, created_at)."""
    t = make_table(conn, parts=12, rows=6000)
    wl = Workload(db.dsn, Spec(table=t, key_col="created_at", make_key=key_in(12)), writers=4)
    with wl:
        time.sleep(0.3)
        t0 = time.monotonic()
        res = ok(cli("--dsn", db.dsn, "set-primary-key", "events", "--columns",
                     "id,created_at", "--yes"))
        took = time.monotonic() - t0
        time.sleep(0.3)
    wl.verify(conn)
    print(f"\nseed 004 set-primary-key: {took * 1000:.0f} ms; {wl.summary()}")
    held = [int(x) for x in re.findall(r"ACCESS EXCLUSIVE held (\d+) ms", res.stderr)]
    print(f"longest ACCESS EXCLUSIVE hold reported: {max(held)} ms over {len(held)} steps")
    assert constraint_cols(conn, "events") == [["id", "created_at"]]
    pks = leaf_pks(conn, "events")
    assert len(pks) == 13
    assert all(cols == ["id", "created_at"] and attached for cols, attached in pks.values())
    # NOT NULL is in the catalog now, the helper CHECKs are gone, no index is left invalid.
    assert conn.execute("SELECT bool_and(attnotnull) FROM pg_partition_tree('events') pt JOIN"
                        " pg_attribute a ON a.attrelid = pt.relid AND a.attname ="
                        " 'created_at'").fetchone()[0]
    assert not conn.execute("SELECT 1 FROM pg_constraint WHERE contype = 'c'"
                            " AND conname LIKE 'pgcleave%'").fetchall()
    assert not conn.execute("SELECT 1 FROM pg_index WHERE NOT indisvalid").fetchall()
    assert ops_done(wl) > 50
    # A second run is a no-op: no job, nothing changed.
    before = schema_fingerprint(conn)
    res = ok(cli("--dsn", db.dsn, "set-primary-key", "events", "--columns", "id,created_at",
                 "--yes"))
    assert "nothing to do" in res.stdout
    assert schema_fingerprint(conn) == before


def ops_done(wl: Workload) -> int:
    return sum(wl.ops.values())


KILL_POINTS = ["nn-add:events_p00:created_at", "nn-validate:events_p01:created_at",
               "set-not-null:created_at", "nn-drop:events_p02:created_at",
               "build:events_p00", "swap:events_p01", "adopt:events"]


def test_kill_between_steps_resumes(db: Any, conn: Any, cli: Any) -> None:
    """SIGKILL after each kind of step (one table, killed again at every resume), then resume
    to the end; the result is the same as an uninterrupted run, and a rerun is a no-op."""
    make_table(conn, parts=3, rows=600, default=False)
    env = {"PGCLEAVE_FAULT": "kill-after:" + KILL_POINTS[0]}
    res = cli("--dsn", db.dsn, "set-primary-key", "events", "--columns", "id,created_at",
              "--yes", env=env)
    assert res.returncode == -9, res.stderr
    job = job_id(res)
    for point in KILL_POINTS[1:]:
        res = cli("--dsn", db.dsn, "resume", str(job),
                  env={"PGCLEAVE_FAULT": f"kill-after:{point}"})
        assert res.returncode == -9, f"{point}: {res.stderr}"
    ok(cli("--dsn", db.dsn, "resume", str(job)))
    assert constraint_cols(conn, "events") == [["id", "created_at"]]
    assert all(c == ["id", "created_at"] and a for c, a in leaf_pks(conn, "events").values())
    assert not conn.execute("SELECT 1 FROM pg_constraint WHERE contype = 'c'"
                            " AND conname LIKE 'pgcleave%'").fetchall()
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 600
    jobs = json.loads(ok(cli("--dsn", db.dsn, "jobs", "--json")).stdout)
    assert [j["state"] for j in jobs] == ["done"]
    res = ok(cli("--dsn", db.dsn, "set-primary-key", "events", "--columns", "id,created_at"))
    assert "nothing to do" in res.stdout


def test_keep_old_key_and_two_levels(db: Any, conn: Any, cli: Any) -> None:
    """Sub-partitions (range by month, then list by region): the key must include both
    partition keys; the old per-leaf key stays as a UNIQUE constraint with --keep-old-key."""
    conn.execute("CREATE TABLE m (id bigserial, created_at timestamptz, region text,"
                 " payload text) PARTITION BY RANGE (created_at)")
    for i in range(2):
        conn.execute(f"CREATE TABLE m_{i} PARTITION OF m FOR VALUES FROM ('{_month(i)}') TO"
                     f" ('{_month(i + 1)}') PARTITION BY LIST (region)")
        for r in ("eu", "us"):
            conn.execute(f"CREATE TABLE m_{i}_{r} PARTITION OF m_{i} FOR VALUES IN ('{r}')")
            conn.execute(f"ALTER TABLE m_{i}_{r} ADD PRIMARY KEY (id)")
    conn.execute("INSERT INTO m (created_at, region) SELECT %s::timestamptz + g * interval"
                 " '1 hour', CASE WHEN g %% 2 = 0 THEN 'eu' ELSE 'us' END"
                 " FROM generate_series(0, 1000) g", [START])
    res = cli("--dsn", db.dsn, "set-primary-key", "m", "--columns", "id,created_at", "--yes")
    assert res.returncode == 3 and "region" in res.stderr, res.stderr
    ok(cli("--dsn", db.dsn, "set-primary-key", "m", "--columns", "id,created_at,region",
           "--keep-old-key"))  # no warning with --keep-old-key, so no --yes needed
    assert constraint_cols(conn, "m") == [["id", "created_at", "region"]]
    assert constraint_cols(conn, "m_0") == [["id", "created_at", "region"]]
    for leaf in ("m_0_eu", "m_1_us"):
        assert constraint_cols(conn, leaf, "p") == [["id", "created_at", "region"]]
        assert constraint_cols(conn, leaf, "u") == [["id"]]


def test_refusals_change_nothing(db: Any, conn: Any, cli: Any) -> None:
    make_table(conn, parts=2, rows=100)
    conn.execute("CREATE TABLE plain (id int PRIMARY KEY)")
    before = schema_fingerprint(conn)
    cases = [
        (["set-primary-key", "nosuch", "--columns", "id"], "does not exist"),
        (["set-primary-key", "events", "--columns", "id,nosuch"], "no column"),
        (["set-primary-key", "events", "--columns", "id"], "must include its partition key"),
        (["set-primary-key", "plain", "--columns", "id"], "not a partitioned table"),
        (["create-index", "events", "payload", "--unique"], "must include its partition key"),
        (["create-index", "events", "payload", "--where", "nosuch > 1"], "not a valid"),
        (["add-foreign-key", "plain", "id", "REFERENCES", "events", "id"],
         "lacks the partition key"),
        (["drop-constraint", "events", "nosuch"], "has no constraint"),
        (["drop-index", "nosuch_idx"], "does not exist"),
        (["drop-index", "events_p00_pkey"], "backs constraint"),
    ]
    for args, msg in cases:
        res = cli("--dsn", db.dsn, *args, "--yes")
        assert res.returncode == 3, f"{args}: {res.returncode} {res.stderr}"
        assert msg in res.stderr, f"{args}: {res.stderr}"
    res = cli("--dsn", db.dsn, "set-primary-key", "events", "--columns", "id")
    assert "--columns id,created_at" in res.stderr
    assert schema_fingerprint(conn) == before
    assert not conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'pgcleave'").fetchall()


def test_refuses_foreign_partitions(db: Any, db2: Any, conn: Any, cli: Any) -> None:
    make_table(conn, parts=2, rows=100, per_partition_pk=False, default=False)
    with db2.connect() as c2:
        c2.execute("CREATE TABLE shard (id bigint, created_at timestamptz, payload text,"
                   " ref_id int)")
    port, name = db2.server.port, db2.name
    conn.execute("CREATE EXTENSION postgres_fdw")
    conn.execute(f"CREATE SERVER s2 FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host"
                 f" '127.0.0.1', port '{port}', dbname '{name}')")
    conn.execute("CREATE USER MAPPING FOR CURRENT_USER SERVER s2 OPTIONS (user 'postgres')")
    conn.execute(f"CREATE FOREIGN TABLE events_far PARTITION OF events FOR VALUES FROM"
                 f" ('{_month(2)}') TO ('{_month(3)}') SERVER s2 OPTIONS (table_name 'shard')")
    res = cli("--dsn", db.dsn, "set-primary-key", "events", "--columns", "id,created_at")
    assert res.returncode == 3 and "foreign" in res.stderr, res.stderr
    # create-index skips the foreign partition (noted in the plan) and still ends valid.
    res = ok(cli("--dsn", db.dsn, "create-index", "events", "payload", "--dry-run"))
    assert "foreign partitions are skipped" in res.stdout
    ok(cli("--dsn", db.dsn, "create-index", "events", "payload"))
    assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid ="
                        " 'events_payload_idx'::regclass").fetchone()[0]


def test_quoted_names(db: Any, conn: Any, cli: Any) -> None:
    make_table(conn, parts=2, rows=200, table="Order Items", schema="Sales",
               key_col="Created At")
    tname = '"Sales"."Order Items"'
    ok(cli("--dsn", db.dsn, "set-primary-key", tname, "--columns", 'id,"Created At"', "--yes"))
    assert constraint_cols(conn, tname) == [["id", "Created At"]]
    ok(cli("--dsn", db.dsn, "create-index", tname, '"Created At",payload', "--name",
           "Odd Index"))
    assert conn.execute("""SELECT indisvalid FROM pg_index WHERE indexrelid ="""
                        """ '"Sales"."Odd Index"'::regclass""").fetchone()[0]
    ok(cli("--dsn", db.dsn, "drop-index", '"Sales"."Odd Index"'))
    assert conn.execute("""SELECT to_regclass('"Sales"."Odd Index"')""").fetchone()[0] is None


# -- create-index -------------------------------------------------------------------------------
def test_create_index_online_with_writers(db: Any, conn: Any, cli: Any) -> None:
    t = make_table(conn, parts=10, rows=4000)
    wl = Workload(db.dsn, Spec(table=t, key_col="created_at", make_key=key_in(10)), writers=4)
    with wl:
        time.sleep(0.2)
        ok(cli("--dsn", db.dsn, "create-index", "events", "payload,created_at",
               "--where", "payload IS NOT NULL"))
        time.sleep(0.2)
    wl.verify(conn)
    print(f"\ncreate-index with writers: {wl.summary()}")
    row = conn.execute("SELECT indisvalid, pg_get_indexdef(indexrelid) FROM pg_index WHERE"
                       " indexrelid = 'events_payload_created_at_idx'::regclass").fetchone()
    assert row[0] and "WHERE (payload IS NOT NULL)" in row[1]
    n = conn.execute("SELECT count(*) FROM pg_inherits WHERE inhparent ="
                     " 'events_payload_created_at_idx'::regclass").fetchone()[0]
    assert n == 11
    before = schema_fingerprint(conn)
    res = ok(cli("--dsn", db.dsn, "create-index", "events", "payload,created_at",
                 "--where", "payload IS NOT NULL"))
    assert "nothing to do" in res.stdout and schema_fingerprint(conn) == before


def test_create_index_invalid_leftover_is_rebuilt(db: Any, conn: Any, cli: Any) -> None:
    """A concurrent build interrupted mid-way leaves an INVALID index (harmless unless unique:
    see the next test); resume rebuilds it."""
    make_table(conn, parts=3, rows=300, per_partition_pk=False, default=False)
    # Hold an old snapshot so the build of the first partition waits; cancel it there, as a
    # crash or an operator's pg_cancel_backend would.
    holder = db.connect(autocommit=False)
    holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    holder.execute("SELECT count(*) FROM pg_class").fetchone()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgcleave", "--dsn", db.dsn, "create-index", "events",
         "id,created_at"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if conn.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE"
                        " application_name = 'pgcleave:job' AND query LIKE 'CREATE"
                        " INDEX CONCURRENTLY%' AND wait_event_type = 'Lock'").fetchall():
            break
        time.sleep(0.05)
    _, stderr = proc.communicate(timeout=60)
    holder.rollback()
    holder.close()
    assert proc.returncode == 1, stderr
    job = job_id(subprocess.CompletedProcess([], 1, "", stderr))
    assert conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid AND indrelid ="
                        " 'events_p00'::regclass").fetchone()[0] == 1
    ok(cli("--dsn", db.dsn, "resume", str(job)))
    assert not conn.execute("SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
                            " WHERE NOT i.indisvalid AND c.relname LIKE 'events%'").fetchall()
    assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid ="
                        " 'events_id_created_at_idx'::regclass").fetchone()[0]


def test_create_index_two_levels(db: Any, conn: Any, cli: Any) -> None:
    conn.execute("CREATE TABLE m (id bigint, created_at timestamptz, region text)"
                 " PARTITION BY RANGE (created_at)")
    for i in range(2):
        conn.execute(f"CREATE TABLE m_{i} PARTITION OF m FOR VALUES FROM ('{_month(i)}') TO"
                     f" ('{_month(i + 1)}') PARTITION BY LIST (region)")
        for r in ("eu", "us"):
            conn.execute(f"CREATE TABLE m_{i}_{r} PARTITION OF m_{i} FOR VALUES IN ('{r}')")
    ok(cli("--dsn", db.dsn, "create-index", "m", "region,id"))
    rows = conn.execute("SELECT c.relname, i.indisvalid FROM pg_partition_tree("
                        "'m_region_id_idx') pt JOIN pg_index i ON i.indexrelid = pt.relid"
                        " JOIN pg_class c ON c.oid = pt.relid").fetchall()
    assert len(rows) == 7 and all(v for _, v in rows), rows


# -- foreign keys -------------------------------------------------------------------------------
def test_foreign_keys_from_and_to_partitioned(db: Any, conn: Any, cli: Any) -> None:
    make_table(conn, parts=4, rows=800)
    conn.execute("CREATE TABLE refs (id int PRIMARY KEY)")
    conn.execute("INSERT INTO refs SELECT generate_series(0, 9)")
    # From the partitioned table: per-partition NOT VALID + VALIDATE, then adopted.
    ok(cli("--dsn", db.dsn, "add-foreign-key", "events", "ref_id", "REFERENCES", "refs"))
    rows = conn.execute("SELECT conrelid::regclass::text, convalidated, conparentid <> 0"
                        " FROM pg_constraint WHERE conname = 'events_ref_id_fkey'"
                        " ORDER BY 1").fetchall()
    assert len(rows) == 6  # parent + 4 partitions + DEFAULT
    assert all(v for _, v, _ in rows)
    assert [r[0] for r in rows if not r[2]] == ["events"]
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute("INSERT INTO events (created_at, ref_id) VALUES (%s, 99)", [START])
    # To the partitioned table: needs its key, which must include the partition key.
    conn.execute("CREATE TABLE notes (id serial, event_id bigint, event_at timestamptz)")
    conn.execute("INSERT INTO notes (event_id, event_at) SELECT id, created_at FROM events"
                 " WHERE id % 7 = 0")
    res = cli("--dsn", db.dsn, "add-foreign-key", "notes", "event_id", "REFERENCES", "events",
              "id")
    assert res.returncode == 3 and "reference (id, created_at)" in res.stderr, res.stderr
    ok(cli("--dsn", db.dsn, "set-primary-key", "events", "--columns", "id,created_at", "--yes"))
    ok(cli("--dsn", db.dsn, "add-foreign-key", "notes", "event_id,event_at", "REFERENCES",
           "events(id,created_at)", "--name", "notes_event_fkey"))
    assert conn.execute("SELECT convalidated FROM pg_constraint WHERE conname ="
                        " 'notes_event_fkey'").fetchone()[0]
    res = ok(cli("--dsn", db.dsn, "add-foreign-key", "notes", "event_id,event_at", "REFERENCES",
                 "events(id,created_at)", "--name", "notes_event_fkey"))
    assert "nothing to do" in res.stdout
    # The parent key cannot be dropped while the foreign key needs it; then both drop.
    res = cli("--dsn", db.dsn, "drop-constraint", "events", "events_pkey", "--yes")
    assert res.returncode == 3 and "notes_event_fkey" in res.stderr, res.stderr
    ok(cli("--dsn", db.dsn, "drop-constraint", "notes", "notes_event_fkey"))
    ok(cli("--dsn", db.dsn, "drop-constraint", "events", "events_pkey", "--yes"))
    assert constraint_cols(conn, "events") == []
    assert leaf_pks(conn, "events") == {}


def test_foreign_key_on_the_parent_directly_where_the_server_allows(db: Any, conn: Any, cli: Any,
                                                                   pg_version: int) -> None:
    """PostgreSQL 18 accepts a NOT VALID foreign key on a partitioned table: one NOT VALID step
    and one VALIDATE on the parent; before 18, per partition, then the parent adopts them."""
    make_table(conn, parts=3, rows=300)
    conn.execute("CREATE TABLE refs (id int PRIMARY KEY)")
    conn.execute("INSERT INTO refs SELECT generate_series(0, 9)")
    plan = keys.plan_add_foreign_key(conn, "events", ["ref_id"], "refs", None)
    names = [s.name for s in plan.steps]
    if pg_version >= 18:
        assert names == ["fk-add:events", "fk-validate:events"], names
    else:
        assert names[-1] == "fk-adopt:events" and len(names) == 2 * 4 + 1, names
    ok(cli("--dsn", db.dsn, "add-foreign-key", "events", "ref_id", "REFERENCES", "refs"))
    assert conn.execute("SELECT bool_and(convalidated), count(*) FROM pg_constraint WHERE"
                        " conname = 'events_ref_id_fkey'").fetchone() == (True, 5)
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute("INSERT INTO events (created_at, ref_id) VALUES (%s, 99)", [START])


def test_fk_validation_does_not_block_writers(db: Any, conn: Any, cli: Any) -> None:
    t = make_table(conn, parts=6, rows=3000)
    conn.execute("CREATE TABLE refs (id int PRIMARY KEY)")
    conn.execute("INSERT INTO refs SELECT generate_series(0, 9)")
    wl = Workload(db.dsn, Spec(table=t, key_col="created_at", make_key=key_in(6),
                               extra={"ref_id": lambda rng: rng.randrange(10)}), writers=4)
    with wl:
        time.sleep(0.2)
        ok(cli("--dsn", db.dsn, "add-foreign-key", "events", "ref_id", "REFERENCES", "refs",
               "id"))
        time.sleep(0.2)
    wl.verify(conn)
    print(f"\nadd-foreign-key with writers: {wl.summary()}")


# -- plans (no server needed beyond the catalog) -------------------------------------------------
def test_plan_steps_carry_locks_guards_and_flags(conn: Any) -> None:
    make_table(conn, parts=2, rows=10)
    plan = keys.plan_set_primary_key(conn, "events", ["id", "created_at"])
    by_kind: dict[str, Any] = {}
    for s in plan.steps:
        by_kind.setdefault(s.name.split(":")[0], s)
        assert s.guard and s.locks
    assert not by_kind["build"].transactional and by_kind["build"].retry_cleanup
    assert by_kind["swap"].strongest_lock.level.value == "ACCESS EXCLUSIVE"
    assert by_kind["nn-validate"].strongest_lock.level.value == "SHARE UPDATE EXCLUSIVE"
    assert [s.name for s in plan.steps][-1] == "adopt:events"
    # The guards are false before, and the plan's JSON round-trips.
    assert not any(conn.execute(s.guard).fetchone()[0] for s in plan.steps
                   if s.name.startswith(("build", "swap", "adopt")))
    assert parse_columns('(id, "Created At",X)') == ["id", "Created At", "x"]


def test_rollback_before_the_swap_restores_the_table(db: Any, conn: Any, cli: Any) -> None:
    """Killed after the concurrent builds: rollback removes the helper CHECKs, NOT NULL and the
    new indexes, leaving the table as it was."""
    make_table(conn, parts=2, rows=200, default=False)
    before = schema_fingerprint(conn)
    res = cli("--dsn", db.dsn, "set-primary-key", "events", "--columns", "id,created_at",
              "--yes", env={"PGCLEAVE_FAULT": "kill-after:build:events_p01"})
    assert res.returncode == -9, res.stderr
    ok(cli("--dsn", db.dsn, "rollback", str(job_id(res))))
    assert schema_fingerprint(conn) == before
    assert not conn.execute("SELECT attnotnull FROM pg_attribute WHERE attrelid ="
                            " 'events_p00'::regclass AND attname = 'created_at'").fetchone()[0]


def test_foreign_key_from_two_level_table(db: Any, conn: Any, cli: Any) -> None:
    conn.execute("CREATE TABLE regions (code text PRIMARY KEY)")
    conn.execute("INSERT INTO regions VALUES ('eu'), ('us')")
    conn.execute("CREATE TABLE m (id bigint, created_at timestamptz, region text)"
                 " PARTITION BY RANGE (created_at)")
    for i in range(2):
        conn.execute(f"CREATE TABLE m_{i} PARTITION OF m FOR VALUES FROM ('{_month(i)}') TO"
                     f" ('{_month(i + 1)}') PARTITION BY LIST (region)")
        for r in ("eu", "us"):
            conn.execute(f"CREATE TABLE m_{i}_{r} PARTITION OF m_{i} FOR VALUES IN ('{r}')")
    conn.execute("INSERT INTO m SELECT g, %s::timestamptz + g * interval '1 hour',"
                 " CASE WHEN g %% 2 = 0 THEN 'eu' ELSE 'us' END FROM generate_series(0, 500) g",
                 [START])
    ok(cli("--dsn", db.dsn, "add-foreign-key", "m", "region", "REFERENCES", "regions"))
    rows = conn.execute("SELECT conrelid::regclass::text, convalidated, conparentid <> 0"
                        " FROM pg_constraint WHERE conname = 'm_region_fkey'"
                        " ORDER BY 1").fetchall()
    assert [r[0] for r in rows] == ["m", "m_0", "m_0_eu", "m_0_us", "m_1", "m_1_eu", "m_1_us"]
    assert all(v for _, v, _ in rows) and [r[0] for r in rows if not r[2]] == ["m"]


def test_create_index_reaches_shard_tables(db, db2, cli):
    """An index on a table with a foreign partition is built on the shard's table too, and a
    second run finds nothing to do."""
    from tests.test_move import add_server, make_table

    with db.connect() as c:
        make_table(c, rows=200)
    add_server(db, "db2", db2)
    r = cli("--dsn", db.dsn, "move", '"Ex d"', "--to", "db2", "--yes")
    assert r.returncode == 0, r.stderr
    r = cli("--dsn", db.dsn, "create-index", '"Ex"', "payload", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "CREATE INDEX CONCURRENTLY" in r.stdout and "dblink_exec" in r.stdout
    r = cli("--dsn", db.dsn, "create-index", '"Ex"', "payload", "--yes")
    assert r.returncode == 0, r.stderr
    with db2.connect() as remote:
        rows = remote.execute(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c"
            " ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass('public.\"Ex d\"')"
            " AND pg_get_indexdef(i.indexrelid) LIKE '%(payload)'").fetchall()
        assert [v for _, v in rows] == [True], rows
    with db.connect() as c:
        local = c.execute(
            "SELECT count(*) FROM pg_index i WHERE pg_get_indexdef(i.indexrelid) LIKE"
            " '%(payload)' AND i.indisvalid").fetchone()[0]
        assert local >= 3  # the parent's index and each local partition's
    again = cli("--dsn", db.dsn, "create-index", '"Ex"', "payload", "--yes")
    assert again.returncode == 0 and "nothing to do" in again.stdout + again.stderr


def test_create_unique_index_failing_leaves_nothing_that_refuses(db: Any, conn: Any,
                                                                 cli: Any) -> None:
    """A unique build fails on the second partition (duplicates there): the first
    partition's index, built and attached, would refuse the application's duplicates there,
    and so would the second's INVALID leftover. Both are gone at once; resume after the
    duplicates are fixed builds the whole index."""
    make_table(conn, parts=3, rows=300, per_partition_pk=False, default=False)
    conn.execute("INSERT INTO events (created_at, payload) SELECT created_at, payload"
                 " FROM events_p01 LIMIT 1")
    conn.execute("UPDATE events SET payload = id::text")
    dup = conn.execute("SELECT payload, created_at FROM events_p01 ORDER BY id LIMIT 1"
                       ).fetchone()
    conn.execute("UPDATE events SET payload = %s WHERE created_at = %s", dup)
    r = cli("--dsn", db.dsn, "create-index", "events", "payload,created_at", "--unique")
    assert r.returncode == 1 and "undone at once" in r.stderr, r.stdout + r.stderr
    assert not conn.execute("SELECT c.relname FROM pg_index i JOIN pg_class c ON"
                            " c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid"
                            " WHERE t.relname LIKE 'events%%' AND i.indisunique").fetchall()
    # the application's duplicates are accepted in every partition, as before the job
    for part in ("events_p00", "events_p01"):
        conn.execute(f"INSERT INTO events (created_at, payload) SELECT created_at, payload"
                     f" FROM {part} LIMIT 1")
    conn.execute("DELETE FROM events a USING events b WHERE a.payload = b.payload AND"
                 " a.created_at = b.created_at AND a.id > b.id")
    ok(cli("--dsn", db.dsn, "resume", str(job_id(r))))
    assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid ="
                        " 'events_payload_created_at_key'::regclass").fetchone()[0]
