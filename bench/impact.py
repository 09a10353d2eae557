"""What does a bulk phase cost the application? pgbench's TPC-B-like workload (and the
application-like writer mix of ``pgcleave.testing.workload``) alone, then while pgcleave works,
in the same run and on the same server.

Each run gets a fresh database (``pgbench -i -s SCALE``, ``pgbench_accounts`` shaped for the
phase) and one pgbench run (4 clients, per-transaction log): ``--seconds`` alone, then the
pgcleave command, then ``--seconds`` alone again. "before" is the baseline; "during" are the
transactions that ended while the command's longest step ran (the bulk phase: its window comes
from the journal's ``started_at``/``finished_at``; the DDL steps around it take milliseconds);
"after" shows what the command leaves behind (capture back to the retired table until
``unprep``, autovacuum of the new partitions, a partition now on another server).

``--phases`` (each at the shipped settings):
  copy       ``partition pgbench_accounts --strategy copy``: the fill (keyset batches);
  carve      a range out of a DEFAULT holding every row (carve's one-snapshot copy of the
             DEFAULT, its index builds and key-log replays);
  drain      ``maintain`` of a DEFAULT holding every row (config --interval SCALE*20000);
  split      one partition holding every row split into five;
  move-copy  one of five partitions moved to a second sandbox server by copy.
``--variants`` are settings (or diagnoses) of the copy phase (the other phases take the settings
ones):
  default    the shipped settings (20 ms time-bounded batches back to back, no throttle);
  rest       ``--duty 50``;  fixed  ``--batch-time 0`` (10,000-row batches);
  bt5, bt10  ``--batch-time 5`` / ``10``;  duty75, duty40, duty33, duty25  ``--duty 75`` / ...;
  auto       ``--duty auto`` (rests only while the application is at work);
  max-load   ``--max-load active=2``;  probe  ``--max-load probe_p95=5ms``;
  capture-only  ``prep`` (capture trigger installed), no fill: "during" is ``--seconds`` of
                capture alone;
  no-capture    ``prep``, capture trigger disabled, ``fill``: the fill without the writers'
                capture cost (a bench-only state: the copy is not kept in sync);
  no-set        ``prep``, the capture function's ``SET search_path`` reset, ``fill``;
  invoker       as no-set and SECURITY INVOKER too (the bench runs as superuser; a real
                application role could not write the copy).
Besides tps and latencies, every window reports where the CPU went (``/proc`` ticks of the
pgbench backends, of pgcleave's backends, of the other server processes, of the pgcleave
process; the machine's busy share from ``/proc/stat``, other work included) and what the
pgbench sessions were doing (``pg_stat_activity`` sampled every 50 ms: on CPU, waiting on a
lock, "<-pgcleave" when ``pg_blocking_pids`` names one of pgcleave's sessions, on an LWLock, on
I/O, idle waiting for the client), and the rows inserted and updated in the pgbench_accounts*
tables (HOT share) and WAL per pgbench transaction (the "during" counters span the whole
command, not only its longest step).
With ``--mix``, the writer mix (inserts, updates, deletes, key moves, reads; 4 writers) on an
``events`` table is measured the same way (its own longest write) for the copy variants.

    .venv/bin/python bench/impact.py --seconds 15 --phases copy,carve,drain,split,move-copy
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pgcleave.sandbox import temporary
from pgcleave.testing.workload import Spec, Workload

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HZ = os.sysconf("SC_CLK_TCK")

VARIANTS: dict[str, list[str]] = {
    "default": [],
    "rest": ["--duty", "50"],
    "duty75": ["--duty", "75"],
    "fixed": ["--batch-time", "0"],
    "bt5": ["--batch-time", "5"],
    "bt10": ["--batch-time", "10"],
    "duty40": ["--duty", "40"],
    "duty25": ["--duty", "25"],
    "duty33": ["--duty", "33"],
    "auto": ["--duty", "auto"],
    "max-load": ["--max-load", "active=2"],
    "probe": ["--max-load", "probe_p95=5ms"],
    "capture-only": [],
    "no-capture": [],
    "no-set": [],
    "invoker": [],
}
#: variants run as prep + (a change to the capture) + fill rather than one partition command
TAMPER: dict[str, list[str]] = {
    "no-capture": ["ALTER TABLE public.pgbench_accounts DISABLE TRIGGER pgcleave_capture"],
    "no-set": ["ALTER FUNCTION {fn}() RESET search_path"],
    "invoker": ["ALTER FUNCTION {fn}() RESET search_path",
                "ALTER FUNCTION {fn}() SECURITY INVOKER"],
}
PHASES = ("copy", "carve", "drain", "split", "move-copy")
#: one row per run for the closing table
SUMMARY: list[tuple[str, str, float, float, float, float, float, float, float, float]] = []


# -- pgbench ---------------------------------------------------------------------------------------
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


# -- where the CPU goes, what the sessions wait for ------------------------------------------------
def ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            p = f.read().rsplit(")", 1)[1].split()
        return int(p[11]) + int(p[12])
    except (OSError, IndexError):
        return 0


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of every CPU since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


@dataclass
class Sampler:
    """Samples every ``every`` seconds, in a thread, for the whole pgbench run: CPU ticks per
    group of server processes (by the application_name of their session) and the state of each
    pgbench session. ``window(t0, t1)`` sums what fell between two epoch times."""

    dsn: str
    server_pid: int
    every: float = 0.05
    samples: list[tuple[float, dict[str, int], tuple[int, int], collections.Counter[str]]] = \
        field(default_factory=list)
    client_pids: dict[str, int] = field(default_factory=dict)
    txs: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def _children(self) -> list[int]:
        try:
            with open(f"/proc/{self.server_pid}/task/{self.server_pid}/children") as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    def _run(self) -> None:
        seen: dict[int, int] = {}   # pid -> last ticks
        total: dict[str, int] = collections.defaultdict(int)
        with psycopg.connect(self.dsn, autocommit=True, application_name="impact-sampler") as c:
            while not self._stop.is_set():
                rows = c.execute(
                    "SELECT pid, application_name, state, wait_event_type, wait_event,"
                    " CASE WHEN wait_event_type = 'Lock' THEN pg_blocking_pids(pid) END"
                    " FROM pg_stat_activity WHERE pid <> pg_backend_pid()").fetchall()
                group = {int(r[0]): ("pgbench" if r[1] == "pgbench" else
                                     "pgcleave" if (r[1] or "").startswith("pgcleave") else
                                     "other") for r in rows}
                states: collections.Counter[str] = collections.Counter()
                for _, app, state, wtype, wev, blockers in rows:
                    if app == "pgbench":
                        # a lock wait behind one of pgcleave's sessions (a batch) or behind
                        # pgbench's own (TPC-B's branch and teller rows)
                        by = ("" if not blockers else "<-pgcleave" if any(
                            group.get(b) == "pgcleave" for b in blockers) else "<-pgbench")
                        states[("idle" if state == "idle" else "cpu" if wtype is None else
                                f"{wtype}:{wev}{by}")] += 1
                pids = {p: group.get(p, "other") for p in self._children()}
                pids.update({p: g for g, p in self.client_pids.items() if p})
                for pid, g in pids.items():
                    t = ticks(pid)
                    if pid in seen:
                        total[g] += max(t - seen[pid], 0)
                    seen[pid] = t
                self.samples.append((time.time(), dict(total), machine_busy(), states))
                self._stop.wait(self.every)

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        """CPU cores per group, the machine's busy cores, the cores other work took (the
        machine is shared), backend CPU per pgbench transaction, and the pgbench sessions'
        states, over a window."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return {}
        (a, ta, ma, _), (b, tb, mb, _) = inside[0], inside[-1]
        secs = b - a
        cpu = {g: (tb.get(g, 0) - ta.get(g, 0)) / HZ / secs for g in
               ("pgbench", "pgcleave", "other", "pgbench-client", "pgcleave-client")}
        busy = (mb[0] - ma[0]) / max(mb[1] - ma[1], 1) * (os.cpu_count() or 1)
        txs = sum(1 for at, _ in self.txs if a <= at <= b)
        states: collections.Counter[str] = collections.Counter()
        for s in inside:
            states.update(s[3])
        n = max(sum(states.values()), 1)
        return {"cpu": cpu, "busy": busy, "outside": max(busy - sum(cpu.values()), 0.0),
                "per_tx_ms": cpu["pgbench"] * secs * 1000 / txs if txs else 0.0,
                "states": {k: v / n for k, v in states.most_common()}}


