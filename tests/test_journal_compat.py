"""Jobs journaled by pgcleave 0.1.0 resume after the ops/ reshaping.

The plans in ``fixtures/journal_0_1`` were made by that version (see ``make_fixtures.py``
there): their actions carry the old names (``carve-copy``, ``copy-fill``, ...) and the old
parameter shapes. Each test writes such a plan into the journal exactly as 0.1.0's
``create_job`` did, as if that version had been killed before its first step, then resumes it
with today's command line and checks the outcome row by row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from pgcleave import journal

FIXTURES = Path(__file__).parent / "fixtures" / "journal_0_1"

SETUP = """
CREATE TABLE "Orders" (id bigserial PRIMARY KEY, "Placed At" timestamptz NOT NULL, note text);
INSERT INTO "Orders" ("Placed At", note)
  SELECT timestamptz '2026-01-01 00:00Z' + n * interval '1 hour', 'n' || n
  FROM generate_series(1, 2000) n;
CREATE TABLE exercises (id int PRIMARY KEY, tenant text NOT NULL, name text NOT NULL);
INSERT INTO exercises SELECT n, chr(65 + n % 6) || 'x', 'e' || n FROM generate_series(1, 3000) n;
"""

#: The OID the table had when 0.1.0 planned the copy (the plan records it).
FIXTURE_OID = 16386


def journal_old_job(conn: Any, name: str, *, oid: int | None = None) -> int:
    text = (FIXTURES / f"{name}.json").read_text()
    if oid is not None:  # the same table in this database has another OID
        text = text.replace(str(FIXTURE_OID), str(oid))
    plan = json.loads(text)
    journal.ensure_schema(conn)
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO pgcleave.jobs (operation, target, args, plan, client_host, client_pid)"
            " VALUES (%s, %s, %s, %s, 'old-host', 1) RETURNING id",
            [plan["operation"], plan["target"], Jsonb(plan["args"]), Jsonb(plan)]).fetchone()
        job = int(row[0])
        for i, step in enumerate(plan["steps"]):
            conn.execute("INSERT INTO pgcleave.steps (job_id, idx, name, step)"
                         " VALUES (%s, %s, %s, %s)", [job, i, step["name"], Jsonb(step)])
    return job


def rows(conn: Any, table: str) -> list[tuple[Any, ...]]:
    return conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()


def test_old_fixtures_name_the_old_actions():
    """The fixtures really are of the old shape (else the tests below prove nothing)."""
    actions = {s.get("action") for f in FIXTURES.glob("*.json")
               for s in json.loads(f.read_text())["steps"]}
    assert {"carve-copy", "carve-verify", "carve-swap", "copy-fill", "copy-verify"} <= actions


def test_old_partition_copy_job_resumes(db, conn, cli):
    conn.execute(SETUP)
    before = rows(conn, '"Orders"')
    oid = conn.execute("""SELECT '"Orders"'::regclass::oid""").fetchone()[0]
    job = journal_old_job(conn, "partition_copy", oid=oid)
    r = cli("--dsn", db.dsn, "resume", str(job))
    assert r.returncode == 0, r.stderr
    assert conn.execute("""SELECT relkind FROM pg_class WHERE oid = '"Orders"'::regclass"""
                        ).fetchone() == ("p",)
    assert rows(conn, '"Orders"') == before
    states = {s for (s,) in conn.execute("SELECT state FROM pgcleave.steps WHERE job_id = %s",
                                         [job])}
    assert states <= {"done", "skipped"}


def test_old_carve_job_resumes(db, conn, cli):
    conn.execute(SETUP)
    r = cli("--dsn", db.dsn, "partition", "exercises", "--by", "range(tenant)",
            "--strategy", "default", "--yes")
    assert r.returncode == 0, r.stderr
    before = rows(conn, "exercises")
    job = journal_old_job(conn, "carve_copy")
    r = cli("--dsn", db.dsn, "resume", str(job))
    assert r.returncode == 0, r.stderr
    assert rows(conn, "exercises") == before
    placed = dict(conn.execute(
        "SELECT tableoid::regclass::text, count(*) FROM exercises GROUP BY 1").fetchall())
    carved = [t for t in placed if t != "exercises_old"]
    # the rows from 'A' to 'C' left the DEFAULT for their own partition
    assert carved and sum(placed[t] for t in carved) == 1000
    assert conn.execute("SELECT count(*) FROM exercises WHERE tenant < 'C' AND tableoid = "
                        "'exercises_old'::regclass").fetchone() == (0,)
