-- pgcleave carve public."Metrics"
-- note: carve from "Metrics_default" (DEFAULT): method swap: chosen with --method swap
-- note: needs free space for a copy of "Metrics_default" (0.1 MB)
-- requires: owner of "Metrics"
-- requires: CREATE on schema public
-- requires: owner of "Metrics_default"

-- step 1/5 [carve-prepare]: create Metrics_1, Metrics_default_pgcleave_new (CHECKs of their bounds, no index yet) as partitions of a standalone Metrics_default_pgcleave_hold, a key log, and a capture trigger on "Metrics_default" that fills it
--   locks: SHARE ROW EXCLUSIVE on "Metrics_default" (CREATE TRIGGER, brief)
--   runs: one transaction, under lock_timeout with retry
BEGIN;
CREATE TABLE "public"."Metrics_default_pgcleave_hold" (LIKE "public"."Metrics_default" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMPRESSION) PARTITION BY RANGE ("k");
ALTER TABLE "public"."Metrics_default_pgcleave_hold" ADD CONSTRAINT "pgcleave_hold" CHECK (("k" < (0)::integer OR "k" >= (100)::integer));
CREATE TABLE "public"."Metrics_1" (LIKE "public"."Metrics_default" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING STATISTICS);
ALTER TABLE "public"."Metrics_1" ADD CONSTRAINT "pgcleave_bound" CHECK ("k" IS NOT NULL AND ("k" >= ('100')::integer AND "k" < ('200')::integer));
ALTER TABLE "public"."Metrics_1" ADD CONSTRAINT "pgcleave_hold" CHECK (("k" < (0)::integer OR "k" >= (100)::integer));
ALTER TABLE "public"."Metrics_default_pgcleave_hold" ATTACH PARTITION "public"."Metrics_1" FOR VALUES FROM ('100') TO ('200');
ALTER TABLE "public"."Metrics_1" OWNER TO "postgres";
CREATE TABLE "public"."Metrics_default_pgcleave_new" (LIKE "public"."Metrics_default" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING STATISTICS);
ALTER TABLE "public"."Metrics_default_pgcleave_new" ADD CONSTRAINT "pgcleave_bound" CHECK (("k" < (0)::integer OR "k" >= ('200')::integer));
ALTER TABLE "public"."Metrics_default_pgcleave_new" ADD CONSTRAINT "pgcleave_hold" CHECK (("k" < (0)::integer OR "k" >= (100)::integer));
ALTER TABLE "public"."Metrics_default_pgcleave_hold" ATTACH PARTITION "public"."Metrics_default_pgcleave_new" DEFAULT;
ALTER TABLE "public"."Metrics_default_pgcleave_new" OWNER TO "postgres";
CREATE TABLE "pgcleave"."carve_<oid:public.Metrics_default>_log" AS SELECT "k" FROM ONLY "public"."Metrics_default" WITH NO DATA;
CREATE FUNCTION "pgcleave"."carve_<oid:public.Metrics_default>"() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN IF TG_OP = ''DELETE'' OR (TG_OP = ''UPDATE'' AND (OLD."k") IS DISTINCT FROM (NEW."k")) THEN INSERT INTO "pgcleave"."carve_<oid:public.Metrics_default>_log" ("k") VALUES (OLD."k"); END IF; IF TG_OP <> ''DELETE'' THEN INSERT INTO "pgcleave"."carve_<oid:public.Metrics_default>_log" ("k") VALUES (NEW."k"); END IF; RETURN NULL; END';
CREATE TRIGGER "pgcleave_carve" AFTER INSERT OR UPDATE OR DELETE ON "public"."Metrics_default" FOR EACH ROW EXECUTE FUNCTION "pgcleave"."carve_<oid:public.Metrics_default>"();
COMMIT;
--   undo: DO $pgcleave$ BEGIN IF to_regclass('public."Metrics_default_pgcleave_retired"') IS NOT NULL THEN RAISE EXCEPTION 'the swap of % has begun: it can only be finished (pgcleave resume)', 'public."Metrics_default"'; END IF; END $pgcleave$; DROP TRIGGER IF EXISTS "pgcleave_carve" ON "public"."Metrics_default"; DROP FUNCTION IF EXISTS "pgcleave"."carve_<oid:public.Metrics_default>"(); DROP TABLE IF EXISTS "pgcleave"."carve_<oid:public.Metrics_default>_log"; DROP TABLE IF EXISTS "public"."Metrics_default_pgcleave_hold"; DROP TABLE IF EXISTS "public"."Metrics_1"; DROP TABLE IF EXISTS "public"."Metrics_default_pgcleave_new";