def describe(w: dict[str, Any]) -> str:
    if not w:
        return "  (too short to sample)"
    cpu = w["cpu"]
    shown = [k for k in w["states"]][:6] + [k for k in list(w["states"])[6:]
                                             if "pgcleave" in k]
    top = ", ".join(f"{k} {w['states'][k]:.1%}" for k in shown)
    return (f"  cpu (cores): pgbench backends {cpu['pgbench']:.2f}, pgcleave backends "
            f"{cpu['pgcleave']:.2f}, other server {cpu['other']:.2f}, pgbench client "
            f"{cpu['pgbench-client']:.2f}, pgcleave client {cpu['pgcleave-client']:.2f}; "
            f"machine busy {w['busy']:.2f} of {os.cpu_count()} (other work "
            f"{w['outside']:.2f}); {w['per_tx_ms']:.3f} ms of backend CPU per tx\n"
            f"  pgbench sessions: {top}")


def free_cores(w: dict[str, Any]) -> float:
    """Cores left to this bench: all of them but what other work took."""
    return max((os.cpu_count() or 1) - float(w.get("outside", 0.0)), 0.1)


# -- pgcleave --------------------------------------------------------------------------------------
def pgcleave(dsn: str, args: list[str], sampler: Sampler | None = None) -> str:
    p = subprocess.Popen([sys.executable, "-m", "pgcleave", "--dsn", dsn, *args], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if sampler:
        sampler.client_pids["pgcleave-client"] = p.pid
    _, err = p.communicate()
    if sampler:
        sampler.client_pids["pgcleave-client"] = 0
    if p.returncode != 0:
        raise SystemExit(f"pgcleave {' '.join(args)} failed ({p.returncode}):\n{err}")
    return err


def longest_step(dsn: str, since: float) -> tuple[str, float, float]:
    """(name, start, end as epoch seconds) of the longest step of the jobs run since ``since``:
    the bulk phase."""
    with psycopg.connect(dsn) as c:
        row = c.execute(
            "SELECT name, extract(epoch FROM started_at), extract(epoch FROM finished_at)"
            " FROM pgcleave.steps WHERE started_at >= to_timestamp(%s) AND finished_at IS NOT"
            " NULL ORDER BY finished_at - started_at DESC LIMIT 1", [since - 1]).fetchone()
    assert row, "no step ran"
    return str(row[0]), float(row[1]), float(row[2])


def reshape(dsn: str, parts: list[str], parent_pk: bool = True) -> None:
    """pgbench_accounts as a partitioned table with ``parts`` (partition clauses)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("ALTER TABLE pgbench_accounts RENAME TO acc_old")
        c.execute("CREATE TABLE pgbench_accounts (LIKE acc_old INCLUDING DEFAULTS"
                  f"{' INCLUDING INDEXES' if parent_pk else ''}) PARTITION BY RANGE (aid)")
        for i, clause in enumerate(parts):
            c.execute(f"CREATE TABLE pgbench_accounts_{i} PARTITION OF pgbench_accounts {clause}")
            if not parent_pk:
                c.execute(f"ALTER TABLE pgbench_accounts_{i} ADD PRIMARY KEY (aid)")
        c.execute("INSERT INTO pgbench_accounts SELECT * FROM acc_old")
        c.execute("DROP TABLE acc_old")
        c.execute("VACUUM ANALYZE")


def phase_setup(phase: str, variant: str, dsn: str, remote: str | None, n: int
                ) -> tuple[list[list[str]], int]:
    """Shape the database for a phase; the pgcleave commands to run, and the rows copied."""
    step = n // 5
    if phase == "copy":
        conv = ["partition", "pgbench_accounts", "--strategy", "copy", "--by", "range(aid)",
                "--interval", str(step), "--yes"]
        if variant in TAMPER or variant == "capture-only":
            return [["prep", *conv[1:2], *conv[4:8], "--yes"], ["fill", "pgbench_accounts",
                                                                 "--yes"]], n
        return [[*VARIANTS[variant], *conv]], n
    g = VARIANTS[variant]  # a settings variant: global options before the command
    if phase in ("carve", "drain"):
        reshape(dsn, ["DEFAULT"])
        if phase == "carve":
            return [[*g, "carve", "pgbench_accounts", "--from", "1", "--to", str(n // 2 + 1),
                     "--yes"]], n
        pgcleave(dsn, ["config", "pgbench_accounts", "--interval", str(step), "--premake", "1"])
        return [[*g, "maintain", "--yes"]], n
    if phase == "split":
        reshape(dsn, [f"FOR VALUES FROM (1) TO ({n + 1})"])
        return [[*g, "split", "pgbench_accounts_0", "--interval", str(step), "--yes"]], n
    assert phase == "move-copy" and remote
    # PostgreSQL refuses a foreign partition under a unique key of the parent: keys per
    # partition, as a sharded table has them
    reshape(dsn, [f"FOR VALUES FROM ({i * step + 1}) TO ({(i + 1) * step + 1})"
                  for i in range(5)], parent_pk=False)
    pgcleave(dsn, ["server", "add", "s2", "--dsn", remote, "--yes"])
    return [[*g, "move", "pgbench_accounts_1", "--to", "s2", "--method", "copy", "--yes"]], step


def tamper(dsn: str, variant: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute("SELECT tgfoid::regprocedure::text FROM pg_trigger WHERE tgname ="
                        " 'pgcleave_capture' AND tgrelid = 'public.pgbench_accounts'::regclass"
                        ).fetchone()
        assert row, "no capture trigger"
        fn = row[0].removesuffix("()")
        for stmt in TAMPER[variant]:
            c.execute(stmt.format(fn=fn))


def counters(dsn: str) -> dict[str, float]:
    """Row and WAL counters (the tables named pgbench_accounts*, whatever their state in the
    conversion): how many capture upserts update in place (HOT) rather than add index
    entries, and the WAL written."""
    with psycopg.connect(dsn) as c:
        row = c.execute(
            "SELECT coalesce(sum(n_tup_ins), 0), coalesce(sum(n_tup_upd), 0),"
            " coalesce(sum(n_tup_hot_upd), 0), (SELECT wal_bytes FROM pg_stat_wal),"
            " (SELECT wal_fpi FROM pg_stat_wal) FROM pg_stat_user_tables"
            " WHERE relname LIKE 'pgbench_accounts%%'").fetchone()
    assert row
    return dict(zip(("ins", "upd", "hot", "wal", "fpi"), (float(x) for x in row), strict=True))


def counted(c0: dict[str, float], c1: dict[str, float], txs: int) -> str:
    d = {k: c1[k] - c0[k] for k in c0}
    return (f"  accounts tables: {d['ins']:,.0f} rows inserted, {d['upd']:,.0f} updated "
            f"({d['hot'] / max(d['upd'], 1):.0%} HOT); WAL {d['wal'] / max(txs, 1) / 1024:.1f} kB"
            f" per pgbench tx ({d['fpi']:,.0f} full-page images)")


def fresh_db(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def line(label: str, f: dict[str, float], before: dict[str, float], w: dict[str, Any],
         wb: dict[str, Any]) -> str:
    """A window's figures relative to the baseline; "per free core" divides each tps by the
    cores other work left to the bench in its window (a rough correction on a shared
    machine)."""
    rel = f["tps"] / max(before["tps"], 1e-6)
    norm = rel * free_cores(wb) / free_cores(w) if w and wb else rel
    return (f"  {label:6} {f['tps']:7,.0f} tps p50 {f['p50']:5.1f} p99 {f['p99']:6.1f} max "
            f"{f['max']:6.1f} ms | tps {rel:4.0%} of before ({norm:4.0%} per free core), "
            f"p99 {f['p99'] / max(before['p99'], 1e-6):4.1f}x")


def run_one(exe: str, sb: Any, phase: str, variant: str, a: argparse.Namespace, logdir: str
            ) -> None:
    """One pgbench run: ``--seconds`` alone, the phase, ``--seconds`` alone again."""
    server = sb.servers[0]
    db = f"impact_{phase}_{variant}".replace("-", "_")
    fresh_db(server.dsn, db)
    dsn = server.dsn_for(db)
    remote = None
    if phase == "move-copy":
        fresh_db(sb.servers[1].dsn, db)
        remote = sb.servers[1].dsn_for(db)
    subprocess.run([exe, "-i", "-q", "-s", str(a.scale), dsn], check=True, capture_output=True)
    n = a.scale * 100000
    commands, rows = phase_setup(phase, variant, dsn, remote, n)
    sampler = Sampler(dsn, server_pid(server))
    sampler.start()
    p = pgbench(exe, dsn, 3600, logdir)
    sampler.client_pids["pgbench-client"] = p.pid
    b0 = time.time() + 1
    time.sleep(1)
    cb = counters(dsn)
    time.sleep(a.seconds)
    c0 = counters(dsn)
    b1 = time.time()
    started = time.time()
    err = ""
    for i, cmd in enumerate(commands):
        if variant == "capture-only" and i == 1:
            break
        if i == 1 and variant in TAMPER:
            tamper(dsn, variant)
            started = time.time()
        err = pgcleave(dsn, cmd, sampler)
    if variant == "capture-only":
        step, w0 = "capture alone", time.time() + 0.5
        time.sleep(a.seconds + 0.5)
        w1 = time.time()
    else:
        step, w0, w1 = longest_step(dsn, started)
    c1 = counters(dsn)
    a0 = time.time() + 1
    time.sleep(a.seconds + 1)
    a1 = time.time()
    c2 = counters(dsn)
    p.terminate()
    p.communicate()
    sampler.stop()
    txs = sampler.txs = transactions(logdir)
    before, during, after = figures(txs, b0, b1), figures(txs, w0, w1), figures(txs, a0, a1)
    secs = w1 - w0
    bulk = ("" if variant == "capture-only" else
            f" | {step} {rows:,} rows in {secs:5.1f} s ({rows / max(secs, 1e-6):8,.0f} rows/s"
            f"{', paused for load' if 'paused' in err else ''})")
    print(f"{phase} {variant}: before {before['tps']:7,.0f} tps p50 {before['p50']:5.1f} p99 "
          f"{before['p99']:6.1f} max {before['max']:6.1f} ms{bulk}", flush=True)
    wb, wd, wa = sampler.window(b0, b1), sampler.window(w0, w1), sampler.window(a0, a1)
    print(describe(wb), flush=True)
    print(counted(cb, c0, sum(1 for at, _ in txs if b0 <= at <= b1)), flush=True)
    print(line("during", during, before, wd, wb), flush=True)
    print(describe(wd), flush=True)
    print(counted(c0, c1, sum(1 for at, _ in txs if b1 <= at <= a0)), flush=True)
    print(line("after", after, before, wa, wb), flush=True)
    print(describe(wa), flush=True)
    print(counted(c1, c2, sum(1 for at, _ in txs if a0 <= at <= a1)), flush=True)
    SUMMARY.append((phase, variant, during["tps"] / max(before["tps"], 1e-6),
                    during["tps"] / max(before["tps"], 1e-6) * free_cores(wb) / free_cores(wd)
                    if wd and wb else 0.0,
                    during["p99"] / max(before["p99"], 1e-6), during["max"],
                    0.0 if variant == "capture-only" else rows / max(secs, 1e-6),
                    wb.get("per_tx_ms", 0.0), wd.get("per_tx_ms", 0.0),
                    wd["cpu"]["pgcleave"] + wd["cpu"]["pgcleave-client"] if wd else 0.0))
    print(f"  load average {os.getloadavg()[0]:.1f}", flush=True)


def server_pid(server: Any) -> int:
    with open(os.path.join(server.datadir, "postmaster.pid")) as f:
        return int(f.readline())


def mix_variant(admin: str, dsn_for: Any, name: str, opts: list[str], a: argparse.Namespace
                ) -> None:
    db = f"impact_mix_{name.replace('-', '_')}"
    fresh_db(admin, db)
    dsn = dsn_for(db)
    n = a.scale * 100000
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE events (id bigserial PRIMARY KEY, k int NOT NULL, payload text)")
        c.execute("INSERT INTO events (k, payload) SELECT i %% 1000, md5(i::text) FROM"
                  " generate_series(1, %s) i", [n])
        c.execute("VACUUM ANALYZE events")
    spec = Spec(table=sql.Identifier("public", "events"), key_col="k",
                make_key=lambda r: r.randrange(1000))

    def run(during: bool) -> tuple[float, float, float, float]:
        w = Workload(dsn, spec, writers=4, max_seconds=a.seconds + 120, seed=7 if during else 3)
        fill_s = 0.0
        with w:
            t0 = time.monotonic()
            if during:
                since = time.time()
                pgcleave(dsn, [*opts, "partition", "events", "--strategy", "copy", "--by",
                               "range(k)", "--interval", "100", "--yes"])
                _, s0, s1 = longest_step(dsn, since)
                fill_s = s1 - s0
            else:
                time.sleep(a.seconds)
            took = time.monotonic() - t0
        lat = sorted(x for r in w.results for x in r.latencies_ms)
        assert not w.errors, w.errors[:3]
        with psycopg.connect(dsn) as c:
            w.verify(c)
        return len(lat) / took, lat[int(len(lat) * 0.99)] if lat else 0.0, w.max_stall_ms, fill_s

    b_ops, b_p99, b_max, _ = run(False)
    d_ops, d_p99, d_max, fill_s = run(True)
    print(f"mix {name:5} baseline {b_ops:6,.0f} ops/s p99 {b_p99:5.1f} longest {b_max:6.1f} ms"
          f" | during the whole conversion {d_ops:6,.0f} ops/s ({d_ops / b_ops:4.0%}) p99 "
          f"{d_p99:5.1f} longest {d_max:6.1f} ms; fill {fill_s:.1f} s, nothing lost",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=5, help="pgbench scale (100,000 rows each)")
    ap.add_argument("--seconds", type=float, default=15, help="baseline length")
    ap.add_argument("--phases", default="copy", help="of " + ", ".join(PHASES))
    ap.add_argument("--variants", default="default",
                    help="of the copy phase: " + ", ".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=1, help="repeat the whole list")
    ap.add_argument("--mix", action="store_true", help="also the application-like writer mix")
    a = ap.parse_args()
    phases, variants = a.phases.split(","), a.variants.split(",")
    for x in phases:
        if x not in PHASES:
            ap.error(f"unknown phase {x!r}: use any of {', '.join(PHASES)}")
    for x in variants:
        if x not in VARIANTS:
            ap.error(f"unknown variant {x!r}: use any of {', '.join(VARIANTS)}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    logdir = tempfile.mkdtemp(prefix="pgcleave-impact-")
    with temporary(2 if "move-copy" in phases else 1) as sb:
        exe = pgbench_bin(sb.servers[0].bindir)
        for _ in range(a.rounds):
            for phase in phases:
                # the other phases take the settings variants (not the copy's diagnoses)
                for variant in (variants if phase == "copy" else
                                [v for v in variants if v not in TAMPER
                                 and v != "capture-only"] or ["default"]):
                    run_one(exe, sb, phase, variant, a, logdir)
        print("\nphase     variant       tps   per-free-core  p99   max ms    rows/s   "
              "cpu/tx before -> during   pgcleave cores")
        for ph, v, rel, norm, p99, mx, rps, cb, cd, pc in SUMMARY:
            print(f"{ph:9} {v:12} {rel:5.0%} {norm:9.0%} {p99:8.1f}x {mx:6.0f} {rps:10,.0f}   "
                  f"{cb:.3f} -> {cd:.3f} ms    {pc:.2f}", flush=True)
        if a.mix:
            for name in variants:
                if name not in TAMPER and name != "capture-only":
                    mix_variant(sb.servers[0].dsn, sb.servers[0].dsn_for, name, VARIANTS[name],
                                a)
    shutil.rmtree(logdir, ignore_errors=True)


if __name__ == "__main__":
    main()
