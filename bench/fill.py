"""How fast is ``pgcleave fill`` compared with one ``INSERT INTO new SELECT * FROM old``?

One run, same data, same partitions and indexes (``base`` is a clone of the intermediate table
that ``prep`` builds):
  A. the single statement ``INSERT INTO base SELECT * FROM events``;
  B. ``pgcleave fill`` with change capture active (the trigger installed by ``prep``);
  B2. ``pgcleave fill --jobs 2``: two connections, each copying half of the blocks;
  B'. ``pgcleave fill --order key``: keyset batches on the primary key instead of block ranges;
  C. ``pgcleave fill`` after ``prep --defer-indexes``: secondary indexes built after the copy,
     partition by partition with CREATE INDEX CONCURRENTLY (included in the time);
  C2. the same with ``--jobs 2`` (two copying connections, then two index builds at once).
Each is run ``--repeat`` times, each right after a run of A; the best times and the median
ratio of the pairs are reported (the machine is shared: a pair's ratio is steadier).
The peak RSS of the pgcleave process is read from ``wait4`` for that child alone.

    .venv/bin/python bench/fill.py --rows 2000000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from pgcleave.sandbox import temporary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_measured(dsn: str, *args: str) -> tuple[float, float, str]:
    """Run the pgcleave CLI; return (seconds, peak RSS of that process in MB, stderr).

    The peak is the child's own ``VmHWM`` (``/proc/PID/status``), read every 0.1 s while it
    runs: ``wait4``'s ``ru_maxrss`` is no good here, as Linux carries the parent's peak into
    the child at its exec (a bench process that has grown, its writers remembering every
    row, made a 46 MB pgcleave look like 125 MB)."""
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "pgcleave", "--dsn", dsn, *args], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                with open(f"/proc/{p.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak[0] = max(peak[0], int(line.split()[1]))
            except OSError:
                return
            done.wait(0.1)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    assert p.stderr is not None
    err = p.stderr.read()
    done.set()
    t.join()
    _, status, _usage = os.wait4(p.pid, 0)
    took = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"pgcleave {' '.join(args)} failed ({p.returncode}):\n{err}")
    return took, peak[0] / 1024, err


def load(c: psycopg.Connection[Any], rows: int) -> None:
    c.execute("CREATE TABLE events (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL,"
              " tenant int NOT NULL, kind text NOT NULL, payload text)")
    c.execute(
        "INSERT INTO events (created_at, tenant, kind, payload) SELECT"
        " now() - (%s - i) * (interval '3 years' / %s), i %% 1000, 'k' || (i %% 17),"
        " md5(i::text) FROM generate_series(1, %s) i", [rows, rows, rows])
    c.execute("CREATE INDEX events_created ON events (created_at)")
    c.execute("CREATE INDEX events_tenant ON events (tenant, created_at)")
    c.execute("VACUUM ANALYZE events")


def reset(c: psycopg.Connection[Any]) -> None:
    c.execute("TRUNCATE events_intermediate, base")
    c.execute("UPDATE pgcleave.copies SET filled_at = NULL")
    c.execute("CHECKPOINT")


def make_base(c: psycopg.Connection[Any]) -> None:
    """``base``: the same partitions and indexes as ``events_intermediate`` (built by ``prep``),
    the target of the single-statement baseline."""
    c.execute("CREATE TABLE base (LIKE events_intermediate INCLUDING DEFAULTS INCLUDING INDEXES)"
              " PARTITION BY RANGE (created_at)")
    parts = c.execute("SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
                      " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent ="
                      " 'events_intermediate'::regclass").fetchall()
    for name, bound in parts:
        c.execute(sql.SQL("CREATE TABLE {} PARTITION OF base {}").format(
            sql.Identifier("base_" + name), sql.SQL(bound)))


def single(c: psycopg.Connection[Any]) -> float:
    reset(c)
    t = time.monotonic()
    c.execute("INSERT INTO base SELECT * FROM events")
    return time.monotonic() - t


STEP_MS: list[float] = []


def fill(dsn: str, c: psycopg.Connection[Any], batch: int, *extra: str) -> tuple[float, float]:
    reset(c)
    took, rss, _ = run_measured(dsn, "fill", "events", "--batch-size", str(batch), "--yes",
                                *extra)
    # the fill step alone, as journaled (without the process start, planning and journal)
    row = c.execute("SELECT duration_ms FROM pgcleave.steps WHERE name = 'fill'"
                    " ORDER BY job_id DESC LIMIT 1").fetchone()
    STEP_MS.append(float(row[0]) if row and row[0] else 0.0)
    return took, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--batch-size", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    load0 = os.getloadavg()[0]
    ratios: dict[str, list[float]] = {"B": [], "B2": [], "B'": [], "C": [], "C2": []}
    best: dict[str, float] = {}
    peak = 0.0
    with temporary(1) as sb:
        server = sb.servers[0]
        with psycopg.connect(server.dsn, autocommit=True) as c0:
            c0.execute("CREATE DATABASE bench")
        dsn = server.dsn_for("bench")
        with psycopg.connect(dsn, autocommit=True) as c:
            t0 = time.monotonic()
            load(c, a.rows)
            print(f"loaded {a.rows:,} rows in {time.monotonic() - t0:.1f} s", flush=True)
            prep = ["prep", "events", "--by", "created_at", "--interval", "1 month",
                    "--past", "37", "--future", "1", "--yes"]
            run_measured(dsn, *prep)
            make_base(c)

            def record(name: str, took: float, base: float) -> None:
                ratios[name].append(took / base)
                best[name] = min(best.get(name, took), took)
                best["A"] = min(best.get("A", base), base)

            # Each measurement is paired with a single-statement run just before it: on a
            # shared machine the ratio of a pair is steadier than either time.
            for _ in range(a.repeat):
                s1 = single(c)
                f, rss = fill(dsn, c, a.batch_size)
                record("B", f, s1)
                ratios.setdefault("B step", []).append(STEP_MS[-1] / 1000 / s1)
                s4 = single(c)
                f2, rss4 = fill(dsn, c, a.batch_size, "--jobs", "2")
                record("B2", f2, s4)
                s2 = single(c)
                kf, rss2 = fill(dsn, c, a.batch_size, "--order", "key")
                record("B'", kf, s2)
                peak = max(peak, rss, rss2, rss4)
                print(f"  single {s1:.2f} s, fill {f:.2f} s | single {s4:.2f} s, fill --jobs 2 "
                      f"{f2:.2f} s | single {s2:.2f} s, fill --order key {kf:.2f} s", flush=True)
            n = c.execute("SELECT count(*) FROM events_intermediate").fetchone()
            assert n is not None and n[0] == a.rows, n
            run_measured(dsn, "unprep", "events", "--yes")
            run_measured(dsn, *prep, "--defer-indexes")
            for _ in range(a.repeat):
                s3 = single(c)
                # the parent's deferred indexes (and with them each partition's) of a repeat
                c.execute("DROP INDEX IF EXISTS events_copyidx0, events_copyidx1")
                d, rss = fill(dsn, c, a.batch_size)
                record("C", d, s3)
                s5 = single(c)
                c.execute("DROP INDEX IF EXISTS events_copyidx0, events_copyidx1")
                d2, rss5 = fill(dsn, c, a.batch_size, "--jobs", "2")
                record("C2", d2, s5)
                peak = max(peak, rss, rss5)
                print(f"  single {s3:.2f} s, fill + indexes afterwards {d:.2f} s | single "
                      f"{s5:.2f} s, the same with --jobs 2 {d2:.2f} s", flush=True)
            valid = c.execute("SELECT bool_and(indisvalid) FROM pg_index WHERE indrelid ="
                              " 'events_intermediate'::regclass").fetchone()
            assert valid is not None and valid[0]
    print()
    print(f"load average (1 min) at start {load0:.1f}, at end {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs (other work on the machine skews single times)")
    print(f"rows {a.rows:,}, batches of {a.batch_size:,}; best times, and the median ratio of "
          "paired runs")
    labels = {"A": "A single INSERT ... SELECT", "B": "B pgcleave fill (capture active)",
              "B2": "B2 fill --jobs 2", "B'": "B' fill --order key (pk keyset)",
              "C": "C fill, indexes built afterwards", "C2": "C2 the same, --jobs 2"}
    for k, label in labels.items():
        line = f"{label:36} {best[k]:7.2f} s {a.rows / best[k]:11,.0f} rows/s"
        if k != "A":
            line += f"   ratio {k}/A {statistics.median(ratios[k]):.3f}"
        print(line)
    print(f"  (B's fill step alone, without starting the process: median ratio "
          f"{statistics.median(ratios['B step']):.3f})")
    print(f"peak RSS of the pgcleave process     {peak:7.1f} MB")


if __name__ == "__main__":
    main()
