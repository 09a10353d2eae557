-- pgcleave merge public.s
-- note: merge s_02_01, s_02_02, s_02_03 into s_02_w1 (FOR VALUES FROM ('2001-02-01') TO ('2001-02-04')): copy with change capture, then one short swap
-- note: needs free space for a copy of the partitions (0.1 MB with their indexes); free disk: unknown (PostgreSQL shows it to no table owner)
-- requires: owner of s
-- requires: CREATE on schema public
-- requires: owner of s_02_01
-- requires: owner of s_02_02
-- requires: owner of s_02_03

-- step 1/6 [merge-prepare]: create s_02_w1_pgcleave_new (CHECK of FOR VALUES FROM ('2001-02-01') TO ('2001-02-04'), no index yet), a key log, and the capture function that fills it
--   locks: ACCESS SHARE on s_02_01, s_02_02, s_02_03 (CREATE TABLE LIKE, brief)
--   runs: one transaction, under lock_timeout with retry
BEGIN;
CREATE TABLE "public"."s_02_w1_pgcleave_new" (LIKE "public"."s_02_01" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING STATISTICS);
ALTER TABLE "public"."s_02_w1_pgcleave_new" ADD CONSTRAINT "pgcleave_bound" CHECK ("d" IS NOT NULL AND ("d" >= ('2001-02-01')::date AND "d" < ('2001-02-04')::date));
ALTER TABLE "public"."s_02_w1_pgcleave_new" OWNER TO "postgres";
CREATE TABLE "pgcleave"."merge_<oid:public.s_02_01>_log" AS SELECT "id", "d" FROM ONLY "public"."s_02_01" WITH NO DATA;
CREATE FUNCTION "pgcleave"."merge_<oid:public.s_02_01>"() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN IF TG_OP = ''DELETE'' OR (TG_OP = ''UPDATE'' AND (OLD."id", OLD."d") IS DISTINCT FROM (NEW."id", NEW."d")) THEN INSERT INTO "pgcleave"."merge_<oid:public.s_02_01>_log" ("id", "d") VALUES (OLD."id", OLD."d"); END IF; IF TG_OP <> ''DELETE'' THEN INSERT INTO "pgcleave"."merge_<oid:public.s_02_01>_log" ("id", "d") VALUES (NEW."id", NEW."d"); END IF; RETURN NULL; END';
COMMIT;
--   undo: DO $pgcleave$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = <oid:public.s_02_01>) THEN RAISE EXCEPTION 'the swap of % has begun: it can only be finished (pgcleave resume)', 'public.s_02_01'; END IF; END $pgcleave$; DROP TRIGGER IF EXISTS "pgcleave_carve" ON "public"."s_02_01"; DROP TRIGGER IF EXISTS "pgcleave_carve" ON "public"."s_02_02"; DROP TRIGGER IF EXISTS "pgcleave_carve" ON "public"."s_02_03"; DROP FUNCTION IF EXISTS "pgcleave"."merge_<oid:public.s_02_01>"(); DROP TABLE IF EXISTS "pgcleave"."merge_<oid:public.s_02_01>_log"; DROP TABLE IF EXISTS "public"."s_02_w1_pgcleave_new";

-- step 2/6 [merge-capture]: a capture trigger on each of s_02_01, s_02_02, s_02_03, each in a transaction of its own
--   locks: SHARE ROW EXCLUSIVE on s_02_01 (CREATE TRIGGER, brief); SHARE ROW EXCLUSIVE on s_02_02 (CREATE TRIGGER, brief); SHARE ROW EXCLUSIVE on s_02_03 (CREATE TRIGGER, brief)
--   runs: autocommit, not in a transaction, under lock_timeout with retry
CREATE OR REPLACE TRIGGER "pgcleave_carve" AFTER INSERT OR UPDATE OR DELETE ON "public"."s_02_01" FOR EACH ROW EXECUTE FUNCTION "pgcleave"."merge_<oid:public.s_02_01>"();
CREATE OR REPLACE TRIGGER "pgcleave_carve" AFTER INSERT OR UPDATE OR DELETE ON "public"."s_02_02" FOR EACH ROW EXECUTE FUNCTION "pgcleave"."merge_<oid:public.s_02_01>"();
CREATE OR REPLACE TRIGGER "pgcleave_carve" AFTER INSERT OR UPDATE OR DELETE ON "public"."s_02_03" FOR EACH ROW EXECUTE FUNCTION "pgcleave"."merge_<oid:public.s_02_01>"();

