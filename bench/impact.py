"""What does a bulk phase cost the application? pgbench's TPC-B-like workload (and the
application-like writer mix of ``pgcleave.testing.workload``) alone, then while pgcleave works,
in the same run and on the same server.

Each variant gets a fresh database (``pgbench -i -s SCALE``) and one pgbench run (4 clients,
per-transaction log): ``--seconds`` alone, then ``pgcleave partition pgbench_accounts
--strategy copy --by 'range(aid)'``, then ``--seconds`` alone again. "before" is the baseline;
"during" are the transactions that ended while the fill step ran (the only bulk phase of the
copy conversion; prep and swap are milliseconds); "after" shows what the conversion leaves
(capture back to the retired table until ``unprep``, autovacuum of the new partitions).
Variants: ``default`` (the shipped settings: 20 ms time-bounded batches back to back, no
throttle), ``rest`` (``--duty 50``: resting as long as each batch ran), ``fixed``
(``--batch-time 0``: 10,000-row batches, the behaviour before time bounds), and ``max-load``
(the defaults plus ``--max-load active=2``: the fill backs off while more than two of
pgbench's four sessions are busy).
With ``--mix``, the writer mix (inserts, updates, deletes, key moves, reads; 4 writers) on a
20-column-free ``events`` table is measured the same way (its own longest write).

    .venv/bin/python bench/impact.py --seconds 20
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from pgcleave.sandbox import temporary
from pgcleave.testing.workload import Spec, Workload

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VARIANTS: dict[str, list[str]] = {
    "default": [],
    "rest": ["--duty", "50"],
    "fixed": ["--batch-time", "0"],
    "max-load": ["--max-load", "active=2"],
}


def pgbench_bin(bindir: str) -> str:
    for cand in (os.path.join(bindir, "pgbench"), shutil.which("pgbench") or ""):
        if cand and os.path.exists(cand):
            return cand
    raise SystemExit("pgbench not found next to the server's binaries nor on PATH")


def pgbench(exe: str, dsn: str, seconds: float, logdir: str) -> subprocess.Popen[str]:
    for f in glob.glob(os.path.join(logdir, "pgbench_log.*")):
        os.remove(f)
    return subprocess.Popen([exe, "-n", "-T", str(int(seconds)), "-c", "4", "-j", "2", "--log",
                             "--log-prefix", os.path.join(logdir, "pgbench_log"), dsn],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def transactions(logdir: str) -> list[tuple[float, float]]:
    """(end time as epoch seconds, latency ms) of every logged transaction."""
    out = []
    for f in glob.glob(os.path.join(logdir, "pgbench_log.*")):
        with open(f) as fh:
            for line in fh:
                p = line.split()
                if len(p) >= 6 and p[2] != "failed" and p[2] != "skipped":
                    out.append((int(p[4]) + int(p[5]) / 1e6, int(p[2]) / 1000))
    return out


def figures(txs: list[tuple[float, float]], t0: float, t1: float) -> dict[str, float]:
    lat = sorted(ms for at, ms in txs if t0 <= at <= t1)
    if not lat:
        return {"tps": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0, "n": 0}
    return {"tps": len(lat) / max(t1 - t0, 1e-6), "p50": statistics.median(lat),
            "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))], "max": lat[-1],
            "n": len(lat)}


def pgcleave(dsn: str, *args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "pgcleave", "--dsn", dsn, *args], cwd=ROOT,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"pgcleave {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return p.stderr


def fill_window(stderr: str, started: float) -> tuple[float, float, int]:
    """(start, end as epoch seconds, rows) of the fill step, from the progress log (second
    resolution) bracketed by the run's own start."""
    def stamp(pattern: str) -> float:
        m = re.search(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d) " + pattern, stderr)
        assert m, (pattern, stderr)
        return time.mktime(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    t0 = max(stamp(r"\s+\[\d+/\d+\] copy the rows"), started)
    t1 = stamp(r"\s+fill done") + 1.0
    rows = int(re.search(r"fill done: ([\d,]+) rows", stderr).group(1)  # type: ignore[union-attr]
               .replace(",", ""))
    return t0, t1, rows


def fill_ms(stderr: str) -> float:
    m = re.search(r"\[(\d+)/\d+\] copy the rows.*?\n.*?\[\1/\d+\] done \((\d+) ms", stderr,
                  re.S)
    assert m, stderr
    return float(m.group(2))


def pgbench_variant(exe: str, admin: str, dsn_for: Any, name: str, opts: list[str],
                    a: argparse.Namespace, logdir: str) -> None:
    """One pgbench run: ``--seconds`` alone, the conversion, ``--seconds`` alone again."""
    db = f"impact_{name.replace('-', '_')}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(db)))
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    dsn = dsn_for(db)
    subprocess.run([exe, "-i", "-q", "-s", str(a.scale), dsn], check=True, capture_output=True)
    p = pgbench(exe, dsn, 3600, logdir)
    b0 = time.time() + 1
    time.sleep(a.seconds + 1)
    b1 = time.time()
    started = time.time()
    err = pgcleave(dsn, *opts, "partition", "pgbench_accounts", "--strategy", "copy", "--by",
                   "range(aid)", "--interval", str(a.scale * 20000), "--yes")
    a0 = time.time() + 1
    time.sleep(a.seconds + 1)
    a1 = time.time()
    p.terminate()
    p.communicate()
    ms = fill_ms(err)
    w0, w1, rows = fill_window(err, started)
    txs = transactions(logdir)
    before, during, after = figures(txs, b0, b1), figures(txs, w0, w1), figures(txs, a0, a1)
    paused = "paused" in err
    print(f"{name:9} before {before['tps']:7,.0f} tps p50 {before['p50']:5.1f} p99 "
          f"{before['p99']:6.1f} max {before['max']:6.1f} ms | fill {rows:,} rows in "
          f"{ms / 1000:5.1f} s ({rows / max(ms / 1000, 1e-6):8,.0f} rows/s"
          f"{', paused for load' if paused else ''})", flush=True)
    for label, f in (("during", during), ("after", after)):
        print(f"{'':9} {label:6} {f['tps']:7,.0f} tps p50 {f['p50']:5.1f} p99 "
              f"{f['p99']:6.1f} max {f['max']:6.1f} ms | tps "
              f"{f['tps'] / max(before['tps'], 1e-6):4.0%} of before, p99 "
              f"{f['p99'] / max(before['p99'], 1e-6):4.1f}x", flush=True)
    print(f"{'':9} load average {os.getloadavg()[0]:.1f}", flush=True)


def mix_variant(admin: str, dsn_for: Any, name: str, opts: list[str], a: argparse.Namespace
                ) -> None:
    db = f"impact_mix_{name.replace('-', '_')}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(db)))
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    dsn = dsn_for(db)
    n = a.scale * 100000
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE events (id bigserial PRIMARY KEY, k int NOT NULL, payload text)")
        c.execute("INSERT INTO events (k, payload) SELECT i %% 1000, md5(i::text) FROM"
                  " generate_series(1, %s) i", [n])
        c.execute("VACUUM ANALYZE events")
    spec = Spec(table=sql.Identifier("public", "events"), key_col="k",
                make_key=lambda r: r.randrange(1000))

    def run(during: bool) -> tuple[float, float, float, str]:
        w = Workload(dsn, spec, writers=4, max_seconds=a.seconds + 120, seed=7 if during else 3)
        err = ""
        with w:
            t0 = time.monotonic()
            if during:
                err = pgcleave(dsn, *opts, "partition", "events", "--strategy", "copy", "--by",
                               "range(k)", "--interval", "100", "--yes")
            else:
                time.sleep(a.seconds)
            took = time.monotonic() - t0
        lat = sorted(x for r in w.results for x in r.latencies_ms)
        assert not w.errors, w.errors[:3]
        with psycopg.connect(dsn) as c:
            w.verify(c)
        return len(lat) / took, lat[int(len(lat) * 0.99)] if lat else 0.0, w.max_stall_ms, err

    b_ops, b_p99, b_max, _ = run(False)
    d_ops, d_p99, d_max, err = run(True)
    print(f"mix {name:5} baseline {b_ops:6,.0f} ops/s p99 {b_p99:5.1f} longest {b_max:6.1f} ms"
          f" | during the whole conversion {d_ops:6,.0f} ops/s ({d_ops / b_ops:4.0%}) p99 "
          f"{d_p99:5.1f} longest {d_max:6.1f} ms; fill {fill_ms(err) / 1000:.1f} s, nothing "
          "lost", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=5, help="pgbench scale (100,000 rows each)")
    ap.add_argument("--seconds", type=float, default=15, help="baseline length")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="of " + ", ".join(VARIANTS))
    ap.add_argument("--mix", action="store_true", help="also the application-like writer mix")
    a = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    logdir = tempfile.mkdtemp(prefix="pgcleave-impact-")
    with temporary(1) as sb:
        server = sb.servers[0]
        exe = pgbench_bin(server.bindir)
        for name in a.variants.split(","):
            pgbench_variant(exe, server.dsn, server.dsn_for, name, VARIANTS[name], a, logdir)
        if a.mix:
            for name in a.variants.split(","):
                mix_variant(server.dsn, server.dsn_for, name, VARIANTS[name], a)
    shutil.rmtree(logdir, ignore_errors=True)
    threading.Event().wait(0)


if __name__ == "__main__":
    main()
