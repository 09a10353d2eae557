"""Kill -9 during the fill and during the swap, under writers: the job resumes cleanly and
nothing is lost, repeated or resurrected."""

from __future__ import annotations

import json
import re
from typing import Any

from psycopg import sql

from pgcleave.testing.workload import Spec, Workload
from tests.test_copy import _events, _key, _ok


def _job(stderr: str) -> str:
    m = re.search(r"job (\d+):", stderr)
    assert m, stderr
    return m.group(1)


def _spec() -> Spec:
    return Spec(table=sql.Identifier("public", "events"), key_col="created_at", make_key=_key)


def test_kill_during_fill_resumes(db: Any, conn: Any, cli: Any) -> None:
    _events(conn, 12000)
    d = db.dsn
    w = Workload(d, _spec(), writers=3, max_seconds=90, pause_s=0.002)
    with w:
        _ok(cli("--dsn", d, "prep", "events", "--by", "created_at", "--interval", "month",
                "--past", "11", "--future", "1", "--yes"))
        r = cli("--dsn", d, "fill", "events", "--batch-size", "1000", "--yes",
                env={"PGCLEAVE_FAULT": "kill-fill-after-batches:3"})
        assert r.returncode == -9, r.stderr
        job = _job(r.stderr)
        saved = conn.execute("SELECT progress FROM pgcleave.steps WHERE job_id = %s AND idx = 0",
                             [int(job)]).fetchone()[0]
        # batches are sized by time (--batch-time), each at most ``step`` blocks
        assert saved["batches"] == 3 and 3 <= saved["block"] <= 3 * saved["step"]
        assert conn.execute("SELECT filled_at FROM pgcleave.copies").fetchone()[0] is None
        # a second run of the same table is refused while the job is unfinished
        r = cli("--dsn", d, "fill", "events", "--yes")
        assert r.returncode == 3 and "unfinished" in r.stderr
        r = _ok(cli("--dsn", d, "resume", job))
        assert re.search(r"fill done: [\d,]+ rows copied in (\d+) batches", r.stderr)
        done = conn.execute("SELECT progress FROM pgcleave.steps WHERE job_id = %s AND idx = 0",
                            [int(job)]).fetchone()[0]
        # went on from the saved block to the last one, one contiguous range per batch
        assert done["finished"] and done["block"] >= done["blocks"]
        assert done["batches"] > saved["batches"]
        r = _ok(cli("--dsn", d, "verify", "events", "--json"))
        assert json.loads(r.stdout)["match"] is True
        _ok(cli("--dsn", d, "swap", "events", "--yes"))
        w.run_for(0.5)
    print(w.summary())
    w.verify(conn)


def test_kill_during_swap_resumes(db: Any, conn: Any, cli: Any) -> None:
    _events(conn, 5000)
    conn.execute("CREATE TABLE refs (id int PRIMARY KEY, event_id bigint, event_at timestamptz)")
    conn.execute("ALTER TABLE events ADD UNIQUE (id, created_at)")
    conn.execute("ALTER TABLE refs ADD FOREIGN KEY (event_id, event_at) REFERENCES events"
                 " (id, created_at)")
    d = db.dsn
    w = Workload(d, _spec(), writers=3, max_seconds=90, pause_s=0.002)
    with w:
        _ok(cli("--dsn", d, "prep", "events", "--by", "created_at", "--interval", "month",
                "--past", "11", "--future", "1", "--yes"))
        _ok(cli("--dsn", d, "fill", "events", "--yes"))
        # killed just before the swap transaction: nothing swapped, the job resumes it
        r = cli("--dsn", d, "swap", "events", "--yes", env={"PGCLEAVE_FAULT": "kill-before:swap"})
        assert r.returncode == -9
        assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'events'::regclass"
                            ).fetchone()[0] == "r"
        _ok(cli("--dsn", d, "resume", _job(r.stderr)))
        assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'events'::regclass"
                            ).fetchone()[0] == "p"
        w.run_for(0.5)
        # killed right after the unswap transaction committed (before the FK validation)
        r = cli("--dsn", d, "unswap", "events", "--yes", env={"PGCLEAVE_FAULT": "kill-after:1"})
        assert r.returncode == -9
        assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'events'::regclass"
                            ).fetchone()[0] == "r"
        _ok(cli("--dsn", d, "resume", _job(r.stderr)))
        w.run_for(0.5)
    print(w.summary())
    w.verify(conn)
    fk = conn.execute("SELECT confrelid::regclass::text, convalidated FROM pg_constraint"
                      " WHERE conrelid = 'refs'::regclass AND contype = 'f' AND conparentid = 0"
                      ).fetchone()
    assert fk == ("events", True)
    r = _ok(cli("--dsn", d, "verify", "events", "--json"))
    assert json.loads(r.stdout)["match"] is True


def test_table_rewritten_between_kill_and_resume(db: Any, conn: Any, cli: Any) -> None:
    """A physical (block-range) fill notices a VACUUM FULL that renumbered the rows and copies
    again from block 0; ON CONFLICT DO NOTHING makes the repeat harmless."""
    _events(conn, 6000)
    d = db.dsn
    _ok(cli("--dsn", d, "prep", "events", "--by", "created_at", "--interval", "month",
            "--past", "11", "--future", "1", "--yes"))
    r = cli("--dsn", d, "fill", "events", "--batch-size", "500", "--yes",
            env={"PGCLEAVE_FAULT": "kill-fill-after-batches:4"})
    assert r.returncode == -9
    conn.execute("DELETE FROM events WHERE id % 3 = 0")
    conn.execute("VACUUM FULL events")
    r = _ok(cli("--dsn", d, "resume", _job(r.stderr)))
    assert "rewritten" in r.stderr
    r = _ok(cli("--dsn", d, "verify", "events", "--json"))
    assert json.loads(r.stdout)["match"] is True
    assert conn.execute("SELECT count(*) FROM events_intermediate").fetchone()[0] == 4000
