"""Fixed costs: how long a command takes when it has (almost) nothing to do, and how many
server round trips it makes.

  - ``pgcleave --version`` and ``--help`` (no server);
  - ``pgcleave status t`` on a small plain table (connect, read the catalog, print);
  - ``prep`` then ``fill`` of a tiny table (``--rows``, default 1,000): what a fill costs besides
    copying rows (start-up, planning, journal, batches' bookkeeping);
  - ``fill`` of ``--fill-rows`` (default 1,000,000) rows, the issue's comparison: wall time, the
    fill step as journaled, and its round trips.

Round trips are counted by a loopback proxy in front of the server (``testing/proxy.py``): each
message after which the client waits (a Query, a pipeline's Sync, ...), so a pipeline counts
once; "flights" (each time the client sent after the server last replied, the count of earlier
runs) follow in brackets. Each timing is the median of ``--repeat`` runs, with the fastest
beside it (the machine is shared; the load is printed). The sources are compiled first, as an
installed package is: ``PYTHONDONTWRITEBYTECODE`` would otherwise compile every module at
every start.

    .venv/bin/python bench/startup.py [--rows 1000] [--fill-rows 1000000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import psycopg

import pgcleave
from pgcleave.sandbox import temporary
from pgcleave.testing.proxy import TcpProxy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args: str, dsn: str | None = None) -> float:
    return _run([sys.executable, "-m", "pgcleave", *(["--dsn", dsn] if dsn else []), *args])[0]


def _run(cmd: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True)
    took = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[3:])} failed ({p.returncode}):\n{p.stderr}")
    return took, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def timed(repeat: int, *args: str, dsn: str | None = None) -> str:
    """Median and fastest wall time of ``repeat`` runs, and the median CPU time (which the
    other work on a shared machine inflates less)."""
    cmd = [sys.executable, "-m", "pgcleave", *(["--dsn", dsn] if dsn else []), *args]
    runs = [_run(cmd) for _ in range(repeat)]
    wall = [r[0] for r in runs]
    return (f"{statistics.median(wall) * 1000:7.0f} ms (fastest {min(wall) * 1000:.0f}, "
            f"CPU {statistics.median(r[1] for r in runs) * 1000:.0f})")


def counted(proxy: TcpProxy, *args: str, dsn: str) -> tuple[float, str]:
    """Wall time and ``"N round trips [M flights]"`` of one run."""
    before, flights = proxy.round_trips, proxy.flights
    took = cli(*args, dsn=dsn)
    return took, (f"{proxy.round_trips - before} round trips "
                  f"[{proxy.flights - flights} flights]")


def load(c: psycopg.Connection[Any], table: str, rows: int) -> None:
    c.execute(f"DROP TABLE IF EXISTS {table}, {table}_intermediate CASCADE")
    c.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL,"
              " tenant int NOT NULL, payload text)")
    c.execute(f"INSERT INTO {table} (created_at, tenant, payload) SELECT"
              " now() - (%s - i) * (interval '3 years' / %s), i %% 1000, md5(i::text)"
              " FROM generate_series(1, %s) i", [rows, rows, rows])
    c.execute(f"VACUUM ANALYZE {table}")


def prep(table: str, dsn: str) -> None:
    cli("prep", table, "--by", "created_at", "--interval", "1 month", "--past", "37",
        "--future", "1", "--yes", dsn=dsn)


def fill_step_ms(c: psycopg.Connection[Any]) -> float:
    row = c.execute("SELECT duration_ms FROM pgcleave.steps WHERE name = 'fill'"
                    " ORDER BY job_id DESC LIMIT 1").fetchone()
    return float(row[0]) if row and row[0] else 0.0


def fill_batches(c: psycopg.Connection[Any]) -> int:
    """The last fill's batches (each two round trips; how many depends on --batch-time and
    on how fast the machine is at that moment)."""
    row = c.execute("SELECT (progress->>'batches')::int FROM pgcleave.steps WHERE name = 'fill'"
                    " ORDER BY job_id DESC LIMIT 1").fetchone()
    return int(row[0]) if row and row[0] else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--fill-rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--fill-repeat", type=int, default=3)
    a = ap.parse_args()
    load0 = os.getloadavg()[0]
    print(f"load average (1 min) {load0:.2f} on {os.cpu_count()} CPUs", flush=True)
    interpreter = [_run([sys.executable, "-c", "pass"]) for _ in range(a.repeat)]
    print(f"python -c pass           {statistics.median(r[0] for r in interpreter) * 1000:7.0f}"
          f" ms (the interpreter alone; CPU {min(r[1] for r in interpreter) * 1000:.0f})")
    imports = [_run([sys.executable, "-c", "import psycopg, click, rich.console"])
               for _ in range(a.repeat)]
    print(f"import psycopg, click, rich {statistics.median(r[0] for r in imports) * 1000:4.0f}"
          f" ms (fastest {min(r[0] for r in imports) * 1000:.0f}, CPU "
          f"{statistics.median(r[1] for r in imports) * 1000:.0f}; the libraries alone)")
    compileall.compile_dir(os.path.dirname(pgcleave.__file__), quiet=1)
    print(f"pgcleave --version       {timed(a.repeat, '--version')}")
    print(f"pgcleave --help          {timed(a.repeat, '--help')}")
    with temporary(1) as sb:
        server = sb.servers[0]
        with psycopg.connect(server.dsn, autocommit=True) as c0:
            c0.execute("CREATE DATABASE bench")
        proxy = TcpProxy("127.0.0.1", server.port)
        dsn = f"postgresql://{server.user}@127.0.0.1:{proxy.port}/bench"
        with psycopg.connect(server.dsn_for("bench"), autocommit=True) as c:
            load(c, "tiny", a.rows)
            st = timed(a.repeat, "status", "tiny", dsn=dsn)
            _, st_rt = counted(proxy, "status", "tiny", dsn=dsn)
            print(f"pgcleave status tiny     {st}, {st_rt}")
            prep("tiny", dsn)
            fills = []
            for _ in range(a.repeat):
                c.execute("TRUNCATE tiny_intermediate")
                c.execute("UPDATE pgcleave.copies SET filled_at = NULL")
                took, rt = counted(proxy, "fill", "tiny", "--yes", dsn=dsn)
                fills.append((took, f"{rt} in {fill_batches(c)} batches", fill_step_ms(c)))
            took = statistics.median(f[0] for f in fills)
            step = statistics.median(f[2] for f in fills)
            print(f"fill of {a.rows:,} rows       {took * 1000:7.0f} ms wall (fastest "
                  f"{min(f[0] for f in fills) * 1000:.0f}), fill step {step:.0f} ms, "
                  f"{fills[0][1]} (the command's fixed cost)")
            if a.fill_rows:
                t0 = time.monotonic()
                load(c, "big", a.fill_rows)
                print(f"loaded {a.fill_rows:,} rows in {time.monotonic() - t0:.1f} s",
                      flush=True)
                prep("big", dsn)
                runs = []
                for _ in range(a.fill_repeat):
                    c.execute("TRUNCATE big_intermediate")
                    c.execute("UPDATE pgcleave.copies SET filled_at = NULL")
                    c.execute("CHECKPOINT")
                    took, rt = counted(proxy, "fill", "big", "--yes", dsn=dsn)
                    runs.append((took, f"{rt} in {fill_batches(c)} batches", fill_step_ms(c)))
                took = statistics.median(r[0] for r in runs)
                step = statistics.median(r[2] for r in runs)
                print(f"fill of {a.fill_rows:,} rows  {took:7.2f} s wall, fill step "
                      f"{step / 1000:.2f} s, outside the step {took - step / 1000:.2f} s, "
                      f"{runs[0][1]}")
        proxy.close()
    print(f"load average (1 min) at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
