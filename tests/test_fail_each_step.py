"""Every step of keys, the DEFAULT drain and move fails in turn (issue 19): each plan is read
from its own dry run, then run once per step with ``PGCLEAVE_FAULT=fail-before:N`` (steps that
repeat for each partition, at their first and last place). After
pgcleave has exited, with nobody running `rollback`, application-like writers run with no
error and every row they commit is visible, the rows that were there before are all still
visible, and `resume` then finishes the job."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from psycopg import sql

from pgcleave.testing.workload import Spec, Workload
from tests import test_drain, test_keys, test_move
from tests.test_fail_safe import half_year


def plan_steps(cli: Any, dsn: str, argv: list[str]) -> list[str]:
    r = cli("--dsn", dsn, *argv, "--dry-run", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    plan = doc["tables"][0]["plan"] if "tables" in doc else doc  # maintain: one per table
    return [s["name"] for s in plan["steps"]]


def kinds(steps: list[str]) -> list[tuple[int, str]]:
    """Every kind of step (``nn-add:p01:id`` is of kind ``nn-add``), at its first and last
    place: the steps in between run the same code on other partitions."""
    kind = [s.split(":")[0].split(" ")[0] for s in steps]
    keep = {kind.index(k) for k in kind} | {len(kind) - 1 - kind[::-1].index(k) for k in kind}
    return [(i + 1, steps[i]) for i in sorted(keep)]


def fail_at_each_step(db: Any, conn: Any, cli: Any, argv: list[str], *, table: sql.Composable,
                      spec: Spec, reset: Callable[[], None], done: Callable[[], None]) -> None:
    reset()
    steps = plan_steps(cli, db.dsn, argv)
    assert steps, steps
    for n, (i, name) in enumerate(kinds(steps)):
        if n:
            reset()
        fail_then_resume(db, conn, cli, argv, i, name, table=table, spec=spec)
        done()


def fail_then_resume(db: Any, conn: Any, cli: Any, argv: list[str], i: int, name: str, *,
                     table: sql.Composable, spec: Spec) -> None:
    """Run ``argv`` failing before its step ``i``; writers then run with no error and see
    every row, and ``resume`` finishes the job."""
    before = [r[0] for r in conn.execute(sql.SQL("SELECT id::text FROM {}").format(table))]
    r = cli("--dsn", db.dsn, *argv, env={"PGCLEAVE_FAULT": f"fail-before:{i}"})
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "injected by PGCLEAVE_FAULT" in out, (name, out)
    w = Workload(db.dsn, spec, writers=2, max_seconds=30).start()
    try:
        w.run_for(0.5)
        deadline = time.monotonic() + 20  # a loaded machine: until they wrote enough
        while w.ops.get("insert", 0) <= 3 and time.monotonic() < deadline:
            w.run_for(0.2)
    finally:
        w.stop()
    w.verify(conn)  # no writer error, every committed row visible exactly once
    assert w.ops.get("insert", 0) > 3, (name, w.ops)
    # writers touch only the rows they inserted: the others must all be visible, once
    assert conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE id::text = ANY({})").format(
        table, sql.Literal(before))).fetchone() == (len(before),), name
    job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
    r = cli("--dsn", db.dsn, "resume", str(job))
    assert r.returncode == 0, (name, r.stdout + r.stderr)


def _fresh(conn: Any, *drop: str) -> None:
    for t in drop:
        conn.execute(f"DROP TABLE IF EXISTS {t} CASCADE")
    conn.execute("DROP SCHEMA IF EXISTS pgcleave CASCADE")


def test_set_primary_key_fails_at_each_step(db, conn, cli):
    def reset() -> None:
        _fresh(conn, "events")
        test_keys.make_table(conn, parts=2, rows=300)

    def done() -> None:
        assert test_keys.constraint_cols(conn, "events") == [["id", "created_at"]]

    fail_at_each_step(
        db, conn, cli, ["set-primary-key", "events", "--columns", "id,created_at", "--yes"],
        table=sql.Identifier("events"), reset=reset, done=done,
        spec=Spec(table=sql.Identifier("public", "events"), key_col="created_at",
                  make_key=test_keys.key_in(2)))


def test_create_index_fails_at_each_step(db, conn, cli):
    def reset() -> None:
        _fresh(conn, "events")
        test_keys.make_table(conn, parts=2, rows=300)

    def done() -> None:
        assert conn.execute(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = 'events'::regclass AND c.relname LIKE '%%payload%%'"
            " AND i.indisvalid").fetchone() == (1,)

    fail_at_each_step(
        db, conn, cli, ["create-index", "events", "payload"],
        table=sql.Identifier("events"), reset=reset, done=done,
        spec=Spec(table=sql.Identifier("public", "events"), key_col="created_at",
                  make_key=test_keys.key_in(2)))


def test_default_drain_fails_at_each_step(db, conn, cli):
    t = sql.Identifier(test_drain.T)

    def reset() -> None:
        _fresh(conn, sql.Identifier(test_drain.T).as_string(None))
        test_drain.make_table(conn, months_before=1)
        r = cli("--dsn", db.dsn, "config", f'"{test_drain.T}"', "--interval", "1 month",
                "--premake", "0")
        assert r.returncode == 0, r.stderr

    def done() -> None:
        test_drain.no_leftovers(conn)
        assert conn.execute(sql.SQL(
            "SELECT count(*) FROM {} WHERE {} < '2025-07-01'").format(
            sql.Identifier(test_drain.T + " def"), sql.Identifier(test_drain.KEY))
        ).fetchone() == (0,)

    fail_at_each_step(db, conn, cli, ["maintain", f'"{test_drain.T}"', "--now", "2025-10-15"],
                      table=t, reset=reset, done=done, spec=test_drain.spec())


def test_alter_fails_at_each_step(db, db2, conn, cli):
    from tests.test_alter import remote_columns

    def reset() -> None:
        if conn.execute("SELECT to_regclass('\"Ex\"')").fetchone()[0] is None:
            test_move.make_table(conn)
            test_move.add_server(db, "db2", db2)
            r = cli("--dsn", db.dsn, "move", test_move.PART, "--to", "db2", "--yes",
                    "--drop-source")
            assert r.returncode == 0, r.stdout + r.stderr
        elif "difficulty" in remote_columns(db2):
            r = cli("--dsn", db.dsn, "alter", '"Ex"', "DROP COLUMN difficulty", "--yes")
            assert r.returncode == 0, r.stdout + r.stderr

    def done() -> None:
        assert remote_columns(db2) == ["id", "tenant", "payload", "difficulty"]
        with db2.connect() as remote:
            assert remote.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone() == (0,)

    fail_at_each_step(
        db, conn, cli, ["alter", '"Ex"', "ADD difficulty SMALLINT", "--yes"],
        table=sql.Identifier("Ex"), reset=reset, done=done,
        spec=Spec(table=sql.Identifier("public", "Ex"), key_col="tenant",
                  make_key=lambda r: r.choice(["Dory", "Dx", "Duck"])))


def _near_now() -> Spec:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    return Spec(table=sql.Identifier("public", "events"), key_col="created_at",
                make_key=lambda r: now - timedelta(hours=r.uniform(-24, 24 * 40)))


def test_partition_in_place_fails_at_each_step(db, conn, cli):
    from tests.test_copy import _events

    def reset() -> None:
        _fresh(conn, "events", "events_legacy")
        _events(conn, 600)

    def done() -> None:
        assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'events'::regclass"
                            ).fetchone() == ("p",)

    fail_at_each_step(
        db, conn, cli, ["partition", "events", "--by", "range(created_at)", "--interval",
                        "1 month", "--premake", "1", "--yes"],
        table=sql.Identifier("events"), reset=reset, done=done, spec=_near_now())


def test_partition_by_copy_fails_at_each_step(db, conn, cli):
    def reset() -> None:
        _fresh(conn, "events", "events_intermediate", "events_retired")
        conn.execute("CREATE TABLE events (id bigserial PRIMARY KEY, created_at timestamptz NOT"
                     " NULL, payload text)")
        conn.execute("CREATE INDEX events_created ON events (created_at)")
        # 40 days of rows: a few partitions, so a few partition steps among the others
        conn.execute("INSERT INTO events (created_at, payload) SELECT now() - (i % 40) *"
                     " interval '1 day', 'seed' FROM generate_series(1, 600) i")

    def done() -> None:
        assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'events'::regclass"
                            ).fetchone() == ("p",)

    fail_at_each_step(
        db, conn, cli, ["partition", "events", "--by", "range(created_at)", "--interval",
                        "1 month", "--strategy", "copy", "--yes"],
        table=sql.Identifier("events"), reset=reset, done=done, spec=_near_now())


def test_carve_fails_at_each_step(db, conn, cli):
    """Carve by copy and swaps (the path of add-partition and the drain next to a large
    DEFAULT), every step."""
    from tests.test_carve import _spec, _tenants_table, bounds

    def reset() -> None:
        _fresh(conn, "acc", "acc_legacy", "acc_default")
        _tenants_table(conn, 600)
        r = cli("--dsn", db.dsn, "partition", "acc", "--by", "range(tenant)", "--yes")
        assert r.returncode == 0, r.stdout + r.stderr

    def done() -> None:
        assert "FOR VALUES FROM ('B') TO ('D')" in bounds(conn, "acc").values()

    fail_at_each_step(db, conn, cli, ["carve", "acc", "--from", "B", "--to", "D", "--method",
                                      "swap", "--yes"],
                      table=sql.Identifier("acc"), reset=reset, done=done, spec=_spec())


# -- kill -9 at each step that leaves something refusing statements or hiding rows -----------
def harmful_steps(cli: Any, dsn: str, argv: list[str]) -> list[tuple[int, str, str]]:
    r = cli("--dsn", dsn, *argv, "--dry-run", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    plan = doc["tables"][0]["plan"] if "tables" in doc else doc
    return [(i, s["name"], s.get("residue_note", "")) for i, s in enumerate(plan["steps"], 1)
            if s.get("residue") in ("refuses", "hides")]


def kill_at_each_harmful_step(db: Any, conn: Any, cli: Any, argv: list[str], *,
                              table: str, reset: Callable[[], None]) -> int:
    """Killed right after each such step: `check TABLE` reports the residue, in the plan's
    own words, with the command that clears it; `status` marks it; rollback clears it."""
    reset()
    steps = harmful_steps(cli, db.dsn, argv)
    for n, (i, name, note) in enumerate(steps):
        if n:
            reset()
        r = cli("--dsn", db.dsn, *argv, env={"PGCLEAVE_FAULT": f"kill-after:{i}"})
        assert r.returncode == -9, (name, r.stdout + r.stderr)
        job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
        c = cli("--dsn", db.dsn, "check", table)
        assert c.returncode == 1 and note[:40] in c.stdout, (name, note, c.stdout)
        assert f"pgcleave resume {job}" in c.stdout or f"pgcleave rollback {job}" in c.stdout
        assert "UNFINISHED JOB" in cli("--dsn", db.dsn, "status", table).stdout
        r = cli("--dsn", db.dsn, "rollback", str(job))
        if r.returncode != 0:  # a step that cannot be undone: the job is finished instead
            r = cli("--dsn", db.dsn, "resume", str(job))
        assert r.returncode == 0, (name, r.stdout + r.stderr)
        assert "residue" not in cli("--dsn", db.dsn, "check", table).stdout, name
    return len(steps)


def test_killed_at_each_harmful_step_is_reported(db, conn, cli, tmp_path):
    from tests.test_copy import _events

    def events() -> None:
        _fresh(conn, "events", "events_legacy")
        _events(conn, 300)

    def keys() -> None:
        _fresh(conn, "events")
        test_keys.make_table(conn, parts=2, rows=300)

    def monthly() -> None:
        _fresh(conn, "q")
        half_year(conn, 600)
        r = cli("--dsn", db.dsn, "config", "q", "--interval", "1 month", "--premake", "0",
                "--retention", "4 months", "--retention-action", "archive", "--archive-dir",
                str(tmp_path))
        assert r.returncode == 0, r.stderr

    found = kill_at_each_harmful_step(
        db, conn, cli, ["partition", "events", "--by", "range(created_at)", "--interval",
                        "1 month", "--premake", "1", "--yes"], table="events", reset=events)
    found += kill_at_each_harmful_step(
        db, conn, cli, ["set-primary-key", "events", "--columns", "id,created_at", "--yes"],
        table="events", reset=keys)
    found += kill_at_each_harmful_step(db, conn, cli, ["maintain", "q", "--now", "2025-06-10"],
                                       table="q", reset=monthly)
    assert found >= 4  # the cutoff CHECK, NOT NULL CHECKs, a detach


def test_move_out_and_back_fail_at_each_step(db, db2, conn, cli):
    """Move out, then back, each failing before each of its steps in turn: the resume of one
    direction's failure sets up the next failure of the other direction."""
    spec = Spec(table=sql.Identifier("public", "Ex"), key_col="tenant",
                # keys within "Ex d": a row cannot move between a local and a remote
                # partition (the plan warns of it)
                make_key=lambda r: r.choice(["Dory", "Dx", "Duck"]))
    out = ["move", test_move.PART, "--to", "db2", "--yes"]
    back = ["move", test_move.PART, "--to", "local", "--yes", "--drop-source"]
    test_move.make_table(conn)
    test_move.add_server(db, "db2", db2)

    def run(argv: list[str], i: int, name: str, where: str) -> None:
        fail_then_resume(db, conn, cli, argv, i, name, table=sql.Identifier("Ex"), spec=spec)
        assert test_move.location(conn) == where, name
        with db2.connect() as remote:
            assert test_move.leftovers(conn, remote) == [], name
        if where == "r:\"Ex\"":
            conn.execute('DROP TABLE IF EXISTS "Ex d_pgc_local"')  # kept by the move out

    outs = kinds(plan_steps(cli, db.dsn, out))
    run(out, *outs[0], where="f:\"Ex\"")
    backs = kinds(plan_steps(cli, db.dsn, back))
    for n in range(max(len(outs), len(backs))):
        run(back, *backs[min(n, len(backs) - 1)], where="r:\"Ex\"")
        if n + 1 < len(outs):
            run(out, *outs[n + 1], where="f:\"Ex\"")
        elif n + 1 < len(backs):
            ok = cli("--dsn", db.dsn, *out)
            assert ok.returncode == 0, ok.stdout + ok.stderr


