"""Seed 004 at scale: PRIMARY KEY (id, created_at) on a partitioned table that had only
per-partition keys on (id), with application-like writers running.

    .venv/bin/python bench/keys.py --rows 10000000 --partitions 24

Starts its own throwaway server, loads the table with INSERT ... SELECT generate_series, builds
the old per-partition keys, then runs `set-primary-key` through the executor while four writers
insert, update, delete, move rows between partitions and read. Prints the wall time of each
phase, the longest lock hold of each phase, and the longest writer stall. With --naive it then
also times what seed 004 did (drop the partitions' keys, ADD PRIMARY KEY on the parent) on a
second copy, with the same writers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from typing import Any

import psycopg
from psycopg import sql

from pgcleave.connection import Settings
from pgcleave.execute import Event, Executor
from pgcleave.ops.keys import plan_set_primary_key
from pgcleave.sandbox import temporary
from pgcleave.testing.workload import Spec, Workload


def month(i: int) -> str:
    return f"{2022 + i // 12:04d}-{i % 12 + 1:02d}-01 00:00:00+00"


def load(dsn: str, table: str, rows: int, parts: int) -> float:
    t0 = time.monotonic()
    t = sql.Identifier(table)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql.SQL("CREATE TABLE {} (id bigserial, created_at timestamptz, payload text)"
                          " PARTITION BY RANGE (created_at)").format(t))
        for i in range(parts):
            c.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})")
                      .format(sql.Identifier(f"{table}_p{i:02d}"), t, sql.Literal(month(i)),
                              sql.Literal(month(i + 1))))
        span = f"{parts * 30.4 * 86400 / rows:.6f}"
        c.execute(sql.SQL("INSERT INTO {} (created_at, payload) SELECT {}::timestamptz + g *"
                          " {}::double precision * interval '1 second', md5(g::text)"
                          " FROM generate_series(0, {}) g").format(
            t, sql.Literal(month(0)), sql.Literal(span), sql.Literal(rows - 1)))
        for i in range(parts):
            c.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(
                sql.Identifier(f"{table}_p{i:02d}")))
        c.execute(sql.SQL("VACUUM ANALYZE {}").format(t))
    return time.monotonic() - t0


def spec(table: str, parts: int) -> Spec:
    lo = time.mktime(time.strptime("2022-01-01", "%Y-%m-%d"))
    from datetime import UTC, datetime

    def key(rng: Any) -> datetime:
        return datetime.fromtimestamp(lo + rng.uniform(0, parts * 30 * 86400), UTC)

    return Spec(table=sql.Identifier(table), key_col="created_at", make_key=key)


def writers_report(wl: Workload) -> str:
    lat = sorted(x for r in wl.results for x in r.latencies_ms)
    p99 = lat[int(len(lat) * 0.99)] if lat else 0.0
    first = f" (first: {wl.errors[0]})" if wl.errors else ""
    return (f"writers: {sum(wl.ops.values())} ops, errors {len(wl.errors)}{first}, anomalies "
            f"{len(wl.anomalies)}, median {statistics.median(lat) if lat else 0:.1f} ms, "
            f"p99 {p99:.1f} ms, longest stall {wl.max_stall_ms:.1f} ms")


def run_pgcleave(dsn: str, table: str, parts: int, writers: int, lock_timeout: int) -> None:
    phases: dict[str, list[Any]] = defaultdict(lambda: [0.0, 0.0, 0, ""])
    started: dict[int, float] = {}

    def progress(ev: Event) -> None:
        if ev.kind == "step-start":
            started[ev.index] = time.monotonic()
        elif ev.kind == "step-done" and ev.step is not None:
            ph = phases[ev.step.name.split(":")[0]]
            ph[0] += time.monotonic() - started.get(ev.index, time.monotonic())
            held = ev.data.get("held_ms", 0.0)
            if ev.step.transactional:
                ph[1] = max(ph[1], held)
            ph[2] += 1
            lock = ev.step.strongest_lock
            ph[3] = lock.level.value if lock else ""
        elif ev.kind == "retry":
            print(f"    retry: {ev.message}")

    settings = Settings(dsn=dsn, lock_timeout_ms=lock_timeout)
    with psycopg.connect(dsn, autocommit=True) as c:
        plan = plan_set_primary_key(c, table, ["id", "created_at"])
    wl = Workload(dsn, spec(table, parts), writers=writers, max_seconds=3600)
    with wl:
        time.sleep(1.0)
        t0 = time.monotonic()
        Executor(settings, progress).run(plan)
        wall = time.monotonic() - t0
        time.sleep(1.0)
    print(f"pgcleave set-primary-key: {wall:.1f} s wall, {len(plan.steps)} steps")
    print(f"  {'phase':<14}{'steps':>6}{'wall s':>10}  {'strongest lock':<24}"
          f"{'longest hold ms':>16}")
    for name, (secs, held, n, lock) in phases.items():
        hold = f"{held:.1f}" if held else "(autocommit)"
        print(f"  {name:<14}{n:>6}{secs:>10.2f}  {lock:<24}{hold:>16}")
    print("  " + writers_report(wl))
    with psycopg.connect(dsn, autocommit=True) as c:
        wl.verify(c)
        pk = c.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid ="
                       " to_regclass(%s) AND contype = 'p'", [table]).fetchone()
    print(f"  result: {pk[0] if pk else 'no key!'}; every committed write present exactly once")


def run_naive(dsn: str, table: str, parts: int, writers: int) -> None:
    wl = Workload(dsn, spec(table, parts), writers=writers, max_seconds=3600)
    with wl:
        time.sleep(1.0)
        t0 = time.monotonic()
        with psycopg.connect(dsn) as c:  # one transaction, as in the seed's small databases
            for i in range(parts):
                c.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    sql.Identifier(f"{table}_p{i:02d}"), sql.Identifier(f"{table}_p{i:02d}_pkey")))
            c.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id, created_at)").format(
                sql.Identifier(table)))
        wall = time.monotonic() - t0
        time.sleep(1.0)
    print(f"naive ALTER TABLE .. ADD PRIMARY KEY: {wall:.1f} s wall")
    print("  " + writers_report(wl))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--partitions", type=int, default=24)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--lock-timeout", type=int, default=100, metavar="MS",
                    help="lock_timeout of the DDL steps (a writer can queue this long behind a "
                         "lock request that then gives up)")
    ap.add_argument("--naive", action="store_true", help="also time the seed's blocking way")
    a = ap.parse_args()
    with temporary(1) as sb:
        dsn = sb.servers[0].dsn
        secs = load(dsn, "events", a.rows, a.partitions)
        print(f"loaded {a.rows:,} rows into {a.partitions} partitions with per-partition "
              f"PRIMARY KEY (id) in {secs:.1f} s")
        print(f"lock_timeout {a.lock_timeout} ms, {a.writers} writers")
        run_pgcleave(dsn, "events", a.partitions, a.writers, a.lock_timeout)
        if a.naive:
            secs = load(dsn, "events_naive", a.rows, a.partitions)
            run_naive(dsn, "events_naive", a.partitions, a.writers)


if __name__ == "__main__":
    main()
