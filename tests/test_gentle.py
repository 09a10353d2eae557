"""Gentle bulk work: an application UPDATE of a row the running fill batch holds returns within
the batch-time bound (and waits for a whole batch without it); ``--max-load`` pauses the fill
and it goes on by itself; ``--critical-load`` stops it resumably and ``resume`` finishes with
nothing lost; the limits are refused before anything changes when malformed."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest

from pgcleave.errors import UsageError
from pgcleave.ops.copy_run import verify_copy
from pgcleave.testing.workload import Workload
from pgcleave.throttle import Limits, Load, Pacer, parse_limits
from tests.test_copy import _events, _ok, _spec


class Updater:
    """Plain UPDATEs of random existing rows, each its own transaction, timed."""

    def __init__(self, dsn: str, rows: int, seed: int) -> None:
        self.dsn, self.rows, self.rng = dsn, rows, random.Random(seed)
        self.durations: list[float] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            while not self.stop.is_set():
                rid = self.rng.randint(1, self.rows)
                t0 = time.monotonic()
                try:
                    c.execute("UPDATE events SET payload = 'touched' WHERE id = %s", [rid])
                except psycopg.Error as exc:
                    self.errors.append(str(exc))
                self.durations.append((time.monotonic() - t0) * 1000)
                time.sleep(0.002)


def _fill_with_updaters(d: str, cli: Any, *global_opts: str) -> tuple[list[float], str]:
    ups = [Updater(d, 60000, i) for i in range(2)]
    for u in ups:
        u.thread.start()
    try:
        r = _ok(cli("--dsn", d, *global_opts, "fill", "events", "--batch-size", "60000",
                    "--yes"))
    finally:
        for u in ups:
            u.stop.set()
            u.thread.join()
    assert not [e for u in ups for e in u.errors]
    return sorted(x for u in ups for x in u.durations), r.stderr


def test_update_of_a_row_in_the_running_batch_returns_within_the_bound(
        db: Any, conn: Any, cli: Any) -> None:
    # One batch of 60,000 rows takes far longer than 50 ms: without the time bound
    # (--batch-time 0) an UPDATE of a row that batch copied waits for its commit.
    _events(conn, 60000)
    d = db.dsn
    _ok(cli("--dsn", d, "prep", "events", "--by", "created_at", "--interval", "month",
            "--past", "11", "--future", "1", "--yes"))
    fixed, err0 = _fill_with_updaters(d, cli, "--batch-time", "0")
    longest0 = float(re.search(r"longest (\d+) ms", err0).group(1))  # type: ignore[union-attr]
    conn.execute("TRUNCATE events_intermediate")
    bounded, err = _fill_with_updaters(d, cli)
    longest = float(re.search(r"longest (\d+) ms", err).group(1))  # type: ignore[union-attr]
    print(f"fixed: batch {longest0:.0f} ms, updates max {fixed[-1]:.0f} ms, {len(fixed)};"
          f" bounded: batch {longest:.0f} ms, updates max {bounded[-1]:.0f} ms, "
          f"p99 {bounded[int(len(bounded) * 0.99)]:.0f} ms, {len(bounded)}")
    assert longest0 > 300, "the control batch must be far longer than the bound"
    assert fixed[-1] > 200, "without the bound an UPDATE waits for the whole batch"
    # The bound is 20 ms of batch (plus the commit); leave room for a loaded 2-core machine.
    assert bounded[-1] < 150, f"an UPDATE waited {bounded[-1]:.0f} ms on the fill"
    assert bounded[-1] < fixed[-1] / 2
    assert verify_copy(conn, "events").ok


class LockWaiter:
    """A session holding a lock on an unrelated table and another waiting for it: one session
    waiting on a lock, as pg_stat_activity reports it, until ``release()``."""

    def __init__(self, dsn: str) -> None:
        self.holder = psycopg.connect(dsn)
        self.holder.execute("CREATE TABLE IF NOT EXISTS side_lock (n int)")
        self.holder.commit()
        self.holder.execute("LOCK TABLE side_lock IN ACCESS EXCLUSIVE MODE")
        self.thread = threading.Thread(target=self._wait, args=(dsn,), daemon=True)
        self.thread.start()
        with psycopg.connect(dsn, autocommit=True) as c:
            for _ in range(100):
                row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type"
                                " = 'Lock' AND query LIKE 'SELECT % side_lock%'").fetchone()
                if row and row[0]:
                    return
                time.sleep(0.05)
        raise AssertionError("the waiter never waited")

    @staticmethod
    def _wait(dsn: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("SELECT count(*) FROM side_lock")

    def release(self) -> None:
        self.holder.rollback()
        self.holder.close()
        self.thread.join()


def run_releasing_on_pause(waiter: LockWaiter, *args: str, after_s: float = 1.0
                           ) -> tuple[int, str, float]:
    """Run the CLI; ``after_s`` after it reports a pause, release ``waiter`` (at the end at
    the latest). Returns (exit code, stderr, seconds it ran)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PGCLEAVE_DSN", "PGCLEAVE_FAULT")}
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "pgcleave", *args], env=env, text=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    assert p.stderr is not None
    lines = []
    timer: threading.Timer | None = None
    for line in p.stderr:
        lines.append(line)
        if "paused:" in line and timer is None:
            timer = threading.Timer(after_s, waiter.release)
            timer.start()
    rc = p.wait(timeout=120)
    if timer is None:
        waiter.release()
    else:
        timer.join()
    return rc, "".join(lines), time.monotonic() - t0