-- step 3/6 [merge-copy]: copy the rows of s_02_01, s_02_02, s_02_03 into s_02_w1_pgcleave_new in one statement (one snapshot), build and analyze its indexes, then replay the logged keys until few are left
--   locks: ACCESS SHARE on s_02_01, s_02_02, s_02_03 (reads only)
--   runs: one transaction
--   action: carve.copy {"begun": "SELECT NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = <oid:public.s_02_01>)", "catchup_rows": 1000, "copy": "INSERT INTO \"public\".\"s_02_w1_pgcleave_new\" (\"id\", \"d\", \"v\") SELECT \"id\", \"d\", \"v\" FROM (SELECT \"id\", \"d\", \"v\" FROM ONLY \"public\".\"s_02_01\" UNION ALL SELECT \"id\", \"d\", \"v\" FROM ONLY \"public\".\"s_02_02\" UNION ALL SELECT \"id\", \"d\", \"v\" FROM ONLY \"public\".\"s_02_03\") pgcleave_sources", "index": ["ALTER TABLE \"public\".\"s_02_w1_pgcleave_new\" ADD PRIMARY KEY (id, d)", "ANALYZE \"public\".\"s_02_w1_pgcleave_new\""], "index_top": [], "leaf_jobs": [["public.s_02_w1_pgcleave_new", ["ALTER TABLE \"public\".\"s_02_w1_pgcleave_new\" ADD PRIMARY KEY (id, d)", "ANALYZE \"public\".\"s_02_w1_pgcleave_new\""]]], "replay": ["SET LOCAL enable_seqscan = off", "SET LOCAL enable_hashjoin = off", "SET LOCAL enable_mergejoin = off", "SET LOCAL jit = off", "DELETE FROM \"public\".\"s_02_w1_pgcleave_new\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"merge_<oid:public.s_02_01>_log\")", "INSERT INTO \"public\".\"s_02_w1_pgcleave_new\" (\"id\", \"d\", \"v\") SELECT \"id\", \"d\", \"v\" FROM ONLY \"public\".\"s_02_01\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"merge_<oid:public.s_02_01>_log\")", "INSERT INTO \"public\".\"s_02_w1_pgcleave_new\" (\"id\", \"d\", \"v\") SELECT \"id\", \"d\", \"v\" FROM ONLY \"public\".\"s_02_02\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"merge_<oid:public.s_02_01>_log\")", "INSERT INTO \"public\".\"s_02_w1_pgcleave_new\" (\"id\", \"d\", \"v\") SELECT \"id\", \"d\", \"v\" FROM ONLY \"public\".\"s_02_03\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"merge_<oid:public.s_02_01>_log\")", "DELETE FROM \"pgcleave\".\"merge_<oid:public.s_02_01>_log\""]}
BEGIN;
INSERT INTO "public"."s_02_w1_pgcleave_new" ("id", "d", "v") SELECT "id", "d", "v" FROM (SELECT "id", "d", "v" FROM ONLY "public"."s_02_01" UNION ALL SELECT "id", "d", "v" FROM ONLY "public"."s_02_02" UNION ALL SELECT "id", "d", "v" FROM ONLY "public"."s_02_03") pgcleave_sources;
ALTER TABLE "public"."s_02_w1_pgcleave_new" ADD PRIMARY KEY (id, d);
ANALYZE "public"."s_02_w1_pgcleave_new";
SET LOCAL enable_seqscan = off;
SET LOCAL enable_hashjoin = off;
SET LOCAL enable_mergejoin = off;
SET LOCAL jit = off;
DELETE FROM "public"."s_02_w1_pgcleave_new" WHERE ("id", "d") IN (SELECT "id", "d" FROM "pgcleave"."merge_<oid:public.s_02_01>_log");
INSERT INTO "public"."s_02_w1_pgcleave_new" ("id", "d", "v") SELECT "id", "d", "v" FROM ONLY "public"."s_02_01" WHERE ("id", "d") IN (SELECT "id", "d" FROM "pgcleave"."merge_<oid:public.s_02_01>_log");
INSERT INTO "public"."s_02_w1_pgcleave_new" ("id", "d", "v") SELECT "id", "d", "v" FROM ONLY "public"."s_02_02" WHERE ("id", "d") IN (SELECT "id", "d" FROM "pgcleave"."merge_<oid:public.s_02_01>_log");
INSERT INTO "public"."s_02_w1_pgcleave_new" ("id", "d", "v") SELECT "id", "d", "v" FROM ONLY "public"."s_02_03" WHERE ("id", "d") IN (SELECT "id", "d" FROM "pgcleave"."merge_<oid:public.s_02_01>_log");
DELETE FROM "pgcleave"."merge_<oid:public.s_02_01>_log";
COMMIT;

