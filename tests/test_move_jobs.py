"""``move --method copy --jobs N``: N pairs of connections, each copying a disjoint range of
the primary key in one exported snapshot; under writers nothing is lost or repeated, out and
back; killed after a share was recorded, the resume copies again only the shares not
recorded (deleting what a cut-short one left on the destination); --max-rate bounds the
rows per second of every pair together, and of the one-pair copy; a move by replication
refuses --jobs and --max-rate."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest
from psycopg import sql

from pgcleave.errors import Refused
from pgcleave.ops.move import plan_move
from pgcleave.testing.workload import Spec, Workload
from tests.test_move import PART, add_server, location, make_table, snapshot_rows
from tests.test_move_copy import capture_leftovers, last_job, move


@pytest.fixture
def big(db: Any, db2: Any, conn: Any) -> Any:
    make_table(conn, rows=24000)
    conn.execute('ANALYZE "Ex"')
    add_server(db, "db2", db2)
    return conn


def _spec() -> Spec:
    return Spec(table=sql.Identifier("public", "Ex"), key_col="tenant",
                make_key=lambda r: random.choice(["Dory", "Dx", "Dz", "Duck"]),
                payload_col="payload")


def _shares(conn: Any, job: int) -> dict[str, Any]:
    row = conn.execute("SELECT progress FROM pgcleave.steps WHERE job_id = %s AND name = 'copy'",
                       [job]).fetchone()
    return dict(row[0]).get("shares", {})


def test_move_copy_jobs_2_round_trip_with_writers(db: Any, db2: Any, big: Any,
                                                  cli: Any) -> None:
    conn = big
    dry = move(cli, db, "db2", "--jobs", "2", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "on 2 pairs of connections (--jobs 2)" in dry.stdout
    assert "SELECT pg_export_snapshot()" in dry.stdout
    w = Workload(db.dsn, _spec(), writers=3, seed=5).start()
    try:
        w.run_for(0.3)
        r = move(cli, db, "db2", "--jobs", "2")
        assert r.returncode == 0, r.stderr
        assert "2 connection pairs" in r.stderr
        assert location(conn) == 'f:"Ex"'
        out = _shares(conn, last_job(conn))
        w.run_for(0.3)
        r = move(cli, db, "local", "--drop-source", "--jobs", "2")
        assert r.returncode == 0, r.stderr
        w.run_for(0.2)
    finally:
        w.stop()
    assert location(conn) == 'r:"Ex"'
    w.verify(conn)
    assert w.ops.get("move", 0) > 5, w.summary()
    # two shares cut at a sampled median of the uuid key, each about half the rows
    assert sorted(out) == ["0", "1"] and out["0"]["upto"] == out["1"]["after"]
    assert all(s["done"] and 3000 < s["rows"] < 9000 for s in out.values()), out
    with db2.connect() as rc:
        assert capture_leftovers(conn, rc) == []


def test_kill_move_copy_jobs_then_resume(db: Any, db2: Any, big: Any, cli: Any) -> None:
    """Killed once the first share is recorded (the other may be committed on the shard and
    not recorded, or cut short): the resume copies the rest again and the rows are exact."""
    conn = big
    w = Workload(db.dsn, _spec(), writers=3, seed=9).start()
    try:
        w.run_for(0.3)
        r = move(cli, db, "db2", "--jobs", "2",
                 env={"PGCLEAVE_FAULT": "kill-move-after-shares:1"})
        assert r.returncode == -9, r.stderr
        job = last_job(conn)
        shares = _shares(conn, job)
        assert sum(bool(s.get("done")) for s in shares.values()) == 1, shares
        # the job's args say how it copies: `jobs` and the report show it
        listed = json.loads(cli("--dsn", db.dsn, "jobs", "--json").stdout)
        assert [j["args"] for j in listed if j["id"] == job] == [
            {"partition": f"public.{PART}", "to": "db2", "drop_source": False, "method": "copy",
             "jobs": 2}], listed
        assert "jobs=2" in cli("--dsn", db.dsn, "jobs", "--unfinished").stdout
        w.run_for(0.4)
        r = cli("--dsn", db.dsn, "resume", str(job))
        assert r.returncode == 0, r.stderr
        assert "2 connection pairs" in r.stderr  # the resume copies on as many
        w.run_for(0.2)
    finally:
        w.stop()
    assert location(conn) == 'f:"Ex"'
    assert all(s["done"] for s in _shares(conn, job).values())
    w.verify(conn)


def test_move_by_replication_refuses_jobs(db: Any, db2: Any, big: Any) -> None:
    with pytest.raises(Refused, match="one table sync worker"):
        plan_move(big, PART, to="db2", method="replication", jobs=2)


def _copied(stderr: str) -> tuple[int, float]:
    """The bulk copy's rows and seconds, from its progress line."""
    m = re.search(r"copied ([\d,]+) rows in ([\d.]+) s \(", stderr)
    assert m, stderr
    return int(m.group(1).replace(",", "")), float(m.group(2))


