"""The DEFAULT drain of ``maintain`` is ``carve``'s swap: one bulk copy with a key log, then
short swap transactions. These tests prove that every ATTACH is proven by CHECKs (no scan under
ACCESS EXCLUSIVE), that the swaps are several small transactions, that writers lose nothing
while the copy, the replays and the swaps run, and that a job stopped between two swap
transactions resumes (and refuses to roll back)."""

from __future__ import annotations

import random
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from pgcleave.connection import Settings
from pgcleave.execute import Event, Executor
from pgcleave.ops.carve import plan_carve
from pgcleave.ops.maintain import plan_maintain
from pgcleave.testing.workload import Spec, Workload

T = "Dr ain"  # odd identifiers everywhere
KEY = "At time"


def one(conn: Any, q: Any, *args: Any) -> Any:
    row = conn.execute(q, list(args) or None).fetchone()
    return row[0] if row else None


def make_table(conn: Any, months_before: int = 60) -> None:
    """Monthly partitions up to 2024-12 with holes in 2025: 2025-01..06 and 2025-09 are
    missing (their rows sit in the DEFAULT), 2025-07/08 and 2025-10 exist."""
    t, k = sql.Identifier(T), sql.Identifier(KEY)
    conn.execute(sql.SQL("CREATE TABLE {} (id bigserial, {} timestamptz NOT NULL, payload text,"
                         " PRIMARY KEY (id, {})) PARTITION BY RANGE ({})").format(t, k, k, k))
    conn.execute(sql.SQL("CREATE INDEX ON {} (payload)").format(t))
    first = 2025 * 12 - months_before
    have = [*range(first, 2025 * 12), 2025 * 12 + 6, 2025 * 12 + 7, 2025 * 12 + 9]
    for m in have:
        lo = datetime(m // 12, m % 12 + 1, 1, tzinfo=UTC)
        hi = datetime((m + 1) // 12, (m + 1) % 12 + 1, 1, tzinfo=UTC)
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})")
                     .format(sql.Identifier(f"{T} {m // 12}-{m % 12 + 1:02d}"), t,
                             sql.Literal(lo), sql.Literal(hi)))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(
        sql.Identifier(T + " def"), t))
    # rows for 2025-01 .. 2025-10, those of the existing months route to their partitions
    conn.execute(sql.SQL("INSERT INTO {} ({}, payload) SELECT '2025-01-01 00:00+00'::"
                         "timestamptz + i * interval '90 minutes', 'seed' FROM "
                         "generate_series(0, 4799) i").format(t, k))


def spec() -> Spec:
    base = datetime(2025, 1, 1, tzinfo=UTC)

    def key(rng: random.Random) -> datetime:
        return base + timedelta(seconds=rng.randrange(0, 300 * 86400))

    return Spec(table=sql.Identifier(T), key_col=KEY, make_key=key)


def kids(conn: Any) -> dict[str, str]:
    return {r[0]: r[1] for r in conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c"
        " ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
        [sql.Identifier(T).as_string(None)])}


def no_leftovers(conn: Any) -> None:
    assert conn.execute("SELECT relname FROM pg_class WHERE relname LIKE '%%pgcleave%%' AND"
                        " relnamespace = 'public'::regnamespace").fetchall() == []
    assert conn.execute("SELECT relname FROM pg_class WHERE relname LIKE 'carve_%%' AND"
                        " relnamespace = 'pgcleave'::regnamespace").fetchall() == []
    assert one(conn, "SELECT count(*) FROM pg_constraint WHERE conname IN"
                     " ('pgcleave_hold', 'pgcleave_carve')") == 0
    assert one(conn, "SELECT count(*) FROM pg_trigger WHERE tgname = 'pgcleave_carve'") == 0