-- step 4/6 [merge-verify]: validate foreign keys and check in one snapshot (after a replay) that s_02_w1_pgcleave_new holds exactly the rows of s_02_01, s_02_02, s_02_03 (count and hash of every row)
--   locks: SHARE UPDATE EXCLUSIVE on s_02_w1_pgcleave_new
--   runs: one transaction
--   action: carve.verify {"begun": "SELECT NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = <oid:public.s_02_01>)", "count_copies": "SELECT count(*), coalesce(sum(h), 0) FROM (SELECT hash_record_extended(t, 0) AS h FROM ONLY \"public\".\"s_02_w1_pgcleave_new\" t) d", "count_source": "SELECT count(*), coalesce(sum(h), 0) FROM (SELECT hash_record_extended(t, 0) AS h FROM ONLY \"public\".\"s_02_01\" t UNION ALL SELECT hash_record_extended(t, 0) AS h FROM ONLY \"public\".\"s_02_02\" t UNION ALL SELECT hash_record_extended(t, 0) AS h FROM ONLY \"public\".\"s_02_03\" t) d", "ddl": [], "replay": ["SET LOCAL enable_seqscan = off", "SET LOCAL enable_hashjoin = off", "SET LOCAL enable_mergejoin = off", "SET LOCAL jit = off", "DELETE FROM \"public\".\"s_02_w1_pgcleave_new\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"merge_<oid:public.s_02_01>_log\")", "INSERT INTO \"public\".\"s_02_w1_pgcleave_new\" (\"id\", \"d\", \"v\") SELECT \"id\", \"d\", \"v\" FROM ONLY \"public\".\"s_02_01\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"merge_<oid:public.s_02_01>_log\")", "INSERT INTO \"public\".\"s_02_w1_pgcleave_new\" (\"id\", \"d\", \"v\") SELECT \"id\", \"d\", \"v\" FROM ONLY \"public\".\"s_02_02\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"merge_<oid:public.s_02_01>_log\")", "INSERT INTO \"public\".\"s_02_w1_pgcleave_new\" (\"id\", \"d\", \"v\") SELECT \"id\", \"d\", \"v\" FROM ONLY \"public\".\"s_02_03\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"merge_<oid:public.s_02_01>_log\")", "DELETE FROM \"pgcleave\".\"merge_<oid:public.s_02_01>_log\""]}
BEGIN;
SET LOCAL enable_seqscan = off;
SET LOCAL enable_hashjoin = off;
SET LOCAL enable_mergejoin = off;
SET LOCAL jit = off;
DELETE FROM "public"."s_02_w1_pgcleave_new" WHERE ("id", "d") IN (SELECT "id", "d" FROM "pgcleave"."merge_<oid:public.s_02_01>_log");
INSERT INTO "public"."s_02_w1_pgcleave_new" ("id", "d", "v") SELECT "id", "d", "v" FROM ONLY "public"."s_02_01" WHERE ("id", "d") IN (SELECT "id", "d" FROM "pgcleave"."merge_<oid:public.s_02_01>_log");
INSERT INTO "public"."s_02_w1_pgcleave_new" ("id", "d", "v") SELECT "id", "d", "v" FROM ONLY "public"."s_02_02" WHERE ("id", "d") IN (SELECT "id", "d" FROM "pgcleave"."merge_<oid:public.s_02_01>_log");
INSERT INTO "public"."s_02_w1_pgcleave_new" ("id", "d", "v") SELECT "id", "d", "v" FROM ONLY "public"."s_02_03" WHERE ("id", "d") IN (SELECT "id", "d" FROM "pgcleave"."merge_<oid:public.s_02_01>_log");
DELETE FROM "pgcleave"."merge_<oid:public.s_02_01>_log";
SELECT count(*), coalesce(sum(h), 0) FROM (SELECT hash_record_extended(t, 0) AS h FROM ONLY "public"."s_02_01" t UNION ALL SELECT hash_record_extended(t, 0) AS h FROM ONLY "public"."s_02_02" t UNION ALL SELECT hash_record_extended(t, 0) AS h FROM ONLY "public"."s_02_03" t) d;
SELECT count(*), coalesce(sum(h), 0) FROM (SELECT hash_record_extended(t, 0) AS h FROM ONLY "public"."s_02_w1_pgcleave_new" t) d;
COMMIT;