def test_max_load_pauses_and_goes_on_by_itself(db: Any, conn: Any, cli: Any) -> None:
    _events(conn, 20000)
    d = db.dsn
    _ok(cli("--dsn", d, "prep", "events", "--by", "created_at", "--interval", "month",
            "--past", "11", "--future", "1", "--yes"))
    waiter = LockWaiter(d)
    w = Workload(d, _spec(), writers=2, max_seconds=60, pause_s=0.005)
    with w:
        # lock_waits=0: the waiter alone is over the limit; writers' own short row waits may
        # add pauses, which the fill also sits out
        rc, err, _took = run_releasing_on_pause(
            waiter, "--dsn", d, "--max-load", "lock_waits=0", "fill", "events", "--yes")
        w.run_for(0.5)
    assert rc == 0, err
    assert "paused: load over --max-load (lock_waits=1 > 0)" in err, err
    m = re.search(r"going on after a pause of ([\d.]+) s", err)
    assert m and float(m.group(1)) >= 0.9, "the fill did not wait for the load to go down"
    assert "load back under --max-load" in err
    assert "fill done" in err and "paused" in err.split("fill done")[1]
    w.verify(conn)
    assert verify_copy(conn, "events").ok


def test_critical_load_stops_resumably(db: Any, conn: Any, cli: Any) -> None:
    _events(conn, 20000)
    d = db.dsn
    w = Workload(d, _spec(), writers=2, max_seconds=60, pause_s=0.005)
    with w:
        _ok(cli("--dsn", d, "prep", "events", "--by", "created_at", "--interval", "month",
                "--past", "11", "--future", "1", "--yes"))
        waiter = LockWaiter(d)
        try:
            r = cli("--dsn", d, "--critical-load", "lock_waits=0", "fill", "events", "--yes")
        finally:
            waiter.release()
        assert r.returncode == 6, r.stderr
        m = re.search(r"resume with pgcleave resume (\d+)", r.stderr)
        assert m, r.stderr
        assert "critical load (lock_waits=1 > 0)" in r.stderr
        job = m.group(1)
        state = conn.execute("SELECT state FROM pgcleave.jobs WHERE id = %s",
                             [int(job)]).fetchone()[0]
        assert state == "failed"
        w.run_for(0.5)
        _ok(cli("--dsn", d, "resume", job))
        w.run_for(0.5)
    w.verify(conn)
    assert verify_copy(conn, "events").ok


