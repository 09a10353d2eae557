"""Retention: DETACH CONCURRENTLY left pending (for real) and finished by the next run; a run
killed between detach and archive resumed by the next run; pg_dump archives; drop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgcleave.archive import find_pg_tools, require_pg_dump


def make_monthly(conn: Any, default: bool = False) -> None:
    conn.execute("CREATE TABLE r (id bigserial, d date NOT NULL, v text, PRIMARY KEY (id, d))"
                 " PARTITION BY RANGE (d)")
    for m in range(1, 7):
        conn.execute(f"CREATE TABLE r_{m:02d} PARTITION OF r FOR VALUES FROM "
                     f"('2025-{m:02d}-01') TO ('2025-{m + 1:02d}-01')")
    if default:
        conn.execute("CREATE TABLE r_default PARTITION OF r DEFAULT")
    conn.execute("INSERT INTO r (d, v) SELECT '2025-01-01'::date + (i % 181), 'x' FROM "
                 "generate_series(1, 5000) i")


def pending(conn: Any) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'r'::regclass"
        " AND inhdetachpending")]


def test_detach_pending_finished_by_next_run(db: Any, conn: Any, cli: Any, tmp_path: Path
                                             ) -> None:
    make_monthly(conn)
    assert cli("--dsn", db.dsn, "config", "r", "--interval", "1 month", "--premake", "0",
               "--retention", "4 months", "--retention-action", "archive", "--archive-dir",
               str(tmp_path)).returncode == 0
    # an old reader keeps a snapshot: DETACH CONCURRENTLY's second phase waits for it, gives
    # up at lock_timeout, and the partition is left "detach pending"
    reader = psycopg.connect(db.dsn)
    reader.execute("SELECT count(*) FROM r")
    r = cli("--dsn", db.dsn, "--lock-retry-limit", "1", "maintain", "--now", "2025-06-10")
    assert r.returncode == 4, r.stdout + r.stderr
    assert pending(conn) == ["r_01"]
    c = cli("--dsn", db.dsn, "check", "--now", "2025-06-10")
    assert c.returncode == 1 and "detach-pending" in c.stdout and "job" in c.stdout
    reader.rollback()
    reader.close()
    r = cli("--dsn", db.dsn, "maintain", "--now", "2025-06-10", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["tables"][0]
    assert res["resumed"], "the failed job is resumed first"
    assert pending(conn) == []
    assert conn.execute("SELECT to_regclass('r_01') IS NULL AND to_regclass('r_02') IS NOT NULL"
                        ).fetchone()[0]
    man = json.loads((tmp_path / "public.r_01.json").read_text())
    assert man["rows"] > 0
    assert cli("--dsn", db.dsn, "check", "--now", "2025-06-10").returncode == 0


def test_kill_between_detach_and_archive(db: Any, conn: Any, cli: Any, tmp_path: Path) -> None:
    make_monthly(conn)
    before = conn.execute("SELECT count(*) FROM r WHERE d < '2025-02-01'").fetchone()[0]
    assert cli("--dsn", db.dsn, "config", "r", "--premake", "0", "--retention", "4 months",
               "--retention-action", "archive", "--archive-dir", str(tmp_path)).returncode == 0
    r = cli("--dsn", db.dsn, "maintain", "--now", "2025-06-10",
            env={"PGCLEAVE_FAULT": "kill-after:detach:r_01"})
    assert r.returncode == -9
    assert conn.execute("SELECT to_regclass('r_01') IS NOT NULL").fetchone()[0]  # detached
    r = cli("--dsn", db.dsn, "maintain", "--now", "2025-06-10")
    assert r.returncode == 0, r.stderr
    assert conn.execute("SELECT to_regclass('r_01') IS NULL").fetchone()[0]
    man = json.loads((tmp_path / "public.r_01.json").read_text())
    assert man["rows"] == before


def test_pg_dump_archive_restore_and_drop(db: Any, conn: Any, cli: Any, tmp_path: Path
                                          ) -> None:
    make_monthly(conn, default=True)
    jan = conn.execute("SELECT count(*) FROM r WHERE d < '2025-02-01'").fetchone()[0]
    assert cli("--dsn", db.dsn, "config", "r", "--premake", "0", "--retention", "4 months",
               "--retention-action", "archive", "--archive-format", "pg_dump",
               "--archive-dir", str(tmp_path)).returncode == 0
    dry = cli("--dsn", db.dsn, "maintain", "--now", "2025-06-10", "--dry-run")
    assert "plain DETACH" in dry.stdout and "pg_dump --format=custom" in dry.stdout
    r = cli("--dsn", db.dsn, "maintain", "--now", "2025-06-10")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "public.r_01.dump").exists()
    r = cli("--dsn", db.dsn, "restore", str(tmp_path / "public.r_01.dump"), "--yes")
    assert r.returncode == 0, r.stderr
    assert conn.execute("SELECT count(*) FROM r WHERE d < '2025-02-01'").fetchone()[0] == jan
    # now drop: the restored January goes again, without any file
    assert cli("--dsn", db.dsn, "config", "r", "--retention-action", "drop").returncode == 0
    r = cli("--dsn", db.dsn, "maintain", "--now", "2025-06-10", "--json")
    assert json.loads(r.stdout)["tables"][0]["done"]["dropped"] == ["public.r_01"]
    assert conn.execute("SELECT count(*) FROM r WHERE d < '2025-02-01'").fetchone()[0] == 0


def _partitions(conn: Any) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT c.oid::regclass::text, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'r'::regclass ORDER BY 1"
        ).fetchall()


def test_pg_dump_older_than_server_refused_before_detach(
        db: Any, conn: Any, cli: Any, tmp_path: Path, pg_version: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pg_dump older than the server would fail only after the detach: maintain refuses
    while planning (exit 3) and leaves the table as it was; with a new enough one it archives."""
    monkeypatch.delenv("PGCLEAVE_PG_DUMP", raising=False)
    found = find_pg_tools("pg_dump")
    old = [p for p, v in found if int(v.split(".")[0]) < pg_version]
    if not old:
        pytest.skip(f"needs a pg_dump older than the PostgreSQL {pg_version} server; found "
                    f"{[v for _, v in found]}")
    new = require_pg_dump(int(conn.info.server_version))
    make_monthly(conn)
    assert cli("--dsn", db.dsn, "config", "r", "--premake", "0", "--retention", "4 months",
               "--retention-action", "archive", "--archive-format", "pg_dump",
               "--archive-dir", str(tmp_path)).returncode == 0
    before = _partitions(conn)
    jobs = conn.execute("SELECT count(*) FROM pgcleave.jobs").fetchone()[0]
    r = cli("--dsn", db.dsn, "maintain", "r", "--now", "2025-06-10",
            env={"PGCLEAVE_PG_DUMP": str(old[0])})
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"PGCLEAVE_PG_DUMP={old[0]}" in r.stderr and "postgresql-client-" in r.stderr
    assert _partitions(conn) == before  # nothing detached
    assert ("r_01", "FOR VALUES FROM ('2025-01-01') TO ('2025-02-01')") in before
    assert conn.execute("SELECT count(*) FROM pgcleave.jobs").fetchone()[0] == jobs  # no job
    assert not list(tmp_path.iterdir())
    r = cli("--dsn", db.dsn, "maintain", "r", "--now", "2025-06-10",
            env={"PGCLEAVE_PG_DUMP": str(new)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "public.r_01.dump").exists()
    assert conn.execute("SELECT to_regclass('r_01') IS NULL").fetchone()[0]
    man = json.loads((tmp_path / "public.r_01.json").read_text())
    assert man["server_version"] // 10000 == pg_version and man["rows"] > 0