-- step 5/6 [merge-swap]: one short transaction: replay the last keys, detach s_02_01, s_02_02, s_02_03, attach s_02_w1 for FOR VALUES FROM ('2001-02-01') TO ('2001-02-04') (no scan: its CHECK proves the bound)
--   locks: ACCESS EXCLUSIVE on s; ACCESS EXCLUSIVE on s_02_01; ACCESS EXCLUSIVE on s_02_02; ACCESS EXCLUSIVE on s_02_03
--   runs: one transaction, under lock_timeout with retry
--   action: carve.swap {"catchup_rows": 100, "first": ["SET LOCAL enable_seqscan = off", "SET LOCAL enable_hashjoin = off", "SET LOCAL enable_mergejoin = off", "SET LOCAL jit = off", "LOCK TABLE ONLY \"public\".\"s\", \"public\".\"s_02_01\", \"public\".\"s_02_02\", \"public\".\"s_02_03\" IN ACCESS EXCLUSIVE MODE", "DELETE FROM \"public\".\"s_02_w1_pgcleave_new\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"merge_<oid:public.s_02_01>_log\")", "INSERT INTO \"public\".\"s_02_w1_pgcleave_new\" (\"id\", \"d\", \"v\") SELECT \"id\", \"d\", \"v\" FROM ONLY \"public\".\"s_02_01\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"merge_<oid:public.s_02_01>_log\")", "INSERT INTO \"public\".\"s_02_w1_pgcleave_new\" (\"id\", \"d\", \"v\") SELECT \"id\", \"d\", \"v\" FROM ONLY \"public\".\"s_02_02\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"merge_<oid:public.s_02_01>_log\")", "INSERT INTO \"public\".\"s_02_w1_pgcleave_new\" (\"id\", \"d\", \"v\") SELECT \"id\", \"d\", \"v\" FROM ONLY \"public\".\"s_02_03\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"merge_<oid:public.s_02_01>_log\")", "DELETE FROM \"pgcleave\".\"merge_<oid:public.s_02_01>_log\"", "ALTER TABLE \"public\".\"s\" DETACH PARTITION \"public\".\"s_02_01\"", "ALTER TABLE \"public\".\"s\" DETACH PARTITION \"public\".\"s_02_02\"", "ALTER TABLE \"public\".\"s\" DETACH PARTITION \"public\".\"s_02_03\"", "ALTER TABLE \"public\".\"s_02_w1_pgcleave_new\" RENAME TO \"s_02_w1\"", "ALTER TABLE \"public\".\"s\" ATTACH PARTITION \"public\".\"s_02_w1\" FOR VALUES FROM ('2001-02-01') TO ('2001-02-04')"], "first_done": "SELECT NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = <oid:public.s_02_01>)", "groups": [], "replay": ["SET LOCAL enable_seqscan = off", "SET LOCAL enable_hashjoin = off", "SET LOCAL enable_mergejoin = off", "SET LOCAL jit = off", "DELETE FROM \"public\".\"s_02_w1_pgcleave_new\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"merge_<oid:public.s_02_01>_log\")", "INSERT INTO \"public\".\"s_02_w1_pgcleave_new\" (\"id\", \"d\", \"v\") SELECT \"id\", \"d\", \"v\" FROM ONLY \"public\".\"s_02_01\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"merge_<oid:public.s_02_01>_log\")", "INSERT INTO \"public\".\"s_02_w1_pgcleave_new\" (\"id\", \"d\", \"v\") SELECT \"id\", \"d\", \"v\" FROM ONLY \"public\".\"s_02_02\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"merge_<oid:public.s_02_01>_log\")", "INSERT INTO \"public\".\"s_02_w1_pgcleave_new\" (\"id\", \"d\", \"v\") SELECT \"id\", \"d\", \"v\" FROM ONLY \"public\".\"s_02_03\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"merge_<oid:public.s_02_01>_log\")", "DELETE FROM \"pgcleave\".\"merge_<oid:public.s_02_01>_log\""]}
BEGIN;
SET LOCAL enable_seqscan = off;
SET LOCAL enable_hashjoin = off;
SET LOCAL enable_mergejoin = off;
SET LOCAL jit = off;
LOCK TABLE ONLY "public"."s", "public"."s_02_01", "public"."s_02_02", "public"."s_02_03" IN ACCESS EXCLUSIVE MODE;
DELETE FROM "public"."s_02_w1_pgcleave_new" WHERE ("id", "d") IN (SELECT "id", "d" FROM "pgcleave"."merge_<oid:public.s_02_01>_log");
INSERT INTO "public"."s_02_w1_pgcleave_new" ("id", "d", "v") SELECT "id", "d", "v" FROM ONLY "public"."s_02_01" WHERE ("id", "d") IN (SELECT "id", "d" FROM "pgcleave"."merge_<oid:public.s_02_01>_log");
INSERT INTO "public"."s_02_w1_pgcleave_new" ("id", "d", "v") SELECT "id", "d", "v" FROM ONLY "public"."s_02_02" WHERE ("id", "d") IN (SELECT "id", "d" FROM "pgcleave"."merge_<oid:public.s_02_01>_log");
INSERT INTO "public"."s_02_w1_pgcleave_new" ("id", "d", "v") SELECT "id", "d", "v" FROM ONLY "public"."s_02_03" WHERE ("id", "d") IN (SELECT "id", "d" FROM "pgcleave"."merge_<oid:public.s_02_01>_log");
DELETE FROM "pgcleave"."merge_<oid:public.s_02_01>_log";
ALTER TABLE "public"."s" DETACH PARTITION "public"."s_02_01";
ALTER TABLE "public"."s" DETACH PARTITION "public"."s_02_02";
ALTER TABLE "public"."s" DETACH PARTITION "public"."s_02_03";
ALTER TABLE "public"."s_02_w1_pgcleave_new" RENAME TO "s_02_w1";
ALTER TABLE "public"."s" ATTACH PARTITION "public"."s_02_w1" FOR VALUES FROM ('2001-02-01') TO ('2001-02-04');
COMMIT;