def test_malformed_limits_change_nothing(db: Any, conn: Any, cli: Any) -> None:
    _events(conn, 100)
    d = db.dsn
    for bad in ("active=many", "speed=3", "lag", "probe_p95=fast"):
        r = cli("--dsn", d, "--max-load", bad, "prep", "events", "--by", "created_at",
                "--interval", "month", "--yes")
        assert r.returncode == 2, r.stderr
        assert "--max-load" in r.stderr
    r = cli("--dsn", d, "--critical-load", "active=-1", "prep", "events", "--by", "created_at",
            "--interval", "month", "--yes")
    assert r.returncode == 2 and "--critical-load" in r.stderr
    for bad in ("0", "101", "often"):
        r = cli("--dsn", d, "--duty", bad, "prep", "events", "--by", "created_at",
                "--interval", "month", "--yes")
        assert r.returncode == 2 and "1 to 100, or auto" in r.stderr, r.stderr
    assert conn.execute("SELECT to_regclass('events_intermediate')").fetchone()[0] is None


def test_limits_syntax_and_pacer() -> None:
    assert parse_limits("active=20,lock_waits=5,lag=10s,probe_p95=50ms") == Limits(
        20, 5, 10.0, 50.0)
    assert parse_limits("lag=500ms, probe_p95=0.2s") == Limits(lag_s=0.5, probe_p95_ms=200.0)
    assert not parse_limits(None) and not parse_limits("")
    with pytest.raises(UsageError):
        parse_limits("active=1,nope=2")
    over = Limits(active=3, probe_p95_ms=10).exceeded(Load(5, 0, 0.0, 12.0))
    assert over == ["active=5 > 3", "probe_p95=12ms > 10ms"]
    p = Pacer(20, cap=10000, first=1000)
    # 1000 rows in 5 ms: grows, at most doubling per batch
    assert p.record(1000, 0.005) == 2000
    # a batch that ran 200 ms shrinks the next one at once to about the target
    assert p.record(2000, 0.2) == 160
    assert Pacer(0, cap=500, first=10).size == 500
    slept: list[float] = []
    half = Pacer(20, cap=100, first=10, duty=50, sleep=slept.append)
    half.rest()  # nothing ran yet
    half.record(10, 0.03)
    half.rest()
    full = Pacer(20, cap=100, first=10, duty=100, sleep=slept.append)
    full.record(10, 0.03)
    full.rest()
    assert slept == [pytest.approx(0.03)]


def test_carve_copy_pauses_for_load(db: Any, conn: Any, cli: Any) -> None:
    from tests.test_carve import _spec as tenant_spec
    from tests.test_carve import _tenants_table

    _tenants_table(conn, 20000)
    d = db.dsn
    _ok(cli("--dsn", d, "partition", "acc", "--by", "range(tenant)", "--yes"))
    w = Workload(d, tenant_spec(), writers=2, max_seconds=60, pause_s=0.005)
    with w:
        waiter = LockWaiter(d)
        rc, err, _took = run_releasing_on_pause(
            waiter, "--dsn", d, "--max-load", "lock_waits=0", "carve", "acc", "--from", "B",
            "--to", "D", "--method", "swap", "--yes")
        w.run_for(0.3)
    assert rc == 0, err
    assert "paused: load over --max-load (lock_waits=1 > 0)" in err, err
    m = re.search(r"going on after a pause of ([\d.]+) s", err)
    assert m and float(m.group(1)) >= 0.9
    assert "verified" in err
    w.verify(conn)


