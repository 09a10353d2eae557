"""pgcleave's operations on a seed-001 ``orders`` table (Evil Martians' "Partition and
conquer": id, country, type, scheduled_at, cost, data; an index on (country, scheduled_at)),
each under 4 application-like writers (``pgcleave.testing.workload``).

For each operation: wall time, rows/s, the longest writer stall, the longest ACCESS EXCLUSIVE
hold (as the executor reports it), the peak RSS of the pgcleave process (``wait4`` on that
child alone) and the peak extra disk (``pg_database_size`` sampled every 0.2 s, less its size
before the operation).

Operations (each on a fresh copy of the loaded table; what an operation needs first is done
before its clock starts, without writers):
  inplace   partition in place (the old table becomes a partition, default strategy)
  copy-j1   partition --strategy copy --jobs 1 (prep, partitions, capture, fill, verify, swap)
  copy-j2   the same with --jobs 2
  drain     in place first (the old table becomes the DEFAULT); then carve the oldest tenth of
            the rows out of the DEFAULT
  set-pk    in place first, then its primary key dropped; then set-primary-key (id,
            scheduled_at) builds it again online (seed 004)
  move      in place and the oldest tenth carved into its own partition first, the parent's
            primary key dropped (PostgreSQL refuses a foreign partition under it) and kept on
            that partition; then move it to a second server (logical replication, verify,
            short swap)
  retention in place, the oldest month carved and the DEFAULT drained into months first; then
            archive that month (`config --retention ... --retention-action archive`,
            `maintain`) and `restore` it; rows/s counts the month's rows, archived and restored

The sandbox server is tuned for a bulk load (``BULK_SETTINGS``, set with ALTER SYSTEM and a
restart): shared_buffers 1 GB, maintenance_work_mem 512 MB, max_wal_size 8 GB,
checkpoint_timeout 30 min, wal_compression on, and the sandbox's own fsync=off.

    .venv/bin/python bench/scale.py --rows 1000000
    .venv/bin/python bench/scale.py --rows 10000000 --ops copy-j1,copy-j2
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import tempfile
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from fill import run_measured  # bench/fill.py, beside this script
from pgcleave.sandbox import temporary
from pgcleave.testing.workload import Spec, Workload

BULK_SETTINGS = {"shared_buffers": "1GB", "maintenance_work_mem": "512MB",
                 "max_wal_size": "8GB", "checkpoint_timeout": "30min",
                 "wal_compression": "on",
                 # every statement over 20 ms logged with its length, timed by the server:
                 # the writers' longest is read from there (Workload(server_log=...))
                 "log_min_duration_statement": "20"}

#: The seed's rows: 100,000 a day back from today, as the article's generate_series.
LOAD_SQL = """
INSERT INTO orders_seed (country, type, scheduled_at, cost)
SELECT ('{RU,RU,RU,RU,US,GB,GB,IL}'::text[])[trunc(random() * 8) + 1],
       ('{delivery,taxi}'::text[])[trunc(random() * 2) + 1],
       CURRENT_DATE - (interval '1 day' * (n / 100000))
         + (interval '1 second' * (random() * 86400)),
       round((100 + random() * 200)::numeric, 2)