-- step 2/5 [carve-copy]: copy the rows of "Metrics_default" into Metrics_1, Metrics_default_pgcleave_new in one statement (one snapshot), build and analyze their indexes (two connections), then replay the logged keys until few are left
--   locks: ACCESS SHARE on "Metrics_default" (reads only)
--   runs: one transaction
--   action: carve.copy {"begun": "SELECT to_regclass('public.\"Metrics_default_pgcleave_retired\"') IS NOT NULL", "catchup_rows": 1000, "copy": "INSERT INTO \"public\".\"Metrics_default_pgcleave_hold\" (\"k\", \"v\") SELECT \"k\", \"v\" FROM ONLY \"public\".\"Metrics_default\"", "index": ["ALTER TABLE \"public\".\"Metrics_1\" ADD PRIMARY KEY (k)", "ANALYZE \"public\".\"Metrics_1\"", "ALTER TABLE \"public\".\"Metrics_default_pgcleave_new\" ADD PRIMARY KEY (k)", "ANALYZE \"public\".\"Metrics_default_pgcleave_new\"", "ALTER TABLE \"public\".\"Metrics_default_pgcleave_hold\" ADD PRIMARY KEY (k)"], "index_top": ["ALTER TABLE \"public\".\"Metrics_default_pgcleave_hold\" ADD PRIMARY KEY (k)"], "leaf_jobs": [["public.\"Metrics_1\"", ["ALTER TABLE \"public\".\"Metrics_1\" ADD PRIMARY KEY (k)", "ANALYZE \"public\".\"Metrics_1\""]], ["public.\"Metrics_default_pgcleave_new\"", ["ALTER TABLE \"public\".\"Metrics_default_pgcleave_new\" ADD PRIMARY KEY (k)", "ANALYZE \"public\".\"Metrics_default_pgcleave_new\""]]], "replay": ["SET LOCAL enable_seqscan = off", "SET LOCAL enable_hashjoin = off", "SET LOCAL enable_mergejoin = off", "SET LOCAL jit = off", "DELETE FROM \"public\".\"Metrics_default_pgcleave_hold\" WHERE (\"k\") IN (SELECT \"k\" FROM \"pgcleave\".\"carve_<oid:public.Metrics_default>_log\")", "INSERT INTO \"public\".\"Metrics_default_pgcleave_hold\" (\"k\", \"v\") SELECT \"k\", \"v\" FROM ONLY \"public\".\"Metrics_default\" WHERE (\"k\") IN (SELECT \"k\" FROM \"pgcleave\".\"carve_<oid:public.Metrics_default>_log\")", "DELETE FROM \"pgcleave\".\"carve_<oid:public.Metrics_default>_log\""]}
BEGIN;
INSERT INTO "public"."Metrics_default_pgcleave_hold" ("k", "v") SELECT "k", "v" FROM ONLY "public"."Metrics_default";
ALTER TABLE "public"."Metrics_1" ADD PRIMARY KEY (k);
ANALYZE "public"."Metrics_1";
ALTER TABLE "public"."Metrics_default_pgcleave_new" ADD PRIMARY KEY (k);
ANALYZE "public"."Metrics_default_pgcleave_new";
ALTER TABLE "public"."Metrics_default_pgcleave_hold" ADD PRIMARY KEY (k);
SET LOCAL enable_seqscan = off;
SET LOCAL enable_hashjoin = off;
SET LOCAL enable_mergejoin = off;
SET LOCAL jit = off;
DELETE FROM "public"."Metrics_default_pgcleave_hold" WHERE ("k") IN (SELECT "k" FROM "pgcleave"."carve_<oid:public.Metrics_default>_log");
INSERT INTO "public"."Metrics_default_pgcleave_hold" ("k", "v") SELECT "k", "v" FROM ONLY "public"."Metrics_default" WHERE ("k") IN (SELECT "k" FROM "pgcleave"."carve_<oid:public.Metrics_default>_log");
DELETE FROM "pgcleave"."carve_<oid:public.Metrics_default>_log";
COMMIT;