-- step 6/6 [merge-drop-old]: drop the detached s_02_01, s_02_02, s_02_03, the key log and the capture function; s_02_w1's indexes take its name
--   locks: ACCESS EXCLUSIVE on s_02_01, s_02_02, s_02_03 (detached, unused)
--   runs: one transaction, under lock_timeout with retry
BEGIN;
DO $pgcleave$ DECLARE r record; BEGIN FOR r IN SELECT oid FROM pg_class WHERE oid IN (<oid:public.s_02_01>, <oid:public.s_02_02>, <oid:public.s_02_03>) AND NOT relispartition LOOP EXECUTE format('DROP TABLE %s', r.oid::regclass); END LOOP; END $pgcleave$;
DROP TABLE IF EXISTS "pgcleave"."merge_<oid:public.s_02_01>_log";
DROP FUNCTION IF EXISTS "pgcleave"."merge_<oid:public.s_02_01>"();
DO $pgcleave$ DECLARE r record; BEGIN FOR r IN SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass('public.s_02_w1') AND starts_with(c.relname, 's_02_w1_pgcleave_new') LOOP EXECUTE format('ALTER INDEX %I.%I RENAME TO %I', 'public', r.relname, left('s_02_w1' || substr(r.relname, length('s_02_w1_pgcleave_new') + 1), 63)); END LOOP; END $pgcleave$;
COMMIT;
