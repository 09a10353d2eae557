"""A failed or killed job never leaves the application worse off (issue 19).

Each step that leaves something refusing the application's statements is made to fail in turn
(``PGCLEAVE_FAULT=fail-before:STEP``, as a server error would): once pgcleave has exited, with
nobody running `rollback`, application-like writers whose rows the residue would refuse run
with no error and every row they committed is visible. A kill -9 cannot clean up: `check` then
reports the residue with the command that clears it, and `status` marks it.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg import sql

from pgcleave.testing.workload import Spec, Workload

NOW = datetime.now(UTC)


def ok(proc: Any) -> Any:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def failed(proc: Any) -> str:
    out: str = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "injected by PGCLEAVE_FAULT" in out, out
    return out


def writers_after(dsn: str, conn: Any, spec: Spec, seconds: float = 0.6) -> Workload:
    """Writers whose rows the residue would refuse, run after pgcleave exited."""
    w = Workload(dsn, spec, writers=2, max_seconds=30).start()
    try:
        w.run_for(seconds)
        deadline = time.monotonic() + 20  # a loaded machine: until they have written enough
        while w.ops.get("insert", 0) <= 5 and time.monotonic() < deadline:
            w.run_for(0.2)
    finally:
        w.stop()
    w.verify(conn)  # no writer error, every committed row present exactly once
    assert w.ops.get("insert", 0) > 5
    return w


def tenants(conn: Any) -> None:
    conn.execute("CREATE TABLE ex (id bigserial, tenant text NOT NULL, payload text, "
                 "PRIMARY KEY (id, tenant)) PARTITION BY RANGE (tenant)")
    conn.execute("CREATE TABLE ex_a PARTITION OF ex FOR VALUES FROM ('A') TO ('B')")
    conn.execute("CREATE TABLE ex_default PARTITION OF ex DEFAULT")
    conn.execute("INSERT INTO ex (tenant, payload) SELECT t, 'p' FROM unnest(ARRAY['Acme', "
                 "'Bob', 'Zed']) t, generate_series(1, 50)")


def d_tenants() -> Spec:
    return Spec(table=sql.Identifier("public", "ex"), key_col="tenant",
                make_key=lambda r: r.choice(["Dory", "Dx", "Duck"]))


@pytest.mark.parametrize("step", ["validate-exclusion-check", "create-partition",
                                  "drop-exclusion-check"])
def test_add_partition_failing_at_each_step(db, conn, cli, step):
    tenants(conn)
    out = failed(cli("--dsn", db.dsn, "add-partition", "ex", "--from", "D", "--to", "E",
                     "--method", "check", env={"PGCLEAVE_FAULT": f"fail-before:{step}"}))
    if step != "drop-exclusion-check":  # before the partition exists, the CHECK refuses
        assert "undone at once" in out and "refuses INSERTs of" in out
    writers_after(db.dsn, conn, d_tenants())
    # rows of the range arrived meanwhile: the job cannot be finished as planned (carve is
    # the way for a range that receives rows); a resume fails the same safe way, and
    # rollback leaves the table as it was
    job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
    if step == "validate-exclusion-check":
        r = cli("--dsn", db.dsn, "resume", str(job))
        assert r.returncode == 1 and "undone at once" in r.stderr, r.stderr
    ok(cli("--dsn", db.dsn, "rollback", str(job)))
    assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = "
                        "'ex_default'::regclass AND contype = 'c'").fetchone() == (0,)
    writers_after(db.dsn, conn, d_tenants(), 0.3)


def events(conn: Any) -> None:
    conn.execute("CREATE TABLE ev (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL, "
                 "payload text)")
    conn.execute("INSERT INTO ev (created_at, payload) SELECT now() - i * interval '1 hour', "
                 "'x' FROM generate_series(1, 300) i")


def future_events() -> Spec:
    # rows far past any cutoff: the legacy CHECK (created_at < cutoff) would refuse them
    return Spec(table=sql.Identifier("public", "ev"), key_col="created_at",
                make_key=lambda r: NOW + timedelta(days=r.uniform(400, 800)))


@pytest.mark.parametrize("step", ["validate-cutoff-check", "cut-over"])
def test_partition_in_place_failing_leaves_no_cutoff_check(db, conn, cli, step):
    events(conn)
    out = failed(cli("--dsn", db.dsn, "partition", "ev", "--by", "range(created_at)",
                     "--interval", "1 month", "--premake", "1", "--yes",
                     env={"PGCLEAVE_FAULT": f"fail-before:{step}"}))
    assert "undone at once" in out and "refuses rows of ev with created_at >=" in out
    assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = 'ev'::regclass"
                        " AND contype = 'c'").fetchone() == (0,)
    writers_after(db.dsn, conn, future_events())
    # rows past the planned cutoff arrived: the plan cannot go on, and says so safely;
    # rolled back, and those rows gone, the conversion runs
    job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
    r = cli("--dsn", db.dsn, "resume", str(job))
    assert r.returncode == 1 and "undone at once" in r.stderr, r.stderr
    ok(cli("--dsn", db.dsn, "rollback", str(job)))
    conn.execute("DELETE FROM ev WHERE created_at > now() + interval '300 days'")
    ok(cli("--dsn", db.dsn, "partition", "ev", "--by", "range(created_at)", "--interval",
           "1 month", "--premake", "1", "--yes"))
    assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'ev'::regclass"
                        ).fetchone() == ("p",)


def monthly(conn: Any) -> None:
    conn.execute("CREATE TABLE r (id bigserial, d date NOT NULL, v text, PRIMARY KEY (id, d))"
                 " PARTITION BY RANGE (d)")
    conn.execute("CREATE TABLE r_01 PARTITION OF r FOR VALUES FROM ('2025-01-01') TO "
                 "('2025-02-01')")
    conn.execute("CREATE TABLE r_default PARTITION OF r DEFAULT")


def march() -> Spec:
    return Spec(table=sql.Identifier("public", "r"), key_col="d",
                make_key=lambda r: datetime(2025, 3, 1 + int(r.uniform(0, 27))).date(),
                payload_col="v")


@pytest.mark.parametrize("step", ["premake:create"])
def test_maintain_premake_failing_leaves_the_default_open(db, conn, cli, step):
    monthly(conn)
    ok(cli("--dsn", db.dsn, "config", "r", "--interval", "1 month", "--premake", "3"))
    failed(cli("--dsn", db.dsn, "maintain", "--now", "2025-01-10",
               env={"PGCLEAVE_FAULT": f"fail-before:{step}"}))
    writers_after(db.dsn, conn, march())
    # the next run (cron) finishes the unfinished maintain job
    ok(cli("--dsn", db.dsn, "maintain", "--now", "2025-01-10"))


def test_add_foreign_key_failing_before_validation(db, conn, cli):
    conn.execute("CREATE TABLE parent_t (id int PRIMARY KEY)")
    conn.execute("INSERT INTO parent_t SELECT generate_series(1, 10)")
    conn.execute("CREATE TABLE child (id bigserial, k int, d date NOT NULL, payload text,"
                 " PRIMARY KEY (id, d)) PARTITION BY RANGE (d)")
    conn.execute("CREATE TABLE child_1 PARTITION OF child FOR VALUES FROM ('2025-01-01') TO "
                 "('2026-01-01')")
    out = failed(cli("--dsn", db.dsn, "add-foreign-key", "child", "k", "REFERENCES",
                     # step 2: the first VALIDATE (of a partition's key before 18, of the
                     # parent's on 18)
                     "parent_t", "id", env={"PGCLEAVE_FAULT": "fail-before:2"}))
    assert "undone at once" in out
    # the application goes on inserting rows the foreign key would have refused
    conn.execute("INSERT INTO child (k, d) VALUES (999, '2025-05-01')")


# -- after a kill -9 ----------------------------------------------------------------------------
def test_a_killed_job_is_reported_with_the_command_that_clears_it(db, conn, cli):
    tenants(conn)
    r = cli("--dsn", db.dsn, "add-partition", "ex", "--from", "D", "--to", "E",
            "--method", "check", env={"PGCLEAVE_FAULT": "kill-after:add-exclusion-check"})
    assert r.returncode == -9
    job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
    c = cli("--dsn", db.dsn, "check", "ex")
    assert c.returncode == 1 and "residue" in c.stdout, c.stdout
    assert "refuses INSERTs of" in c.stdout and f"pgcleave rollback {job}" in c.stdout
    st = json.loads(ok(cli("--dsn", db.dsn, "status", "ex", "--json")).stdout)
    assert [x["job"] for x in st["residue"]] == [job]
    assert "UNFINISHED JOB" in ok(cli("--dsn", db.dsn, "status", "ex")).stdout
    ok(cli("--dsn", db.dsn, "rollback", str(job)))
    assert "residue" not in cli("--dsn", db.dsn, "check", "ex").stdout
    writers_after(db.dsn, conn, d_tenants(), 0.3)


@pytest.mark.parametrize("kill", ["kill-after:add-exclusion-check",
                                  "kill-after:validate-exclusion-check"])
def test_maintain_undoes_what_a_killed_job_left(db, conn, cli, kill):
    """A job killed while its CHECK refuses rows: `check` names it with the command that
    clears it, and the next maintain run (cron) undoes it, as the job's own failure would have,
    leaving the job itself to its operator."""
    monthly(conn)
    ok(cli("--dsn", db.dsn, "config", "r", "--interval", "1 month", "--premake", "0"))
    r = cli("--dsn", db.dsn, "add-partition", "r", "--from", "2025-03-01", "--to", "2025-04-01",
            "--method", "check", env={"PGCLEAVE_FAULT": kill})
    assert r.returncode == -9
    job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
    c = cli("--dsn", db.dsn, "check", "r", "--now", "2025-01-10")
    assert c.returncode == 1 and "refuses INSERTs of" in c.stdout, c.stdout
    assert f"pgcleave rollback {job}" in c.stdout
    m = cli("--dsn", db.dsn, "maintain", "r", "--now", "2025-01-10")
    assert f"job {job} (add-partition) is unfinished" in m.stderr, m.stderr
    assert "undone at once" in m.stderr
    assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = "
                        "'r_default'::regclass AND contype = 'c'").fetchone() == (0,)
    writers_after(db.dsn, conn, march())
    assert "refuses" not in cli("--dsn", db.dsn, "check", "r", "--now", "2025-01-10").stdout
    ok(cli("--dsn", db.dsn, "rollback", str(job)))


def test_dry_run_shows_what_each_step_would_leave(db, conn, cli):
    tenants(conn)
    out = ok(cli("--dsn", db.dsn, "add-partition", "ex", "--from", "D", "--to", "E",
                 "--method", "check", "--dry-run")).stdout
    assert "if the job stops here: refuses INSERTs of" in out
    assert "undone at once on a failure" in out


def half_year(conn: Any, rows: int = 1500) -> None:
    """Table q: six monthly partitions of 2025, January to June, with rows in the first five."""
    conn.execute("CREATE TABLE q (id bigserial, d date NOT NULL, PRIMARY KEY (id, d))"
                 " PARTITION BY RANGE (d)")
    for m in range(1, 7):
        conn.execute(f"CREATE TABLE q_{m:02d} PARTITION OF q FOR VALUES FROM "
                     f"('2025-{m:02d}-01') TO ('2025-{m + 1:02d}-01')")
    conn.execute("INSERT INTO q (d) SELECT '2025-01-01'::date + (i %% 150) FROM "
                 "generate_series(1, %s) i", [rows])


def test_retention_failing_between_detach_and_archive_is_reported_and_finished(db, conn, cli,
                                                                             tmp_path):
    half_year(conn)
    ok(cli("--dsn", db.dsn, "config", "q", "--interval", "1 month", "--premake", "0",
           "--retention", "4 months", "--retention-action", "archive", "--archive-dir",
           str(tmp_path)))
    r = cli("--dsn", db.dsn, "maintain", "--now", "2025-06-10",
            env={"PGCLEAVE_FAULT": "fail-before:archive:q_01"})
    assert r.returncode == 1 and "STILL IN PLACE" in r.stderr, r.stderr
    assert "not visible through" in r.stderr and "rollback" not in r.stderr.split(
        "STILL IN PLACE")[1]
    c = cli("--dsn", db.dsn, "check", "q", "--now", "2025-06-10")
    assert c.returncode == 1 and "q_01 are not visible through" in c.stdout, c.stdout
    # the next run (cron) finishes it: archived, and nothing left to report
    ok(cli("--dsn", db.dsn, "maintain", "--now", "2025-06-10"))
    assert list(tmp_path.glob("*q_01*.json"))
    assert "not visible" not in cli("--dsn", db.dsn, "check", "q", "--now", "2025-06-10").stdout


def test_retention_archives_before_it_detaches(db, conn, cli, tmp_path):
    """The archive is written while the partition is attached: a job that stops before the
    detach hides nothing, and rows written to the old range after the archive was written are
    archived too (the detached table no longer matches the archive: it is written again)."""
    half_year(conn)
    before = conn.execute("SELECT count(*) FROM q WHERE d < '2025-02-01'").fetchone()[0]
    ok(cli("--dsn", db.dsn, "config", "q", "--interval", "1 month", "--premake", "0",
           "--retention", "4 months", "--retention-action", "archive", "--archive-dir",
           str(tmp_path)))
    r = cli("--dsn", db.dsn, "maintain", "--now", "2025-06-10",
            env={"PGCLEAVE_FAULT": "fail-before:detach:q_01"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert list(tmp_path.glob("*q_01.copy.gz")), "written before the detach"
    # nothing hidden: q_01 is attached, its rows visible, nothing reported
    assert conn.execute("SELECT count(*) FROM q WHERE d < '2025-02-01'").fetchone() == (before,)
    assert "not visible" not in cli("--dsn", db.dsn, "check", "q", "--now",
                                    "2025-06-10").stdout
    # the application writes to the old range after the archive was written
    conn.execute("INSERT INTO q (d) VALUES ('2025-01-15'), ('2025-01-16')")
    conn.execute("DELETE FROM q WHERE id = (SELECT min(id) FROM q_01)")
    ok(cli("--dsn", db.dsn, "maintain", "--now", "2025-06-10"))
    assert conn.execute("SELECT to_regclass('q_01')").fetchone() == (None,)
    manifest = json.loads(next(tmp_path.glob("*q_01.json")).read_text())
    assert manifest["rows"] == before + 1, manifest
    r = ok(cli("--dsn", db.dsn, "restore", str(next(tmp_path.glob("*q_01.json"))), "--yes"))
    assert conn.execute("SELECT count(*) FROM q WHERE d < '2025-02-01'").fetchone() == (
        before + 1,)


def test_set_primary_key_failing_leaves_no_not_null_check(db, conn, cli):
    conn.execute("CREATE TABLE k (id bigint, d date, payload text) PARTITION BY RANGE (d)")
    conn.execute("CREATE TABLE k_1 PARTITION OF k FOR VALUES FROM ('2025-01-01') TO "
                 "('2026-01-01')")
    conn.execute("INSERT INTO k SELECT i, '2025-01-01'::date + i % 300, 'x' FROM "
                 "generate_series(1, 500) i")
    out = failed(cli("--dsn", db.dsn, "set-primary-key", "k", "--columns", "id,d", "--yes",
                     env={"PGCLEAVE_FAULT": "fail-before:nn-validate:k_1:id"}))
    assert "undone at once" in out and "refuses NULL id in k_1" in out
    conn.execute("INSERT INTO k (id, d) VALUES (NULL, '2025-03-01')")  # as before the job
    conn.execute("DELETE FROM k WHERE id IS NULL")
    job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
    ok(cli("--dsn", db.dsn, "resume", str(job)))
    assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = 'k'::regclass"
                        " AND contype = 'p'").fetchone() == (1,)


def test_move_failing_before_the_default_is_proven_empty(db, db2, conn, cli):
    from tests.test_move import PART, add_server, make_table

    make_table(conn, rows=40)
    add_server(db, "db2", db2)
    r = cli("--dsn", db.dsn, "move", PART, "--to", "db2", "--yes",
            env={"PGCLEAVE_FAULT": "fail-before:default-validate"})
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "undone at once" in out, out
    assert conn.execute("SELECT count(*) FROM pg_constraint c JOIN pg_inherits i ON "
                        "i.inhrelid = c.conrelid WHERE i.inhparent = '\"Ex\"'::regclass AND "
                        "c.contype = 'c' AND c.conname LIKE 'pgcleave%%'").fetchone() == (0,)
    job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
    ok(cli("--dsn", db.dsn, "resume", str(job)))


@pytest.mark.parametrize("step", ["carve-copy", "carve-verify", "carve-swap", "carve-drop-old"])
def test_carve_failing_at_each_step_under_writers(db, conn, cli, step):
    """Writers run through the failure and after it: carve's copies and capture trigger never
    refuse a statement, and no committed row is ever invisible; resume then finishes."""
    from tests.test_carve import _spec, _tenants_table, bounds

    _tenants_table(conn, 3000)
    ok(cli("--dsn", db.dsn, "partition", "acc", "--by", "range(tenant)", "--yes"))
    w = Workload(db.dsn, _spec(), writers=3, max_seconds=60).start()
    try:
        w.run_for(0.3)
        failed(cli("--dsn", db.dsn, "carve", "acc", "--from", "B", "--to", "D", "--method",
                   "swap", "--yes", env={"PGCLEAVE_FAULT": f"fail-before:{step}"}))
        w.run_for(0.5)  # nobody has run rollback
        job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
        ok(cli("--dsn", db.dsn, "resume", str(job)))
        w.run_for(0.3)
    finally:
        w.stop()
    w.verify(conn)
    assert "FOR VALUES FROM ('B') TO ('D')" in bounds(conn, "acc").values()


@pytest.mark.parametrize("step", ["capture", "fill", "verify", "swap"])
def test_partition_by_copy_failing_at_each_step_under_writers(db, conn, cli, step):
    """The copy strategy's capture trigger and copies never refuse a statement or hide a row,
    whichever step fails; resume then finishes the conversion."""
    from tests.test_copy import _events, _spec

    _events(conn, 3000)
    w = Workload(db.dsn, _spec(), writers=3, max_seconds=60).start()
    try:
        w.run_for(0.3)
        failed(cli("--dsn", db.dsn, "partition", "events", "--by", "range(created_at)",
                   "--interval", "month", "--strategy", "copy", "--yes",
                   env={"PGCLEAVE_FAULT": f"fail-before:{step}"}))
        w.run_for(0.5)  # nobody has run rollback
        job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
        ok(cli("--dsn", db.dsn, "resume", str(job)))
        w.run_for(0.3)
    finally:
        w.stop()
    w.verify(conn)
    assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'events'::regclass"
                        ).fetchone() == ("p",)


def test_alter_failing_after_the_decision_releases_the_shard_at_once(db, db2, conn, cli):
    """The change was decided here but a step failed before COMMIT PREPARED: the prepared
    transaction would hold its lock on the shard table, and every write to the remote
    partition would wait, until someone resumed. The failure settles it at once."""
    from tests.test_alter import prepared, remote_columns
    from tests.test_move import PART, add_server, make_table

    make_table(conn, rows=40)
    add_server(db, "db2", db2)
    ok(cli("--dsn", db.dsn, "move", PART, "--to", "db2", "--yes", "--drop-source"))
    out = failed(cli("--dsn", db.dsn, "alter", '"Ex"', "ADD difficulty smallint", "--yes",
                     env={"PGCLEAVE_FAULT": "fail-before:commit-prepared"}))
    assert "settled at once" in out and "committed" in out, out
    assert prepared(db2) == [] and remote_columns(db2)[-1] == "difficulty"
    conn.execute("SET statement_timeout = '5s'")
    conn.execute("""INSERT INTO "Ex" (tenant, payload, difficulty) VALUES ('Dory', 'x', 1)""")
    job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
    ok(cli("--dsn", db.dsn, "resume", str(job)))


def test_cutoff_leaves_time_for_the_validation_scan(db, conn, monkeypatch):
    """The legacy CHECK refuses rows >= cutoff from the moment it is added: the cutoff is far
    enough ahead that the clock cannot reach it while VALIDATE scans the table (at a slow
    scan rate, here made tiny so that a small table stands for a huge one)."""
    from pgcleave.ops import partition

    events(conn)

    def cutoff() -> datetime:
        plan = partition.plan_partition(conn, "ev", by="range(created_at)", interval="1 day",
                                        premake=1)
        return datetime.fromisoformat(plan.args["cutoff"])

    near = cutoff()
    assert near - NOW < timedelta(days=2)
    size = conn.execute("SELECT pg_total_relation_size('ev')").fetchone()[0]
    monkeypatch.setattr(partition, "VALIDATE_BYTES_PER_S", size / (5 * 86400))  # 5 days
    far = cutoff()
    assert far - NOW >= timedelta(days=10), (near, far)
