"""The fill: no resurrected or stale rows when the application deletes and moves rows the fill
is copying; --where, --max-rate, deferred indexes, the dry run; the one-job chain
(``plan_partition_copy``) killed in the middle of its fill; time partitions that tile and do not
depend on the session's TimeZone."""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from pgcleave.connection import Settings, connect
from pgcleave.execute import Executor
from pgcleave.ops import copy as ops
from pgcleave.ops.copy_run import verify_copy
from tests.test_copy import _events, _ok

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Mutator:
    """Deletes, key-moving updates and plain updates of *existing* (not yet copied) rows, each in
    its own transaction, remembering what committed."""

    def __init__(self, dsn: str, ids: list[int], seed: int) -> None:
        self.dsn, self.ids, self.rng = dsn, ids, random.Random(seed)
        self.deleted: set[int] = set()
        self.moved: dict[int, datetime] = {}
        self.errors: list[str] = []
        self.max_ms = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            while not self.stop.is_set() and self.ids:
                rid = self.ids.pop(self.rng.randrange(len(self.ids)))
                t0 = time.monotonic()
                try:
                    op = self.rng.random()
                    if op < 0.4:
                        c.execute("DELETE FROM events WHERE id = %s", [rid])
                        self.deleted.add(rid)
                    elif op < 0.8:
                        at = datetime.now(UTC) - timedelta(days=self.rng.uniform(0, 300))
                        c.execute("UPDATE events SET created_at = %s, payload = 'moved'"
                                  " WHERE id = %s", [at, rid])
                        self.moved[rid] = at
                    else:
                        c.execute("UPDATE events SET payload = 'touched' WHERE id = %s", [rid])
                except psycopg.Error as exc:
                    self.errors.append(str(exc))
                self.max_ms = max(self.max_ms, (time.monotonic() - t0) * 1000)


@pytest.mark.parametrize("order", ["physical", "key"])
def test_fill_never_resurrects_or_keeps_stale_rows(db: Any, conn: Any, cli: Any,
                                                   order: str) -> None:
    _events(conn, 30000)
    d = db.dsn
    _ok(cli("--dsn", d, "prep", "events", "--by", "created_at", "--interval", "month",
            "--past", "11", "--future", "1", "--yes"))
    ids = list(range(1, 30001))
    random.Random(5).shuffle(ids)
    muts = [Mutator(d, ids[i::3], i) for i in range(3)]
    for m in muts:
        m.thread.start()
    r = _ok(cli("--dsn", d, "fill", "events", "--batch-size", "150", "--order", order,
                "--yes"))
    check_mutations(conn, muts, r.stderr, least=50)


def check_mutations(conn: Any, muts: list[Mutator], stderr: str, *, least: int) -> None:
    """Stop the mutators; then no deleted row is in the copy, every moved row is there once
    as it was moved, and verify matches."""
    for m in muts:
        m.stop.set()
        m.thread.join()
    assert not [e for m in muts for e in m.errors]
    deleted = set().union(*(m.deleted for m in muts))
    moved = {k: v for m in muts for k, v in m.moved.items()}
    print(f"deleted={len(deleted)} moved={len(moved)} stall_ms="
          f"{max(m.max_ms for m in muts):.1f}")
    assert len(deleted) > least and len(moved) > least, stderr
    back = conn.execute("SELECT count(*) FROM events_intermediate WHERE id = ANY(%s)",
                        [list(deleted)]).fetchone()[0]
    assert back == 0, "deleted rows were resurrected by the fill"
    rows = dict(conn.execute("SELECT id, created_at FROM events_intermediate WHERE id = ANY(%s)",
                             [list(moved)]).fetchall())
    assert rows == moved, "moved rows are stale or duplicated in the copy"
    assert verify_copy(conn, "events").ok


