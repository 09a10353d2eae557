"""Bench: ``maintain`` on a table with ~1,000 monthly partitions whose DEFAULT holds 1 million
misplaced rows spread over 12 months, against plain SQL moving the same rows month by month
(``DELETE ... RETURNING`` into a new table, then ``ATTACH``), in the same run, each with 4
application-like writers running. Reports the writers' baseline latency (same writers, no
maintenance), wall time, drain rows/s, the longest writer stall and the ACCESS EXCLUSIVE hold
of each swap transaction.

The writers name the partition key in their UPDATE/DELETE/SELECT (``Spec.prune_by_key``), as
an application on a table with 1,000 partitions does: without it every such statement locks
and scans all 1,000 partitions (~30 ms each) and the writers stall on their own, maintenance
or not. ``--unpruned`` runs that variant instead, for comparison.

    .venv/bin/python bench/maintain.py [--rows 1000000] [--partitions 1000] [--diagnose]
                                       [--jobs 1,2]

``--jobs 1,2`` runs the pgcleave drain once per value (``maintain --jobs N``: the bulk copy on
N connections), each on a fresh copy of the table, and prints the bulk copy's own time too.

``--diagnose`` also lowers ``deadlock_timeout`` to 20 ms with ``log_lock_waits`` (it logs
every lock wait longer than that, with who holds the lock) and prints a timeline of the
server's slow statements, lock waits and pgcleave's progress lines. Without it the server still
logs statements over 50 ms, used for the timeline of the slowest writer waits.

Uses a throwaway sandbox server (or $PGCLEAVE_DSN's server when set; no timeline then).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from pgcleave.sandbox import Sandbox
from pgcleave.testing.workload import Spec, Workload

YEAR = 2023  # the 12 months whose partitions are missing; their rows sit in the DEFAULT
WRITERS = 4
BASELINE_S = 8.0


def build(dsn: str, partitions: int, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE b (id bigserial, at timestamptz NOT NULL, payload text,"
                  " PRIMARY KEY (id, at)) PARTITION BY RANGE (at)")
        c.execute("CREATE INDEX ON b (at)")
        start = (YEAR * 12) - (partitions - 15)  # + 12 drained + 3 ahead = partitions
        with c.transaction():
            for k in [*range(start, YEAR * 12), *range(YEAR * 12 + 12, YEAR * 12 + 15)]:
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


def writers(dsn: str, pruned: bool) -> Workload:
    base = datetime(YEAR, 1, 1, tzinfo=UTC)

    def key(rng: random.Random) -> datetime:
        return base + timedelta(seconds=rng.randrange(0, 455 * 86400))

    return Workload(dsn, Spec(table=sql.Identifier("b"), key_col="at", make_key=key,
                              prune_by_key=pruned),
                    writers=WRITERS, max_seconds=3600, pause_s=0.002)


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


def latency(wl: Workload, window: list[tuple[int, int]] | None = None) -> dict[str, float]:
    """Writer latency figures; with ``window`` (per writer, the index of its first and last
    operation in the window), only the operations that ran in it."""
    lat = sorted(x for i, r in enumerate(wl.results)
                 for x in (r.latencies_ms[window[i][0]:window[i][1]] if window
                           else r.latencies_ms))
    if not lat:
        return {"n": 0, "p50": 0.0, "p99": 0.0, "max": 0.0, "over100": 0}
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
    return {"n": len(lat), "p50": q[49], "p99": q[98], "max": lat[-1],
            "over100": sum(1 for x in lat if x > 100)}


def fmt(s: dict[str, float]) -> str:
    return (f"{int(s['n'])} ops, p50 {s['p50']:.1f} ms, p99 {s['p99']:.1f} ms, "
            f"max {s['max']:.0f} ms, {int(s['over100'])} over 100 ms")


def baseline(dsn: str, pruned: bool) -> dict[str, float]:
    wl = writers(dsn, pruned).start()
    time.sleep(1.0)  # warm-up, as in measure()
    start = [len(r.latencies_ms) for r in wl.results]
    time.sleep(BASELINE_S)
    wl.stop()
    s = latency(wl, [(a, len(r.latencies_ms)) for a, r in zip(start, wl.results, strict=True)])
    print(f"  writer baseline, no maintenance ({BASELINE_S:.0f} s after 1 s of warm-up): "
          f"{fmt(s)}; incl. warm-up max {wl.max_stall_ms:.0f} ms", flush=True)
    return s


class Lines:
    """Lines of a child's stderr, each stamped with the wall clock when it arrived."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[tuple[float, str]] = []
        assert proc.stderr is not None
        self._t = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._t.start()

    def _read(self, f: Any) -> None:
        for line in f:
            self.lines.append((time.time(), line.rstrip()))

    def join(self) -> None:
        self._t.join(timeout=10)


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \w+ \[(\d+)\] (\S*) (.*)$")


