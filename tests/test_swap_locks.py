"""Swap cut-overs: the holder joins the parent as an ordinary partition (never as a DEFAULT
with a DEFAULT of its own, which makes every statement reaching it plan for seconds at 1,000
partitions), replays run without JIT, and cut-over lock attempts retry after short pauses."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgcleave.connection import Settings
from pgcleave.execute import Event, Executor, backoff
from pgcleave.ops.maintain import plan_maintain
from pgcleave.testing.workload import Spec, Workload

T = "sw ap"
KEY = "at"


def one(conn: Any, q: Any, *args: Any) -> Any:
    row = conn.execute(q, list(args) or None).fetchone()
    return row[0] if row else None


def make_table(conn: Any) -> None:
    """Monthly partitions 2023-01..2024-12; the rows of 2025-01..06 sit in the DEFAULT."""
    t, k = sql.Identifier(T), sql.Identifier(KEY)
    conn.execute(sql.SQL("CREATE TABLE {} (id bigserial, {} timestamptz NOT NULL, payload text,"
                         " PRIMARY KEY (id, {})) PARTITION BY RANGE ({})").format(t, k, k, k))
    for m in range(2023 * 12, 2025 * 12):
        lo = datetime(m // 12, m % 12 + 1, 1, tzinfo=UTC)
        hi = datetime((m + 1) // 12, (m + 1) % 12 + 1, 1, tzinfo=UTC)
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})")
                     .format(sql.Identifier(f"{T} {m // 12}-{m % 12 + 1:02d}"), t,
                             sql.Literal(lo), sql.Literal(hi)))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(
        sql.Identifier(T + " def"), t))
    conn.execute(sql.SQL("INSERT INTO {} ({}, payload) SELECT '2025-01-01 00:00+00'::"
                         "timestamptz + i * interval '60 minutes', 'seed' FROM "
                         "generate_series(0, 4300) i").format(t, k))


def kids(conn: Any) -> dict[str, str]:
    return {r[0]: r[1] for r in conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c"
        " ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
        [sql.Identifier(T).as_string(None)])}


class Stop(Exception):
    pass


def test_backoff_cap() -> None:
    for n in range(1, 30):
        assert 0 < backoff(n, cap=0.25) <= 0.25
        assert backoff(n) <= 5.0
    assert min(backoff(30) for _ in range(20)) >= 2.5  # the default still grows to seconds


def test_cutover_retries_with_short_pauses(db: Any, conn: Any) -> None:
    """A cut-over blocked by a long transaction retries every few hundred ms at most."""
    conn.execute("CREATE TABLE x (id int)")
    pauses: list[float] = []
    ex = Executor(Settings(dsn=db.dsn, lock_timeout_ms=20, lock_retry_limit_s=1.5),
                  lambda ev: pauses.append(ev.data["pause_s"]) if ev.kind == "retry" else None)
    with psycopg.connect(db.dsn) as blocker, psycopg.connect(db.dsn, autocommit=True) as c:
        blocker.execute("LOCK TABLE x IN ACCESS SHARE MODE")

        def attempt() -> float:
            with c.transaction():
                c.execute("SET LOCAL lock_timeout = 20")
                c.execute("LOCK TABLE x IN ACCESS EXCLUSIVE MODE")
            return 0.0

        with pytest.raises(Exception, match="gave up"):
            ex.retry_locks(c, attempt, cap=0.2)
    assert len(pauses) >= 5 and max(pauses) <= 0.2, pauses


def test_contiguous_drain_attaches_holder_as_range(db: Any, conn: Any, cli: Any) -> None:
    """Contiguous months: the holder joins as a range partition and the remainder as the new
    DEFAULT in the first swap; stopped after the second swap, the holder covers exactly the
    months it still holds; writers (naming the key) lose nothing; resume finishes."""
    make_table(conn)
    assert cli("--dsn", db.dsn, "config", f'"{T}"', "--interval", "1 month", "--premake",
               "1").returncode == 0
    plan, _ = plan_maintain(conn, f'"{T}"', now=datetime(2025, 6, 15, tzinfo=UTC))
    swap = next(s for s in plan.steps if s.name == "carve-swap")
    first = swap.params["first"]
    hold = sql.Identifier(f"{T} def_pgcleave_hold").as_string(None)
    assert any(f"ATTACH PARTITION \"public\".{hold} FOR VALUES FROM" in x for x in first), first
    assert not any(f"{hold} DEFAULT" in x for x in first)
    assert any("jit = off" in x for x in swap.params["replay"])
    assert "LOCK TABLE ONLY" in first[4] and "," in first[4]  # both tables, one request

    base = datetime(2025, 1, 1, tzinfo=UTC)

    def key(rng: random.Random) -> datetime:
        return base + timedelta(seconds=rng.randrange(0, 180 * 86400))  # 2025-01..06

    def stop_after_second_swap(ev: Event) -> None:
        if ev.kind == "progress" and ev.message.startswith("swap 2/"):
            raise Stop

    wl = Workload(db.dsn, Spec(table=sql.Identifier(T), key_col=KEY, make_key=key,
                               prune_by_key=True), writers=3, max_seconds=60).start()
    try:
        wl.run_for(0.3)
        with pytest.raises(Stop):
            Executor(Settings(dsn=db.dsn), progress=stop_after_second_swap).run(plan)
        k = kids(conn)
        assert k[f"{T} def_pgcleave_hold"].startswith("FOR VALUES FROM ('2025-05-01"), k
        assert k[f"{T} def"] == "DEFAULT"
        wl.run_for(0.3)
        job = one(conn, "SELECT max(id) FROM pgcleave.jobs")
        r = cli("--dsn", db.dsn, "resume", str(job))
        assert r.returncode == 0, r.stderr
        wl.run_for(0.2)
    finally:
        wl.stop()
    wl.verify(conn)
    k = kids(conn)
    assert f"{T} def_pgcleave_hold" not in k and k[f"{T} def"] == "DEFAULT"
    assert one(conn, sql.SQL("SELECT count(*) FROM ONLY {} WHERE {} < '2025-07-01'").format(
        sql.Identifier(T + " def"), sql.Identifier(KEY))) == 0
