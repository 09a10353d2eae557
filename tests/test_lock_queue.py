"""Issue 18, item 3: lock queues. A long report holds ACCESS SHARE on the table (an open
transaction that read it and sleeps); each operation run meanwhile waits politely: its requests
for stronger locks queue for at most ``--lock-timeout`` before giving up and retrying later, so
no other application query waits much longer than that behind pgcleave; and the operation
completes once the report has ended."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.test_keys import make_table

LOCK_TIMEOUT_MS = 100
READER_S = 3.0
# scheduling on a shared 2-core machine: a probe's own round trip, a retry's statements
MARGIN_MS = 250


class Probe:
    """An application query issued over and over on its own connection; the longest wait."""

    def __init__(self, dsn: str, query: sql.Composable) -> None:
        self.dsn, self.query = dsn, query
        self.waits: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    c.execute(self.query).fetchall()
                except psycopg.Error as exc:  # a missing table for an instant would be a bug
                    self.errors.append(str(exc))
                self.waits.append((time.monotonic() - t0) * 1000)
                time.sleep(0.01)

    def __enter__(self) -> Probe:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(timeout=10)


class Reader:
    """A report: BEGIN, read the table (ACCESS SHARE on it and its partitions), then wait in
    the open transaction until released."""

    def __init__(self, dsn: str, table: sql.Composable) -> None:
        self.release = threading.Event()
        self.ended = 0.0
        held = threading.Event()

        def run() -> None:
            with psycopg.connect(dsn) as c:
                c.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchall()
                held.set()
                self.release.wait(120)
                c.commit()
                self.ended = time.monotonic()

        self._t = threading.Thread(target=run, daemon=True)
        self._t.start()
        assert held.wait(10)

    def end(self) -> None:
        self.release.set()
        self._t.join(timeout=10)


def tenants(conn: Any, rows: int = 3000) -> sql.Identifier:
    conn.execute("CREATE TABLE t (id bigserial, tenant text NOT NULL, payload text,"
                 " PRIMARY KEY (id, tenant)) PARTITION BY RANGE (tenant)")
    conn.execute("CREATE TABLE t_a PARTITION OF t FOR VALUES FROM ('A') TO ('B')")
    conn.execute("CREATE TABLE t_default PARTITION OF t DEFAULT")
    conn.execute("INSERT INTO t (tenant, payload) SELECT (ARRAY['Dora', 'Mona', 'Zed'])"
                 "[1 + i %% 3], 'p' FROM generate_series(1, %s) i", [rows])
    return sql.Identifier("t")


def plain(conn: Any, rows: int = 3000) -> sql.Identifier:
    conn.execute("CREATE TABLE t (id bigserial PRIMARY KEY, at timestamptz NOT NULL,"
                 " payload text)")
    conn.execute("INSERT INTO t (at, payload) SELECT now() - i * interval '1 hour', 'p'"
                 " FROM generate_series(1, %s) i", [rows])
    return sql.Identifier("t")


def monthly(conn: Any) -> sql.Identifier:
    conn.execute("CREATE TABLE t (id bigserial, d date NOT NULL, v text, PRIMARY KEY (id, d))"
                 " PARTITION BY RANGE (d)")
    conn.execute("CREATE TABLE t_01 PARTITION OF t FOR VALUES FROM ('2025-01-01') TO "
                 "('2025-02-01')")
    conn.execute("CREATE TABLE t_default PARTITION OF t DEFAULT")
    conn.execute("INSERT INTO t (d, v) SELECT '2025-01-01'::date + i % 28, 'x'"
                 " FROM generate_series(1, 2000) i")
    return sql.Identifier("t")


Setup = Callable[[Any], sql.Identifier]
OPS: dict[str, tuple[Setup, list[list[str]]]] = {
    "add-partition": (tenants, [["add-partition", "t", "--from", "D", "--to", "E"]]),
    "carve (swap)": (tenants, [["carve", "t", "--from", "M", "--to", "N", "--method", "swap",
                                "--yes"]]),
    "partition by copy swap": (plain, [["partition", "t", "--by", "range(at)", "--interval",
                                        "1 month", "--strategy", "copy", "--yes"]]),
    "partition in place": (plain, [["partition", "t", "--by", "range(at)", "--interval",
                                    "1 month", "--yes"]]),
    "set-primary-key": (lambda c: make_table(c, parts=3, rows=3000, table="t"),
                        [["set-primary-key", "t", "--columns", "id,created_at", "--yes"]]),
    "create-index": (tenants, [["create-index", "t", "payload", "--yes"]]),
    "maintain (premake)": (monthly, [["config", "t", "--interval", "1 month", "--premake",
                                      "2"],
                                     ["maintain", "t", "--now", "2025-01-10"]]),
}


@pytest.mark.parametrize("op", list(OPS))
def test_operation_waits_politely_behind_a_long_reader(db: Any, conn: Any, cli: Any,
                                                       op: str) -> None:
    setup, commands = OPS[op]
    table = setup(conn)
    for extra in commands[:-1]:
        r = cli("--dsn", db.dsn, *extra)
        assert r.returncode == 0, r.stdout + r.stderr
    probe_q = sql.SQL("SELECT 1 FROM {} LIMIT 1").format(table)
    reader = Reader(db.dsn, table)
    out: list[Any] = []
    with Probe(db.dsn, probe_q) as probe:
        t0 = time.monotonic()
        run = threading.Thread(target=lambda: out.append(cli(
            "--dsn", db.dsn, "--lock-timeout", str(LOCK_TIMEOUT_MS), *commands[-1])))
        run.start()
        # the reader stays until pgcleave has been seen waiting for READER_S seconds (or it
        # finished without needing a lock the reader holds)
        first_wait = 0.0
        seen = 0
        with psycopg.connect(db.dsn, autocommit=True) as mon:
            while run.is_alive():
                n = mon.execute("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON"
                                " a.pid = l.pid WHERE NOT l.granted AND a.application_name"
                                " LIKE 'pgcleave%%' AND a.datname = current_database()"
                                ).fetchone()[0]
                if n:
                    seen += 1
                    first_wait = first_wait or time.monotonic()
                if first_wait and time.monotonic() - first_wait > READER_S:
                    break
                time.sleep(0.02)
            reader.end()
        run.join(timeout=300)
        done = time.monotonic()
        time.sleep(0.1)
    r = out[0]
    assert r.returncode == 0, r.stdout + r.stderr
    waits = sorted(probe.waits)
    worst = waits[-1]
    print(f"\nlock queue, {op}: {len(waits)} probes, max wait {worst:.0f} ms, "
          f"p99 {waits[int(len(waits) * 0.99)]:.0f} ms; pgcleave seen waiting for a lock in "
          f"{seen} polls, finished {done - reader.ended:.1f} s after the reader ended "
          f"({done - t0:.1f} s in all)")
    assert not probe.errors, probe.errors[:3]
    assert len(waits) > 20
    assert worst < LOCK_TIMEOUT_MS + MARGIN_MS, (op, waits[-5:])
    # it did meet the reader: the reader outlived its first attempt (or the operation only
    # needed locks the reader does not block, e.g. concurrent index builds' own waits)
    assert seen > 0 or done > reader.ended, op