def test_unpartition_fails_at_each_step(db, conn, cli):
    from tests.test_copy import _events

    def reset() -> None:
        if conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass('events')"
                        ).fetchone() == ("p",):
            return
        _fresh(conn, "events", "events_legacy")
        _events(conn, 600)
        r = cli("--dsn", db.dsn, "partition", "events", "--by", "range(created_at)",
                "--interval", "1 month", "--premake", "1", "--yes")
        assert r.returncode == 0, r.stdout + r.stderr

    def done() -> None:
        assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'events'::regclass"
                            ).fetchone() == ("r",)

    fail_at_each_step(db, conn, cli, ["unpartition", "events", "--yes"],
                      table=sql.Identifier("events"), reset=reset, done=done, spec=_near_now())


def test_unswap_fails_at_each_step(db, conn, cli):
    def reset() -> None:
        if conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass('events')"
                        ).fetchone() == ("p",):
            return
        _fresh(conn, "events", "events_intermediate", "events_retired")
        conn.execute("CREATE TABLE events (id bigserial PRIMARY KEY, created_at timestamptz NOT"
                     " NULL, payload text)")
        conn.execute("INSERT INTO events (created_at, payload) SELECT now() - (i % 40) *"
                     " interval '1 day', 'seed' FROM generate_series(1, 600) i")
        r = cli("--dsn", db.dsn, "partition", "events", "--by", "range(created_at)",
                "--interval", "1 month", "--strategy", "copy", "--yes")
        assert r.returncode == 0, r.stdout + r.stderr

    def done() -> None:
        assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'events'::regclass"
                            ).fetchone() == ("r",)

    fail_at_each_step(db, conn, cli, ["unswap", "events", "--yes"],
                      table=sql.Identifier("events"), reset=reset, done=done, spec=_near_now())


