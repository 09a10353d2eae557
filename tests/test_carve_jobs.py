"""``--jobs N`` for carve's bulk copy (carve, the DEFAULT drain of maintain, split, merge,
reslice): N connections copy disjoint block ranges in one exported snapshot, each range
committed with its journal row (``pgcleave.step_parts``); under writers nothing is lost or
repeated; killed in the middle, a resume copies only the ranges not committed (in a second
snapshot, set right by a replay before the index builds); the plan says how many
connections."""

from __future__ import annotations

import re
from typing import Any

from psycopg import sql

from pgcleave.ops.maintain import plan_maintain
from pgcleave.ops.reslice import plan_split
from pgcleave.testing.workload import Workload
from tests.test_carve import _spec, _tenants_table, bounds, ok, one
from tests.test_drain import T, make_table, no_leftovers
from tests.test_drain import spec as drain_spec

CARVE = ("carve", "acc", "--from", "B", "--to", "D", "--method", "swap")


def _job(stderr: str) -> int:
    m = re.search(r"job (\d+)", stderr)
    assert m, stderr
    return int(m.group(1))


def _parts(conn: Any, job: int) -> list[dict[str, Any]]:
    return [dict(r[0]) for r in conn.execute(
        "SELECT progress FROM pgcleave.step_parts WHERE job_id = %s ORDER BY part", [job])]


def _carved(conn: Any, rows: int) -> None:
    """acc's rows all there, each once, those of [B, D) in their new partition."""
    assert one(conn, "SELECT count(*) FROM acc") == rows
    assert one(conn, "SELECT count(DISTINCT id) FROM acc") == rows
    b = bounds(conn, "acc")
    assert "FOR VALUES FROM ('B') TO ('D')" in b.values()
    assert one(conn, "SELECT count(*) FROM acc_old WHERE tenant >= 'B' AND tenant < 'D'") == 0
    assert conn.execute("SELECT relname FROM pg_class WHERE relname LIKE '%%pgcleave%%'"
                        " AND relnamespace = 'public'::regnamespace").fetchall() == []


def test_carve_jobs_2_under_writers(db: Any, conn: Any, cli: Any) -> None:
    """Two connections copy the DEFAULT's blocks (two shares, end to end) while four writers
    insert, update, move keys across the carved range and delete; the plan says so first."""
    _tenants_table(conn, 40000)
    d = ("--dsn", db.dsn)
    ok(cli(*d, "partition", "acc", "--by", "range(tenant)", "--yes"))
    dry = ok(cli(*d, *CARVE, "--jobs", "2", "--dry-run"))
    assert "on 2 connection(s) at once (--jobs 2) in one exported snapshot" in dry.stdout
    assert "SET TRANSACTION SNAPSHOT '$snapshot'" in dry.stdout
    w = Workload(db.dsn, _spec(), writers=4, max_seconds=90).start()
    try:
        w.run_for(0.3)
        r = ok(cli(*d, *CARVE, "--jobs", "2", "--yes"))
        w.run_for(0.3)
    finally:
        w.stop()
    print(w.summary(), r.stderr)
    assert re.search(r"copied [\d,]+ rows in [\d.]+ s on 2 connection", r.stderr)
    assert "verified" in r.stderr
    w.verify(conn)
    assert w.ops.get("move", 0) > 10
    parts = _parts(conn, _job(r.stderr))
    shares = {p["share"] for p in parts}
    assert shares == {0, 1}
    assert sum(p["last"] for p in parts) == 2
    # share 0 ends where share 1 starts; share 1 is open-ended
    ends = {p["share"]: p["hi"] for p in parts if p["last"]}
    assert ends[1] is None and min(p["lo"] for p in parts if p["share"] == 1) == ends[0]
    b = bounds(conn, "acc")
    assert "FOR VALUES FROM ('B') TO ('D')" in b.values()
    for name in b:  # the primary key and the payload index on every partition
        assert one(conn, "SELECT count(*) FROM pg_indexes WHERE tablename = %s", name) == 2