def server_log(path: str | None, since: float, until: float) -> list[tuple[float, str]]:
    """Slow statements, lock waits and autovacuum lines the server logged in [since, until]."""
    if not path or not os.path.exists(path):
        return []
    out: list[tuple[float, str]] = []
    with open(path, errors="replace") as f:
        for line in f:
            m = LOG_LINE.match(line.rstrip())
            if not m:
                continue
            ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(
                tzinfo=datetime.now().astimezone().tzinfo).timestamp()
            if not since <= ts <= until:
                continue
            msg = m.group(4)
            if not any(w in msg for w in ("duration:", "still waiting", "acquired",
                                          "automatic", "canceling", "timeout")):
                continue
            out.append((ts, f"{m.group(3) or '-'}[{m.group(2)}] {msg[:200]}"))
    return out


def measure(label: str, dsn: str, fn: Any, pruned: bool, log: str | None,
            diagnose: bool) -> dict[str, Any]:
    wl = writers(dsn, pruned).start()
    time.sleep(1.0)
    # The writers' own warm-up (each connection's first statements build generic plans over
    # 1,000 partitions: ~200 ms) happens in that first second; stalls are counted from here.
    start = [len(r.latencies_ms) for r in wl.results]
    t_wall0 = time.time()
    t0 = time.monotonic()
    extra = fn() or {}
    wall = time.monotonic() - t0
    t_wall1 = time.time()
    window = [(a, len(r.latencies_ms) + 1) for a, r in zip(start, wl.results, strict=True)]
    time.sleep(0.5)
    wl.stop()
    with psycopg.connect(dsn, autocommit=True) as c:
        left = c.execute("SELECT count(*) FROM ONLY b_default WHERE at < %s",
                         [f"{YEAR + 1}-01-01 00:00+00"]).fetchone()
        try:
            wl.verify(c)
            ok = "verified"
        except AssertionError as exc:
            ok = f"NOT verified: {str(exc)[:300]}"
    s = latency(wl, window)
    res = {"label": label, "wall_s": wall, "max_stall_ms": s["max"],
           "writer_errors": len(wl.errors), "ops": sum(wl.ops.values()), "lat": s,
           "left_in_default": left[0] if left else None, "verify": ok, **extra}
    print(f"  {label}: wall {wall:.1f} s, longest writer stall during it {s['max']:.0f} ms "
          f"(whole writer run incl. warm-up {wl.max_stall_ms:.0f} ms), "
          f"writers during it {fmt(s)}, writer errors {res['writer_errors']}, rows of {YEAR} "
          f"left in DEFAULT {res['left_in_default']}, {ok}", flush=True)
    if wl.errors:
        print("   writer errors, first: " + "; ".join(e[:150] for e in wl.errors[:3]))
    events = [(t, "pgcleave: " + x) for t, x in extra.get("lines", [])]
    events += server_log(log, t_wall0 - 1.0, t_wall1 + 0.5)
    if events:
        print("   timeline (s from start; server log: statements over 50 ms"
              + (", lock waits over 20 ms" if diagnose else "") + "):")
        shown = 0
        for t, x in sorted(events):
            if not diagnose and not x.startswith("pgcleave: ") and shown > 60:
                continue
            if not x.startswith("pgcleave: "):
                shown += 1
            print(f"   {t - t_wall0:8.3f}  {x}")
    return res