def _copy_params(conn: Any, job: int) -> dict[str, Any]:
    row = conn.execute("SELECT plan FROM pgcleave.jobs WHERE id = %s", [job]).fetchone()
    plan = row[0] if isinstance(row[0], dict) else json.loads(row[0])
    assert plan["args"]["max_rate"] == 2000
    return next(s["params"] for s in plan["steps"] if s["name"] == "copy")


def test_move_copy_max_rate_counts_every_pair_together(db: Any, db2: Any, conn: Any,
                                                       cli: Any) -> None:
    """3,000 rows at --max-rate 2000 take at least 1.5 s, out on two pairs of connections (at
    2,000 rows/s each they would take 0.75 s) and back on one; the rate is in the plan, the
    dry run says it, and the rows are exact under writers."""
    make_table(conn, rows=6000)  # half of them in the partition
    add_server(db, "db2", db2)
    dry = move(cli, db, "db2", "--jobs", "2", "--max-rate", "2000", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "at most 2,000 rows/s together" in dry.stdout, dry.stdout
    w = Workload(db.dsn, _spec(), writers=1, seed=21).start()
    try:
        w.run_for(0.3)
        r = move(cli, db, "db2", "--drop-source", "--jobs", "2", "--max-rate", "2000")
        assert r.returncode == 0, r.stderr
        out = _copied(r.stderr)
        p = _copy_params(conn, last_job(conn))
        assert p["max_rate"] == 2000 and p["jobs"] == 2
        w.run_for(0.3)
        r = move(cli, db, "local", "--drop-source", "--max-rate", "2000")
        assert r.returncode == 0, r.stderr
        back = _copied(r.stderr)
        assert _copy_params(conn, last_job(conn))["max_rate"] == 2000
        w.run_for(0.2)
    finally:
        w.stop()
    print("paced copies (rows, s):", out, back)
    for rows, s in (out, back):
        # a lower bound: the rate minus the rows of the last count not yet slept for
        assert rows >= 3000 and s >= (rows - 40) / 2000 - 0.05, (rows, s)
    assert location(conn) == 'r:"Ex"'
    w.verify(conn)
    with db2.connect() as rc:
        assert capture_leftovers(conn, rc) == []
    before = snapshot_rows(conn)
    r = move(cli, db, "db2")  # unpaced, for the figure
    assert r.returncode == 0, r.stderr
    print("unpaced copy (rows, s):", _copied(r.stderr))
    assert snapshot_rows(conn) == before


def test_killed_paced_move_resumes_at_the_rate(db: Any, db2: Any, conn: Any, cli: Any) -> None:
    """Killed once its first share is recorded, a move at --max-rate 2000 resumes at that
    rate (journaled with the copy step): the share copied again takes at least its rows over
    the rate; the rows are exact."""
    make_table(conn, rows=6000)
    add_server(db, "db2", db2)
    before = snapshot_rows(conn)
    r = move(cli, db, "db2", "--jobs", "2", "--max-rate", "2000",
             env={"PGCLEAVE_FAULT": "kill-move-after-shares:1"})
    assert r.returncode == -9, r.stderr
    job = last_job(conn)
    first = {k for k, x in _shares(conn, job).items() if x.get("done")}
    r = cli("--dsn", db.dsn, "resume", str(job))
    assert r.returncode == 0, r.stderr
    _, s = _copied(r.stderr)
    again = [x["rows"] for k, x in _shares(conn, job).items() if k not in first]
    print(f"resumed share(s) of {again} rows in {s} s at --max-rate 2000")
    assert len(again) == 1 and again[0] > 1000 and s >= again[0] / 2000 - 0.05, (again, s)
    assert location(conn) == 'f:"Ex"' and snapshot_rows(conn) == before


def test_move_by_replication_refuses_max_rate(db: Any, db2: Any, big: Any) -> None:
    with pytest.raises(Refused, match="cannot pace"):
        plan_move(big, PART, to="db2", method="replication", max_rate=1000)