def test_kill_parallel_carve_then_resume(db: Any, conn: Any, cli: Any) -> None:
    """Killed after three committed ranges of a two-connection copy under writers: the
    resume copies only the ranges left (in a second snapshot), replays the keys written
    since the first before building the indexes, and every committed write is there once."""
    _tenants_table(conn, 60000)
    d = ("--dsn", db.dsn)
    ok(cli(*d, "partition", "acc", "--by", "range(tenant)", "--yes"))
    w = Workload(db.dsn, _spec(), writers=3, max_seconds=90).start()
    try:
        w.run_for(0.3)
        r = cli(*d, *CARVE, "--jobs", "2", "--yes",
                env={"PGCLEAVE_FAULT": "kill-carve-after-ranges:3"})
        assert r.returncode == -9, r.stderr
        job = _job(r.stderr)
        before = _parts(conn, job)
        assert 3 <= len(before) <= 4 and sum(p["last"] for p in before) < 2, before
        w.run_for(0.5)  # writes between the two snapshots
        res = ok(cli(*d, "resume", str(job)))
        w.run_for(0.3)
    finally:
        w.stop()
    print(w.summary(), res.stderr)
    assert "resumed in a second snapshot" in res.stderr
    after = _parts(conn, job)
    # the ranges of the first run are kept, none copied twice
    assert [p for p in after if p in before] == before
    assert sum(p["last"] for p in after) == 2
    assert len({(p["share"], p["lo"]) for p in after}) == len(after)
    w.verify(conn)
    assert one(conn, "SELECT count(*) FROM acc_old WHERE tenant >= 'B' AND tenant < 'D'") == 0


def test_source_rewritten_between_runs_copies_again(db: Any, conn: Any, cli: Any) -> None:
    """A VACUUM FULL of the source between the kill and the resume renumbers its rows, which
    nothing logs: the resume sees the new filenode and copies everything again."""
    _tenants_table(conn, 60000)
    d = ("--dsn", db.dsn)
    ok(cli(*d, "partition", "acc", "--by", "range(tenant)", "--yes"))
    conn.execute("DELETE FROM acc WHERE id % 3 = 0")  # VACUUM FULL then moves the rest
    r = cli(*d, *CARVE, "--jobs", "2", "--yes",
            env={"PGCLEAVE_FAULT": "kill-carve-after-ranges:2"})
    assert r.returncode == -9, r.stderr
    conn.execute("VACUUM FULL acc_old")
    res = ok(cli(*d, "resume", str(_job(r.stderr))))
    assert "copying again from the start" in res.stderr
    _carved(conn, 40000)


def test_drain_with_jobs(db: Any, conn: Any, cli: Any) -> None:
    """maintain --jobs 2 drains the DEFAULT on two connections under writers."""
    make_table(conn)
    d = ("--dsn", db.dsn)
    ok(cli(*d, "config", f'"{T}"', "--interval", "1 month", "--premake", "1"))
    plan, _ = plan_maintain(conn, f'"{T}"', jobs=2)
    copy = [s for s in plan.steps if s.action == "carve.copy"]
    assert copy and copy[0].params["parallel"]["jobs"] == 2
    w = Workload(db.dsn, drain_spec(), writers=3, max_seconds=90).start()
    try:
        w.run_for(0.3)
        r = ok(cli(*d, "maintain", "--jobs", "2", "--now", "2025-10-15"))
        w.run_for(0.2)
    finally:
        w.stop()
    assert re.search(r"copied [\d,]+ rows in [\d.]+ s on 2 connection", r.stderr), r.stderr
    w.verify(conn)
    assert one(conn, sql.SQL("SELECT count(*) FROM ONLY {}").format(
        sql.Identifier(T + " def"))) == 0
    no_leftovers(conn)


def test_split_and_merge_with_jobs(db: Any, conn: Any, cli: Any) -> None:
    """split --jobs 2 and merge --jobs 2 (two sources, each cut into two shares) end to end;
    --max-rate is journaled with the copy."""
    conn.execute("CREATE TABLE s (id bigint PRIMARY KEY, v text) PARTITION BY RANGE (id)")
    conn.execute("CREATE TABLE s_all PARTITION OF s FOR VALUES FROM (0) TO (100000)")
    conn.execute("INSERT INTO s SELECT i, md5(i::text) FROM generate_series(0, 99999, 3) i")
    digest = "SELECT count(*), sum(hashtext(v)::bigint) FROM s"
    want = conn.execute(digest).fetchone()
    d = ("--dsn", db.dsn)
    plan = plan_split(conn, "s_all", at=["50000"], jobs=2, max_rate=5000)
    par = next(x for x in plan.steps if x.action == "carve.copy").params["parallel"]
    assert par["jobs"] == 2 and par["max_rate"] == 5000.0
    r = ok(cli(*d, "split", "s_all", "--at", "50000", "--names", "s_lo,s_hi", "--jobs", "2",
               "--yes"))
    assert re.search(r"copied 33,334 rows in [\d.]+ s on 2 connection", r.stderr), r.stderr
    assert sorted(bounds(conn, "s")) == ["s_hi", "s_lo"]
    assert conn.execute(digest).fetchone() == want
    r = ok(cli(*d, "merge", "s_lo", "s_hi", "--name", "s_all", "--jobs", "2", "--yes"))
    parts = _parts(conn, _job(r.stderr))
    assert {p["share"] for p in parts} == {0, 1, 2, 3}  # two per source
    assert sorted(bounds(conn, "s")) == ["s_all"]
    assert conn.execute(digest).fetchone() == want