def test_where_rate_dry_run_and_deferred_indexes(db: Any, conn: Any, cli: Any) -> None:
    _events(conn, 6000)
    d = db.dsn
    r = _ok(cli("--dsn", d, "prep", "events", "--by", "created_at", "--interval", "week",
                "--past", "60", "--future", "2", "--defer-indexes", "--dry-run"))
    assert "CREATE TRIGGER" in r.stdout and "SECURITY DEFINER" in r.stdout
    assert conn.execute("SELECT to_regclass('events_intermediate')").fetchone()[0] is None
    _ok(cli("--dsn", d, "prep", "events", "--by", "created_at", "--interval", "week",
            "--past", "60", "--future", "2", "--defer-indexes", "--yes"))
    r = _ok(cli("--dsn", d, "fill", "events", "--dry-run"))
    assert "pg_advisory_xact_lock" in r.stdout and "CREATE INDEX" in r.stdout
    cutoff = (datetime.now(UTC) - timedelta(days=100)).isoformat()
    t0 = time.monotonic()
    r = _ok(cli("--dsn", d, "fill", "events", "--batch-size", "500", "--max-rate", "4000",
                "--where", f"created_at >= '{cutoff}'", "--yes"))
    took = time.monotonic() - t0
    copied = conn.execute("SELECT count(*) FROM events_intermediate").fetchone()[0]
    expect = conn.execute("SELECT count(*) FROM events WHERE created_at >= %s",
                          [cutoff]).fetchone()[0]
    assert copied == expect < 6000
    assert took >= copied / 4000 * 0.8, (took, copied)
    # the deferred secondary indexes exist, valid, on the parent and every partition
    bad = conn.execute(
        "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'events_intermediate'::regclass AND (SELECT count(*) FROM pg_index"
        " x WHERE x.indrelid = c.oid AND x.indisvalid) <> 3").fetchone()[0]
    assert bad == 0  # pkey, (created_at), (tenant, payload) on every partition
    parent = conn.execute("SELECT count(*) FROM pg_index WHERE indrelid ="
                          " 'events_intermediate'::regclass AND indisvalid").fetchone()[0]
    assert parent == 3
    # verify compares only what --where selected, on both sides
    r = _ok(cli("--dsn", d, "verify", "events", "--json"))
    assert json.loads(r.stdout)["match"] is True
    r = _ok(cli("--dsn", d, "swap", "events", "--yes"))
    assert "stay in events_retired only" in r.stderr


def test_integer_key_with_inbound_fk(db: Any, conn: Any, cli: Any) -> None:
    conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, name text)")
    conn.execute("INSERT INTO accounts SELECT i, 'a' || i FROM generate_series(1, 5000) i")
    conn.execute("CREATE TABLE orders (id int PRIMARY KEY, account_id int REFERENCES accounts"
                 " ON DELETE CASCADE)")
    conn.execute("INSERT INTO orders SELECT i, i FROM generate_series(1, 5000) i")
    d = db.dsn
    _ok(cli("--dsn", d, "prep", "accounts", "--by", "id", "--interval", "1000", "--past", "5",
            "--future", "1", "--yes"))
    _ok(cli("--dsn", d, "fill", "accounts", "--batch-size", "700", "--yes"))
    plan = ops.plan_fill(conn, "accounts", order="key")
    assert "pg_advisory_xact_lock" in plan.steps[0].statements[0]
    _ok(cli("--dsn", d, "swap", "accounts", "--yes"))
    conn.execute("DELETE FROM accounts WHERE id = 42")  # cascades through the moved FK
    assert conn.execute("SELECT count(*) FROM orders WHERE account_id = 42").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM accounts_retired WHERE id = 42").fetchone()[0] == 0
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute("INSERT INTO orders VALUES (99999, 99999)")
    # after the swap, unprep stops the capture into the retired table (kept, now stale)
    _ok(cli("--dsn", d, "unprep", "accounts", "--yes"))
    conn.execute("INSERT INTO accounts VALUES (5001, 'late')")
    assert conn.execute("SELECT count(*) FROM accounts_retired WHERE id = 5001").fetchone()[0] == 0
    r = cli("--dsn", d, "unswap", "accounts", "--yes")
    assert r.returncode == 3 and "not being copied" in r.stderr


