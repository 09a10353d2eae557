"""Foreign keys that point at the table being partitioned (issue 13, item 3).

A table referenced by two child tables, one whose key contains the partition key (re-pointed at
the partitioned table: NOT VALID in the cut-over, validated after) and one whose key does not
(emulated by constraint triggers with ``--inbound-fks emulate``), converted in place and by copy
under writers on the table and on both children; a child insert racing a delete of its parent,
in both orders, never commits an orphan; ``unpartition`` and ``unswap`` put plain foreign keys
back; all of it as a non-superuser owner too."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgcleave.testing.workload import Referencing, Spec, Workload
from tests.test_fail_each_step import fail_at_each_step
from tests.test_least_privilege import app  # noqa: F401 (a fixture)


def ok(proc: Any) -> Any:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def one(conn: Any, q: str, *args: Any) -> Any:
    row = conn.execute(q, list(args)).fetchone()
    return row[0] if row else None


def fk(conn: Any, child: str) -> Any:
    """The child's foreign key (the top one: a key referencing a partitioned table has a clone
    per partition): what it references, validated, its actions, deferrable."""
    return conn.execute(
        "SELECT conname, confrelid::regclass::text, convalidated, confdeltype::text, "
        "confupdtype::text, condeferrable, condeferred FROM pg_constraint WHERE conrelid = "
        "%s::regclass AND contype = 'f' AND conparentid = 0", [child]).fetchall()


def relkind(conn: Any, t: str) -> str:
    return str(one(conn, "SELECT relkind::text FROM pg_class WHERE oid = %s::regclass", t))


def pgcleave_fk_objects(conn: Any) -> list[Any]:
    """Emulation triggers and their functions left anywhere."""
    return conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgfoid IN (SELECT oid FROM pg_proc WHERE proname "
        "~ '^fk_(check|action)_') UNION ALL SELECT proname FROM pg_proc WHERE proname ~ "
        "'^fk_(check|action)_'").fetchall()


# -- the race of a child insert and a parent delete -------------------------------------------
def _waiting(conn: Any, pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if one(conn, "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
               pid) == "Lock":
            return
        time.sleep(0.02)
    raise AssertionError(f"backend {pid} never waited for a lock")


def _in_thread(c: Any, stmt: str, args: list[Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            with c.transaction():
                c.execute(stmt, args)
        except psycopg.Error as exc:
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def race(db: Any, conn: Any, *, parent: str, pkey: int, child: str, insert: str,
         cascade: bool) -> None:
    """Both orders, each on two connections with the order forced by the row lock itself (the
    second statement is started once the first holds its lock, and shown waiting before the
    first commits). Neither leaves a child row without its parent."""
    orphans = (f"SELECT count(*) FROM {child} c WHERE c.account_id IS NOT NULL AND NOT EXISTS "
               f"(SELECT 1 FROM {parent} p WHERE p.id = c.account_id)")
    with db.connect(autocommit=False) as ins, db.connect(autocommit=False) as dele:
        # 1. the child's insert first (it locks the parent row FOR KEY SHARE), then the delete
        ins.execute(insert, [pkey])
        dpid = dele.info.backend_pid
        t, box = _in_thread(dele, f"DELETE FROM {parent} WHERE id = %s", [pkey])
        _waiting(conn, dpid)
        ins.commit()
        t.join(10)
        if cascade:  # the delete sees the committed child and removes it
            assert "error" not in box, box
            assert one(conn, f"SELECT count(*) FROM {child} WHERE account_id = %s", pkey) == 0
        else:  # NO ACTION: the delete is refused, the parent stays
            err = box.get("error")
            assert isinstance(err, psycopg.errors.ForeignKeyViolation), box
            assert "is still referenced" in (err.diag.message_detail or "")
            assert one(conn, f"SELECT count(*) FROM {parent} WHERE id = %s", pkey) == 1
        assert one(conn, orphans) == 0
        # 2. the delete first, then the child's insert: it waits, then finds no parent
        other = pkey + 1
        dele.execute(f"DELETE FROM {child} WHERE account_id = %s", [other])
        dele.execute(f"DELETE FROM {parent} WHERE id = %s", [other])
        ipid = ins.info.backend_pid
        t, box = _in_thread(ins, insert, [other])
        _waiting(conn, ipid)
        dele.commit()
        t.join(10)
        err = box.get("error")
        assert isinstance(err, psycopg.errors.ForeignKeyViolation), box
        assert "is not present" in (err.diag.message_detail or "")
        assert one(conn, orphans) == 0


# -- in place ----------------------------------------------------------------------------------
def accounts(conn: Any) -> None:
    """``accounts`` (primary key (id, tenant), and id unique too), ``members`` referencing
    (id, tenant) ON UPDATE CASCADE DEFERRABLE (re-pointed), ``invoices`` referencing (id) alone
    ON DELETE CASCADE (emulated)."""
    conn.execute("CREATE TABLE accounts (id bigint GENERATED BY DEFAULT AS IDENTITY, tenant int "
                 "NOT NULL, payload text, PRIMARY KEY (id, tenant), UNIQUE (id))")
    conn.execute("INSERT INTO accounts (tenant, payload) SELECT i % 20, 'a' FROM "
                 "generate_series(1, 300) i")
    conn.execute("CREATE TABLE members (id serial PRIMARY KEY, account_id bigint, tenant int, "
                 "CONSTRAINT members_account FOREIGN KEY (account_id, tenant) REFERENCES "
                 "accounts (id, tenant) ON UPDATE CASCADE DEFERRABLE INITIALLY DEFERRED)")
    conn.execute("CREATE TABLE invoices (id serial PRIMARY KEY, account_id bigint REFERENCES "
                 "accounts (id) ON DELETE CASCADE)")
    conn.execute("CREATE INDEX ON invoices (account_id)")
    conn.execute("INSERT INTO members (account_id, tenant) SELECT id, tenant FROM accounts "
                 "WHERE id <= 100")
    conn.execute("INSERT INTO invoices (account_id) SELECT id FROM accounts WHERE id <= 100")


def accounts_spec() -> Spec:
    return Spec(table=sql.Identifier("public", "accounts"), key_col="tenant",
                make_key=lambda r: r.randint(0, 19))


def test_in_place_repoints_emulates_and_unpartition_restores(db: Any, conn: Any,
                                                             cli: Any) -> None:
    accounts(conn)
    seeds = conn.execute("SELECT id, tenant FROM accounts WHERE id <= 200").fetchall()
    d = ("--dsn", db.dsn)
    refused = cli(*d, "partition", "accounts", "--by", "list(tenant)", "--yes")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    for word in ("invoices", "--drop-inbound-fks", "set-primary-key", "--inbound-fks emulate"):
        assert word in refused.stderr, refused.stderr
    dry = ok(cli(*d, "partition", "accounts", "--by", "list(tenant)", "--inbound-fks",
                 "emulate", "--dry-run")).stdout
    assert "NOT VALID" in dry and "CREATE CONSTRAINT TRIGGER" in dry and "FOR KEY SHARE" in dry
    assert "VALIDATE CONSTRAINT" in dry
    w = Workload(db.dsn, accounts_spec(), writers=2, max_seconds=30)
    m = Referencing(db.dsn, sql.Identifier("members"), ["account_id", "tenant"], seeds,
                    writers=1, max_seconds=30)
    inv = Referencing(db.dsn, sql.Identifier("invoices"), ["account_id"],
                      [(s[0],) for s in seeds], writers=1, max_seconds=30)
    with w, m, inv:
        time.sleep(0.5)
        ok(cli(*d, "partition", "accounts", "--by", "list(tenant)", "--inbound-fks", "emulate",
               "--yes"))
        time.sleep(0.5)
    w.verify(conn)
    m.verify(conn)
    inv.verify(conn)
    assert relkind(conn, "accounts") == "p"
    # re-pointed and validated, with its action and deferrability
    assert fk(conn, "members") == [("members_account", "accounts", True, "a", "c", True, True)]
    # emulated: no foreign key, its triggers, shown by status, verified by check
    assert fk(conn, "invoices") == []
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute("INSERT INTO invoices (account_id) VALUES (999999)")
    conn.execute("INSERT INTO invoices (account_id) VALUES (NULL)")  # MATCH SIMPLE
    conn.execute("INSERT INTO invoices (account_id) VALUES (250)")  # no member references 250
    conn.execute("DELETE FROM accounts WHERE id = 250")  # ON DELETE CASCADE
    assert one(conn, "SELECT count(*) FROM invoices WHERE account_id = 250") == 0
    race(db, conn, parent="accounts", pkey=260, child="invoices", cascade=True,
         insert="INSERT INTO invoices (account_id) VALUES (%s)")
    # check finds an orphan written behind the triggers' back
    conn.execute("ALTER TABLE invoices DISABLE TRIGGER invoices_account_id_fkey")
    conn.execute("INSERT INTO invoices (account_id) VALUES (888888)")
    bad = cli(*d, "check", "accounts")
    assert bad.returncode != 0 and "reference no row" in bad.stdout + bad.stderr, bad.stdout
    assert "missing or disabled" in bad.stdout + bad.stderr
    conn.execute("DELETE FROM invoices WHERE account_id = 888888")
    conn.execute("ALTER TABLE invoices ENABLE TRIGGER invoices_account_id_fkey")

    ok(cli(*d, "unpartition", "accounts", "--yes"))
    assert relkind(conn, "accounts") == "r"
    assert fk(conn, "members") == [("members_account", "accounts", True, "a", "c", True, True)]
    assert fk(conn, "invoices") == [("invoices_account_id_fkey", "accounts", True, "c", "a",
                                     False, False)]
    assert pgcleave_fk_objects(conn) == []
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute("INSERT INTO invoices (account_id) VALUES (999999)")


def test_in_place_fails_at_each_step_then_resumes(db: Any, conn: Any, cli: Any) -> None:
    def reset() -> None:
        for t in ("invoices", "members", "accounts"):
            conn.execute(f"DROP TABLE IF EXISTS {t} CASCADE")
        conn.execute("DROP SCHEMA IF EXISTS pgcleave CASCADE")
        accounts(conn)

    def done() -> None:
        assert fk(conn, "members")[0][1:3] == ("accounts", True)
        assert fk(conn, "invoices") == []
        assert one(conn, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE "
                         "'invoices_account_id_fkey%%' AND tgparentid = 0") == 3

    fail_at_each_step(db, conn, cli, ["partition", "accounts", "--by", "list(tenant)",
                                      "--inbound-fks", "emulate", "--yes"],
                      table=sql.Identifier("accounts"), spec=accounts_spec(), reset=reset,
                      done=done)
    # a kill inside the cut-over, then rollback: the plain keys as they were
    reset()
    r = cli("--dsn", db.dsn, "partition", "accounts", "--by", "list(tenant)", "--inbound-fks",
            "emulate", "--yes", env={"PGCLEAVE_FAULT": "kill-after:cut-over"})
    assert r.returncode != 0
    job = one(conn, "SELECT max(id) FROM pgcleave.jobs")
    ok(cli("--dsn", db.dsn, "rollback", str(job)))
    assert relkind(conn, "accounts") == "r"
    assert fk(conn, "members") == [("members_account", "accounts", True, "a", "c", True, True)]
    assert fk(conn, "invoices") == [("invoices_account_id_fkey", "accounts", True, "c", "a",
                                     False, False)]
    assert pgcleave_fk_objects(conn) == []


# -- by copy -----------------------------------------------------------------------------------
def orders(conn: Any) -> None:
    conn.execute("CREATE TABLE orders (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
                 "created_at timestamptz NOT NULL, payload text, UNIQUE (id, created_at))")
    conn.execute("INSERT INTO orders (created_at, payload) SELECT now() - i * interval '3 hours',"
                 " 'o' FROM generate_series(1, 400) i")
    conn.execute("CREATE TABLE lines (id serial PRIMARY KEY, account_id bigint, order_at "
                 "timestamptz, CONSTRAINT lines_order FOREIGN KEY (account_id, order_at) "
                 "REFERENCES orders (id, created_at) ON DELETE CASCADE)")
    conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, account_id bigint, CONSTRAINT "
                 "notes_order FOREIGN KEY (account_id) REFERENCES orders (id))")
    conn.execute("CREATE INDEX ON notes (account_id)")
    conn.execute("INSERT INTO notes (account_id) SELECT id FROM orders WHERE id <= 50")


def test_copy_repoints_emulates_and_unswap_restores(db: Any, conn: Any, cli: Any) -> None:
    orders(conn)
    seeds = conn.execute("SELECT id, created_at FROM orders WHERE id <= 300").fetchall()
    d = ("--dsn", db.dsn)
    argv = ["partition", "orders", "--by", "range(created_at)", "--interval", "1 week",
            "--strategy", "copy"]
    refused = cli(*d, *argv, "--yes")
    assert refused.returncode == 3 and "notes_order" in refused.stderr, refused.stderr
    spec = Spec(table=sql.Identifier("public", "orders"), key_col="created_at",
                make_key=lambda r: seeds[r.randrange(len(seeds))][1])
    w = Workload(db.dsn, spec, writers=2, max_seconds=30)
    li = Referencing(db.dsn, sql.Identifier("lines"), ["account_id", "order_at"], seeds,
                     writers=1, max_seconds=30)
    no = Referencing(db.dsn, sql.Identifier("notes"), ["account_id"], [(s[0],) for s in seeds],
                     writers=1, max_seconds=30)
    with w, li, no:
        time.sleep(0.5)
        ok(cli(*d, *argv, "--inbound-fks", "emulate", "--yes"))
        time.sleep(0.5)
    w.verify(conn)
    li.verify(conn)
    no.verify(conn)
    assert relkind(conn, "orders") == "p"
    assert fk(conn, "lines") == [("lines_order", "orders", True, "c", "a", False, False)]
    assert fk(conn, "notes") == []
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as exc:
        conn.execute("DELETE FROM orders WHERE id = 3")  # NO ACTION, referenced by notes
    assert exc.value.diag.constraint_name == "notes_order"
    assert 'violates foreign key constraint "notes_order" on table "notes"' in str(exc.value)
    race(db, conn, parent="orders", pkey=350, child="notes", cascade=False,
         insert="INSERT INTO notes (account_id) VALUES (%s)")

    ok(cli(*d, "unswap", "orders", "--yes"))
    assert relkind(conn, "orders") == "r"
    assert fk(conn, "lines") == [("lines_order", "orders", True, "c", "a", False, False)]
    assert fk(conn, "notes") == [("notes_order", "orders", True, "a", "a", False, False)]
    assert pgcleave_fk_objects(conn) == []
    # `swap` on its own emulates again: the mode was kept with the copy's state
    ok(cli(*d, "swap", "orders", "--yes"))
    assert fk(conn, "notes") == [] and fk(conn, "lines")[0][1:3] == ("orders", True)
    assert one(conn, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'notes_order%%' AND "
                     "tgparentid = 0 AND tgenabled = 'O'") == 3


def test_copy_drops_keys_and_unswap_puts_them_back(db: Any, conn: Any, cli: Any) -> None:
    """``--inbound-fks drop``: the key that cannot be re-pointed is dropped at the swap, its
    definition kept with the copy's state; ``unswap`` adds it back to the plain table (NOT
    VALID, then validated), a second swap drops it again, and a row written while no key
    checked it is refused by the validation, which names it."""
    orders(conn)
    d = ("--dsn", db.dsn)
    argv = ["partition", "orders", "--by", "range(created_at)", "--interval", "1 week",
            "--strategy", "copy", "--inbound-fks", "drop", "--yes"]
    r = ok(cli(*d, *argv))
    assert "notes_order will be dropped (`unswap` puts it back)" in r.stderr, r.stderr
    assert relkind(conn, "orders") == "p" and fk(conn, "notes") == []
    assert fk(conn, "lines")[0][:3] == ("lines_order", "orders", True)  # re-pointed
    conn.execute("INSERT INTO notes (account_id) VALUES (7)")  # while no key checks notes
    dry = ok(cli(*d, "unswap", "orders", "--dry-run")).stdout
    assert 'ALTER TABLE "public"."notes" ADD CONSTRAINT "notes_order" FOREIGN KEY ' \
           '("account_id") REFERENCES "public"."orders" ("id") NOT VALID' in dry, dry
    assert 'VALIDATE CONSTRAINT "notes_order"' in dry
    ok(cli(*d, "unswap", "orders", "--yes"))
    assert relkind(conn, "orders") == "r"
    assert fk(conn, "notes") == [("notes_order", "orders", True, "a", "a", False, False)]
    assert fk(conn, "lines") == [("lines_order", "orders", True, "c", "a", False, False)]
    ok(cli(*d, "swap", "orders", "--yes"))
    assert fk(conn, "notes") == []
    conn.execute("INSERT INTO notes (account_id) VALUES (123456)")  # references no order
    bad = cli(*d, "unswap", "orders", "--yes")
    assert bad.returncode != 0 and "notes_order" in bad.stderr, bad.stdout + bad.stderr
    assert relkind(conn, "orders") == "r"  # the swap back is done; the key checks new rows
    assert fk(conn, "notes") == [("notes_order", "orders", False, "a", "a", False, False)]
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute("INSERT INTO notes (account_id) VALUES (123457)")
    conn.execute("DELETE FROM notes WHERE account_id = 123456")
    job = one(conn, "SELECT max(id) FROM pgcleave.jobs")
    ok(cli(*d, "resume", str(job)))
    assert fk(conn, "notes") == [("notes_order", "orders", True, "a", "a", False, False)]


# -- as the owner, without superuser -----------------------------------------------------------
def test_emulate_as_the_owner_without_superuser(app: Any, cli: Any) -> None:  # noqa: F811
    with app.connect() as c:
        accounts(c)
        ok(cli("--dsn", app.dsn, "partition", "accounts", "--by", "list(tenant)",
               "--inbound-fks", "emulate", "--yes"))
        assert fk(c, "members")[0][1:3] == ("accounts", True)
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            c.execute("INSERT INTO invoices (account_id) VALUES (999999)")
        c.execute("INSERT INTO invoices (account_id) VALUES (250)")
        c.execute("DELETE FROM accounts WHERE id = 250")
        assert one(c, "SELECT count(*) FROM invoices WHERE account_id = 250") == 0
        st = ok(cli("--dsn", app.dsn, "status", "accounts")).stdout
        assert "emulated foreign key invoices_account_id_fkey" in st, st
        assert "ON DELETE CASCADE" in st, st
        ok(cli("--dsn", app.dsn, "check", "accounts"))
        ok(cli("--dsn", app.dsn, "unpartition", "accounts", "--yes"))
        assert fk(c, "invoices")[0][1:3] == ("accounts", True)


# -- every action, MATCH FULL, deferred ---------------------------------------------------------
def test_emulated_actions_match_postgresql(conn: Any) -> None:
    """Each action of an emulated key does what PostgreSQL's own does, on a partitioned
    referenced table (the recipes applied directly: no conversion needed to see them)."""
    from pgcleave.catalog import snapshot
    from pgcleave.ddl import inbound_fks as ifk
    from pgcleave.names import QualifiedName

    conn.execute("CREATE SCHEMA pgcleave")
    conn.execute("CREATE TABLE p (id int PRIMARY KEY, k int, t int, UNIQUE (id, k))")
    conn.execute("INSERT INTO p SELECT i, i, 0 FROM generate_series(1, 9) i")
    conn.execute("CREATE TABLE c_null (x int, pid int, CONSTRAINT c_null_fk FOREIGN KEY (pid) "
                 "REFERENCES p (id) ON DELETE SET NULL ON UPDATE CASCADE)")
    conn.execute("CREATE TABLE c_dflt (x int, pid int DEFAULT 9, CONSTRAINT c_dflt_fk "
                 "FOREIGN KEY (pid) REFERENCES p (id) ON DELETE SET DEFAULT ON UPDATE RESTRICT)")
    conn.execute("CREATE TABLE c_full (x int, pid int, pk int, CONSTRAINT c_full_fk FOREIGN KEY "
                 "(pid, pk) REFERENCES p (id, k) MATCH FULL DEFERRABLE INITIALLY DEFERRED)")
    rules = [ifk.Rule.from_fk(f) for f in snapshot(conn, "p").foreign_keys_in]
    conn.execute("ALTER TABLE p RENAME TO p_old")
    conn.execute("CREATE TABLE p (id int, k int, t int, PRIMARY KEY (id, t)) PARTITION BY "
                 "LIST (t)")
    conn.execute("CREATE TABLE p0 PARTITION OF p DEFAULT")
    conn.execute("INSERT INTO p SELECT * FROM p_old")
    for r in rules:
        for s in [*ifk.functions(r), *ifk.emulate(r, QualifiedName("public", "p"))]:
            conn.execute(s)
    conn.execute("DROP TABLE p_old")
    conn.execute("INSERT INTO c_null VALUES (1, 1), (2, 2)")
    conn.execute("INSERT INTO c_dflt VALUES (1, 3), (2, 4)")
    conn.execute("UPDATE p SET id = 21 WHERE id = 2")  # ON UPDATE CASCADE
    assert conn.execute("SELECT pid FROM c_null ORDER BY x").fetchall() == [(1,), (21,)]
    conn.execute("DELETE FROM p WHERE id = 1")  # ON DELETE SET NULL
    assert conn.execute("SELECT pid FROM c_null ORDER BY x").fetchall() == [(None,), (21,)]
    conn.execute("DELETE FROM p WHERE id = 3")  # ON DELETE SET DEFAULT (9 exists)
    assert conn.execute("SELECT pid FROM c_dflt ORDER BY x").fetchall() == [(9,), (4,)]
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute("UPDATE p SET id = 40 WHERE id = 4")  # ON UPDATE RESTRICT
    with pytest.raises(psycopg.errors.ForeignKeyViolation):  # SET DEFAULT to a missing row
        conn.execute("DELETE FROM p WHERE id = 9")
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as exc:  # MATCH FULL
        conn.execute("INSERT INTO c_full VALUES (1, 5, NULL)")
    assert "MATCH FULL" in (exc.value.diag.message_detail or "")
    conn.execute("INSERT INTO c_full VALUES (2, NULL, NULL)")  # all NULL: references nothing
    with conn.transaction():  # deferred: the parent may come later in the transaction
        conn.execute("INSERT INTO c_full VALUES (3, 50, 50)")
        conn.execute("INSERT INTO p VALUES (50, 50, 0)")
    with pytest.raises(psycopg.errors.ForeignKeyViolation), conn.transaction():
        conn.execute("INSERT INTO c_full VALUES (4, 60, 60)")  # refused at commit
