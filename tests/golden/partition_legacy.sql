-- pgcleave partition "App Data"."Event Log"
-- note: strategy legacy: chosen with --strategy
-- note: cutoff 2001-03-01 00:00:00+00:00: rows with Created At below it stay in "App Data"."Event Log_legacy"; until the cut-over, rows with Created At >= 2001-03-01 00:00:00+00:00 are refused by the CHECK
-- requires: owner of "App Data"."Event Log"
-- requires: CREATE on schema App Data

-- step 1/3 [add-cutoff-check]: add CHECK (Created At < 2001-03-01 00:00:00+00:00) NOT VALID on "App Data"."Event Log" (no scan)
--   locks: ACCESS EXCLUSIVE on "App Data"."Event Log" (brief, no scan)
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "App Data"."Event Log" ADD CONSTRAINT "pgcleave_cutoff" CHECK ("Created At" IS NOT NULL AND ("Created At" < ('2001-03-01 00:00:00+00:00')::timestamp with time zone)) NOT VALID;
--   undo: ALTER TABLE "App Data"."Event Log" DROP CONSTRAINT IF EXISTS "pgcleave_cutoff";
--   if the job stops here: refuses rows of "App Data"."Event Log" with Created At >= 2001-03-01 00:00:00+00:00 (the cut-over that gives them a partition has not run); undone at once on a failure

-- step 2/3 [validate-cutoff-check]: validate the CHECK: scans "App Data"."Event Log" while writes continue
--   locks: SHARE UPDATE EXCLUSIVE on "App Data"."Event Log"
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "App Data"."Event Log" VALIDATE CONSTRAINT "pgcleave_cutoff";

-- step 3/3 [cut-over]: one short transaction: rename "App Data"."Event Log" to "App Data"."Event Log_legacy", create the partitioned "App Data"."Event Log", attach "App Data"."Event Log_legacy" as its [MINVALUE, 2001-03-01 00:00:00+00:00) partition (no scan), create 2 partitions
--   locks: ACCESS EXCLUSIVE on "App Data"."Event Log"
--   runs: one transaction, under lock_timeout with retry
BEGIN;
LOCK TABLE "App Data"."Event Log" IN ACCESS EXCLUSIVE MODE;
ALTER TABLE "App Data"."Event Log" RENAME TO "Event Log_legacy";
ALTER INDEX "App Data"."Event Log by time" RENAME TO "Event Log by time_legacy";
ALTER INDEX "App Data"."Event Log_pkey" RENAME TO "Event Log_pkey_legacy";
CREATE TABLE "App Data"."Event Log" (LIKE "App Data"."Event Log_legacy" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY INCLUDING GENERATED INCLUDING STATISTICS INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING COMMENTS) PARTITION BY RANGE ("Created At");
ALTER TABLE "App Data"."Event Log" DROP CONSTRAINT "pgcleave_cutoff";
SELECT setval(pg_get_serial_sequence('"App Data"."Event Log"', 'id')::regclass, v) FROM (SELECT pg_sequence_last_value('"App Data"."Event Log_id_seq"'::regclass) v) x WHERE v IS NOT NULL;
CREATE INDEX "Event Log by time" ON "App Data"."Event Log" USING btree ("Created At");
ALTER TABLE "App Data"."Event Log" ADD CONSTRAINT "Event Log_pkey" PRIMARY KEY (id, "Created At");
ALTER TABLE "App Data"."Event Log" ATTACH PARTITION "App Data"."Event Log_legacy" FOR VALUES FROM (MINVALUE) TO ('2001-03-01 00:00:00+00:00');
CREATE TABLE "App Data"."Event Log_p2001_03" PARTITION OF "App Data"."Event Log" FOR VALUES FROM ('2001-03-01 00:00:00+00:00') TO ('2001-04-01 00:00:00+00:00');
CREATE TABLE "App Data"."Event Log_p2001_04" PARTITION OF "App Data"."Event Log" FOR VALUES FROM ('2001-04-01 00:00:00+00:00') TO ('2001-05-01 00:00:00+00:00');
ALTER TABLE "App Data"."Event Log" OWNER TO "postgres";
INSERT INTO pgcleave.policies (table_schema, table_name, "strategy", "key_column", "interval", "premake", "retention", "retention_action", "archive_dir", "time_zone", "sub_strategy", "sub_key_column", "sub_interval", "placement", "options", "archive_format") VALUES ('App Data', 'Event Log', 'range', 'Created At', '1 month', 2, NULL, 'detach', NULL, 'UTC', NULL, NULL, NULL, '[]'::jsonb, '{"conversion": "legacy", "old_table": "Event Log_legacy", "partition_keys": []}'::jsonb, 'copy') ON CONFLICT (table_schema, table_name) DO UPDATE SET ("strategy", "key_column", "interval", "premake", "retention", "retention_action", "archive_dir", "time_zone", "sub_strategy", "sub_key_column", "sub_interval", "placement", "options", "archive_format", updated_at) = (EXCLUDED."strategy", EXCLUDED."key_column", EXCLUDED."interval", EXCLUDED."premake", EXCLUDED."retention", EXCLUDED."retention_action", EXCLUDED."archive_dir", EXCLUDED."time_zone", EXCLUDED."sub_strategy", EXCLUDED."sub_key_column", EXCLUDED."sub_interval", EXCLUDED."placement", EXCLUDED."options", EXCLUDED."archive_format", now());
COMMIT;
--   undo: LOCK TABLE "App Data"."Event Log" IN ACCESS EXCLUSIVE MODE; ALTER TABLE "App Data"."Event Log" DETACH PARTITION "App Data"."Event Log_legacy"; ALTER TABLE "App Data"."Event Log_legacy" DROP CONSTRAINT IF EXISTS "pgcleave_cutoff"; ALTER TABLE "App Data"."Event Log" RENAME TO "Event Log_pgcleave_undo"; ALTER TABLE "App Data"."Event Log_legacy" RENAME TO "Event Log"; INSERT INTO "App Data"."Event Log" ("id", "Created At", "note") SELECT "id", "Created At", "note" FROM "App Data"."Event Log_pgcleave_undo"; SELECT setval(pg_get_serial_sequence('"App Data"."Event Log"', 'id')::regclass, v) FROM (SELECT greatest(pg_sequence_last_value(pg_get_serial_sequence('"App Data"."Event Log"', 'id')::regclass), pg_sequence_last_value(pg_get_serial_sequence('"App Data"."Event Log_pgcleave_undo"', 'id')::regclass)) v) x WHERE v IS NOT NULL; DROP TABLE "App Data"."Event Log_pgcleave_undo"; ALTER INDEX "App Data"."Event Log by time_legacy" RENAME TO "Event Log by time"; ALTER INDEX "App Data"."Event Log_pkey_legacy" RENAME TO "Event Log_pkey"; DELETE FROM pgcleave.policies WHERE table_schema = 'App Data' AND table_name = 'Event Log';
