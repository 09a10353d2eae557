"""``fill --jobs N``: several connections, each copying a disjoint share of the table, lose,
repeat and resurrect nothing under writers; a parallel fill killed in the middle resumes each
share where it stopped; the dry run says how many connections; ``--jobs auto`` stays within
the server's limits."""

from __future__ import annotations

import random
import re
import threading
import time
from typing import Any

import pytest

from pgcleave.connection import connect
from pgcleave.ddl.parallel import AUTO_MAX, resolve_jobs
from pgcleave.errors import Refused
from pgcleave.ops import copy as ops
from pgcleave.ops.copy_run import verify_copy
from pgcleave.testing.workload import Workload
from pgcleave.throttle import RateLimit
from tests.test_copy import _events, _ok
from tests.test_copy_kill import _job, _spec
from tests.test_fill import Mutator, check_mutations

PREP = ("prep", "events", "--by", "created_at", "--interval", "month", "--past", "11",
        "--future", "1", "--yes")


def _progress(conn: Any, job: str) -> dict[str, Any]:
    row = conn.execute("SELECT progress FROM pgcleave.steps WHERE job_id = %s AND idx = 0",
                       [int(job)]).fetchone()
    return dict(row[0])


def test_fill_jobs_2_never_resurrects_or_keeps_stale_rows(db: Any, conn: Any, cli: Any) -> None:
    """Deletes and key-moving updates of rows the two connections are copying: each batch
    holds its connection's advisory key, and the capture trigger's DELETE waits for both."""
    _events(conn, 20000)
    d = db.dsn
    _ok(cli("--dsn", d, *PREP))
    ids = list(range(1, 20001))
    random.Random(7).shuffle(ids)
    muts = [Mutator(d, ids[i::3], i) for i in range(3)]
    for m in muts:
        m.thread.start()
    r = _ok(cli("--dsn", d, "fill", "events", "--jobs", "2", "--batch-size", "150", "--yes"))
    check_mutations(conn, muts, r.stderr, least=30)
    assert re.search(r"fill done: [\d,]+ rows copied in \d+ batches on 2 connections", r.stderr)
    # two shares of the blocks, end to end, each copied to its end
    job = re.search(r"job (\d+)", r.stderr)
    assert job
    ranges = _progress(conn, job.group(1))["ranges"]
    assert sorted(ranges) == ["0", "1"]
    assert ranges["0"]["from"] == 0 < ranges["0"]["blocks"] == ranges["1"]["from"]
    assert all(r["finished"] and r["block"] == r["blocks"] and r["done"] > 3000
               for r in ranges.values())


def test_kill_parallel_fill_by_key_then_resume(db: Any, conn: Any, cli: Any) -> None:
    """Killed after a few batches of a two-connection fill by key under writers: each share
    resumes after its last committed batch, and nothing is lost or repeated."""
    _events(conn, 12000)
    d = db.dsn
    w = Workload(d, _spec(), writers=3, max_seconds=60, pause_s=0.002)
    with w:
        _ok(cli("--dsn", d, *PREP))
        r = cli("--dsn", d, "fill", "events", "--jobs", "2", "--order", "key", "--batch-size",
                "500", "--yes", env={"PGCLEAVE_FAULT": "kill-fill-after-batches:4"})
        assert r.returncode == -9, r.stderr
        job = _job(r.stderr)
        saved = _progress(conn, job)
        assert saved["jobs"] == 2
        first, second = saved["ranges"]["0"], saved["ranges"]["1"]
        # the key range cut in two at a sampled median: share 0 stops where share 1 starts
        assert first["stop"] is not None and second["stop"] is None
        # (in the key's order, not its text's: '5999' would sort after '12000')
        assert 5000 < int(first["stop"][0]) < 7500
        assert 1 <= first["batches"] + second["batches"] <= 5
        assert not (first["finished"] and second["finished"])
        r = _ok(cli("--dsn", d, "resume", job))
        assert "on 2 connections" in r.stderr
        done = _progress(conn, job)
        for k in ("0", "1"):
            assert done["ranges"][k]["finished"]
            assert done["ranges"][k]["batches"] >= saved["ranges"][k]["batches"]
        # share 0 ended by its stop: its last batch's lower bound is below it
        assert int(done["ranges"]["0"]["last"][0]) <= int(saved["ranges"]["0"]["stop"][0])
        assert verify_copy(conn, "events").ok
    w.verify(conn)


def test_dry_run_says_connections_and_auto_stays_in_limits(db: Any, conn: Any,
                                                          cli: Any) -> None:
    """The plan names the connections of the fill and of the deferred index builds (with the
    maintenance_work_mem of each); --jobs auto resolves within the server's limits; a --jobs
    beyond the limit changes nothing; then a fill and index build on 2 connections."""
    _events(conn, 500)
    d = db.dsn
    _ok(cli("--dsn", d, *PREP, "--defer-indexes"))
    r = _ok(cli("--dsn", d, "fill", "events", "--jobs", "3", "--dry-run"))
    assert "on 3 connections at once" in r.stdout and "-- 3 connections" in r.stdout
    assert "($connection << 32)" in r.stdout
    assert re.search(r"3 builds at once with maintenance_work_mem = \d+ MB each", r.stdout)
    with connect(d) as c:
        mpw = int(c.execute("SHOW max_parallel_workers").fetchone()[0])
        auto = resolve_jobs(c, "auto", limit=8)
        plan = ops.plan_fill(c, "events", jobs="auto")
        with pytest.raises(Refused, match="out of range"):
            ops.plan_fill(c, "events", jobs=99)
    assert 1 <= auto.n <= min(AUTO_MAX, mpw) and "--jobs auto" in auto.reason
    assert plan.steps[0].params.get("jobs", 1) == auto.n
    assert conn.execute("SELECT count(*) FROM events_intermediate").fetchone()[0] == 0
    _ok(cli("--dsn", d, "fill", "events", "--jobs", "2", "--yes"))
    assert conn.execute("SELECT count(*) FROM events_intermediate").fetchone()[0] == 500
    # the deferred indexes: valid on the parent and on every partition
    assert conn.execute("SELECT count(*) FROM pg_index WHERE indrelid ="
                        " 'events_intermediate'::regclass AND indisvalid").fetchone()[0] == 3
    assert conn.execute(
        "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'events_intermediate'::regclass AND (SELECT count(*) FROM pg_index"
        " x WHERE x.indrelid = c.oid AND x.indisvalid) <> 3").fetchone()[0] == 0


def test_max_rate_counts_every_connection_together() -> None:
    """--max-rate is the copy's total: two connections adding 1,000 rows each at 1,000 rows/s
    are held back to about 2 s together (one per connection would let them finish in 1 s)."""
    rate = RateLimit(1000.0)
    t0 = time.monotonic()

    def copy() -> None:
        for _ in range(10):
            rate.add(100)

    threads = [threading.Thread(target=copy) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - t0 >= 1.9