FROM generate_series(1, %s) n
"""


def load(c: psycopg.Connection[Any], rows: int) -> None:
    """``orders`` as the seed has it, plus the primary key (id, scheduled_at) every
    partitioned layout needs; its own sequence past the loaded ids. Built once in the
    database ``seed``; each operation runs on a copy of it (``fresh``)."""
    c.execute("CREATE TABLE orders_seed (id serial, country varchar(2) NOT NULL, type varchar"
              " NOT NULL DEFAULT 'delivery', scheduled_at timestamp NOT NULL, cost numeric(10,2)"
              " NOT NULL DEFAULT 0, data jsonb NOT NULL DEFAULT '{}')")
    c.execute(LOAD_SQL, [rows])
    c.execute("CREATE TABLE orders (LIKE orders_seed INCLUDING DEFAULTS)")
    c.execute("CREATE SEQUENCE orders_id_seq2")
    c.execute("ALTER TABLE orders ALTER id SET DEFAULT nextval('orders_id_seq2')")
    c.execute("INSERT INTO orders SELECT * FROM orders_seed")
    c.execute("DROP TABLE orders_seed")
    c.execute("SELECT setval('orders_id_seq2', (SELECT max(id) FROM orders))")
    c.execute("ALTER TABLE orders ADD PRIMARY KEY (id, scheduled_at)")
    c.execute("CREATE INDEX index_orders_on_country_and_scheduled_at ON orders"
              " (country, scheduled_at)")
    c.execute("VACUUM ANALYZE orders")


def fresh(c: psycopg.Connection[Any]) -> None:
    """The database ``bench`` as a file copy of ``seed`` (a checkpoint and a copy of its
    files: at 100M rows minutes, against the half hour of loading it again)."""
    c.execute("DROP DATABASE IF EXISTS bench WITH (FORCE)")
    c.execute("CREATE DATABASE bench TEMPLATE seed STRATEGY FILE_COPY")
    c.execute("CHECKPOINT")


class DiskPeak:
    """The largest ``pg_database_size`` seen while it runs, less the size at the start."""

    def __init__(self, dsn: str) -> None:
        self.dsn, self.stop, self.peak, self.base = dsn, threading.Event(), 0, 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            q = "SELECT pg_database_size(current_database())"
            self.base = int(c.execute(q).fetchone()[0])  # type: ignore[index]
            while not self.stop.is_set():
                self.peak = max(self.peak, int(c.execute(q).fetchone()[0]))  # type: ignore[index]
                time.sleep(0.2)

    def __enter__(self) -> DiskPeak:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


OPS: dict[str, list[str]] = {
    "inplace": ["partition", "orders", "--by", "range(scheduled_at)", "--interval", "1 month",
                "--strategy", "default", "--yes"],
    "copy-j1": ["partition", "orders", "--by", "range(scheduled_at)", "--interval", "1 month",
                "--strategy", "copy", "--jobs", "1", "--yes"],
    "copy-j2": ["partition", "orders", "--by", "range(scheduled_at)", "--interval", "1 month",
                "--strategy", "copy", "--jobs", "2", "--yes"],
}


INPLACE = OPS["inplace"]
CHAINED = ["drain", "set-pk", "move", "retention"]


class Skipped(Exception):
    """An operation the loaded rows cannot show."""


def oldest(c: psycopg.Connection[Any], rows: int, *, month: bool) -> tuple[str, str]:
    """The span carved before drain/move/retention: the oldest tenth of the rows (100,000 a
    day), or the oldest calendar month holding rows."""
    lo, = c.execute("SELECT min(scheduled_at)::date FROM orders").fetchone()  # type: ignore[misc]
    if month:
        lo = lo.replace(day=1)
        hi = (lo + timedelta(days=32)).replace(day=1)
    else:  # ids count the days back: the oldest tenth has the highest ids
        hi, = c.execute("SELECT scheduled_at::date + 1 FROM orders WHERE id = (SELECT"
                        " max(id) FROM orders) * 9 / 10").fetchone()  # type: ignore[misc]
    return str(lo), str(hi)


def partition_for(c: psycopg.Connection[Any], lo: str) -> str:
    row = c.execute("SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid ="
                    " i.inhrelid WHERE i.inhparent = 'orders'::regclass AND"
                    " pg_get_expr(c.relpartbound, c.oid) LIKE %s", [f"%('{lo}%"]).fetchone()
    assert row, f"no partition from {lo}"
    return str(row[0])


Prepared = tuple[list[list[str]], int, datetime | None]


def prepare(dsn: str, name: str, rows: int, tmp: str, other_dsn: str | None) -> Prepared:
    """What ``name`` needs before it is measured (run here), and the commands it measures,
    with the number of rows they handle."""
    if name in OPS:
        return [OPS[name]], rows, None
    run_measured(dsn, *INPLACE)
    with psycopg.connect(dsn, autocommit=True) as c:
        if name == "set-pk":  # the seed-004 case: the key built again, online
            # the application's lookups by id keep an index while the key is gone (without
            # one, each writer's statement scanned 100M rows: 8-13 s at 100M)
            c.execute("CREATE INDEX orders_id ON orders (id)")
            run_measured(dsn, "drop-constraint", "orders", "orders_pkey", "--yes")
            pk = ["set-primary-key", "orders", "--columns", "id,scheduled_at", "--yes"]
            return [pk], rows, None
        lo, hi = oldest(c, rows, month=name == "retention")
        carve = ["carve", "orders", "--from", lo, "--to", hi, "--yes"]
        n, = c.execute("SELECT count(*) FROM orders WHERE scheduled_at >= %s AND scheduled_at"
                       " < %s", [lo, hi]).fetchone()  # type: ignore[misc]
        if name == "drain":
            return [carve], int(n), None
        run_measured(dsn, *carve)
        part = partition_for(c, lo)
        if name == "move":
            # PostgreSQL refuses a foreign partition under a unique key of the parent: the key
            # stays on each partition (the moved one needs it for its replica identity); the
            # writers' lookups keep an index on the others (without one each of their
            # statements scanned the 90M-row DEFAULT for seconds, and the move's ACCESS
            # EXCLUSIVE on it, under a 100 ms lock_timeout, found no gap in 5 minutes)
            c.execute("CREATE INDEX orders_id ON orders (id, scheduled_at)")
            run_measured(dsn, "drop-constraint", "orders", "orders_pkey", "--yes")
            c.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id, scheduled_at)").format(
                sql.SQL(part)))
    if name == "move":
        assert other_dsn
        run_measured(dsn, "server", "add", "db2", "--dsn", other_dsn, "--yes")
        # a key-moving UPDATE of a row on a foreign partition fails (PostgreSQL cannot move a
        # row out of one; move's plan warns): the writers keep to the later days
        return [["move", part, "--to", "db2", "--yes"]], int(n), datetime.fromisoformat(hi)
    assert name == "retention", name
    # a retention that retires exactly that month: the cutoff is the first day of the current
    # month less the retention, and that month's end must reach it
    now, end = datetime.now(), datetime.fromisoformat(hi)
    keep = (now.year * 12 + now.month) - (end.year * 12 + end.month)
    if keep < 1:
        raise Skipped(f"retention: the rows span less than a month before this one "
                      f"({rows:,} rows, 100,000 a day)")
    run_measured(dsn, "config", "orders", "--premake", "0")
    run_measured(dsn, "maintain")  # the DEFAULT drained into months first: not measured
    run_measured(dsn, "config", "orders", "--retention", f"{keep} months",
                 "--retention-action", "archive", "--archive-dir", tmp)
    # the writers keep to the later months: a row written into the archived range meanwhile
    # would (rightly) stop the restore
    return [["maintain"], ["restore", os.path.join(tmp, "*.json"), "--yes"]], int(n), end


def measure(dsn: str, name: str, rows: int, writers: int, logfile: str,
            other_dsn: str | None = None) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="pgcleave-scale-")
    os.chmod(tmp, 0o777)
    commands, handled, write_after = prepare(dsn, name, rows, tmp, other_dsn)
    today = datetime.now().replace(microsecond=0)
    days = max(rows // 100000, 1)
    if write_after is not None:  # the oldest key its writers may write
        days = max((today - write_after).days, 1)
    spec = Spec(table=sql.Identifier("public", "orders"), key_col="scheduled_at",
                make_key=lambda r: today - timedelta(days=r.uniform(0, days)),
                payload_col="type", extra={"country": lambda r: r.choice(["RU", "US", "GB"])},
                prune_by_key=True)
    w = Workload(dsn, spec, writers=writers, max_seconds=7200, pause_s=0.005,
                 server_log=logfile)
    with DiskPeak(dsn) as disk, w:
        time.sleep(0.5)
        took, rss, err = 0.0, 0.0, ""
        for cmd in commands:
            if cmd[0] == "restore":  # the archive maintain just wrote
                found = glob.glob(cmd[1])
                assert found, f"maintain archived nothing:\n{err}"
                cmd = ["restore", found[0], *cmd[2:]]
            t, r, e = run_measured(dsn, *cmd)
            took, rss, err = took + t, max(rss, r), err + e
        time.sleep(0.5)
    with psycopg.connect(dsn, autocommit=True) as c:
        w.verify(c)
        bulk_ms, ddl_ms, ddl_what = by_step(c, w)
    held, ae_step = longest_hold(err)
    if os.environ.get("SCALE_VERBOSE"):
        print(err)
    return {"op": name, "wall_s": took, "rows_s": handled / took, "stall_ms": w.max_stall_ms,
            "wait_ms": w.max_server_ms, "bulk_ms": bulk_ms, "ddl_ms": ddl_ms,
            "ddl_what": ddl_what,
            "ae_ms": held, "ae_step": ae_step, "rss_mb": rss,
            "disk_mb": (disk.peak - disk.base) / 2**20}


def longest_hold(err: str) -> tuple[float, str]:
    """The longest hold of a lock that blocks writes (ACCESS EXCLUSIVE, EXCLUSIVE) the
    commands reported, and where: the step (its "[i/n] what ..." line), carve's swap
    transaction or move's cut-over. A lock on a detached, unused table is not counted."""
    best, what, names = 0.0, "-", {}
    for line in err.splitlines():
        m = re.search(r"\[(\d+/\d+)\] (.*) \.\.\.$", line)
        if m:
            names[m[1]] = m[2]
        m = re.search(r"\[(\d+/\d+)\] done \(.*EXCLUSIVE held (\d+(?:\.\d+)?) ms", line)
        if m and float(m[2]) > best:
            best, what = float(m[2]), names.get(m[1], "?")[:70]
        # carve's swaps and move's cut-over say what they held as progress
        m = re.search(r"(swap \d+/\d+): .*EXCLUSIVE held (\d+(?:\.\d+)?) ms|"
                      r"(cut-over) done: .*writes waited (\d+(?:\.\d+)?) ms", line)
        if m:
            ms, where = float(m[2] or m[4]), m[1] or m[3]
            if ms > best:
                best, what = ms, where
    return best, what


