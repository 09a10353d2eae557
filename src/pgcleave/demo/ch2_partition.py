"""Seed 000, 'Partitioning a table on the same machine': the plain table becomes a partitioned
table under the same name, rows are carved out of the old table into partitions, the schema
keeps changing, and queries prune to one partition."""

from __future__ import annotations

from . import Demo

TITLE = "2. Partitioning in place: same name, no downtime, nothing lost"


def run(d: Demo) -> None:
    d.say("The table grows. pgcleave makes it a partitioned table under the same name, in one "
          "short transaction: the old table becomes its DEFAULT partition (tenants have no "
          "order to cut by). First the plan, every statement and the lock it takes:")
    d.pgcleave("partition", "exercises", "--by", "range(tenant)", "--dry-run")
    d.say("The primary key (id) does not include tenant, so it stays on every partition "
          "instead of the parent; pgcleave says what that changes and wants --yes.")
    d.pgcleave("partition", "exercises", "--by", "range(tenant)", "--yes")
    d.sql("SELECT * FROM exercises")
    d.pgcleave("status", "exercises")

    d.say("Carve tenants below 'B' out of the old table into their own partition. The old "
          "table is tiny, so pgcleave moves and attaches in one transaction (a big one would be "
          "copied with change capture and swapped in a few milliseconds):")
    d.pgcleave("carve", "exercises", "--from", "MINVALUE", "--to", "B", "--yes")
    d.sql("SELECT tableoid::regclass AS partition, * FROM exercises ORDER BY tenant")

    d.say("Schema changes on the partitioned table reach every partition:")
    d.sql("ALTER TABLE exercises ADD description VARCHAR")

    d.say("And the next range, 'B' to 'D':")
    d.pgcleave("carve", "exercises", "--from", "B", "--to", "D", "--yes")
    d.sql("SELECT tableoid::regclass AS partition, * FROM exercises ORDER BY tenant")
    d.pgcleave("status", "exercises")

    d.say("Queries that name the tenant touch one partition only:")
    d.sql("EXPLAIN SELECT * FROM exercises")
    d.sql("EXPLAIN SELECT * FROM exercises WHERE id = '284d1166-0bdc-4c66-93c1-43ddbd0491a0' "
          "AND tenant = 'Acme'")
