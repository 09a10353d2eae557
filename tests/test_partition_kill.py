"""A job killed (SIGKILL) after any step resumes to the end, or rolls back to where it began."""

from __future__ import annotations

from typing import Any

import pytest

LEGACY_STEPS = ["add-cutoff-check", "validate-cutoff-check", "cut-over"]
CARVE_STEPS = ["carve-prepare", "carve-copy", "carve-verify", "carve-swap", "carve-drop-old"]
ADD_STEPS = ["add-exclusion-check", "validate-exclusion-check", "create-partition",
             "drop-exclusion-check"]  # --method check


def one(conn: Any, q: str) -> Any:
    row = conn.execute(q).fetchone()
    return row[0] if row else None


def killed(cli: Any, dsn: str, step: str, *args: str) -> int:
    proc = cli("--dsn", dsn, *args, "--yes", env={"PGCLEAVE_FAULT": f"kill-after:{step}"})
    assert proc.returncode != 0, proc.stderr
    from pgcleave.connection import connect

    with connect(dsn) as c:
        job = one(c, "SELECT max(id) FROM pgcleave.jobs")
    return int(job)


def finish(cli: Any, dsn: str, job: int, how: str) -> Any:
    proc = cli("--dsn", dsn, how, str(job))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def snapshot(conn: Any, table: str) -> tuple[Any, ...]:
    return (one(conn, f"SELECT relkind FROM pg_class WHERE oid = '{table}'::regclass"),
            one(conn, f"SELECT count(*) FROM {table}"),
            one(conn, f"SELECT sum(hashtext(t::text)) FROM {table} t"),
            one(conn, f"SELECT count(*) FROM pg_constraint WHERE conrelid = '{table}'::regclass"),
            one(conn, f"SELECT count(*) FROM pg_indexes WHERE tablename = '{table}'"))


@pytest.mark.parametrize("how", ["resume", "rollback"])
@pytest.mark.parametrize("step", LEGACY_STEPS)
def test_kill_partition_legacy(db: Any, conn: Any, cli: Any, step: str, how: str) -> None:
    conn.execute("CREATE TABLE t (id bigserial PRIMARY KEY, at date NOT NULL, v text)")
    conn.execute("CREATE INDEX t_at ON t (at)")
    conn.execute("CREATE VIEW tv AS SELECT id, v FROM t")
    conn.execute("INSERT INTO t (at, v) SELECT current_date - i, 'x' FROM"
                 " generate_series(1, 200) i")
    before = snapshot(conn, "t")
    job = killed(cli, db.dsn, step, "partition", "t", "--by", "range(at)", "--interval",
                 "1 month")
    finish(cli, db.dsn, job, how)
    conn.execute("INSERT INTO t (at, v) VALUES (current_date, 'after')")
    assert one(conn, "SELECT count(*) FROM tv") == 201
    if how == "resume":
        assert one(conn, "SELECT relkind FROM pg_class WHERE oid = 't'::regclass") == "p"
        assert one(conn, "SELECT count(*) FROM t_legacy") == 201
    else:
        conn.execute("DELETE FROM t WHERE v = 'after'")
        assert snapshot(conn, "t") == before
        assert one(conn, "SELECT count(*) FROM pgcleave.policies") == 0
        assert one(conn, "SELECT pg_get_serial_sequence('t', 'id')") == "public.t_id_seq"