#: A step that ran longer than this is bulk work (a copy, an index build, a validation);
#: the others are the cut-overs, swaps and catalog changes of a moment.
BULK_STEP_S = 5.0


def by_step(c: psycopg.Connection[Any], w: Workload) -> tuple[float, float, str]:
    """The writers' longest statement (server-timed) that overlapped a bulk step, and the
    longest that overlapped any other step (the cut-overs and swaps), with that step's name."""
    steps = c.execute("SELECT name, started_at, finished_at FROM pgcleave.steps WHERE"
                      " started_at IS NOT NULL AND finished_at IS NOT NULL").fetchall()
    assert w.server_log is not None
    bulk = ddl = 0.0
    what = "-"
    for ms, _, end in w.server_log.timed():
        start = end - timedelta(milliseconds=ms)
        for name, s0, s1 in steps:
            if start <= s1 and end >= s0:
                if (s1 - s0).total_seconds() > BULK_STEP_S:
                    bulk = max(bulk, ms)
                elif ms > ddl:
                    ddl, what = ms, name
    return bulk, ddl, what


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--ops", default=",".join([*OPS, *CHAINED]))
    a = ap.parse_args()
    load0 = os.getloadavg()[0]
    out = []
    with temporary(2 if "move" in a.ops.split(",") else 1) as sb:
        server = sb.servers[0]
        with psycopg.connect(server.dsn, autocommit=True) as c0:
            for k, v in BULK_SETTINGS.items():
                c0.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(k),
                                                                     sql.Literal(v)))
            c0.execute("CREATE DATABASE seed")
        sb.stop(server.name)
        server = sb.start(server.name)
        dsn = server.dsn_for("bench")
        other = None
        if len(sb.servers) > 1:
            with psycopg.connect(sb.servers[1].dsn, autocommit=True) as c2:
                c2.execute("CREATE DATABASE bench")
            other = sb.servers[1].dsn_for("bench")
        with psycopg.connect(server.dsn_for("seed"), autocommit=True) as c:
            t0 = time.monotonic()
            load(c, a.rows)
            print(f"loaded {a.rows:,} rows in {time.monotonic() - t0:.1f} s", flush=True)
        with psycopg.connect(server.dsn, autocommit=True) as c:
            for name in a.ops.split(","):
                t0 = time.monotonic()
                fresh(c)
                print(f"  (a fresh copy in {time.monotonic() - t0:.1f} s)", flush=True)
                try:
                    res = measure(dsn, name, a.rows, a.writers, server.logfile, other)
                except Skipped as exc:
                    print(f"  {name:8} skipped: {exc}", flush=True)
                    continue
                out.append(res)
                print(f"  {name:8} {res['wall_s']:8.1f} s {res['rows_s']:10,.0f} rows/s  stall "
                      f"{res['stall_ms']:6.0f} ms  server {res['wait_ms']:5.0f} ms (bulk "
                      f"{res['bulk_ms']:.0f}, at a swap {res['ddl_ms']:.0f}: {res['ddl_what']})"
                      f"  AE "
                      f"{res['ae_ms']:5.0f} ms ({res['ae_step']})  RSS {res['rss_mb']:5.0f} MB"
                      "  disk "
                      f"+{res['disk_mb']:7.0f} MB  load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"\n{a.rows:,} rows, {a.writers} writers; load average {load0:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end, on {os.cpu_count()} CPUs")
    print("| operation | wall s | rows/s | longest writer op ms (client) | longest writer"
          " statement ms (server) | of which at a cut-over/swap | longest write-blocking hold ms |"
          " peak RSS MB | peak extra disk MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in out:
        print(f"| {r['op']} | {r['wall_s']:.1f} | {r['rows_s']:,.0f} | {r['stall_ms']:.0f} |"
              f" {r['wait_ms']:.0f} | {r['ddl_ms']:.0f} | {r['ae_ms']:.0f} | {r['rss_mb']:.0f} |"
              f" {r['disk_mb']:.0f} |")


if __name__ == "__main__":
    main()
