"""How fast is a hash conversion by copy, and how long do writers wait at its swap?

``pgcleave partition accounts --by 'hash(tenant)' --modulus 16`` on a table of ``--rows`` rows:
  A. the single statement ``INSERT INTO base SELECT * FROM accounts``, ``base`` being a table
     hash-partitioned like the result (16 partitions, the same key and indexes), run before
     and after B (the mean is the baseline);
  B. the conversion's fill step (change capture active), as journaled, without writers;
  S. the conversion of a fresh copy of the table with 4 application-like writers
     (INSERT ... RETURNING, UPDATE, DELETE, key-moving UPDATE) and a probe writer that times
     each INSERT: the longest probe write overlapping the swap step (the swap's stall), the
     longest any writer waited over the whole run (fill, verify and swap), and the swap step's
     own duration; every committed write of the writers is then checked present once.

    .venv/bin/python bench/hash.py --rows 10000000 [--jobs 2] [--no-writers]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from pgcleave.sandbox import temporary
from pgcleave.testing.workload import Spec, Workload

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULUS = 16


def run(dsn: str, *args: str) -> float:
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "pgcleave", "--dsn", dsn, *args], cwd=ROOT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise SystemExit(f"pgcleave {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return time.monotonic() - t0


def load(c: psycopg.Connection[Any], rows: int) -> None:
    c.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, tenant int NOT NULL,"
              " created_at timestamptz NOT NULL DEFAULT now(), kind text NOT NULL,"
              " payload text)")
    c.execute("INSERT INTO accounts (tenant, kind, payload) SELECT (i::bigint * 7919) %% 100000,"
              " 'k' || (i %% 17), md5(i::text) FROM generate_series(1, %s) i", [rows])
    c.execute("CREATE INDEX accounts_tenant ON accounts (tenant)")
    c.execute("VACUUM ANALYZE accounts")


def make_base(c: psycopg.Connection[Any]) -> None:
    """``base``: hash-partitioned like the result, with its key and index."""
    c.execute("DROP TABLE IF EXISTS base")
    c.execute("CREATE TABLE base (LIKE accounts INCLUDING DEFAULTS) PARTITION BY HASH (tenant)")
    c.execute("ALTER TABLE base ADD PRIMARY KEY (id, tenant)")
    c.execute("CREATE INDEX ON base (tenant)")
    for r in range(MODULUS):
        c.execute(sql.SQL("CREATE TABLE {} PARTITION OF base FOR VALUES WITH (MODULUS {},"
                          " REMAINDER {})").format(sql.Identifier(f"base_p{r}"),
                                                   sql.Literal(MODULUS), sql.Literal(r)))


def single(c: psycopg.Connection[Any], source: str) -> float:
    c.execute("TRUNCATE base")
    c.execute("CHECKPOINT")
    t = time.monotonic()
    c.execute(sql.SQL("INSERT INTO base SELECT * FROM {}").format(sql.Identifier(source)))
    return time.monotonic() - t


def step_ms(c: psycopg.Connection[Any], name: str) -> float:
    row = c.execute("SELECT duration_ms FROM pgcleave.steps WHERE name = %s"
                    " ORDER BY job_id DESC LIMIT 1", [name]).fetchone()
    return float(row[0]) if row and row[0] else 0.0


class Probe:
    """One more writer, INSERT ... RETURNING in a loop, that notes when each write started and
    how long it took: the writes that overlapped the swap step measure the swap's stall."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.samples: list[tuple[float, float]] = []  # (epoch start, seconds)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            while not self._stop.is_set():
                t0, m0 = time.time(), time.monotonic()
                c.execute("INSERT INTO accounts (tenant, kind) VALUES (%s, 'probe') RETURNING id",
                          [int(m0 * 1000) % 100000]).fetchone()
                self.samples.append((t0, time.monotonic() - m0))
                time.sleep(0.001)

    def __enter__(self) -> Probe:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()

    def longest_during(self, start: float, end: float) -> float:
        """The longest write (ms) that was running at some moment of [start, end]."""
        return max((d * 1000 for t, d in self.samples if t <= end and t + d >= start),
                   default=0.0)


