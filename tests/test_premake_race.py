"""Premake race: writers insert rows for a month premake is about to create, after planning and
before the partition is created. No CHECK on the DEFAULT refuses them (premake creates its
partitions in one transaction under the parent's lock); the run ends well (the month is left
to the drain, nothing lost, no writer error), not failing again on every resume."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from psycopg import sql

from pgcleave.connection import Settings
from pgcleave.execute import Executor
from pgcleave.ops.maintain import plan_maintain
from tests.test_maintain import make_events, parts

T = "Ev ents"
Q = '"Ev ents"'


def test_rows_for_a_premade_month_arrive_before_validation(db: Any, conn: Any,
                                                           cli: Any) -> None:
    make_events(conn)
    r = cli("--dsn", db.dsn, "config", Q, "--premake", "3")
    assert r.returncode == 0, r.stderr
    r = cli("--dsn", db.dsn, "maintain", Q, "--now", "2025-03-10")  # drain Mar-May, make June
    assert r.returncode == 0, r.stderr
    now = datetime(2025, 5, 10, tzinfo=UTC)
    with db.connect() as c:
        plan, summary = plan_maintain(c, Q, now=now)
    assert any(s.name == "premake:create" and s.action == "maintain.premake_locked"
               for s in plan.steps)
    assert not any(s.name in ("premake:guard", "premake:validate") for s in plan.steps)
    assert any("2025_08" in n for n in summary.created), summary.created  # August is premade
    # a writer ahead of premake: a row for August lands in the DEFAULT after planning
    conn.execute(sql.SQL("INSERT INTO {} (at, payload) VALUES ('2025-08-03 10:00+00', 'early')")
                 .format(sql.Identifier(T)))
    job = Executor(Settings(dsn=db.dsn)).run(plan)
    assert conn.execute("SELECT state FROM pgcleave.jobs WHERE id = %s", [job]).fetchone()[0] \
        == "done"
    names = [n for n, _ in parts(conn, T)]
    assert not any("2025_08" in n for n in names), names
    assert any("2025_07" in n for n in names), names
    # no helper CHECK left on the DEFAULT: writers are not refused anything
    assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgcleave%%'"
                        " AND conrelid = %s::regclass",
                        [sql.Identifier(T + "_default").as_string(None)]).fetchone()[0] == 0
    conn.execute(sql.SQL("INSERT INTO {} (at, payload) VALUES ('2025-08-04 10:00+00', 'more')")
                 .format(sql.Identifier(T)))
    # the next run drains August's rows into their new partition; then nothing is stuck
    r = cli("--dsn", db.dsn, "maintain", Q, "--now", "2025-05-10", "--json")
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)["tables"][0]
    assert t["resumed"] == [] and t["done"]["moved_rows"] == 2, t
    assert conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(
        sql.Identifier(T + "_default"))).fetchone()[0] == 0
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(T))
                        ).fetchone()[0] == 3002
    r = cli("--dsn", db.dsn, "check", Q, "--now", "2025-05-10")
    assert r.returncode == 0, r.stdout + r.stderr
    r = cli("--dsn", db.dsn, "maintain", Q, "--now", "2025-05-20")
    assert "nothing to do" in r.stdout, r.stdout + r.stderr


def test_cli_reports_deferred_month(db: Any, conn: Any, cli: Any) -> None:
    """Through the CLI with a kill before the creation: the resumed job defers the month."""
    make_events(conn)
    r = cli("--dsn", db.dsn, "config", Q, "--premake", "3")
    assert r.returncode == 0, r.stderr
    r = cli("--dsn", db.dsn, "maintain", Q, "--now", "2025-03-10")
    assert r.returncode == 0, r.stderr
    r = cli("--dsn", db.dsn, "maintain", Q, "--now", "2025-05-10",
            env={"PGCLEAVE_FAULT": "kill-before:premake:create"})
    assert r.returncode == -9, r.stderr
    # nothing refuses rows of the months about to be created: one for August arrives
    conn.execute(sql.SQL("INSERT INTO {} (at, payload) VALUES ('2025-08-03 10:00+00', 'early')")
                 .format(sql.Identifier(T)))
    assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgcleave%%'"
                        " AND contype = 'c' AND conrelid = %s::regclass",
                        [sql.Identifier(T + "_default").as_string(None)]).fetchone()[0] == 0
    r = cli("--dsn", db.dsn, "maintain", Q, "--now", "2025-05-10", "--json")
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)["tables"][0]
    # the resumed job deferred August; the same run then planned again and drained it
    assert len(t["resumed"]) == 1 and t["done"]["moved_rows"] == 1, t
    r = cli("--dsn", db.dsn, "maintain", Q, "--now", "2025-05-10")
    assert "nothing to do" in r.stdout, r.stdout + r.stderr
    r = cli("--dsn", db.dsn, "check", Q, "--now", "2025-05-10")
    assert r.returncode == 0, r.stdout + r.stderr
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(T))
                        ).fetchone()[0] == 3001
