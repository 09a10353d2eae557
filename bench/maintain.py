"""Bench: ``maintain`` on a table with ~1,000 monthly partitions whose DEFAULT holds 1 million
misplaced rows spread over 12 months, against plain SQL moving the same rows month by month
(``DELETE ... RETURNING`` into a new table, then ``ATTACH``), in the same run, each with 4
application-like writers running. Reports wall time, drain rows/s and the longest writer stall.

    .venv/bin/python bench/maintain.py [--rows 1000000] [--partitions 1000]

Uses a throwaway sandbox server (or $PGCLEAVE_DSN's server when set).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from pgcleave.sandbox import Sandbox
from pgcleave.testing.workload import Spec, Workload

YEAR = 2023  # the 12 months whose partitions are missing; their rows sit in the DEFAULT


def build(dsn: str, partitions: int, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE b (id bigserial, at timestamptz NOT NULL, payload text,"
                  " PRIMARY KEY (id, at)) PARTITION BY RANGE (at)")
        c.execute("CREATE INDEX ON b (at)")
        start = (YEAR * 12) - (partitions - 15)  # + 12 drained + 3 ahead = partitions
        with c.transaction():
            for k in range(start, YEAR * 12):
                y, m = divmod(k, 12)
                ny, nm = divmod(k + 1, 12)
                c.execute(f"CREATE TABLE b_{y}_{m + 1:02d} PARTITION OF b FOR VALUES FROM "
                          f"('{y}-{m + 1:02d}-01 00:00+00') TO ('{ny}-{nm + 1:02d}-01 00:00+00')")
            for k in range(YEAR * 12 + 12, YEAR * 12 + 15):  # Jan-Mar of the next year
                y, m = divmod(k, 12)
                ny, nm = divmod(k + 1, 12)
                c.execute(f"CREATE TABLE b_{y}_{m + 1:02d} PARTITION OF b FOR VALUES FROM "
                          f"('{y}-{m + 1:02d}-01 00:00+00') TO ('{ny}-{nm + 1:02d}-01 00:00+00')")
            c.execute("CREATE TABLE b_default PARTITION OF b DEFAULT")
        c.execute(f"INSERT INTO b (at, payload) SELECT '{YEAR}-01-01 00:00+00'::timestamptz + "
                  f"(i::float8 / {rows}) * interval '365 days', 'seed' FROM "
                  f"generate_series(0, {rows - 1}) i")
        c.execute("VACUUM ANALYZE b")
        n = c.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'b'::regclass"
                      ).fetchone()
        print(f"  built: {n[0] if n else '?'} partitions, {rows:,} rows in b_default",
              flush=True)


def writers(dsn: str) -> Workload:
    base = datetime(YEAR, 1, 1, tzinfo=UTC)

    def key(rng: random.Random) -> datetime:
        return base + timedelta(seconds=rng.randrange(0, 455 * 86400))

    return Workload(dsn, Spec(table=sql.Identifier("b"), key_col="at", make_key=key),
                    writers=4, max_seconds=3600, pause_s=0.002)


def plain_sql(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET lock_timeout = 0")
        for m in range(1, 13):
            lo = f"{YEAR}-{m:02d}-01 00:00+00"
            hi = f"{YEAR + (m == 12)}-{(m % 12) + 1:02d}-01 00:00+00"
            name = sql.Identifier(f"b_{YEAR}_{m:02d}")
            with c.transaction():
                # without this lock, rows inserted after the DELETE make the ATTACH fail
                c.execute("LOCK TABLE b_default IN EXCLUSIVE MODE")
                c.execute(sql.SQL("CREATE TABLE {} (LIKE b INCLUDING ALL)").format(name))
                c.execute(sql.SQL(
                    "WITH moved AS (DELETE FROM ONLY b_default WHERE at >= {lo} AND at < {hi}"
                    " RETURNING *) INSERT INTO {} SELECT * FROM moved").format(
                    name, lo=sql.Literal(lo), hi=sql.Literal(hi)))
                c.execute(sql.SQL("ALTER TABLE b ATTACH PARTITION {} FOR VALUES FROM ({}) TO "
                                  "({})").format(name, sql.Literal(lo), sql.Literal(hi)))


def measure(label: str, dsn: str, fn: Any) -> dict[str, Any]:
    wl = writers(dsn).start()
    time.sleep(1.0)
    t0 = time.monotonic()
    fn()
    wall = time.monotonic() - t0
    time.sleep(0.5)
    wl.stop()
    with psycopg.connect(dsn, autocommit=True) as c:
        left = c.execute("SELECT count(*) FROM ONLY b_default WHERE at < %s",
                         [f"{YEAR + 1}-01-01 00:00+00"]).fetchone()
        try:
            wl.verify(c)
            ok = "verified"
        except AssertionError as exc:
            ok = f"NOT verified: {str(exc)[:200]}"
    res = {"label": label, "wall_s": wall, "max_stall_ms": wl.max_stall_ms,
           "writer_errors": len(wl.errors), "ops": sum(wl.ops.values()),
           "left_in_default": left[0] if left else None, "verify": ok}
    print(f"  {label}: wall {wall:.1f} s, longest writer stall {wl.max_stall_ms:.0f} ms, "
          f"writer ops {res['ops']}, writer errors {res['writer_errors']}, rows of {YEAR} "
          f"left in DEFAULT {res['left_in_default']}, {ok}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=1000)
    args = ap.parse_args()
    sb = None
    base = os.environ.get("PGCLEAVE_DSN")
    if not base:
        sb = Sandbox(tempfile.mkdtemp(prefix="pgcleave-bench-"))
        base = sb.up(1)[0].dsn
    try:
        results = []
        for label in ("pgcleave maintain", "plain SQL per month"):
            dbname = "bench_" + ("m" if label.startswith("pgcleave") else "p")
            with psycopg.connect(base, autocommit=True) as c:
                c.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
                c.execute(f"CREATE DATABASE {dbname}")
            dsn = psycopg.conninfo.make_conninfo(base, dbname=dbname)
            print(f"{label}: building", flush=True)
            build(dsn, args.partitions, args.rows)
            if label.startswith("pgcleave"):
                cli = [sys.executable, "-m", "pgcleave", "--dsn", dsn]
                subprocess.run([*cli, "config", "b", "--interval", "1 month", "--premake",
                                "3"], check=True, capture_output=True)

                def run(cli: list[str] = cli) -> None:
                    r = subprocess.run([*cli, "maintain", "--now", f"{YEAR}-12-15"],
                                       capture_output=True, text=True)
                    if r.returncode != 0:
                        raise SystemExit(r.stderr)
                    print("  " + r.stdout.strip(), flush=True)
                    holds = []
                    for line in r.stderr.splitlines():
                        if any(w in line for w in ("held", "copied", "built", "replayed",
                                                   "verified")):
                            print("   " + line.strip(), flush=True)
                        m = re.search(r"ACCESS EXCLUSIVE held (\d+) ms", line)
                        if m:
                            holds.append(int(m.group(1)))
                    if holds:
                        print(f"   ACCESS EXCLUSIVE per swap transaction: {holds} ms "
                              f"(longest {max(holds)} ms)", flush=True)

                results.append(measure(label, dsn, run))
            else:
                results.append(measure(label, dsn, lambda dsn=dsn: plain_sql(dsn)))
        a, b = results
        print(f"\nrows/s: pgcleave {args.rows / a['wall_s']:,.0f}, plain SQL "
              f"{args.rows / b['wall_s']:,.0f}; longest writer stall: pgcleave "
              f"{a['max_stall_ms']:.0f} ms, plain SQL {b['max_stall_ms']:.0f} ms")
    finally:
        if sb is not None:
            sb.down()


if __name__ == "__main__":
    main()
