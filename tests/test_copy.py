"""Partition by copy with change capture: the whole pgslice-like chain under application-like
writers, then unswap under the same writers; refusals; odd identifiers and key types."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from pgcleave.testing.workload import Spec, Workload

NOW = datetime.now(UTC)


def _ok(r: Any) -> Any:
    print(" ".join(r.args[3:6]), r.stderr[-2000:])
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def _events(conn: psycopg.Connection[Any], rows: int = 20000, *, identity: bool = False) -> None:
    idcol = ("id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY" if identity
             else "id bigserial PRIMARY KEY")
    extra = ", size int GENERATED ALWAYS AS (length(payload)) STORED" if identity else ""
    conn.execute(f"CREATE TABLE events ({idcol}, created_at timestamptz NOT NULL,"
                 f" payload text, tenant int NOT NULL DEFAULT 1{extra})")
    conn.execute("CREATE INDEX events_created ON events (created_at)")
    conn.execute("CREATE INDEX events_tenant ON events (tenant, payload)")
    conn.execute(
        "INSERT INTO events (created_at, payload, tenant) SELECT now() - (i %% 330) * interval"
        " '1 day' - (i %% 1440) * interval '1 minute', 'seed-' || i, i %% 7"
        " FROM generate_series(1, %s) i", [rows])
    conn.execute("ANALYZE events")


def _key(rng: random.Random) -> datetime:
    # mostly inside the partitions (11 months back .. 1 month ahead), some far outside
    if rng.random() < 0.05:
        return NOW - timedelta(days=800 + rng.randint(0, 100))
    return NOW - timedelta(days=rng.uniform(-25, 330))


def _spec() -> Spec:
    return Spec(table=sql.Identifier("public", "events"), key_col="created_at", make_key=_key)


def test_chain_and_unswap_under_writers(db: Any, conn: Any, cli: Any) -> None:
    _events(conn)
    conn.execute("CREATE ROLE app_reader_c1")
    conn.execute("GRANT SELECT ON events TO app_reader_c1")
    conn.execute("COMMENT ON TABLE events IS 'the events'")
    conn.execute("CREATE VIEW recent AS SELECT id, payload FROM events")
    conn.execute("CREATE TABLE audit (n int)")
    conn.execute("INSERT INTO audit VALUES (0)")
    conn.execute("CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS "
                 "$$BEGIN UPDATE audit SET n = n + 1; RETURN NULL; END$$")
    conn.execute("CREATE TRIGGER events_audit AFTER INSERT ON events FOR EACH ROW "
                 "EXECUTE FUNCTION bump()")
    d = db.dsn
    w = Workload(d, _spec(), writers=4, max_seconds=120, pause_s=0.002)
    with w:
        _ok(cli("--dsn", d, "prep", "events", "--by", "created_at", "--interval", "1 month",
                "--yes"))
        _ok(cli("--dsn", d, "add-partitions", "events", "--past", "11", "--future", "2",
                "--yes"))
        r = _ok(cli("--dsn", d, "fill", "events", "--batch-size", "1500", "--yes"))
        assert "fit no partition" in r.stderr  # the rows 800+ days old
        _ok(cli("--dsn", d, "analyze", "events", "--yes"))
        r = _ok(cli("--dsn", d, "verify", "events", "--json"))
        assert json.loads(r.stdout)["match"] is True
        r = _ok(cli("--dsn", d, "swap", "events", "--yes"))
        print(r.stderr)
        w.run_for(1.0)
        kind = conn.execute("SELECT relkind FROM pg_class WHERE oid = 'events'::regclass"
                            ).fetchone()[0]
        assert kind == "p"
        # capture runs the other way: the retired table is a full, current copy
        r = _ok(cli("--dsn", d, "verify", "events", "--json"))
        assert json.loads(r.stdout)["match"] is True
        _ok(cli("--dsn", d, "unswap", "events", "--yes"))
        w.run_for(1.0)
    print(w.summary())
    print("max_stall_ms", w.max_stall_ms)
    w.verify(conn)
    assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'events'::regclass"
                        ).fetchone()[0] == "r"
    # after the unswap the partitioned copy is still kept equal
    r = _ok(cli("--dsn", d, "verify", "events", "--json"))
    assert json.loads(r.stdout)["match"] is True


def test_swap_moves_dependents(db: Any, conn: Any, cli: Any) -> None:
    _events(conn, 3000, identity=True)
    conn.execute("CREATE ROLE app_c2")
    conn.execute("GRANT SELECT, INSERT ON events TO app_c2")
    conn.execute("COMMENT ON COLUMN events.payload IS 'what happened'")
    conn.execute("CREATE VIEW v_events AS SELECT id, created_at FROM events")
    conn.execute("ALTER TABLE events ADD UNIQUE (id, created_at)")
    conn.execute("CREATE TABLE refs (id int PRIMARY KEY, event_id bigint, event_at timestamptz,"
                 " FOREIGN KEY (event_id, event_at) REFERENCES events (id, created_at))")
    conn.execute("INSERT INTO refs SELECT 1, id, created_at FROM events LIMIT 1")
    last = conn.execute("SELECT max(id) FROM events").fetchone()[0]
    d = db.dsn
    _ok(cli("--dsn", d, "prep", "events", "--by", "created_at", "--interval", "month",
            "--past", "12", "--future", "1", "--yes"))
    r = cli("--dsn", d, "swap", "events", "--yes")
    assert r.returncode == 3 and "not filled" in r.stderr
    _ok(cli("--dsn", d, "fill", "events", "--yes"))
    r = _ok(cli("--dsn", d, "swap", "events", "--yes"))
    assert "ACCESS EXCLUSIVE held" in r.stderr
    new_id = conn.execute("INSERT INTO events (created_at, payload) VALUES (now(), 'x')"
                          " RETURNING id").fetchone()[0]
    assert new_id == last + 1  # the identity continues
    assert conn.execute("SELECT size FROM events WHERE id = %s", [new_id]).fetchone()[0] == 1
    assert conn.execute("SELECT has_table_privilege('app_c2', 'events', 'INSERT')"
                        ).fetchone()[0]
    assert conn.execute("SELECT col_description('events'::regclass, 3)").fetchone()[0] == \
        "what happened"
    assert conn.execute("SELECT count(*) FROM v_events").fetchone()[0] == 3001
    fk = conn.execute("SELECT confrelid::regclass::text, convalidated FROM pg_constraint"
                      " WHERE conrelid = 'refs'::regclass AND contype = 'f' AND conparentid = 0"
                      ).fetchone()
    assert fk == ("events", True)
    assert conn.execute("SELECT count(*) FROM events_retired").fetchone()[0] == 3001
    _ok(cli("--dsn", d, "unswap", "events", "--yes"))
    new_id2 = conn.execute("INSERT INTO events (created_at, payload) VALUES (now(), 'y')"
                           " RETURNING id").fetchone()[0]
    assert new_id2 == new_id + 1
    assert conn.execute("SELECT count(*) FROM events_intermediate").fetchone()[0] == 3002
    fk = conn.execute("SELECT confrelid::regclass::text FROM pg_constraint"
                      " WHERE conrelid = 'refs'::regclass AND contype = 'f' AND conparentid = 0"
                      ).fetchone()
    assert fk == ("events",)
    assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'events'::regclass"
                        ).fetchone()[0] == "r"
    _ok(cli("--dsn", d, "unprep", "events", "--yes"))
    assert conn.execute("SELECT to_regclass('events_intermediate')").fetchone()[0] is None
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'events'::regclass"
                        " AND NOT tgisinternal").fetchone()[0] == 0


def test_refusals(db: Any, conn: Any, cli: Any) -> None:
    d = db.dsn
    conn.execute("CREATE TABLE nopk (a int, t timestamptz NOT NULL)")
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, t timestamptz NOT NULL, n text,"
                 " maybe timestamptz)")
    conn.execute("CREATE TABLE p (id int, t date NOT NULL) PARTITION BY RANGE (t)")
    cases = [
        (("prep", "nopk", "--by", "t", "--interval", "month"), "no primary key"),
        (("prep", "t", "--by", "nope", "--interval", "month"), "no column"),
        (("prep", "t", "--by", "n", "--interval", "month"), "time interval"),
        (("prep", "t", "--by", "t", "--interval", "1000"), "numeric interval"),
        (("prep", "t", "--by", "maybe", "--interval", "month"), "allows NULL"),
        (("prep", "p", "--by", "t", "--interval", "month"), "already partitioned"),
        (("prep", "missing", "--by", "t", "--interval", "month"), "does not exist"),
        (("fill", "t"), "not being copied"),
        (("swap", "t"), "not being copied"),
    ]
    for args, msg in cases:
        r = cli("--dsn", d, *args, "--yes")
        assert r.returncode == 3, (args, r.stderr)
        assert msg in r.stderr, (args, r.stderr)
        assert "hint:" in r.stderr, (args, r.stderr)
    conn.execute("CREATE TABLE child (id int PRIMARY KEY, t_id int REFERENCES t)")
    r = cli("--dsn", d, "prep", "t", "--by", "t", "--interval", "month", "--yes")
    assert r.returncode == 3 and "will not be unique" in r.stderr and "hint:" in r.stderr
    conn.execute("DROP TABLE child")
    _ok(cli("--dsn", d, "prep", "t", "--by", "t", "--interval", "month", "--yes"))
    conn.execute("INSERT INTO t VALUES (1, now(), 'a')")
    assert conn.execute("SELECT count(*) FROM t_intermediate").fetchone()[0] == 1
    conn.execute("TRUNCATE t")  # captured too
    assert conn.execute("SELECT count(*) FROM t_intermediate").fetchone()[0] == 0
    r = cli("--dsn", d, "prep", "t", "--by", "t", "--interval", "month", "--yes")
    assert r.returncode == 3 and "already prepped" in r.stderr
    r = cli("--dsn", d, "fill", "t", "--where", "no_such_col > 1", "--yes")
    assert r.returncode == 3 and "--where" in r.stderr
    # nothing changed by the refusals: no other table was created
    names = {r[0] for r in conn.execute("SELECT relname FROM pg_class WHERE relkind IN ('r', 'p')"
                                        " AND relnamespace = 'public'::regnamespace")}
    assert names == {"nopk", "t", "p", "t_intermediate", "t_default"}


def test_verify_refuses_mismatch(db: Any, conn: Any, cli: Any) -> None:
    _events(conn, 2000)
    d = db.dsn
    _ok(cli("--dsn", d, "prep", "events", "--by", "created_at", "--interval", "quarter",
            "--past", "4", "--future", "1", "--yes"))
    _ok(cli("--dsn", d, "fill", "events", "--yes"))
    # someone writes to the copy behind the capture's back
    conn.execute("DELETE FROM events_intermediate WHERE id IN (SELECT id FROM events_intermediate"
                 " LIMIT 3)")
    r = cli("--dsn", d, "verify", "events")
    assert r.returncode == 3, r.stderr
    assert "NO" in r.stdout
    r = cli("--dsn", d, "swap", "events", "--yes")
    assert r.returncode == 3 and "differ" in r.stderr
    assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'events'::regclass"
                        ).fetchone()[0] == "r"


def test_odd_names_composite_uuid_key(db: Any, conn: Any, cli: Any) -> None:
    conn.execute('CREATE SCHEMA "Sales"')
    conn.execute('CREATE TABLE "Sales"."Order Items" ("Tenant" uuid NOT NULL, "Line No" int NOT'
                 ' NULL, "Ordered On" date NOT NULL, payload text, PRIMARY KEY ("Tenant",'
                 ' "Line No"))')
    rng = random.Random(3)
    tenants = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(30)]
    with conn.cursor() as cur:
        cur.executemany('INSERT INTO "Sales"."Order Items" VALUES (%s, %s, %s, %s)',
                        [(t, i, (NOW - timedelta(days=rng.randint(0, 700))).date(), f"p{i}")
                         for t in tenants for i in range(100)])
    d = db.dsn
    name = '"Sales"."Order Items"'
    _ok(cli("--dsn", d, "prep", name, "--by", "Ordered On", "--interval", "1 year",
            "--past", "2", "--future", "1", "--yes"))
    _ok(cli("--dsn", d, "fill", name, "--batch-size", "77", "--order", "key", "--yes"))
    # a key-moving update and a delete after the fill are captured
    conn.execute('UPDATE "Sales"."Order Items" SET "Ordered On" = "Ordered On" - 400'
                 ' WHERE "Line No" = 5')
    conn.execute('DELETE FROM "Sales"."Order Items" WHERE "Line No" = 6')
    _ok(cli("--dsn", d, "verify", name))
    _ok(cli("--dsn", d, "swap", name, "--yes"))
    n = conn.execute('SELECT count(*) FROM "Sales"."Order Items"').fetchone()[0]
    assert n == 30 * 99
    assert conn.execute("""SELECT count(*) FROM "Sales"."Order Items_retired" """
                        ).fetchone()[0] == n


def test_swap_retries_behind_a_long_transaction(db: Any, conn: Any, cli: Any) -> None:
    """The swap never queues behind a long transaction (which would block every writer behind
    its ACCESS EXCLUSIVE request): it gives up after lock_timeout and tries again."""
    import threading
    import time

    _events(conn, 2000)
    d = db.dsn
    _ok(cli("--dsn", d, "prep", "events", "--by", "created_at", "--interval", "quarter",
            "--past", "4", "--future", "1", "--yes"))
    _ok(cli("--dsn", d, "fill", "events", "--yes"))
    r = _ok(cli("--dsn", d, "swap", "events", "--dry-run"))
    assert 'LOCK TABLE "public"."events" IN ACCESS EXCLUSIVE MODE;' in r.stdout
    assert 'RENAME TO "events_retired"' in r.stdout

    def hold() -> None:
        """A transaction reading the table, held until the swap has been seen waiting for its
        lock (on a loaded machine the CLI may take longer than any fixed time to get there),
        then for a few more of its 50 ms lock timeouts."""
        with psycopg.connect(d) as c, psycopg.connect(d, autocommit=True) as watch:
            c.execute("SELECT count(*) FROM events")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE"
                    " 'pgcleave%%' AND wait_event_type = 'Lock'").fetchone()[0]:
                time.sleep(0.01)
            time.sleep(0.5)
            c.rollback()

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.2)
    w = Workload(d, _spec(), writers=2, max_seconds=30, pause_s=0.005)
    with w:
        r = _ok(cli("--dsn", d, "--lock-timeout", "50", "swap", "events", "--yes"))
    t.join()
    assert "lock not available" in r.stderr
    print(w.summary())
    w.verify(conn)
    assert w.max_stall_ms < 1000  # writers never waited for the long transaction's end
