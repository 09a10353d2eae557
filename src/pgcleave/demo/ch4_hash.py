"""Seed 000's TODO 'try out different partitioning schemes - LIST, HASH': a tenant table
hashed into partitions for an even spread (pgbench's ``--partition-method=hash`` layout),
converted online by copy, then spread over both servers partition by partition, and still one
table to the application."""

from __future__ import annotations

from . import Demo

TITLE = "4. Hash: tenants spread evenly, and over two servers"


def run(d: Demo) -> None:
    d.say("A new table of the service, keyed by tenant. Ranges of tenant names fill unevenly "
          "(one big customer, many small ones); a hash of the tenant spreads them evenly:")
    d.sql("CREATE TABLE workouts (id bigserial PRIMARY KEY, tenant varchar NOT NULL,"
          " name varchar NOT NULL, minutes int NOT NULL DEFAULT 30)")
    d.sql("INSERT INTO workouts (tenant, name, minutes) SELECT 'tenant-' || (i % 50),"
          " (ARRAY['jumping','running','hopping','skipping','swimming'])[1 + i % 5], i % 90"
          " FROM generate_series(1, 5000) i")
    d.say("A hash-partitioned table has no DEFAULT partition to keep the old table in, so "
          "pgcleave copies: a new table with 4 hash partitions, every change captured while the "
          "rows are copied in batches, verified partition by partition, then the names swap in "
          "one short transaction. The old table stays, in sync, as workouts_retired:")
    d.pgcleave("partition", "workouts", "--by", "hash(tenant)", "--modulus", "4", "--yes")
    d.sql("SELECT tableoid::regclass AS partition, count(*) AS rows, count(DISTINCT tenant)"
          " AS tenants FROM workouts GROUP BY 1 ORDER BY 1")
    d.say("Happy with it: stop keeping the old table in sync, and drop it.")
    d.pgcleave("unprep", "workouts", "--yes")
    d.sql("DROP TABLE workouts_retired")

    if not d.sql("SELECT 1 FROM pg_foreign_server WHERE srvname = 'db2'", show=False):
        d.pgcleave("server", "add", "db2", "--dsn", d.servers[1].dsn_for(d.dbname), "--yes")
    d.say("Now half of the partitions go to the second server. A partition on another server "
          "cannot sit under a primary key of the whole table (PostgreSQL cannot check it "
          "across servers): pgcleave says so and names the fix:")
    d.pgcleave("move", "workouts_p2", "--to", "db2", "--yes", check=False)
    pk = d.sql("SELECT conname FROM pg_constraint WHERE conrelid = 'workouts'::regclass"
               " AND contype = 'p'", show=False)[0][0]
    d.pgcleave("drop-constraint", "workouts", str(pk), "--yes")
    d.say("Each partition that moves keeps a key of its own (the replication needs one):")
    for p in ("workouts_p2", "workouts_p3"):
        d.sql(f"ALTER TABLE {p} ADD PRIMARY KEY (id, tenant)")
    for p in ("workouts_p2", "workouts_p3"):
        d.pgcleave("move", p, "--to", "db2", "--yes")
    d.pgcleave("status", "workouts")
    d.say("The application still sees one table under the same name. Every row is there:")
    d.sql("SELECT count(*) AS rows, count(DISTINCT tenant) AS tenants FROM workouts")
    d.say("and a new row goes to the server its tenant hashes to, RETURNING included:")
    d.sql("INSERT INTO workouts (tenant, name) VALUES ('tenant-7', 'rowing')"
          " RETURNING id, tenant, tableoid::regclass AS partition")
    d.say("A query that names the tenant touches one partition, here or on db2:")
    d.pgcleave("explain", "SELECT * FROM workouts WHERE tenant = 'tenant-7'")
    d.say("On db2, the two shards, each with a CHECK of its hash bound that needs no parent:")
    d.sql("SELECT 'workouts_p2' AS shard, count(*) FROM workouts_p2 UNION ALL"
          " SELECT 'workouts_p3', count(*) FROM workouts_p3", server=1)
