"""``maintain`` on a month-partitioned table walked across simulated months (``--now``):
premake, DEFAULT drain, retention with archive and restore, late rows, check before/after,
and application-like writers running during maintain."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from pgcleave.connection import Settings
from pgcleave.execute import Executor
from pgcleave.ops import maintain
from pgcleave.testing.workload import Spec, Workload


def make_events(conn: Any, name: str = "Ev ents") -> None:
    """A table partitioned by hand, pg_partman-style names that do NOT sort like their bounds,
    a DEFAULT holding rows of three months."""
    t = sql.Identifier(name)
    conn.execute(sql.SQL("CREATE TABLE {} (id bigserial, at timestamptz NOT NULL, payload text,"
                         " PRIMARY KEY (id, at)) PARTITION BY RANGE (at)").format(t))
    for pname, lo, hi in [("zz_first", "2025-01-01", "2025-02-01"),
                          ("aa_second", "2025-02-01", "2025-03-01")]:
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})")
                     .format(sql.Identifier(pname), t, sql.Literal(lo + " 00:00+00"),
                             sql.Literal(hi + " 00:00+00")))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(
        sql.Identifier(name + "_default"), t))
    conn.execute(sql.SQL("INSERT INTO {} (at, payload) SELECT '2025-01-01 00:00+00'::timestamptz"
                         " + i * interval '1 hour', 'seed' FROM generate_series(0, 2999) i")
                 .format(t))


def parts(conn: Any, name: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c"
        " ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass ORDER BY 2",
        [sql.Identifier(name).as_string(None)])]


def test_month_table_across_months(db: Any, conn: Any, cli: Any, tmp_path: Path) -> None:
    name = "Ev ents"
    q = '"Ev ents"'
    make_events(conn)
    arch = tmp_path / "archive"
    r = cli("--dsn", db.dsn, "config", q, "--premake", "2", "--retention", "2 months",
            "--retention-action", "archive", "--archive-dir", str(arch))
    assert r.returncode == 0, r.stderr
    assert "interval 1 month inferred" in r.stderr
    st = cli("--dsn", db.dsn, "status", q, "--json")
    assert json.loads(st.stdout)["policy"]["retention"] == "2 months"

    # before: no partition for March, rows in the DEFAULT
    r = cli("--dsn", db.dsn, "check", "--now", "2025-03-10")
    assert r.returncode == 1
    assert "premake" in r.stdout and "default-rows" in r.stdout

    r = cli("--dsn", db.dsn, "maintain", "--now", "2025-03-10", "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)["tables"][0]["done"]
    assert done["moved_rows"] == 3000 - 744 - 672
    assert len(done["created"]) == 3  # March (rows), April (rows), May (rows + premake)
    default = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(
        sql.Identifier(name + "_default"))).fetchone()[0]
    assert default == 0
    assert conn.execute('SELECT count(*) FROM "Ev ents"').fetchone()[0] == 3000
    r = cli("--dsn", db.dsn, "check", "--now", "2025-03-10")
    assert r.returncode == 0, r.stdout

    # idempotent: a second run in the same month does nothing and creates no job
    r = cli("--dsn", db.dsn, "maintain", "--now", "2025-03-20")
    assert "nothing to do" in r.stdout, r.stdout + r.stderr

    # two months later: premake June/July; January and February (by bounds: zz_first is the
    # oldest although its name sorts last) archived and dropped, oldest first
    r = cli("--dsn", db.dsn, "maintain", "--now", "2025-05-10", "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)["tables"][0]["done"]
    assert [a["partition"] for a in done["archives"]] == ["zz_first", "aa_second"]
    assert [a["rows"] for a in done["archives"]] == [744, 672]
    names = [p[0] for p in parts(conn, name)]
    assert "zz_first" not in names and "aa_second" not in names
    assert "Ev ents_p2025_07" in names
    manifest = json.loads((arch / "public.zz_first.json").read_text())
    assert manifest["rows"] == 744 and manifest["bound"].startswith("FOR VALUES FROM")

    # a late row for archived January: stays visible (DEFAULT), reported, never re-partitioned
    conn.execute('INSERT INTO "Ev ents" (at, payload) VALUES (\'2025-01-20 10:00+00\', \'late\')')
    r = cli("--dsn", db.dsn, "check", "--now", "2025-05-10")
    assert r.returncode == 1 and "late-rows" in r.stdout, r.stdout
    r = cli("--dsn", db.dsn, "maintain", "--now", "2025-05-11", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["tables"][0]
    assert res["job"] is None and res["done"]["late_rows"] == 1
    assert conn.execute("SELECT payload FROM \"Ev ents\" WHERE at = '2025-01-20 10:00+00'"
                        ).fetchone()[0] == "late"
    assert not any("2025-01-01" in p[1] for p in parts(conn, name))

    # restore February (no late rows there); attached back, rows visible again
    r = cli("--dsn", db.dsn, "restore", str(arch / "public.aa_second.copy.gz"), "--yes")
    assert r.returncode == 0, r.stderr
    assert conn.execute("SELECT count(*) FROM \"Ev ents\" WHERE at >= '2025-02-01 00:00+00' "
                        "AND at < '2025-03-01 00:00+00'").fetchone()[0] == 672
    assert "aa_second" in [p[0] for p in parts(conn, name)]
    # January has a late row in the DEFAULT: restore refuses rather than hide or lose it
    r = cli("--dsn", db.dsn, "restore", str(arch / "public.zz_first.json"), "--yes")
    assert r.returncode == 3 and "arrived later" in r.stderr
    r = cli("--dsn", db.dsn, "restore", str(arch / "public.zz_first.json"), "--as-table",
            "jan_back", "--yes")
    assert r.returncode == 0, r.stderr
    assert conn.execute("SELECT count(*) FROM jan_back").fetchone()[0] == 744


def test_premake_next_to_late_rows(db: Any, conn: Any, cli: Any, monkeypatch: Any) -> None:
    """A DEFAULT holding rows past retention (they stay there): premake puts no CHECK on it
    that would refuse the new months' rows meanwhile. A small DEFAULT is scanned by
    PostgreSQL in the one short transaction that creates the partitions under the parent's
    lock; one too large for that has the partitions carved out of it (copy and swap)."""
    conn.execute("CREATE TABLE m (id bigserial, d date NOT NULL, PRIMARY KEY (id, d))"
                 " PARTITION BY RANGE (d)")
    conn.execute("CREATE TABLE m_default PARTITION OF m DEFAULT")
    conn.execute("INSERT INTO m (d) SELECT '2024-01-01'::date + (i % 300) FROM "
                 "generate_series(1, 20000) i")  # late rows, past retention: they stay
    conn.execute("ANALYZE m_default")
    assert cli("--dsn", db.dsn, "config", "m", "--interval", "1 month", "--premake", "1",
               "--retention", "3 months").returncode == 0
    with db.connect() as c:
        plan, _ = maintain.plan_maintain(c, "m", now=datetime(2025, 6, 15, tzinfo=UTC))
    assert [s.name for s in plan.steps] == ["premake:create"], plan.steps
    assert plan.steps[0].action == "maintain.premake_locked"
    r = cli("--dsn", db.dsn, "maintain", "m", "--now", "2025-06-15")
    assert r.returncode == 0, r.stderr
    assert {p[0] for p in parts(conn, "m")} == {"m_p2025_06", "m_p2025_07", "m_default"}
    assert conn.execute("SELECT count(*) FROM m_default").fetchone()[0] == 20000
    # a DEFAULT too large to scan under the lock (threshold lowered): carved, not scanned
    monkeypatch.setattr(maintain, "DIRECT_MAX_LOCK_MS", 0)
    with db.connect() as c:
        plan, _ = maintain.plan_maintain(c, "m", now=datetime(2025, 7, 15, tzinfo=UTC))
    assert "carve-swap" in [s.name for s in plan.steps], plan.steps
    assert not any(s.residue_note for s in plan.steps)
    Executor(Settings(dsn=db.dsn)).run(plan)
    assert {p[0] for p in parts(conn, "m")} == {"m_p2025_06", "m_p2025_07", "m_p2025_08",
                                                "m_default"}
    assert conn.execute("SELECT count(*) FROM ONLY m_default").fetchone()[0] == 20000
    assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = "
                        "'m_default'::regclass AND contype = 'c'").fetchone()[0] == 0


def test_writers_during_maintain(db: Any, conn: Any, cli: Any, tmp_path: Path) -> None:
    """Writers insert/update/move/delete rows across six months, most of them landing in the
    DEFAULT, while maintain drains it, premakes and archives: nothing lost, no writer error."""
    conn.execute("CREATE TABLE w (id bigserial, at timestamptz NOT NULL, payload text,"
                 " PRIMARY KEY (id, at)) PARTITION BY RANGE (at)")
    conn.execute("CREATE TABLE w_old PARTITION OF w FOR VALUES FROM ('2025-01-01 00:00+00')"
                 " TO ('2025-02-01 00:00+00')")
    conn.execute("CREATE TABLE w_default PARTITION OF w DEFAULT")
    conn.execute("INSERT INTO w (at, payload) SELECT '2025-01-01 00:00+00'::timestamptz"
                 " + i * interval '5 minutes', 'seed' FROM generate_series(0, 30000) i")
    assert cli("--dsn", db.dsn, "config", "w", "--interval", "1 month", "--premake", "2",
               "--retention", "3 months", "--retention-action", "archive", "--archive-dir",
               str(tmp_path)).returncode == 0
    base = datetime(2025, 2, 1, tzinfo=UTC)

    def key(rng: random.Random) -> datetime:
        return base + timedelta(seconds=rng.randrange(0, 150 * 86400))

    wl = Workload(db.dsn, Spec(table=sql.Identifier("w"), key_col="at", make_key=key),
                  writers=4, max_seconds=60)
    wl.start()
    time.sleep(0.5)
    r = cli("--dsn", db.dsn, "maintain", "--now", "2025-05-10")
    time.sleep(0.3)
    wl.stop()
    print(wl.summary())
    print(f"max_stall_ms={wl.max_stall_ms:.1f}")
    assert r.returncode == 0, r.stderr
    wl.verify(conn)
    assert wl.ops.get("insert", 0) > 50
    assert "w_old" not in [p[0] for p in parts(conn, "w")]  # January archived
    assert (tmp_path / "public.w_old.copy.gz").exists()


@pytest.mark.parametrize("fault,settled", [("kill-before:commit-prepared", "committed"),
                                           ("kill-in:alter-prepared", "rolled back")])
def test_maintain_runs_the_recovery_pass(db: Any, db2: Any, conn: Any, cli: Any, fault: str,
                                         settled: str) -> None:
    """A kill between PREPARE TRANSACTION on a shard and COMMIT PREPARED leaves the shard's
    table locked by a prepared transaction; the next ``maintain`` settles it, as resume does:
    committed when the decision row says commit, rolled back when no decision was made."""
    from tests.test_alter import prepared, remote_columns
    from tests.test_move import PART, add_server, make_table

    make_table(conn, rows=40)
    add_server(db, "db2", db2)
    r = cli("--dsn", db.dsn, "move", PART, "--to", "db2", "--yes", "--drop-source")
    assert r.returncode == 0, r.stderr
    r = cli("--dsn", db.dsn, "alter", '"Ex"', "ADD difficulty SMALLINT", "--yes",
            env={"PGCLEAVE_FAULT": fault})
    assert r.returncode == -9, r.stderr
    assert len(prepared(db2)) == 1
    # a dry run changes nothing, not even on the shards
    r = cli("--dsn", db.dsn, "maintain", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert len(prepared(db2)) == 1
    r = cli("--dsn", db.dsn, "maintain", "--json")
    assert r.returncode == 0, r.stderr
    recovered = json.loads(r.stdout)["recovered"]
    assert [x["action"] for x in recovered] == [settled], recovered
    assert prepared(db2) == []
    assert ("difficulty" in remote_columns(db2)) == (settled == "committed")
    state = conn.execute("SELECT state FROM pgcleave.twophase").fetchone()[0]
    assert state == ("done" if settled == "committed" else "aborted")
    r = cli("--dsn", db.dsn, "maintain")
    assert r.returncode == 0 and "recovered" not in r.stdout, r.stdout
