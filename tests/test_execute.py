"""The executor: dry run, journal, kill -9 and resume, lock_timeout retry, overlap, rollback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest

from pgcleave import journal
from pgcleave.cli import common
from pgcleave.connection import Settings
from pgcleave.errors import Busy, LockContention
from pgcleave.execute import Event, Executor
from pgcleave.plan import Lock, LockTaken, Plan, Step
from tests.plans import three_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_plan_process(dsn: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PGCLEAVE_FAULT", None)
    if fault:
        env["PGCLEAVE_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "tests.plans", dsn], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_dry_run_prints_sql_and_changes_nothing(db: Any, capsys: Any) -> None:
    plan = three_steps()
    common.execute(plan, dry_run=True, yes=False)
    out = capsys.readouterr().out
    assert 'CREATE TABLE "public"."things" (id int PRIMARY KEY, v text);' in out
    assert "locks: ACCESS EXCLUSIVE on things" in out
    assert "autocommit, not in a transaction" in out
    assert "undo: DROP TABLE" in out
    with db.connect() as c:
        assert c.execute("SELECT to_regclass('public.things')").fetchone() == (None,)
        # not even the journal schema was created
        assert c.execute("SELECT to_regnamespace('pgcleave')").fetchone() == (None,)
    common.execute(plan, dry_run=True, yes=False, as_json=True)
    data = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in data["steps"]] == ["create", "fill", "index"]


@pytest.mark.parametrize("fault", ["kill-after:create", "kill-inside:fill", "kill-after:fill",
                                   "kill-before:index"])
def test_killed_job_resumes_to_the_end(db: Any, cli: Any, fault: str) -> None:
    r = run_plan_process(db.dsn, fault)
    assert r.returncode == -9, (r.returncode, r.stderr)
    with db.connect() as c:
        jobs = journal.list_jobs(c)
        assert len(jobs) == 1 and jobs[0].state == "running"
    r = cli("--dsn", db.dsn, "jobs", "--json")
    assert json.loads(r.stdout)[0]["state"] == "running"
    # a new run on the same table is refused while the job is unfinished
    again = run_plan_process(db.dsn)
    assert again.returncode != 0 and "is unfinished" in again.stderr
    r = cli("--dsn", db.dsn, "resume", str(jobs[0].id))
    assert r.returncode == 0, r.stderr
    with db.connect() as c:
        # exactly 100 rows: the fill step ran once even though it has no guard
        assert c.execute("SELECT count(*), count(DISTINCT id) FROM things").fetchone() == (100, 100)
        assert c.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = "
                         "'things_v'::regclass").fetchone() == (True,)
        states = [r[0] for r in c.execute("SELECT state FROM pgcleave.steps ORDER BY idx")]
        assert all(s in ("done", "skipped") for s in states)
        assert journal.list_jobs(c)[0].state == "done"
    r = cli("--dsn", db.dsn, "resume", str(jobs[0].id))
    assert r.returncode == 3 and "already done" in r.stderr


def test_rollback_undoes_done_steps(db: Any, cli: Any) -> None:
    r = run_plan_process(db.dsn, "kill-after:fill")
    assert r.returncode == -9
    r = cli("--dsn", db.dsn, "rollback", "1")
    assert r.returncode == 0, r.stderr
    with db.connect() as c:
        assert c.execute("SELECT to_regclass('public.things')").fetchone() == (None,)
        assert journal.list_jobs(c)[0].state == "rolled back"


def test_lock_wait_retries_and_never_blocks_readers_long(db: Any) -> None:
    """A DDL step behind a long transaction gives up its place in the lock queue every
    lock_timeout, so a concurrent reader waits at most about that long, never until the
    long transaction ends."""
    with db.connect() as c:
        c.execute("CREATE TABLE busy (id int PRIMARY KEY)")
        c.execute("INSERT INTO busy SELECT generate_series(1, 1000)")
    holder = psycopg.connect(db.dsn)
    holder.execute("SELECT count(*) FROM busy")  # holds ACCESS SHARE until commit
    stop = threading.Event()
    waits: list[float] = []

    def reader() -> None:
        with psycopg.connect(db.dsn, autocommit=True) as r:
            while not stop.is_set():
                t0 = time.monotonic()
                r.execute("SELECT count(*) FROM busy")
                waits.append(time.monotonic() - t0)
                time.sleep(0.01)

    th = threading.Thread(target=reader)
    th.start()
    events: list[Event] = []
    plan = Plan("alter", "public.busy", {}, [Step.sql(
        "add-column", "add a column", ["ALTER TABLE public.busy ADD COLUMN note text"],
        locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, "busy")])])
    result: dict[str, Any] = {}

    def run() -> None:
        result["job"] = Executor(Settings(dsn=db.dsn, lock_timeout_ms=100), events.append).run(
            plan)

    runner = threading.Thread(target=run)
    runner.start()
    time.sleep(2.0)
    holder.commit()  # the long transaction ends; the step can now get its lock
    holder.close()
    runner.join(timeout=30)
    stop.set()
    th.join(timeout=10)
    retries = [e for e in events if e.kind == "retry"]
    assert result.get("job"), "the step never completed"
    assert len(retries) >= 3, f"expected the step to retry while blocked, got {len(retries)}"
    worst = max(waits)
    print(f"\nlongest reader wait: {worst * 1000:.0f} ms over {len(waits)} reads, "
          f"{len(retries)} lock retries")
    assert worst < 0.5, f"a reader waited {worst * 1000:.0f} ms behind the DDL"
    with db.connect() as c:
        assert c.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = "
                         "'busy' AND column_name = 'note'").fetchone() == (1,)


def test_lock_contention_gives_up_with_exit_code(db: Any) -> None:
    with db.connect() as c:
        c.execute("CREATE TABLE busy (id int)")
    holder = psycopg.connect(db.dsn)
    holder.execute("SELECT * FROM busy")
    plan = Plan("alter", "public.busy", {}, [Step.sql(
        "add-column", "add a column", ["ALTER TABLE public.busy ADD COLUMN note text"],
        locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, "busy")])])
    with pytest.raises(LockContention) as exc:
        Executor(Settings(dsn=db.dsn, lock_timeout_ms=50, lock_retry_limit_s=1.0)).run(plan)
    assert exc.value.exit_code == 4 and "pgcleave resume" in (exc.value.hint or "")
    holder.close()
    with db.connect() as c:
        assert journal.list_jobs(c)[0].state == "failed"


def test_two_runs_on_one_table_never_overlap(db: Any) -> None:
    with db.connect() as c:
        c.execute("CREATE TABLE t (id int)")
    blocker = psycopg.connect(db.dsn)
    blocker.execute("SELECT * FROM t")  # makes the first run wait for its lock
    plan = Plan("alter", "public.t", {}, [Step.sql(
        "add-column", "add a column", ["ALTER TABLE public.t ADD COLUMN a int"],
        locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, "t")])])
    first = threading.Thread(target=lambda: Executor(Settings(dsn=db.dsn)).run(plan))
    first.start()
    time.sleep(0.5)
    with pytest.raises(Busy, match=r"another pgcleave run is working on public\.t"):
        Executor(Settings(dsn=db.dsn)).run(plan)
    blocker.close()
    first.join(timeout=30)
