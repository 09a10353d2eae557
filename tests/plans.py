"""A small demonstration plan for executor tests, runnable as a script in a subprocess
(``python -m tests.plans DSN``) so a test can kill it with PGCLEAVE_FAULT."""

from __future__ import annotations

import sys

from psycopg import sql

from pgcleave.connection import Settings
from pgcleave.execute import Executor
from pgcleave.plan import Lock, LockTaken, Plan, Step


def three_steps(table: str = "things") -> Plan:
    """create a table, add rows (no guard: a repeat would duplicate them), add an index."""
    t = sql.Identifier("public", table)
    return Plan("demo-steps", f"public.{table}", {}, [
        Step.sql("create", "create the table",
                 [sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text)").format(t)],
                 locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, table)],
                 guard=sql.SQL("SELECT to_regclass({}) IS NOT NULL").format(
                     sql.Literal(f"public.{table}")),
                 undo=[sql.SQL("DROP TABLE {}").format(t)]),
        Step.sql("fill", "add rows",
                 [sql.SQL("INSERT INTO {} SELECT i, 'v' || i FROM generate_series(1, 100) i"
                          ).format(t)],
                 locks=[LockTaken(Lock.ROW_EXCLUSIVE, table)],
                 undo=[sql.SQL("DELETE FROM {}").format(t)], ddl=False),
        Step.sql("index", "index v concurrently",
                 [sql.SQL("CREATE INDEX CONCURRENTLY things_v ON {} (v)").format(t)],
                 locks=[LockTaken(Lock.SHARE_UPDATE_EXCLUSIVE, table)], transactional=False,
                 guard="SELECT EXISTS (SELECT FROM pg_index WHERE indexrelid = "
                       "to_regclass('public.things_v') AND indisvalid)",
                 retry_cleanup=["DROP INDEX IF EXISTS public.things_v"],
                 undo=["DROP INDEX IF EXISTS public.things_v"]),
    ])


if __name__ == "__main__":
    Executor(Settings(dsn=sys.argv[1])).run(three_steps())