def _chain_script(dsn: str) -> str:
    return f"""
from pgcleave.connection import Settings, connect
from pgcleave.execute import Executor
from pgcleave.ops.copy import plan_partition_copy
s = Settings(dsn={dsn!r})
with connect(s) as c:
    plan = plan_partition_copy(c, "events", by="created_at", interval="1 month", premake=2,
                               batch_size=700, defer_indexes=True)
Executor(s, lambda e: print(e.kind, e.job_id, e.message, flush=True)).run(plan)
"""


def test_partition_copy_one_job_killed_in_fill(db: Any, conn: Any, cli: Any) -> None:
    _events(conn, 8000)
    env = dict(os.environ, PGCLEAVE_FAULT="kill-fill-after-batches:4")
    r = subprocess.run([sys.executable, "-c", _chain_script(db.dsn)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stdout + r.stderr
    job = re.search(r"job-start (\d+)", r.stdout).group(1)  # type: ignore[union-attr]
    r = _ok(cli("--dsn", db.dsn, "resume", job))
    assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'events'::regclass"
                        ).fetchone()[0] == "p"
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 8000
    # all history was split: nothing in the DEFAULT partition
    assert conn.execute("SELECT count(*) FROM events_default").fetchone()[0] == 0
    r = _ok(cli("--dsn", db.dsn, "verify", "events", "--json"))
    assert json.loads(r.stdout)["match"] is True


@pytest.mark.parametrize("typ", ["date", "timestamp", "timestamptz"])
def test_time_partitions_tile_whatever_the_session_zone(db: Any, typ: str) -> None:
    s = Settings(dsn=db.dsn)
    with connect(s) as c:
        c.execute(f"CREATE TABLE t (id int PRIMARY KEY, k {typ} NOT NULL)")
        c.execute("INSERT INTO t SELECT i, now() - i * interval '9 days' FROM"
                  " generate_series(1, 100) i")
    for interval in ("1 day", "1 week", "1 month", "1 quarter", "1 year"):
        texts = []
        for tz in ("UTC", "Pacific/Chatham", "America/Los_Angeles"):
            with connect(s) as c:
                c.execute(f"SET TimeZone = '{tz}'")
                plan = ops.plan_partition_copy(c, "t", by="k", interval=interval, premake=2,
                                               past=3, swap=False)
                texts.append([st for step in plan.steps if step.name.startswith("partition")
                              for st in step.statements])
        assert texts[0] == texts[1] == texts[2], interval
    with connect(s) as c:
        c.execute("SET TimeZone = 'Asia/Kolkata'")
        plan = ops.plan_partition_copy(c, "t", by="k", interval="1 week", premake=2, swap=False)
    Executor(s).run(plan)
    with connect(s) as c:
        bounds = c.execute(
            "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON"
            " c.oid = i.inhrelid WHERE i.inhparent = 't_intermediate'::regclass AND NOT"
            " c.relispartition IS NULL AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'"
        ).fetchall()
        rx = re.compile(r"FOR VALUES FROM \((.*)\) TO \((.*)\)")
        pairs = sorted(rx.match(b).groups() for (b,) in bounds)  # type: ignore[union-attr]
        for (_, hi), (lo, _) in itertools.pairwise(pairs):
            assert hi == lo, "a gap or an overlap between partitions"
        assert c.execute("SELECT count(*) FROM t_default").fetchone()[0] == 0
        assert verify_copy(c, "t").ok


def test_key_column_forms() -> None:
    """``pgcleave partition --strategy copy`` passes --by as written: ``range(col)`` too."""
    from pgcleave.errors import Refused

    assert ops._key_column("created_at") == "created_at"
    assert ops._key_column("RANGE (Created_At)") == "created_at"
    assert ops._key_column('range("Ordered On")') == "Ordered On"
    with pytest.raises(Refused, match="hash"):
        ops._key_column("hash(tenant)")