def test_drain_swaps_are_short_and_proven(db: Any, conn: Any, cli: Any) -> None:
    """Every ATTACH of the drain (the holder as the DEFAULT, each new month, the new DEFAULT)
    is proven by CHECKs: PostgreSQL logs "is implied by existing constraints" and never
    "verifying table" for them; the swap runs as several short transactions."""
    make_table(conn)
    r = cli("--dsn", db.dsn, "config", f'"{T}"', "--interval", "1 month", "--premake", "1")
    assert r.returncode == 0, r.stderr
    conn.execute(sql.SQL("ALTER DATABASE {} SET log_min_messages = 'debug1'").format(
        sql.Identifier(db.name)))
    log = Path(db.server.logfile)
    before = log.stat().st_size
    r = cli("--dsn", db.dsn, "maintain", "--now", "2025-10-15")
    conn.execute(sql.SQL("ALTER DATABASE {} RESET log_min_messages").format(
        sql.Identifier(db.name)))
    assert r.returncode == 0, r.stderr
    with open(log, "rb") as fh:
        fh.seek(before)
        text = fh.read().decode(errors="replace")
    months = [f"{T}_p2025_{m:02d}" for m in (1, 2, 3, 4, 5, 6, 9)]
    b = kids(conn)
    for m in months:
        assert b[m].startswith("FOR VALUES FROM"), b
        assert f'partition constraint for table "{m}" is implied by existing constraints' \
            in text
    assert f'partition constraint for table "{T} def_pgcleave_hold" is implied' in text
    assert f'partition constraint for table "{T} def" is implied' in text
    # ADD CONSTRAINT on the empty new tables and premake's VALIDATE log "verifying table"
    # before the swap (no exclusive lock on anything the application uses); from the first
    # swap transaction on, nothing is scanned.
    swaps = text[text.index(f'partition constraint for table "{T} def_pgcleave_hold"'):]
    assert re.findall(r'verifying table "([^"]+)"', swaps) == []
    assert b[f"{T} def"] == "DEFAULT"
    # swap 1 (holder in), 2 (4 months), 3 (3 months), 4 (new DEFAULT)
    holds = [int(x) for x in re.findall(r"swap \d/4: .* ACCESS EXCLUSIVE held (\d+) ms",
                                        r.stderr)]
    assert len(holds) == 4, r.stderr
    assert one(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(T))) == 4800
    assert one(conn, sql.SQL("SELECT count(*) FROM ONLY {}").format(
        sql.Identifier(T + " def"))) == 0
    for m in months:  # every index of the parent is on each new partition
        assert one(conn, "SELECT count(*) FROM pg_indexes WHERE tablename = %s", m) == 2
    no_leftovers(conn)
    assert cli("--dsn", db.dsn, "check", "--now", "2025-10-15").returncode == 0


class Stop(Exception):
    pass


def test_drain_with_writers_stopped_between_swaps(db: Any, conn: Any, cli: Any) -> None:
    """Writers insert, update, move keys, delete and read while the drain copies, replays and
    swaps; the job is stopped after its second swap transaction (rows are then split between
    the parent and the holder), cannot be rolled back, and resumes to the end. Nothing is
    lost, duplicated, resurrected or invisible for a moment."""
    make_table(conn)
    assert cli("--dsn", db.dsn, "config", f'"{T}"', "--interval", "1 month", "--premake",
               "1").returncode == 0
    plan, _ = plan_maintain(conn, f'"{T}"', now=datetime(2025, 10, 15, tzinfo=UTC))
    assert [s.name for s in plan.steps if s.name.startswith("carve")] == [
        "carve-prepare", "carve-copy", "carve-verify", "carve-swap", "carve-drop-old"]

    def stop_after_second_swap(ev: Event) -> None:
        if ev.kind == "progress" and ev.message.startswith("swap 2/"):
            raise Stop

    wl = Workload(db.dsn, spec(), writers=4, max_seconds=60).start()
    try:
        wl.run_for(0.3)
        with pytest.raises(Stop):
            Executor(Settings(dsn=db.dsn), progress=stop_after_second_swap).run(plan)
        job = one(conn, "SELECT max(id) FROM pgcleave.jobs")
        wl.run_for(0.3)
        assert f"{T} def_pgcleave_hold" in kids(conn)  # half swapped
        r = cli("--dsn", db.dsn, "rollback", str(job))
        assert r.returncode != 0 and "resume" in r.stderr, r.stderr
        r = cli("--dsn", db.dsn, "resume", str(job))
        assert r.returncode == 0, r.stderr
        wl.run_for(0.3)
    finally:
        wl.stop()
    print(wl.summary())
    wl.verify(conn)
    assert wl.ops.get("move", 0) > 10 and wl.ops.get("delete", 0) > 5
    assert kids(conn)[f"{T} def"] == "DEFAULT"
    no_leftovers(conn)


