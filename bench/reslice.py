"""Reslice the legacy partition of an in-place conversion into months, while application-like
writers run, against plain SQL doing the same under an exclusive lock.

A table of ``--rows`` rows spread over 24 months is partitioned in place (legacy strategy: one
``[MINVALUE, cutoff)`` partition holds all of history). Then, twice on a fresh copy of it:

- ``pgcleave reslice orders --interval '1 month'`` (copy with change capture, verify by count
  and row hash, short swaps), with ``--writers`` writers;
- plain SQL: one transaction that locks the table, creates the months, ``INSERT ... SELECT``s
  the legacy rows into them, detaches the legacy partition, attaches the months (each scanned
  by PostgreSQL), drops the legacy partition; the same writers wait for all of it.

Reports each one's wall time (and the ratio; goal <= 1.2x), the longest writer stall (goal
< 100 ms for pgcleave) and the peak extra disk (database size sampled every 0.2 s, above its
size before).

    .venv/bin/python bench/reslice.py --rows 1000000 [--writer-pause 0.01]

With flat-out writers on a small machine the writers take the CPU the copy needs (plain SQL
holds them still meanwhile); ``--writer-pause`` paces them like an application's traffic.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from pgcleave.connection import Settings
from pgcleave.execute import Event, Executor
from pgcleave.ops.partition import plan_partition
from pgcleave.ops.reslice import plan_reslice
from pgcleave.sandbox import Sandbox
from pgcleave.testing.workload import Spec, Workload

NOW = datetime.now(UTC)
START = datetime(NOW.year - 2, NOW.month, 1, tzinfo=UTC)


def setup(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS orders CASCADE")
        c.execute("DROP SCHEMA IF EXISTS pgcleave CASCADE")
        c.execute("CREATE TABLE orders (id bigserial, created_at timestamptz NOT NULL,"
                  " customer int NOT NULL, payload text, PRIMARY KEY (id, created_at))")
        secs = int((NOW - START).total_seconds()) - 86400
        c.execute("INSERT INTO orders (created_at, customer, payload) SELECT %s::timestamptz +"
                  " ((i::bigint * 7919) %% %s) * interval '1 second', i %% 1000, md5(i::text)"
                  " FROM generate_series(1, %s) i", [START, secs, rows])
        c.execute("CREATE INDEX orders_created_idx ON orders (created_at)")
        c.execute("VACUUM ANALYZE orders")
        Executor(Settings(dsn=dsn)).run(plan_partition(
            c, "orders", by="range(created_at)", interval="1 month", premake=2,
            strategy="legacy"))
        c.execute("CHECKPOINT")


class DiskPeak:
    """The database's size sampled every 0.2 s: the most it grew above its size at start."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.stop = threading.Event()
        self.base = self.peak = 0
        self.th = threading.Thread(target=self.run, daemon=True)

    def size(self, c: psycopg.Connection[Any]) -> int:
        row = c.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            self.base = self.peak = self.size(c)
            while not self.stop.wait(0.2):
                self.peak = max(self.peak, self.size(c))

    def __enter__(self) -> DiskPeak:
        self.th.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.th.join()


def spec() -> Spec:
    span = (NOW - START).total_seconds()
    return Spec(table=sql.Identifier("public", "orders"), key_col="created_at",
                make_key=lambda r: START + timedelta(seconds=r.uniform(0, span)),
                extra={"customer": lambda r: r.randint(0, 999)}, prune_by_key=True)


def plain(c: psycopg.Connection[Any]) -> None:
    """The same re-cut by hand: everything in one transaction under ACCESS EXCLUSIVE."""
    legacy, = c.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid ="
                        " i.inhrelid WHERE i.inhparent = 'orders'::regclass AND"
                        " pg_get_expr(c.relpartbound, c.oid) LIKE '%%MINVALUE%%'").fetchone()
    lo, = c.execute(sql.SQL("SELECT date_trunc('month', min(created_at)) FROM {}").format(
        sql.Identifier(legacy))).fetchone()
    cutoff, = c.execute(sql.SQL(
        "SELECT (regexp_match(pg_get_expr(relpartbound, oid), 'TO \\(''(.*)''\\)'))[1]"
        "::timestamptz FROM pg_class WHERE relname = {}").format(
        sql.Literal(legacy))).fetchone()
    months = []
    m = lo
    while m < cutoff:
        nxt = min(m + timedelta(days=32), cutoff)
        nxt = nxt.replace(day=1) if nxt != cutoff else nxt
        months.append((m, nxt))
        m = nxt
    with c.transaction():
        c.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        for a, b in months:
            n = sql.Identifier(f"orders_plain_{a:%Y_%m}")
            c.execute(sql.SQL("CREATE TABLE {} (LIKE orders INCLUDING ALL)").format(n))
            c.execute(sql.SQL("INSERT INTO {} SELECT * FROM {} WHERE created_at >= %s AND "
                              "created_at < %s").format(n, sql.Identifier(legacy)), [a, b])
        c.execute(sql.SQL("ALTER TABLE orders DETACH PARTITION {}").format(
            sql.Identifier(legacy)))
        c.execute(sql.SQL("CREATE TABLE orders_plain_before PARTITION OF orders FOR VALUES "
                          "FROM (MINVALUE) TO ({})").format(sql.Literal(lo)))
        for a, b in months:
            c.execute(sql.SQL("ALTER TABLE orders ATTACH PARTITION {} FOR VALUES FROM ({}) TO "
                              "({})").format(sql.Identifier(f"orders_plain_{a:%Y_%m}"),
                                             sql.Literal(a), sql.Literal(b)))
        c.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(legacy)))