def swap_window(c: psycopg.Connection[Any]) -> tuple[float, float]:
    # from when the step finished and how long it took (the journal may not note its start)
    row = c.execute("SELECT extract(epoch FROM finished_at)::float8 - duration_ms / 1000,"
                    " extract(epoch FROM finished_at)::float8 FROM pgcleave.steps"
                    " WHERE name = 'swap' ORDER BY job_id DESC LIMIT 1").fetchone()
    assert row is not None
    return float(row[0]), float(row[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--batch-size", type=int, default=10000)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--jobs", default="1", help="fill --jobs (connections copying at once)")
    ap.add_argument("--no-writers", action="store_true",
                    help="only A and B: the fill against the single statement")
    a = ap.parse_args()
    load0 = os.getloadavg()[0]
    part = ["partition", "accounts", "--by", "hash(tenant)", "--modulus", str(MODULUS),
            "--batch-size", str(a.batch_size), "--jobs", a.jobs, "--yes"]
    with temporary(1) as sb:
        server = sb.servers[0]
        with psycopg.connect(server.dsn, autocommit=True) as c0:
            c0.execute("CREATE DATABASE bench")
        dsn = server.dsn_for("bench")
        with psycopg.connect(dsn, autocommit=True) as c:
            t0 = time.monotonic()
            load(c, a.rows)
            print(f"loaded {a.rows:,} rows in {time.monotonic() - t0:.1f} s", flush=True)
            make_base(c)
            s1 = single(c, "accounts")
            print(f"A  single INSERT ... SELECT into {MODULUS} hash partitions: {s1:.1f} s",
                  flush=True)
            c.execute("CHECKPOINT")
            total = run(dsn, *part)
            fill = step_ms(c, "fill") / 1000
            verify = step_ms(c, "verify") / 1000
            print(f"B  partition (no writers): {total:.1f} s in all, fill step {fill:.1f} s, "
                  f"verify {verify:.1f} s, swap {step_ms(c, 'swap'):.0f} ms", flush=True)
            s2 = single(c, "accounts_retired")
            base = (s1 + s2) / 2
            print(f"A' single INSERT ... SELECT again: {s2:.1f} s", flush=True)
            print(f"fill / single = {fill / base:.2f}x (goal <= 1.10x)", flush=True)
            c.execute("DROP TABLE base")
        if a.no_writers:
            return
        # S on a fresh copy of the table (a second database), writers running
        with psycopg.connect(server.dsn, autocommit=True) as c0:
            c0.execute("DROP DATABASE bench")
            c0.execute("CREATE DATABASE bench2")
        dsn = server.dsn_for("bench2")
        with psycopg.connect(dsn, autocommit=True) as c:
            load(c, a.rows)
            spec = Spec(table=sql.Identifier("public", "accounts"), key_col="tenant",
                        make_key=lambda r: r.randrange(100000),
                        extra={"kind": lambda r: "w"})
            w = Workload(dsn, spec, writers=a.writers, max_seconds=3600, pause_s=0.001)
            with w, Probe(dsn) as probe:
                w.run_for(1.0)
                total2 = run(dsn, *part)
                w.run_for(1.0)
            w.verify(c)
            lo, hi = swap_window(c)
            print(f"S  partition with {a.writers} writers: {total2:.1f} s, fill step "
                  f"{step_ms(c, 'fill') / 1000:.1f} s, swap step {step_ms(c, 'swap'):.0f} ms; "
                  f"longest write overlapping the swap {probe.longest_during(lo, hi):.0f} ms "
                  f"(goal < 100 ms); longest writer wait over the whole run "
                  f"{w.max_stall_ms:.0f} ms; {w.summary()}", flush=True)
    print(f"load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