def test_carve_swap_odd_names_and_key_log(db: Any, conn: Any) -> None:
    """The library path: a list carve by swap on odd names; writes made between the copy and
    the swap (kept in the key log) are all there after it."""
    conn.execute('CREATE TABLE "L ist" (id bigserial, "Re gion" text NOT NULL, v text,'
                 ' PRIMARY KEY (id, "Re gion")) PARTITION BY LIST ("Re gion")')
    conn.execute('CREATE TABLE "L ist d" PARTITION OF "L ist" DEFAULT')
    conn.execute('INSERT INTO "L ist" ("Re gion", v) SELECT (ARRAY[\'e u\',\'u"s\',\'ap\'])'
                 '[1 + i % 3], \'x\' FROM generate_series(1, 3000) i')
    plan = plan_carve(conn, '"L ist"', [["e u"], ['u"s']], method="swap", swap_batch=1)

    def writes(ev: Event) -> None:
        if ev.kind == "step-done" and ev.step is not None and ev.step.name == "carve-copy":
            with conn.transaction():
                conn.execute('UPDATE "L ist" SET "Re gion" = \'ap\' WHERE id % 100 = 0')
                conn.execute('UPDATE "L ist" SET "Re gion" = \'e u\' WHERE id % 100 = 1')
                conn.execute('UPDATE "L ist" SET v = \'y\' WHERE id % 100 = 2')
                conn.execute('DELETE FROM "L ist" WHERE id % 100 = 3')
                conn.execute('INSERT INTO "L ist" ("Re gion", v) VALUES (\'u"s\', \'new\')')

    t0 = time.monotonic()
    Executor(Settings(dsn=db.dsn), progress=writes).run(plan)
    assert time.monotonic() - t0 < 30
    expected = dict(conn.execute('SELECT "Re gion", count(*) FROM "L ist" GROUP BY 1'))
    counts = dict(conn.execute('SELECT tableoid::regclass::text, count(*) FROM "L ist"'
                               ' GROUP BY 1'))
    assert sum(counts.values()) == 3000 - 30 + 1
    assert counts == {'"L ist_0"': expected["e u"], '"L ist_1"': expected['u"s'],
                      '"L ist d"': expected["ap"]}
    assert expected["ap"] == 1000 + 20 - 10 - 10  # 20 moved in, 10 moved out, 10 deleted
    assert one(conn, 'SELECT count(*) FROM "L ist" WHERE v = \'y\'') == 30
    no_leftovers(conn)


def test_drain_max_rate_counts_every_connection_together(db: Any, conn: Any, cli: Any) -> None:
    """maintain --jobs 2 --max-rate 2000: the DEFAULT's ~3,400 rows take at least 1.7 s (at
    2,000 rows/s per connection they would take half that), the dry run says the rate, the
    job's plan keeps it for a resume, and the rows are exact under writers."""
    make_table(conn)
    d = ("--dsn", db.dsn)
    assert cli(*d, "config", f'"{T}"', "--interval", "1 month", "--premake", "1").returncode == 0
    dry = cli(*d, "maintain", "--jobs", "2", "--max-rate", "2000", "--now", "2025-10-15",
              "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "at most 2,000 rows/s together" in dry.stdout, dry.stdout
    in_default = one(conn, sql.SQL("SELECT count(*) FROM ONLY {}").format(
        sql.Identifier(T + " def")))
    wl = Workload(db.dsn, spec(), writers=3, max_seconds=60).start()
    try:
        wl.run_for(0.3)
        r = cli(*d, "maintain", "--jobs", "2", "--max-rate", "2000", "--now", "2025-10-15")
        assert r.returncode == 0, r.stderr
        wl.run_for(0.2)
    finally:
        wl.stop()
    m = re.search(r"copied ([\d,]+) rows in ([\d.]+) s on 2 connection", r.stderr)
    assert m, r.stderr
    rows, s = int(m.group(1).replace(",", "")), float(m.group(2))
    print(f"DEFAULT {in_default} rows, copied {rows} in {s} s at --max-rate 2000")
    assert rows >= in_default > 3000 and s >= rows / 2000 - 0.05, (rows, s)
    plan = one(conn, "SELECT plan FROM pgcleave.jobs WHERE id = (SELECT max(id) FROM "
                     "pgcleave.jobs)")
    assert plan["args"]["max_rate"] == 2000
    copy = next(x for x in plan["steps"] if x["action"] == "carve.copy")
    assert copy["params"]["parallel"]["max_rate"] == 2000
    wl.verify(conn)
    assert one(conn, sql.SQL("SELECT count(*) FROM ONLY {}").format(
        sql.Identifier(T + " def"))) == 0
    no_leftovers(conn)