def test_add_foreign_key_fails_at_each_step(db, conn, cli):
    def reset() -> None:
        _fresh(conn, "child", "parent_t")
        conn.execute("CREATE TABLE parent_t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO parent_t SELECT generate_series(1, 10)")
        conn.execute("CREATE TABLE child (id bigserial, k int, d date NOT NULL, payload text,"
                     " PRIMARY KEY (id, d)) PARTITION BY RANGE (d)")
        for y in (2025, 2026):
            conn.execute(f"CREATE TABLE child_{y} PARTITION OF child FOR VALUES FROM "
                         f"('{y}-01-01') TO ('{y + 1}-01-01')")
        conn.execute("INSERT INTO child (k, d) SELECT 1 + i % 10, '2025-01-01'::date + i % 700"
                     " FROM generate_series(1, 300) i")

    def done() -> None:
        assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conrelid ="
                            " 'child'::regclass AND contype = 'f' AND convalidated"
                            ).fetchone() == (1,)

    from datetime import date, timedelta
    fail_at_each_step(
        db, conn, cli, ["add-foreign-key", "child", "k", "REFERENCES", "parent_t", "id"],
        table=sql.Identifier("child"), reset=reset, done=done,
        # the writers' rows carry no k (NULL): what the key accepts, as before the job
        spec=Spec(table=sql.Identifier("public", "child"), key_col="d",
                  make_key=lambda r: date(2025, 1, 1) + timedelta(days=int(r.uniform(0, 700)))))