-- step 3/5 [carve-verify]: validate foreign keys and check in one snapshot (after a replay; the source counted on a second connection that imports the snapshot) that Metrics_1, Metrics_default_pgcleave_new hold exactly the rows of "Metrics_default"
--   locks: SHARE UPDATE EXCLUSIVE on Metrics_1, Metrics_default_pgcleave_new
--   runs: one transaction
--   action: carve.verify {"begun": "SELECT to_regclass('public.\"Metrics_default_pgcleave_retired\"') IS NOT NULL", "count_copies": "SELECT count(*), coalesce(sum(h), 0) FROM (SELECT hash_record_extended(t, 0) AS h FROM \"public\".\"Metrics_default_pgcleave_hold\" t) d", "count_source": "SELECT count(*), coalesce(sum(h), 0) FROM (SELECT hash_record_extended(t, 0) AS h FROM ONLY \"public\".\"Metrics_default\" t) d", "ddl": [], "replay": ["SET LOCAL enable_seqscan = off", "SET LOCAL enable_hashjoin = off", "SET LOCAL enable_mergejoin = off", "SET LOCAL jit = off", "DELETE FROM \"public\".\"Metrics_default_pgcleave_hold\" WHERE (\"k\") IN (SELECT \"k\" FROM \"pgcleave\".\"carve_<oid:public.Metrics_default>_log\")", "INSERT INTO \"public\".\"Metrics_default_pgcleave_hold\" (\"k\", \"v\") SELECT \"k\", \"v\" FROM ONLY \"public\".\"Metrics_default\" WHERE (\"k\") IN (SELECT \"k\" FROM \"pgcleave\".\"carve_<oid:public.Metrics_default>_log\")", "DELETE FROM \"pgcleave\".\"carve_<oid:public.Metrics_default>_log\""]}
BEGIN;
SET LOCAL enable_seqscan = off;
SET LOCAL enable_hashjoin = off;
SET LOCAL enable_mergejoin = off;
SET LOCAL jit = off;
DELETE FROM "public"."Metrics_default_pgcleave_hold" WHERE ("k") IN (SELECT "k" FROM "pgcleave"."carve_<oid:public.Metrics_default>_log");
INSERT INTO "public"."Metrics_default_pgcleave_hold" ("k", "v") SELECT "k", "v" FROM ONLY "public"."Metrics_default" WHERE ("k") IN (SELECT "k" FROM "pgcleave"."carve_<oid:public.Metrics_default>_log");
DELETE FROM "pgcleave"."carve_<oid:public.Metrics_default>_log";
SELECT count(*), coalesce(sum(h), 0) FROM (SELECT hash_record_extended(t, 0) AS h FROM ONLY "public"."Metrics_default" t) d;
SELECT count(*), coalesce(sum(h), 0) FROM (SELECT hash_record_extended(t, 0) AS h FROM "public"."Metrics_default_pgcleave_hold" t) d;
COMMIT;