@pytest.mark.parametrize("how", ["resume", "rollback"])
@pytest.mark.parametrize("step", CARVE_STEPS)
def test_kill_carve_swap(db: Any, conn: Any, cli: Any, step: str, how: str) -> None:
    conn.execute("CREATE TABLE e (id bigserial PRIMARY KEY, tenant text NOT NULL, v text)")
    conn.execute("INSERT INTO e (tenant) SELECT (ARRAY['Acme','Bob','Cat','Dory'])[1 + i % 4]"
                 " FROM generate_series(1, 400) i")
    assert cli("--dsn", db.dsn, "partition", "e", "--by", "range(tenant)", "--yes"
               ).returncode == 0
    before = snapshot(conn, "e")
    job = killed(cli, db.dsn, step, "carve", "e", "--from", "B", "--to", "D", "--method",
                 "swap", "--batch-size", "50")
    # writes keep flowing between the kill and the resume; the capture trigger records them
    conn.execute("UPDATE e SET v = 'moved', tenant = 'Cat' WHERE id % 10 = 0")
    conn.execute("DELETE FROM e WHERE id % 10 = 1")
    conn.execute("INSERT INTO e (tenant, v) VALUES ('Bob', 'new'), ('Eve', 'new')")
    expected = one(conn, "SELECT sum(hashtext(t::text)) FROM e t")
    after_swap = CARVE_STEPS.index(step) >= CARVE_STEPS.index("carve-swap")
    if how == "rollback" and after_swap:
        proc = cli("--dsn", db.dsn, "rollback", str(job))
        assert proc.returncode != 0 and f"resume {job}" in proc.stderr
        how = "resume"
    finish(cli, db.dsn, job, how)
    assert one(conn, "SELECT sum(hashtext(t::text)) FROM e t") == expected
    assert one(conn, "SELECT count(*) FROM pg_trigger WHERE tgname = 'pgcleave_carve'") == 0
    parts = {r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'e'::regclass")}
    leftovers = one(conn, "SELECT count(*) FROM pg_class WHERE relname LIKE 'e_old_pgcleave%'")
    assert leftovers == 0
    if how == "resume":
        assert parts == {"e_0", "e_old"}
        assert one(conn, "SELECT count(*) FROM e_old WHERE tenant >= 'B' AND tenant < 'D'") == 0
    else:
        assert parts == {"e_old"}
        assert one(conn, "SELECT to_regclass('e_0')") is None
        assert snapshot(conn, "e")[0] == before[0]


@pytest.mark.parametrize("how", ["resume", "rollback"])
@pytest.mark.parametrize("step", ADD_STEPS)
def test_kill_add_partition(db: Any, conn: Any, cli: Any, step: str, how: str) -> None:
    conn.execute("CREATE TABLE a (id bigserial, k text NOT NULL, PRIMARY KEY (id, k))")
    conn.execute("INSERT INTO a (k) SELECT 'z' || i FROM generate_series(1, 100) i")
    assert cli("--dsn", db.dsn, "partition", "a", "--by", "list(k)").returncode == 0
    job = killed(cli, db.dsn, step, "add-partition", "a", "--values", "x,y", "--name", "a_xy",
                 "--method", "check")
    finish(cli, db.dsn, job, how)
    exists = one(conn, "SELECT to_regclass('a_xy') IS NOT NULL")
    assert exists == (how == "resume")
    assert one(conn, "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgcleave_excl%'"
               ) == 0
    conn.execute("INSERT INTO a (k) VALUES ('x')")
    assert one(conn, "SELECT count(*) FROM a") == 101


@pytest.mark.parametrize("how", ["resume", "rollback"])
def test_kill_add_partition_carved(db: Any, conn: Any, cli: Any, how: str) -> None:
    """The default path next to a DEFAULT (one carve-direct transaction, rows of the range
    moved): killed inside it, nothing is half done; after it, resume or rollback."""
    conn.execute("CREATE TABLE a (id bigserial, k text NOT NULL, PRIMARY KEY (id, k))")
    conn.execute("INSERT INTO a (k) SELECT (ARRAY['x', 'z'])[1 + i % 2] FROM"
                 " generate_series(1, 100) i")
    assert cli("--dsn", db.dsn, "partition", "a", "--by", "list(k)").returncode == 0
    for when in ("kill-inside", "kill-after"):
        proc = cli("--dsn", db.dsn, "add-partition", "a", "--values", "x,y", "--name", "a_xy",
                   env={"PGCLEAVE_FAULT": f"{when}:carve-direct"})
        assert proc.returncode != 0, proc.stderr
        job = one(conn, "SELECT max(id) FROM pgcleave.jobs")
        if when == "kill-inside":
            assert one(conn, "SELECT to_regclass('a_xy') IS NULL")
            finish(cli, db.dsn, job, "rollback")
            continue
        finish(cli, db.dsn, job, how)
    assert one(conn, "SELECT to_regclass('a_xy') IS NOT NULL") == (how == "resume")
    if how == "resume":
        assert one(conn, "SELECT count(*) FROM a_xy") == 50
    conn.execute("INSERT INTO a (k) VALUES ('x'), ('y')")
    assert one(conn, "SELECT count(*) FROM a") == 102
