"""Seed 000, 'Adding tables on remote servers ... via Foreign Data Wrapper' and 'Limitations':
tenant 'D' moves to a second server while the application keeps querying one table, and the
``ADD difficulty SMALLINT`` that broke the seed works."""

from __future__ import annotations

import psycopg

from . import Demo

TITLE = "3. One machine is not enough: a partition on another server, and ALTER TABLE that works"

_SEED_SETUP = """
BEGIN;
ALTER TABLE exercises RENAME TO exercises_old;
CREATE TABLE exercises (LIKE exercises_old) PARTITION BY RANGE (tenant);
ALTER TABLE exercises ATTACH PARTITION exercises_old DEFAULT;
COMMIT"""


def _partition_for(d: Demo, lower: str) -> str | None:
    rows = d.sql("SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c"
                 " ON c.oid = i.inhrelid WHERE i.inhparent = 'exercises'::regclass"
                 f" AND pg_get_expr(c.relpartbound, c.oid) LIKE 'FOR VALUES FROM (''{lower}'')%'",
                 show=False)
    return str(rows[0][0]) if rows else None


def _try_sql(d: Demo, query: str) -> None:
    """Run a statement that is expected to fail, and show the error as psql would."""
    try:
        d.sql(query)
    except psycopg.Error as exc:
        d.console.print(f"ERROR:  {exc.diag.message_primary}", markup=False)
        if exc.diag.message_hint:
            d.console.print(f"HINT:  {exc.diag.message_hint}", markup=False)


def run(d: Demo) -> None:
    kind = d.sql("SELECT relkind::text FROM pg_class WHERE oid = 'exercises'::regclass",
                 show=False)
    if kind[0][0] != "p":
        d.say("(Chapter 2 did not run: partitioning exercises the seed's way first.)")
        d.sql(_SEED_SETUP)
    part = _partition_for(d, "D")
    if part is None:
        d.say("Tenant 'Dory' still lives in the DEFAULT partition. Carve ['D', 'E') out of it "
              "into a partition of its own, here on this server:")
        out = d.pgcleave("carve", "exercises", "--from", "D", "--to", "E", "--yes", check=False)
        part = _partition_for(d, "D")
        if part is None:
            del out
            d.say("(pgcleave carve is not available here: the same thing by hand, in one "
                  "transaction, which is fine for six rows.)")
            d.sql("""BEGIN;
CREATE TABLE exercises_2 (LIKE exercises INCLUDING ALL, PRIMARY KEY (id));
WITH x AS (DELETE FROM exercises WHERE tenant >= 'D' AND tenant < 'E' RETURNING *)
  INSERT INTO exercises_2 SELECT * FROM x;
ALTER TABLE exercises ATTACH PARTITION exercises_2 FOR VALUES FROM ('D') TO ('E');
COMMIT""")
            part = "exercises_2"
    d.pgcleave("status", "exercises")

    d.say("A second server joins. pgcleave checks that it answers, its version and settings, "
          "then creates the postgres_fdw server with fast defaults (async_capable, fetch_size, "
          "batch_size) and a user mapping. No password is ever printed:")
    db2 = d.servers[1].dsn_for(d.dbname)
    d.pgcleave("server", "add", "db2", "--dsn", db2, "--yes")
    d.pgcleave("server", "list")

    d.say(f"Move {part} to db2. No table created by hand, no non-atomic cross-server DELETE: "
          "the shard's table is created from the local definition (with a CHECK equal to the "
          "partition bound), the rows are replicated while the application keeps writing, and "
          "a short cut-over verifies every row (count + hash) before the swap. The plan first:")
    d.pgcleave("move", part, "--to", "db2", "--dry-run")
    d.say("This is the first remote partition of exercises, so pgcleave lists what stops "
          "working and wants --yes:")
    d.pgcleave("move", part, "--to", "db2", "--yes")
    d.pgcleave("status", "exercises")
    d.sql("SELECT * FROM exercises")
    d.sql(f"SELECT * FROM {part.split('.')[-1]}", server=1)

    d.say("Which partitions and servers does a query touch? (the seed's 'Query planning', "
          "across servers)")
    d.pgcleave("explain", "SELECT * FROM exercises WHERE tenant = 'Dory'")

    d.say("The seed's 'Limitations': ALTER TABLE on the parent never reached the remote table "
          "and every query failed. Now a plain ALTER TABLE that would break it is stopped:")
    _try_sql(d, "ALTER TABLE exercises ADD difficulty SMALLINT")
    d.say("pgcleave alter applies the change on both servers atomically (prepared on db2, "
          "decided here, then committed):")
    d.pgcleave("alter", "exercises", "ADD difficulty SMALLINT", "--yes")
    d.sql("SELECT * FROM exercises")
    d.sql("INSERT INTO exercises (id, tenant, name, difficulty)"
          " VALUES (gen_random_uuid(), 'Dory', 'diving', 3) RETURNING *")
    d.sql(f"SELECT * FROM {part.split('.')[-1]}", server=1)
