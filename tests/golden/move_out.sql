-- pgcleave move "Ex"
-- note: rows of "Ex d" stay readable and writable through "Ex" during the whole move; writes wait only during the cut-over
-- note: method replication: wal_level = logical and the roles may publish and subscribe; rows are replicated, then the cut-over swaps
-- WARNING: "Ex" will have a partition on another server. From then on PostgreSQL refuses a PRIMARY KEY or UNIQUE constraint on "Ex" itself (per-partition keys remain), so `INSERT ... ON CONFLICT (col)` on "Ex" fails, and foreign keys to or from "Ex" are impossible
-- WARNING: an UPDATE that changes the partition key of a row on the remote partition so that the row would leave it fails (the shard's CHECK refuses it) instead of moving the row
-- WARNING: a transaction writing to local and remote partitions can commit on one server and not the other if a server fails at the wrong moment (no two-phase commit for DML)
-- WARNING: plain ALTER TABLE "Ex" that changes columns is refused by an event trigger; use `pgcleave alter "Ex" "ACTION"`, which changes every server at once

-- step 1/13 [shard-table]: create "Ex d" on db2 from the local definition, with CHECK (((tenant IS NOT NULL) AND ((tenant)::text >= 'D'::character varying) AND ((tenant)::text < 'E'::character varying)))
--   locks: no table lock
--   runs: autocommit, not in a transaction
SELECT "pgcleave".dblink_exec('db2', 'SET synchronous_commit = on; CREATE SCHEMA IF NOT EXISTS "public"; CREATE TABLE "public"."Ex d" ("id" uuid NOT NULL, "tenant" character varying NOT NULL, "payload" text); ALTER TABLE "public"."Ex d" ADD CONSTRAINT "Ex d_pkey" PRIMARY KEY (id); ALTER TABLE "public"."Ex d" ADD CONSTRAINT "payload_len" CHECK ((length(payload) < 100)); ALTER TABLE "public"."Ex d" ADD CONSTRAINT "pgcleave_partition_bound" CHECK (((tenant IS NOT NULL) AND ((tenant)::text >= ''D''::character varying) AND ((tenant)::text < ''E''::character varying))); CREATE INDEX "Ex d_tenant_idx" ON public."Ex d" USING btree (tenant); CREATE SCHEMA IF NOT EXISTS pgcleave; CREATE TABLE IF NOT EXISTS pgcleave.move_markers (token text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp()); ALTER TABLE pgcleave.move_markers REPLICA IDENTITY FULL');
--   undo: SELECT "pgcleave".dblink_exec('db2', 'SET synchronous_commit = on; DROP TABLE IF EXISTS "public"."Ex d"');

-- step 2/13 [publish]: publish "Ex d" (and pgcleave.move_markers) for the shard
--   locks: SHARE UPDATE EXCLUSIVE on "Ex d"
--   runs: one transaction, under lock_timeout with retry
CREATE PUBLICATION "pgcleave_move_<oid:public.Ex d>" FOR TABLE "public"."Ex d", pgcleave.move_markers;
--   undo: DROP PUBLICATION IF EXISTS "pgcleave_move_<oid:public.Ex d>";

-- step 3/13 [subscribe]: subscribe db2 to the publication (initial copy, then every write)
--   locks: no table lock
--   runs: autocommit, not in a transaction
--   action: move.subscribe {"name": "pgcleave_move_<oid:public.Ex d>", "origin_dsn": false, "server": "db2", "side": "remote"}
SELECT "pgcleave".dblink_exec('db2', 'CREATE SUBSCRIPTION "pgcleave_move_<oid:public.Ex d>" CONNECTION ''host=127.0.0.1 port=<port> dbname=<db> user=postgres'' PUBLICATION "pgcleave_move_<oid:public.Ex d>" WITH (synchronous_commit = on)');
--   undo: SELECT "pgcleave".dblink_exec('db2', 'DROP SUBSCRIPTION IF EXISTS "pgcleave_move_<oid:public.Ex d>"');

-- step 4/13 [catch-up]: wait for the initial copy and for the subscriber to catch up with the writes
--   locks: no table lock
--   runs: autocommit, not in a transaction
--   action: move.catch_up {"direction": "out", "name": "pgcleave_move_<oid:public.Ex d>", "parent": ["public", "Ex"], "partition": ["public", "Ex d"], "remote": ["public", "Ex d"], "server": "db2"}
-- poll pg_subscription_rel until every table is ready, then write a marker row on the publisher and wait until the subscriber has it;

-- step 5/13 [default-check]: add CHECK (NOT the bound of Ex d) NOT VALID on the DEFAULT "Ex_def" (no scan)
--   locks: ACCESS EXCLUSIVE on "Ex_def" (brief, no scan)
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "public"."Ex_def" ADD CONSTRAINT "pgcleave_not_<oid:public.Ex d>" CHECK (NOT (((tenant IS NOT NULL) AND ((tenant)::text >= 'D'::character varying) AND ((tenant)::text < 'E'::character varying)))) NOT VALID;
--   undo: ALTER TABLE "public"."Ex_def" DROP CONSTRAINT IF EXISTS "pgcleave_not_<oid:public.Ex d>";
--   if the job stops here: refuses INSERTs of the bound of Ex d (the DEFAULT "Ex_def" may not take them any more, and their partition is not there yet); undone at once on a failure

-- step 6/13 [default-validate]: validate it: scans "Ex_def" while writes continue (fails if it holds rows of the bound of Ex d: carve them instead)
--   locks: SHARE UPDATE EXCLUSIVE on "Ex_def"
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "public"."Ex_def" VALIDATE CONSTRAINT "pgcleave_not_<oid:public.Ex d>";

-- step 7/13 [foreign-table]: create the foreign table "Ex d_pgc_remote" for "Ex d" on db2 (not attached yet)
--   locks: no table lock
--   runs: one transaction, under lock_timeout with retry
CREATE FOREIGN TABLE "public"."Ex d_pgc_remote" ("id" uuid NOT NULL, "tenant" character varying NOT NULL, "payload" text, CONSTRAINT "payload_len" CHECK ((length(payload) < 100))) SERVER "db2" OPTIONS (schema_name 'public', table_name 'Ex d');
--   undo: DROP FOREIGN TABLE IF EXISTS "public"."Ex d_pgc_remote";

-- step 8/13 [ddl-guard]: install the event trigger that refuses a plain ALTER TABLE changing the columns of a table with remote partitions
--   locks: no table lock
--   runs: one transaction, under lock_timeout with retry
CREATE EVENT TRIGGER "pgcleave_guard_ddl" ON ddl_command_end WHEN TAG IN ('ALTER TABLE') EXECUTE FUNCTION pgcleave.guard_ddl();

-- step 9/13 [cutover]: cut over: swap the local partition for the foreign one after verifying every row
--   locks: EXCLUSIVE on "Ex"; ACCESS EXCLUSIVE on "Ex"
--   runs: one transaction, under lock_timeout with retry
--   action: move.cutover {"aside": ["public", "Ex d_pgc_local"], "bound": "FOR VALUES FROM ('D') TO ('E')", "columns": ["id", "tenant", "payload"], "direction": "out", "incoming": ["public", "Ex d_pgc_remote"], "name": "pgcleave_move_<oid:public.Ex d>", "parent": ["public", "Ex"], "partition": ["public", "Ex d"], "remote": ["public", "Ex d"], "server": "db2"}
BEGIN;
LOCK TABLE ONLY "public"."Ex" IN EXCLUSIVE MODE;
-- marker round trip; count + hash of the rows on both servers must match;
ALTER TABLE "public"."Ex" DETACH PARTITION "public"."Ex d";
ALTER TABLE "public"."Ex d" RENAME TO "Ex d_pgc_local";
ALTER TABLE "public"."Ex" ATTACH PARTITION "public"."Ex d_pgc_remote" FOR VALUES FROM ('D') TO ('E');
ALTER FOREIGN TABLE "public"."Ex d_pgc_remote" RENAME TO "Ex d";
COMMIT;

-- step 10/13 [unsubscribe]: drop the subscription on db2 (and its slot here)
--   locks: no table lock
--   runs: autocommit, not in a transaction
SELECT "pgcleave".dblink_exec('db2', 'DROP SUBSCRIPTION IF EXISTS "pgcleave_move_<oid:public.Ex d>"');

-- step 11/13 [unpublish]: drop the publication
--   locks: no table lock
--   runs: one transaction
DROP PUBLICATION IF EXISTS "pgcleave_move_<oid:public.Ex d>";

-- step 12/13 [default-uncheck]: drop the helper CHECK from "Ex_def" again
--   locks: ACCESS EXCLUSIVE on "Ex_def" (brief)
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "public"."Ex_def" DROP CONSTRAINT IF EXISTS "pgcleave_not_<oid:public.Ex d>";
--   undo: ALTER TABLE "public"."Ex_def" ADD CONSTRAINT "pgcleave_not_<oid:public.Ex d>" CHECK (NOT (((tenant IS NOT NULL) AND ((tenant)::text >= 'D'::character varying) AND ((tenant)::text < 'E'::character varying)))) NOT VALID;

-- step 13/13 [drop-source]: drop the old local table "Ex d_pgc_local"
--   locks: ACCESS EXCLUSIVE on "Ex d_pgc_local"
--   runs: one transaction, under lock_timeout with retry
DROP TABLE IF EXISTS "public"."Ex d_pgc_local";
