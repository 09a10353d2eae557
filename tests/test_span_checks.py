"""A split's CHECK on a DEFAULT left by a killed job: ``status`` names it with its job and
the fix; maintain's recovery pass leaves it while its job is unfinished, and drops it (under
a short lock_timeout, saying so) once no unfinished job owns it; the rows are untouched."""

from __future__ import annotations

import json
import time
from typing import Any

from pgcleave.span_checks import DROP_LOCK_TIMEOUT_MS, Dropped, drop_unowned
from tests.test_reslice_default import _killed


def _table(conn: Any) -> None:
    conn.execute("CREATE TABLE sp (id bigserial, d date NOT NULL, PRIMARY KEY (id, d))"
                 " PARTITION BY RANGE (d)")
    for m in range(1, 7):
        conn.execute(f"CREATE TABLE sp_{m} PARTITION OF sp FOR VALUES FROM ('2025-{m:02d}-01')"
                     f" TO ('2025-{m + 1:02d}-01')")
    conn.execute("CREATE TABLE sp_default PARTITION OF sp DEFAULT")
    conn.execute("INSERT INTO sp (d) SELECT '2025-01-01'::date + i % 180"
                 " FROM generate_series(1, 1800) i")


def _checks(conn: Any) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'sp_default'::regclass"
        " AND contype = 'c' ORDER BY conname")]


def _flagged(stdout: str) -> list[str]:
    return [ln for ln in stdout.splitlines() if ln.startswith(("UNFINISHED JOB", "LEFTOVER"))]


def test_status_and_maintain_with_a_span_check_left_by_a_killed_split(db: Any, conn: Any,
                                                                     cli: Any) -> None:
    _table(conn)
    d = ("--dsn", db.dsn)
    assert cli(*d, "config", "sp", "--interval", "1 month", "--premake", "0").returncode == 0
    rows = conn.execute("SELECT count(*), sum(id) FROM sp").fetchone()
    oid = conn.execute("SELECT 'sp_3'::regclass::oid").fetchone()[0]
    con = f"pgcleave_span_{oid}"
    assert _flagged(cli(*d, "status", "sp").stdout) == []

    _killed(cli, d, ["split", "sp_3", "--at", "2025-03-16"], "carve-exclude-default")
    job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
    assert _checks(conn) == [con]
    r = cli(*d, "status", "sp")
    assert r.returncode == 0, r.stderr
    assert _flagged(r.stdout) == [
        f"UNFINISHED JOB: CHECK {con} on the DEFAULT sp_default (it refuses the rows of the span "
        f"being re-cut once one of their partitions is detached): left by job {job} (split), "
        f"unfinished; `pgcleave resume {job}` finishes the job and drops it, `pgcleave "
        f"rollback {job}` drops it"], r.stdout
    st = json.loads(cli(*d, "status", "sp", "--json").stdout)
    assert [(s["constraint"], s["default"], s["job"], s["operation"], s["alive"])
            for s in st["span_checks"]] == [(con, "public.sp_default", job, "split", False)]

    # its job is unfinished: the recovery pass leaves it to that job's resume or rollback
    r = cli(*d, "maintain", "--json")
    out = json.loads(r.stdout)
    assert out["recovered"] == [], out
    assert "skipped" in out["tables"][0], out
    assert _checks(conn) == [con]

    # the job forgotten (its journal rows deleted by hand): nothing owns the CHECK any more
    conn.execute("DELETE FROM pgcleave.jobs WHERE id = %s", [job])
    r = cli(*d, "status", "sp")
    assert _flagged(r.stdout) == [
        f"LEFTOVER CHECK: CHECK {con} on the DEFAULT sp_default is left by a split or merge "
        "that no unfinished job owns: it refuses the rows of its span once one of their "
        f"partitions is detached; drop it (`ALTER TABLE sp_default DROP CONSTRAINT {con}`; "
        "`pgcleave maintain` drops it too)"], r.stdout
    r = cli(*d, "maintain", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["recovered"] == [
        {"check": con, "table": "public.sp_default", "action": "dropped"}]
    assert _checks(conn) == []
    assert _flagged(cli(*d, "status", "sp").stdout) == []
    assert conn.execute("SELECT count(*), sum(id) FROM sp").fetchone() == rows
    assert cli(*d, "check", "sp", "--now", "2025-03-10").returncode == 0

    # said in the text output too
    conn.execute("ALTER TABLE sp_default ADD CONSTRAINT pgcleave_span_1 CHECK (d < '2025-01-01'"
                 " OR d >= '2025-07-01') NOT VALID")
    r = cli(*d, "maintain")
    assert r.returncode == 0, r.stderr
    assert ("recovered: CHECK pgcleave_span_1 dropped from the DEFAULT sp_default (a split's or "
            "merge's that no unfinished job owned)") in r.stdout, r.stdout
    assert _checks(conn) == []


def test_the_recovery_pass_waits_briefly_and_leaves_a_busy_table(db: Any, conn: Any) -> None:
    """A DEFAULT locked by a reader: the drop gives up after its short lock_timeout (the
    next run tries again); a table a job runs on (its advisory lock held): left alone."""
    _table(conn)
    conn.execute("ALTER TABLE sp_default ADD CONSTRAINT pgcleave_span_1 CHECK (d < '2025-01-01'"
                 " OR d >= '2025-07-01') NOT VALID")
    with db.connect() as me, db.connect() as other:
        with other.transaction():
            other.execute("LOCK TABLE sp_default IN ACCESS SHARE MODE")
            t0 = time.monotonic()
            assert drop_unowned(me) == []
            waited = (time.monotonic() - t0) * 1000
        print(f"gave up after {waited:.0f} ms (lock_timeout {DROP_LOCK_TIMEOUT_MS} ms)")
        assert DROP_LOCK_TIMEOUT_MS <= waited < DROP_LOCK_TIMEOUT_MS + 1000, waited
        other.execute("SELECT pg_advisory_lock(hashtextextended('pgcleave:public.sp', 0))")
        assert drop_unowned(me) == []
        assert _checks(conn) == ["pgcleave_span_1"]
        other.execute("SELECT pg_advisory_unlock_all()")
        assert [str(x) for x in drop_unowned(me)] == [str(Dropped(
            _name("sp_default"), "pgcleave_span_1"))]
        assert me.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                          " AND pid = pg_backend_pid()").fetchone() == (0,)
    assert _checks(conn) == []


def _name(n: str) -> Any:
    from pgcleave.names import QualifiedName

    return QualifiedName("public", n)
