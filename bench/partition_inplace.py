"""Partition a big live table in place while application-like writers run.

Reports the wall time of each phase of ``pgcleave partition`` (legacy strategy) and the longest
time any writer waited during it; then (``--carve-rows``) carves a range out of a DEFAULT
partition by copy + change capture + swap, with its rows/s and the longest stall.

    .venv/bin/python bench/partition_inplace.py --rows 10000000
    .venv/bin/python bench/partition_inplace.py --dsn postgresql://... --rows 1000000

Goal: no writer stalls longer than 100 ms at the cut-over, whatever the table size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from pgcleave.connection import Settings
from pgcleave.execute import Event, Executor
from pgcleave.ops.carve import plan_carve
from pgcleave.ops.partition import plan_partition
from pgcleave.plan import Plan
from pgcleave.sandbox import Sandbox
from pgcleave.testing.workload import Spec, Workload

NOW = datetime.now(UTC)
TENANTS = [f"t{i:03d}" for i in range(200)]


def phase(dsn: str, plan: Plan, steps: list[str], spec: Spec, writers: int) -> dict[str, Any]:
    """Run some steps of a plan as their own job, with writers running around them."""
    sub = Plan(plan.operation, plan.target, plan.args,
               [s for s in plan.steps if s.name in steps], plan.notes, [])
    held: dict[str, float] = {}

    def progress(ev: Event) -> None:
        if ev.kind == "step-done" and ev.step is not None and "held_ms" in ev.data:
            held[ev.step.name] = float(ev.data["held_ms"])

    w = Workload(dsn, spec, writers=writers, max_seconds=3600).start()
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        Executor(Settings(dsn=dsn), progress).run(sub)
        wall = time.monotonic() - t0
        time.sleep(0.5)
    finally:
        w.stop()
    assert not w.errors, w.errors[:3]
    assert not w.anomalies, w.anomalies[:3]
    with psycopg.connect(dsn, autocommit=True) as c:
        w.verify(c)
    return {"phase": "+".join(steps), "wall_s": wall, "held_ms": held,
            "max_stall_ms": w.max_stall_ms, "ops": sum(w.ops.values())}


def bench_partition(dsn: str, rows: int, writers: int) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS orders CASCADE")
        c.execute("CREATE TABLE orders (id bigserial, created_at timestamptz NOT NULL,"
                  " customer int NOT NULL, payload text, PRIMARY KEY (id, created_at))")
        t0 = time.monotonic()
        c.execute("INSERT INTO orders (created_at, customer, payload) SELECT now() - (i %% 5000000)"
                  " * interval '5 seconds', i %% 1000, md5(i::text) FROM generate_series(1, %s) i",
                  [rows])
        c.execute("CREATE INDEX orders_created_idx ON orders (created_at)")
        c.execute("VACUUM ANALYZE orders")
        print(f"filled {rows:,} rows in {time.monotonic() - t0:.1f}s", flush=True)
        plan = plan_partition(c, "orders", by="range(created_at)", interval="1 month",
                              premake=3)
    spec = Spec(table=sql.Identifier("public", "orders"), key_col="created_at",
                make_key=lambda r: NOW - timedelta(days=r.uniform(0, 20)),
                extra={"customer": lambda r: r.randint(0, 999)})
    out = []
    for steps in (["add-cutoff-check"], ["validate-cutoff-check"], ["cut-over"]):
        res = phase(dsn, plan, steps, spec, writers)
        out.append(res)
        print(f"  {res['phase']:<22} wall {res['wall_s'] * 1000:9.1f} ms   lock held "
              f"{sum(res['held_ms'].values()):7.1f} ms   longest writer stall "
              f"{res['max_stall_ms']:7.1f} ms   ({res['ops']} writer ops)", flush=True)
    return out


def bench_carve(dsn: str, rows: int, writers: int) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS accounts CASCADE")
        c.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, tenant text NOT NULL,"
                  " payload text)")
        c.execute("INSERT INTO accounts (tenant, payload) SELECT (%s::text[])[1 + i %% 200],"
                  " md5(i::text) FROM generate_series(1, %s) i", [TENANTS, rows])
        c.execute("VACUUM ANALYZE accounts")
        Executor(Settings(dsn=dsn)).run(plan_partition(c, "accounts", by="range(tenant)"))
        plan = plan_carve(c, "accounts", [("t000", "t100")], method="swap", batch_size=10000)
    spec = Spec(table=sql.Identifier("public", "accounts"), key_col="tenant",
                make_key=lambda r: r.choice(TENANTS))
    res = {}
    for steps in (["carve-prepare", "carve-copy"], ["carve-verify"], ["carve-swap"],
                  ["carve-drop-old"]):
        r = phase(dsn, plan, steps, spec, writers)
        res[r["phase"]] = r
        extra = (f"   {rows / r['wall_s']:,.0f} source rows/s" if "carve-copy" in steps else "")
        print(f"  {r['phase']:<26} wall {r['wall_s'] * 1000:9.1f} ms   longest writer stall "
              f"{r['max_stall_ms']:7.1f} ms{extra}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--dsn", help="database to use (default: a throwaway sandbox server)")
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--carve-rows", type=int, default=1_000_000,
                    help="rows of the DEFAULT to carve from (0: skip)")
    ap.add_argument("--writers", type=int, default=4)
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
        print(f"partition orders ({args.rows:,} rows) in place, legacy strategy, "
              f"{args.writers} writers:", flush=True)
        bench_partition(dsn, args.rows, args.writers)
        if args.carve_rows:
            print(f"carve 't000'..'t100' (half the rows) out of a DEFAULT of "
                  f"{args.carve_rows:,} rows by copy + capture + swap, {args.writers} writers:",
                  flush=True)
            bench_carve(dsn, args.carve_rows, args.writers)
    finally:
        if sb is not None:
            sb.down()


if __name__ == "__main__":
    main()
