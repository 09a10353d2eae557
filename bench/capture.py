"""What does a capture trigger cost each application UPDATE? After a copy conversion's swap,
every write to the new (partitioned) table is repeated on the retired one so that ``unswap``
loses nothing; this measures that repetition alone, variant by variant, with pgbench.

A pgbench database (``-s SCALE``); ``acc`` is a partitioned copy of ``pgbench_accounts`` (as
the swapped-in table is) and ``pgbench_accounts`` plays the retired table. A custom pgbench
script updates one random row of ``acc`` per transaction (4 clients), ``--seconds`` per
variant, the variants taking turns ``--rounds`` times (the machine is shared; the load is
printed):
  none       no trigger: the ceiling;
  row        the shipped shape: an AFTER ROW plpgsql trigger, INSERT ... ON CONFLICT DO UPDATE;
  row-noset  the shipped shape without its ``SET search_path`` clause;
  row-invoker  also SECURITY INVOKER (the bench's superuser may write the retired table; an
             application role could not);
  row-update an AFTER ROW trigger for UPDATE alone that runs a plain UPDATE of the retired
             row (and the upsert only when the row is missing there);
  statement  AFTER ... FOR EACH STATEMENT with a transition table, one set-based upsert.
The forward direction (a copy's fill: the plain table's UPDATEs captured into the partitioned
copy, every row already copied), on request:
  fwd-none   UPDATEs of the plain pgbench_accounts, no trigger;
  fwd-root   the shipped upsert into the partitioned ``acc`` (tuple routing at each call);
  fwd-leaf   the same upsert straight into the leaf partition, chosen by an IF cascade on the
             key (no routing);
  fwd-empty  fwd-root into an emptied copy (before the fill reaches the rows: inserts);
  tpcb-none, tpcb-root, tpcb-keylog  pgbench's whole TPC-B-like transaction (as impact.py
             runs it), without capture, with fwd-root's and with fwd-keylog's;
  fwd-keylog only the key, appended to an unindexed log table (as carve's capture does; a
             replay would apply the rows later).

    .venv/bin/python bench/capture.py --seconds 8 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
from typing import Any

import psycopg

from pgcleave.sandbox import temporary

UPSERT = ("INSERT INTO public.pgbench_accounts (aid, bid, abalance, filler) "
          "SELECT aid, bid, abalance, filler FROM {src} ON CONFLICT (aid) DO UPDATE SET "
          "bid = EXCLUDED.bid, abalance = EXCLUDED.abalance, filler = EXCLUDED.filler")

VARIANTS: dict[str, list[str]] = {
    "none": [],
    "row": [
        "CREATE FUNCTION cap_row() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER"
        " SET search_path = pg_catalog, pg_temp AS $$ BEGIN"
        " IF TG_OP = 'INSERT' OR TG_OP = 'UPDATE' THEN"
        "   INSERT INTO public.pgbench_accounts (aid, bid, abalance, filler)"
        "   OVERRIDING SYSTEM VALUE VALUES (NEW.aid, NEW.bid, NEW.abalance, NEW.filler)"
        "   ON CONFLICT (aid) DO UPDATE SET bid = EXCLUDED.bid, abalance = EXCLUDED.abalance,"
        "   filler = EXCLUDED.filler;"
        " ELSE DELETE FROM public.pgbench_accounts WHERE aid = OLD.aid; END IF;"
        " RETURN NULL; END $$",
        "CREATE TRIGGER cap AFTER INSERT OR UPDATE OR DELETE ON acc FOR EACH ROW"
        " EXECUTE FUNCTION cap_row()",
    ],
    # the shipped shape without its SET clause, then also SECURITY INVOKER (the bench runs as
    # superuser; an application role could not write the retired table)
    "row-noset": [],
    "row-invoker": [],
    "row-update": [
        "CREATE FUNCTION cap_upd() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER"
        " SET search_path = pg_catalog, pg_temp AS $$ BEGIN"
        " UPDATE public.pgbench_accounts SET bid = NEW.bid, abalance = NEW.abalance,"
        "   filler = NEW.filler WHERE aid = NEW.aid;"
        " IF NOT FOUND THEN"
        "   INSERT INTO public.pgbench_accounts (aid, bid, abalance, filler)"
        "   VALUES (NEW.aid, NEW.bid, NEW.abalance, NEW.filler)"
        "   ON CONFLICT (aid) DO UPDATE SET bid = EXCLUDED.bid, abalance = EXCLUDED.abalance,"
        "   filler = EXCLUDED.filler;"
        " END IF; RETURN NULL; END $$",
        "CREATE TRIGGER cap AFTER UPDATE ON acc FOR EACH ROW EXECUTE FUNCTION cap_upd()",
    ],
    "statement": [
        "CREATE FUNCTION cap_stmt() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER"
        " SET search_path = pg_catalog, pg_temp AS $$ BEGIN "
        + UPSERT.format(src="pgcleave_new") + "; RETURN NULL; END $$",
        "CREATE TRIGGER cap AFTER UPDATE ON acc REFERENCING NEW TABLE AS pgcleave_new"
        " FOR EACH STATEMENT EXECUTE FUNCTION cap_stmt()",
    ],
}

# the forward direction, as during a copy's fill: UPDATEs of the plain pgbench_accounts,
# captured into the partitioned acc (through its root, as shipped, or straight into the leaf)
UPSERT_ACC = ("INSERT INTO public.{t} (aid, bid, abalance, filler) VALUES (NEW.aid, NEW.bid,"
              " NEW.abalance, NEW.filler) ON CONFLICT (aid) DO UPDATE SET bid = EXCLUDED.bid,"
              " abalance = EXCLUDED.abalance, filler = EXCLUDED.filler;")


def forward(shape: str, scale: int, parts: int) -> list[str]:
    step = 100000 * scale // parts
    if shape == "keylog":
        body = "INSERT INTO public.keylog (aid) VALUES (NEW.aid);"
    elif shape == "leaf":
        body = " ".join(f"{'IF' if i == 0 else 'ELSIF'} NEW.aid OPERATOR(pg_catalog.<)"
                        f" {(i + 1) * step + 1} THEN " + UPSERT_ACC.format(t=f"acc_{i}")
                        for i in range(parts)) + " END IF;"
    else:
        body = UPSERT_ACC.format(t="acc")
    return [
        "CREATE FUNCTION cap_fwd() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER"
        f" SET search_path = pg_catalog, pg_temp AS $$ BEGIN {body} RETURN NULL; END $$",
        "CREATE TRIGGER cap AFTER UPDATE ON pgbench_accounts FOR EACH ROW"
        " EXECUTE FUNCTION cap_fwd()",
    ]


FORWARD = ("fwd-none", "fwd-root", "fwd-leaf", "fwd-keylog", "fwd-empty", "tpcb-none",
           "tpcb-root", "tpcb-keylog")

SCRIPT = ("\\set aid random(1, 100000 * {scale})\n\\set delta random(-5000, 5000)\n"
          "UPDATE acc SET abalance = abalance + :delta WHERE aid = :aid;\n")


def setup(c: psycopg.Connection[Any], scale: int, parts: int) -> None:
    c.execute("CREATE TABLE acc (LIKE pgbench_accounts INCLUDING ALL) PARTITION BY RANGE (aid)")
    step = 100000 * scale // parts
    for i in range(parts):
        c.execute(f"CREATE TABLE acc_{i} PARTITION OF acc FOR VALUES FROM ({i * step + 1})"
                  f" TO ({(i + 1) * step + 1})")
    c.execute("INSERT INTO acc SELECT * FROM pgbench_accounts")
    c.execute("CREATE TABLE keylog (aid int NOT NULL)")
    c.execute("VACUUM ANALYZE acc, pgbench_accounts")


def use(c: psycopg.Connection[Any], variant: str, scale: int, parts: int) -> None:
    c.execute("DROP TRIGGER IF EXISTS cap ON acc")
    c.execute("DROP TRIGGER IF EXISTS cap ON pgbench_accounts")
    for fn in ("cap_row", "cap_upd", "cap_stmt", "cap_fwd"):
        c.execute(f"DROP FUNCTION IF EXISTS {fn}()")
    if variant in FORWARD:
        # the copy as the fill left it: every row already there
        # fwd-empty: as fwd-root, into a copy the fill has not reached yet (each upsert first
        # inserts its row, as right after prep)
        c.execute("TRUNCATE acc" if variant == "fwd-empty" else
                  "INSERT INTO acc SELECT * FROM pgbench_accounts ON CONFLICT DO NOTHING")
        stmts = [] if variant.endswith("-none") else forward(
            "root" if variant == "fwd-empty" else variant.split("-")[1], scale, parts)
    else:
        stmts = VARIANTS[variant] or (VARIANTS["row"] if variant.startswith("row-") else [])
    for stmt in stmts:
        c.execute(stmt)
    if variant in ("row-noset", "row-invoker"):
        c.execute("ALTER FUNCTION cap_row() RESET search_path")
    if variant == "row-invoker":
        c.execute("ALTER FUNCTION cap_row() SECURITY INVOKER")


def server_ticks(server_pid: int) -> int:
    """CPU ticks (user + system) of every process of the server now alive."""
    try:
        with open(f"/proc/{server_pid}/task/{server_pid}/children") as f:
            pids = f.read().split()
    except OSError:
        return 0
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                p = f.read().rsplit(")", 1)[1].split()
            total += int(p[11]) + int(p[12])
        except (OSError, IndexError):
            pass
    return total


def commits(dsn: str) -> int:
    with psycopg.connect(dsn) as c:
        row = c.execute("SELECT xact_commit FROM pg_stat_database WHERE datname ="
                        " current_database()").fetchone()
    return int(row[0]) if row else 0


def run(exe: str, dsn: str, script: str, seconds: int, server_pid: int, clients: int = 4
        ) -> tuple[float, float, float]:
    """tps, average latency, and the server's CPU per transaction in microseconds (measured
    from the second second to the one before last, while pgbench's backends live: CPU time
    does not depend on what else the machine runs as throughput does)."""
    how = ["-b", "tpcb-like"] if script == "tpcb-like" else ["-f", script]
    p = subprocess.Popen([exe, "-n", "-T", str(seconds), "-c", str(clients), "-j",
                          str(min(clients, 2)), *how,
                          "-r", dsn], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    t0, c0 = server_ticks(server_pid), commits(dsn)
    time.sleep(max(seconds - 2, 1))
    t1, c1 = server_ticks(server_pid), commits(dsn)
    out, err = p.communicate()
    assert p.returncode == 0, err
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = float(re.search(r"latency average = ([\d.]+) ms", out)  # type: ignore[union-attr]
                .group(1))
    us = (t1 - t0) / os.sysconf("SC_CLK_TCK") * 1e6 / max(c1 - c0 - 2, 1)
    return tps, lat, us


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=5)
    ap.add_argument("--partitions", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=4, help="pgbench clients")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="of " + ", ".join([*VARIANTS, *FORWARD]))
    a = ap.parse_args()
    print(f"load average (1 min) {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    tmp = tempfile.mkdtemp(prefix="pgcleave-capture-")
    scripts = {}
    for table in ("acc", "pgbench_accounts"):
        scripts[table] = os.path.join(tmp, f"update_{table}.sql")
        with open(scripts[table], "w") as f:
            f.write(SCRIPT.format(scale=a.scale).replace("UPDATE acc ", f"UPDATE {table} "))
    names = a.variants.split(",")
    tps: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    with temporary(1) as sb:
        server = sb.servers[0]
        with open(os.path.join(server.datadir, "postmaster.pid")) as f:
            pid = int(f.readline())
        exe = os.path.join(server.bindir, "pgbench")
        with psycopg.connect(server.dsn, autocommit=True) as c0:
            c0.execute("CREATE DATABASE capture")
        dsn = server.dsn_for("capture")
        subprocess.run([exe, "-i", "-q", "-s", str(a.scale), dsn], check=True,
                       capture_output=True)
        with psycopg.connect(dsn, autocommit=True) as c:
            setup(c, a.scale, a.partitions)
            for r in range(a.rounds):
                for n in names:
                    use(c, n, a.scale, a.partitions)
                    script = ("tpcb-like" if n.startswith("tpcb-") else
                              scripts["pgbench_accounts" if n in FORWARD else "acc"])
                    t, lat, us = run(exe, dsn, script, a.seconds, pid, a.clients)
                    tps[n].append(t)
                    cpu[n].append(us)
                    print(f"  round {r + 1} {n:10} {t:8,.0f} tps  latency {lat:6.2f} ms  "
                          f"server CPU {us:5.0f} us/tx  load {os.getloadavg()[0]:.1f}",
                          flush=True)
    base = statistics.median(tps[names[0]])
    base_us = statistics.median(cpu[names[0]])
    for n in names:
        m, us = statistics.median(tps[n]), statistics.median(cpu[n])
        print(f"{n:10} median {m:8,.0f} tps  {m / base:5.0%} of {names[0]}; server CPU "
              f"{us:5.0f} us/tx ({us / base_us:4.0%} of {names[0]}'s: "
              f"{base_us / us:4.0%} of its tps when CPU-bound)")


if __name__ == "__main__":
    main()