def measure(dsn: str, writers: int, fn: Any, pause_s: float = 0.0) -> dict[str, Any]:
    w = Workload(dsn, spec(), writers=writers, max_seconds=7200, pause_s=pause_s).start()
    try:
        with DiskPeak(dsn) as disk:
            time.sleep(0.5)
            t0 = time.monotonic()
            fn()
            wall = time.monotonic() - t0
            time.sleep(0.5)
    finally:
        w.stop()
    with psycopg.connect(dsn, autocommit=True) as c:
        w.verify(c)
    return {"wall_s": wall, "max_stall_ms": w.max_stall_ms, "ops": sum(w.ops.values()),
            "extra_mb": (disk.peak - disk.base) / 1024 / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--dsn", help="database to use (default: a throwaway sandbox server)")
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--writer-pause", type=float, default=0.0,
                    help="seconds each writer rests after each statement (0: flat out; "
                    "0.01 gives an application-like pace of under 100 statements/s each)")
    args = ap.parse_args()
    sb = None
    dsn = args.dsn
    if dsn is None:
        sb = Sandbox(tempfile.mkdtemp(prefix="pgcleave-bench-"))
        sb.up(1)
        with psycopg.connect(sb.servers[0].dsn, autocommit=True) as c:
            c.execute("CREATE DATABASE bench")
        dsn = sb.servers[0].dsn_for("bench")
    try:
        t0 = time.monotonic()
        setup(dsn, args.rows)
        with psycopg.connect(dsn, autocommit=True) as c:
            size = c.execute("SELECT pg_size_pretty(pg_total_relation_size(inhrelid)) FROM "
                             "pg_inherits WHERE inhparent = 'orders'::regclass ORDER BY "
                             "pg_total_relation_size(inhrelid) DESC LIMIT 1").fetchone()
        print(f"{args.rows:,} rows over 24 months, partitioned in place (legacy partition "
              f"{size[0] if size else '?'} with indexes) in {time.monotonic() - t0:.0f} s; "
              f"{args.writers} writers"
              + (f", each resting {args.writer_pause * 1000:.0f} ms after each statement"
                 if args.writer_pause else ""), flush=True)
        held: list[float] = []
        began: dict[str, float] = {}
        took: dict[str, float] = {}

        def progress(ev: Event) -> None:
            if ev.kind == "progress" and "held_ms" in ev.data:
                held.append(float(ev.data["held_ms"]))
            if ev.kind == "progress" and ev.message.startswith(("copied", "built")):
                print(f"    {ev.message}", flush=True)
            if ev.step is not None and ev.kind == "step-start":
                began[ev.step.name] = time.monotonic()
            if ev.step is not None and ev.kind == "step-done" and ev.step.name in began:
                took[ev.step.name] = time.monotonic() - began[ev.step.name]

        def run_pgcleave() -> None:
            with psycopg.connect(dsn, autocommit=True) as c:
                plan = plan_reslice(c, "orders", interval="1 month")
            print(f"  plan: {len(plan.steps)} steps; " + "; ".join(plan.notes), flush=True)
            Executor(Settings(dsn=dsn), progress).run(plan)

        a = measure(dsn, args.writers, run_pgcleave, args.writer_pause)
        with psycopg.connect(dsn, autocommit=True) as c:
            n = c.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'orders'::regclass"
                          ).fetchone()
        print(f"  pgcleave reslice: wall {a['wall_s']:.1f} s, longest writer stall "
              f"{a['max_stall_ms']:.0f} ms (swap transactions held {max(held, default=0):.0f}"
              f" ms at most), peak extra disk {a['extra_mb']:.0f} MB, {a['ops']} writer ops, "
              f"{n[0] if n else '?'} partitions after", flush=True)
        print("  steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in took.items()), flush=True)
        setup(dsn, args.rows)

        def run_plain() -> None:
            with psycopg.connect(dsn, autocommit=True) as c:
                plain(c)

        b = measure(dsn, args.writers, run_plain, args.writer_pause)
        print(f"  plain SQL under ACCESS EXCLUSIVE: wall {b['wall_s']:.1f} s, longest writer "
              f"stall {b['max_stall_ms']:.0f} ms, peak extra disk {b['extra_mb']:.0f} MB, "
              f"{b['ops']} writer ops", flush=True)
        print(f"  wall ratio pgcleave / plain: {a['wall_s'] / b['wall_s']:.2f}x", flush=True)
    finally:
        if sb is not None:
            sb.down()


if __name__ == "__main__":
    main()