def test_lag_limit_refused_when_the_role_cannot_read_the_lag(db: Any, conn: Any,
                                                            cli: Any) -> None:
    _events(conn, 100)
    role = "pgc_gentle_lag"
    conn.execute(f"DROP ROLE IF EXISTS {role}")
    conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        as_role = psycopg.conninfo.make_conninfo(db.dsn, user=role)
        r = cli("--dsn", as_role, "--max-load", "lag=5s", "prep", "events", "--by",
                "created_at", "--interval", "month", "--yes")
        assert r.returncode == 3, r.stderr
        assert "pg_read_all_stats" in r.stderr
        # a superuser reads the lag: the limit is accepted
        _ok(cli("--dsn", db.dsn, "--max-load", "lag=5s", "prep", "events", "--by",
                "created_at", "--interval", "month", "--yes"))
    finally:
        conn.execute(f"DROP ROLE {role}")


def test_duty_auto_rests_only_while_the_application_works(db: Any, conn: Any) -> None:
    """``--duty auto``: the throttle sees the application at work while one of its sessions
    is in a statement or a transaction (here: idle in transaction) or left one less than a
    second before, and for BUSY_MEMORY_S after; a pacer told the application is idle does
    not rest."""
    from pgcleave.settings import Settings
    from pgcleave.throttle import BUSY_MEMORY_S, SAMPLE_EVERY_S, Throttle

    s = Settings(dsn=db.dsn)
    s.duty_auto, s.duty_pct = True, 33
    time.sleep(1.1)  # this test's own connection, out of its last statement for a second
    with Throttle(s, lambda msg, data: None) as t:
        assert not t.app_busy()
        with db.connect(autocommit=False) as app:
            app.execute("SELECT 1")  # a transaction left open: the application at work
            time.sleep(SAMPLE_EVERY_S + 0.05)
            assert t.app_busy()
        time.sleep(BUSY_MEMORY_S + SAMPLE_EVERY_S + 0.1)
        assert not t.app_busy()
    s.duty_auto = False
    with Throttle(s, lambda msg, data: None) as t:
        assert t.app_busy()  # a fixed --duty rests after every batch
    slept: list[float] = []
    idle = Pacer(20, cap=100, first=10, duty=33, sleep=slept.append, busy=lambda: False)
    idle.record(10, 0.03)
    idle.rest()
    busy = Pacer(20, cap=100, first=10, duty=25, sleep=slept.append, busy=lambda: True)
    busy.record(10, 0.03)
    busy.rest()
    assert slept == [pytest.approx(0.09)] and busy.rests == 1 and idle.rests == 0


def test_fill_with_duty_auto_rests_only_beside_the_application(db: Any, conn: Any,
                                                                cli: Any) -> None:
    """``--duty auto`` end to end: a fill with no application at work never rests; the same
    fill beside writers rests between its batches (and says how long), and the copy is
    exact."""
    _events(conn, 30000)
    d = db.dsn
    prep = ["prep", "events", "--by", "created_at", "--interval", "month", "--past", "11",
            "--future", "1", "--yes"]
    _ok(cli("--dsn", d, *prep))
    time.sleep(1.1)  # this test's own connection, out of its last statement for a second
    alone = _ok(cli("--dsn", d, "--duty", "auto", "fill", "events", "--batch-size", "2000",
                    "--yes"))
    assert "fill done" in alone.stderr and "rested" not in alone.stderr, alone.stderr
    _ok(cli("--dsn", d, "unprep", "events", "--yes"))
    _ok(cli("--dsn", d, *prep))
    w = Workload(d, _spec(), writers=2, max_seconds=60, pause_s=0.005)
    with w:
        w.run_for(0.3)
        busy = _ok(cli("--dsn", d, "--duty", "auto", "fill", "events", "--batch-size", "2000",
                       "--yes"))
    m = re.search(r"rested ([\d.]+) s for --duty", busy.stderr)
    assert m and float(m.group(1)) > 0, busy.stderr
    w.verify(conn)
    assert verify_copy(conn, "events").ok