-- step 4/5 [carve-swap]: short transactions: detach "Metrics_default" and attach Metrics_default_pgcleave_hold for FOR VALUES FROM ('100') TO ('200') and Metrics_default as the DEFAULT; then move 4 piece(s) per transaction from Metrics_default_pgcleave_hold to "Metrics" (no scan: CHECKs prove every bound)
--   locks: ACCESS EXCLUSIVE on "Metrics"; ACCESS EXCLUSIVE on "Metrics_default"
--   runs: one transaction, under lock_timeout with retry
--   action: carve.swap {"catchup_rows": 100, "first": ["SET LOCAL enable_seqscan = off", "SET LOCAL enable_hashjoin = off", "SET LOCAL enable_mergejoin = off", "SET LOCAL jit = off", "LOCK TABLE ONLY \"public\".\"Metrics\", \"public\".\"Metrics_default\" IN ACCESS EXCLUSIVE MODE", "DELETE FROM \"public\".\"Metrics_default_pgcleave_hold\" WHERE (\"k\") IN (SELECT \"k\" FROM \"pgcleave\".\"carve_<oid:public.Metrics_default>_log\")", "INSERT INTO \"public\".\"Metrics_default_pgcleave_hold\" (\"k\", \"v\") SELECT \"k\", \"v\" FROM ONLY \"public\".\"Metrics_default\" WHERE (\"k\") IN (SELECT \"k\" FROM \"pgcleave\".\"carve_<oid:public.Metrics_default>_log\")", "DELETE FROM \"pgcleave\".\"carve_<oid:public.Metrics_default>_log\"", "ALTER TABLE \"public\".\"Metrics\" DETACH PARTITION \"public\".\"Metrics_default\"", "DROP TRIGGER \"pgcleave_carve\" ON \"public\".\"Metrics_default\"", "ALTER TABLE \"public\".\"Metrics_default\" RENAME TO \"Metrics_default_pgcleave_retired\"", "ALTER TABLE \"public\".\"Metrics_default_pgcleave_hold\" DETACH PARTITION \"public\".\"Metrics_default_pgcleave_new\"", "ALTER TABLE \"public\".\"Metrics_default_pgcleave_new\" DROP CONSTRAINT \"pgcleave_hold\"", "ALTER TABLE \"public\".\"Metrics_default_pgcleave_new\" RENAME TO \"Metrics_default\"", "ALTER TABLE \"public\".\"Metrics\" ATTACH PARTITION \"public\".\"Metrics_default_pgcleave_hold\" FOR VALUES FROM ('100') TO ('200')", "ALTER TABLE \"public\".\"Metrics\" ATTACH PARTITION \"public\".\"Metrics_default\" DEFAULT"], "first_done": "SELECT to_regclass('public.\"Metrics_default_pgcleave_retired\"') IS NOT NULL", "groups": [{"done": "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass('public.\"Metrics_1\"') AND inhparent = to_regclass('public.\"Metrics\"'))", "sql": ["LOCK TABLE ONLY \"public\".\"Metrics\" IN ACCESS EXCLUSIVE MODE", "ALTER TABLE \"public\".\"Metrics\" DETACH PARTITION \"public\".\"Metrics_default_pgcleave_hold\"", "ALTER TABLE \"public\".\"Metrics_default_pgcleave_hold\" DETACH PARTITION \"public\".\"Metrics_1\"", "ALTER TABLE \"public\".\"Metrics_1\" DROP CONSTRAINT \"pgcleave_hold\"", "ALTER TABLE \"public\".\"Metrics\" ATTACH PARTITION \"public\".\"Metrics_1\" FOR VALUES FROM ('100') TO ('200')", "DROP TABLE \"public\".\"Metrics_default_pgcleave_hold\""], "what": "Metrics_1"}], "replay": ["SET LOCAL enable_seqscan = off", "SET LOCAL enable_hashjoin = off", "SET LOCAL enable_mergejoin = off", "SET LOCAL jit = off", "DELETE FROM \"public\".\"Metrics_default_pgcleave_hold\" WHERE (\"k\") IN (SELECT \"k\" FROM \"pgcleave\".\"carve_<oid:public.Metrics_default>_log\")", "INSERT INTO \"public\".\"Metrics_default_pgcleave_hold\" (\"k\", \"v\") SELECT \"k\", \"v\" FROM ONLY \"public\".\"Metrics_default\" WHERE (\"k\") IN (SELECT \"k\" FROM \"pgcleave\".\"carve_<oid:public.Metrics_default>_log\")", "DELETE FROM \"pgcleave\".\"carve_<oid:public.Metrics_default>_log\""]}
BEGIN;
SET LOCAL enable_seqscan = off;
SET LOCAL enable_hashjoin = off;
SET LOCAL enable_mergejoin = off;
SET LOCAL jit = off;
LOCK TABLE ONLY "public"."Metrics", "public"."Metrics_default" IN ACCESS EXCLUSIVE MODE;
DELETE FROM "public"."Metrics_default_pgcleave_hold" WHERE ("k") IN (SELECT "k" FROM "pgcleave"."carve_<oid:public.Metrics_default>_log");
INSERT INTO "public"."Metrics_default_pgcleave_hold" ("k", "v") SELECT "k", "v" FROM ONLY "public"."Metrics_default" WHERE ("k") IN (SELECT "k" FROM "pgcleave"."carve_<oid:public.Metrics_default>_log");
DELETE FROM "pgcleave"."carve_<oid:public.Metrics_default>_log";
ALTER TABLE "public"."Metrics" DETACH PARTITION "public"."Metrics_default";
DROP TRIGGER "pgcleave_carve" ON "public"."Metrics_default";
ALTER TABLE "public"."Metrics_default" RENAME TO "Metrics_default_pgcleave_retired";
ALTER TABLE "public"."Metrics_default_pgcleave_hold" DETACH PARTITION "public"."Metrics_default_pgcleave_new";
ALTER TABLE "public"."Metrics_default_pgcleave_new" DROP CONSTRAINT "pgcleave_hold";
ALTER TABLE "public"."Metrics_default_pgcleave_new" RENAME TO "Metrics_default";
ALTER TABLE "public"."Metrics" ATTACH PARTITION "public"."Metrics_default_pgcleave_hold" FOR VALUES FROM ('100') TO ('200');
ALTER TABLE "public"."Metrics" ATTACH PARTITION "public"."Metrics_default" DEFAULT;
LOCK TABLE ONLY "public"."Metrics" IN ACCESS EXCLUSIVE MODE;
ALTER TABLE "public"."Metrics" DETACH PARTITION "public"."Metrics_default_pgcleave_hold";
ALTER TABLE "public"."Metrics_default_pgcleave_hold" DETACH PARTITION "public"."Metrics_1";
ALTER TABLE "public"."Metrics_1" DROP CONSTRAINT "pgcleave_hold";
ALTER TABLE "public"."Metrics" ATTACH PARTITION "public"."Metrics_1" FOR VALUES FROM ('100') TO ('200');
DROP TABLE "public"."Metrics_default_pgcleave_hold";
COMMIT;

-- step 5/5 [carve-drop-old]: drop the detached Metrics_default_pgcleave_retired, the key log and the capture function
--   locks: ACCESS EXCLUSIVE on "Metrics_default_pgcleave_retired" (detached, unused); ACCESS EXCLUSIVE on each new partition, catalog only
--   runs: autocommit, not in a transaction, under lock_timeout with retry
DROP TABLE IF EXISTS "public"."Metrics_default_pgcleave_retired";
DROP TABLE IF EXISTS "pgcleave"."carve_<oid:public.Metrics_default>_log";
ALTER TABLE "public"."Metrics_default" DROP CONSTRAINT IF EXISTS "pgcleave_bound";
DO $pgcleave$ DECLARE r record; BEGIN FOR r IN SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass('public."Metrics_default"') AND starts_with(c.relname, 'Metrics_default_pgcleave_new') LOOP EXECUTE format('ALTER INDEX %I.%I RENAME TO %I', 'public', r.relname, left('Metrics_default' || substr(r.relname, length('Metrics_default_pgcleave_new') + 1), 63)); END LOOP; END $pgcleave$;
DROP FUNCTION IF EXISTS "pgcleave"."carve_<oid:public.Metrics_default>"();