def run_maintain(cli: list[str], jobs: str = "1") -> dict[str, Any]:
    proc = subprocess.Popen([*cli, "maintain", "--jobs", jobs, "--now", f"{YEAR}-12-15"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "400"})  # no wrapped lines
    lines = Lines(proc)  # the only reader of stderr (communicate() would compete for it)
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.wait()
    lines.join()
    if proc.returncode != 0:
        raise SystemExit("\n".join(x for _, x in lines.lines))
    print("  " + out.strip(), flush=True)
    holds = [int(m.group(1)) for _, x in lines.lines
             if (m := re.search(r"swap \d+/\d+: .*ACCESS EXCLUSIVE held (\d+) ms", x))]
    retries = sum(1 for _, x in lines.lines if "lock not available" in x)
    if holds:
        print(f"   ACCESS EXCLUSIVE per swap transaction: {holds} ms (longest {max(holds)} ms)"
              f"; lock retries {retries}", flush=True)
    copy_s = [float(m.group(1)) for _, x in lines.lines
              if (m := re.search(r"copied [\d,]+ rows in ([\d.]+) s", x))]
    if copy_s:
        print(f"   bulk copy {sum(copy_s):.1f} s", flush=True)
    keep = [(t, x.strip()) for t, x in lines.lines
            if any(w in x for w in ("held", "copied", "built", "replayed", "verified",
                                    "lock not available", "[", "job"))]
    return {"lines": keep, "holds": holds, "retries": retries, "copy_s": sum(copy_s)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=1000)
    ap.add_argument("--unpruned", action="store_true",
                    help="writers' UPDATE/DELETE/SELECT name only the id (touch every "
                         "partition); default: they name the partition key too")
    ap.add_argument("--diagnose", action="store_true")
    ap.add_argument("--only", choices=["pgcleave", "plain"])
    ap.add_argument("--jobs", default="1", help="comma list: one pgcleave drain per value")
    args = ap.parse_args()
    pruned = not args.unpruned
    sb = None
    log: str | None = None
    base = os.environ.get("PGCLEAVE_DSN")
    if not base:
        sb = Sandbox(tempfile.mkdtemp(prefix="pgcleave-bench-"))
        srv = sb.up(1)[0]
        base, log = srv.dsn, srv.logfile
    print(f"writers: {WRITERS}, queries "
          + ("name the partition key (pruned to one partition: the goal is judged on these)"
             if pruned else "name only the id (NOT pruned: every statement touches every "
                            "partition)"), flush=True)
    try:
        with psycopg.connect(base, autocommit=True) as c:
            c.execute("ALTER SYSTEM SET log_min_duration_statement = '50ms'")
            c.execute("ALTER SYSTEM SET log_autovacuum_min_duration = 0")
            if args.diagnose:
                c.execute("ALTER SYSTEM SET log_lock_waits = on")
                c.execute("ALTER SYSTEM SET deadlock_timeout = '20ms'")
            c.execute("SELECT pg_reload_conf()")
        results = []
        labels = [x for x in (*(f"pgcleave maintain --jobs {j}" for j in args.jobs.split(",")),
                              "plain SQL per month")
                  if args.only is None or x.startswith(args.only)]
        for label in labels:
            dbname = "bench_" + ("m" if label.startswith("pgcleave") else "p")
            jobs = label.rsplit(" ", 1)[-1] if label.startswith("pgcleave") else "1"
            with psycopg.connect(base, autocommit=True) as c:
                c.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
                c.execute(f"CREATE DATABASE {dbname}")
            dsn = psycopg.conninfo.make_conninfo(base, dbname=dbname)
            print(f"{label}: building", flush=True)
            build(dsn, args.partitions, args.rows)
            base_lat = baseline(dsn, pruned)
            if label.startswith("pgcleave"):
                cli = [sys.executable, "-m", "pgcleave", "--dsn", dsn]
                subprocess.run([*cli, "config", "b", "--interval", "1 month", "--premake",
                                "3"], check=True, capture_output=True)
                r = measure(label, dsn, lambda cli=cli, jobs=jobs: run_maintain(cli, jobs),
                            pruned, log, args.diagnose)
            else:
                r = measure(label, dsn, lambda dsn=dsn: plain_sql(dsn), pruned, log,
                            args.diagnose)
            r["baseline"] = base_lat
            results.append(r)
        print("\nsummary (writers " + ("pruned by key" if pruned else "NOT pruned") + "):")
        for r in results:
            print(f"  {r['label']:28s} wall {r['wall_s']:6.1f} s, "
                  f"{args.rows / r['wall_s']:>9,.0f} rows/s, longest writer stall "
                  f"{r['max_stall_ms']:5.0f} ms during the drain (baseline max "
                  f"{r['baseline']['max']:.0f} ms, "
                  f"p99 {r['baseline']['p99']:.1f} ms), writer errors {r['writer_errors']}, "
                  f"{r['verify']}"
                  + (f", AE per swap {r['holds']} ms" if r.get("holds") else "")
                  + (f", bulk copy {r['copy_s']:.1f} s" if r.get("copy_s") else ""))
    finally:
        if sb is not None:
            sb.down()


if __name__ == "__main__":
    main()
