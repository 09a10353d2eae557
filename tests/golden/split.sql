-- pgcleave split public.s
-- note: split s_01 (FOR VALUES FROM ('2001-01-01') TO ('2001-02-01')) into 5 partitions
-- note: needs free space for a copy of s_01 (0.0 MB)
-- note: extra disk: a copy of s_01 (0.0 MB with indexes), until the swap drops it; free disk: unknown (PostgreSQL shows it to no table owner)
-- requires: owner of s
-- requires: CREATE on schema public
-- requires: owner of s_01

-- step 1/5 [carve-prepare]: create s_p2001_01_01, s_p2001_01_08, s_p2001_01_15, s_p2001_01_22, s_p2001_01_29 (CHECKs of their bounds, no index yet) as partitions of a standalone s_01_pgcleave_hold, a key log, and a capture trigger on s_01 that fills it
--   locks: SHARE ROW EXCLUSIVE on s_01 (CREATE TRIGGER, brief)
--   runs: one transaction, under lock_timeout with retry
BEGIN;
CREATE TABLE "public"."s_01_pgcleave_hold" (LIKE "public"."s_01" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMPRESSION) PARTITION BY RANGE ("d");
CREATE TABLE "public"."s_p2001_01_01" (LIKE "public"."s_01" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING STATISTICS);
ALTER TABLE "public"."s_p2001_01_01" ADD CONSTRAINT "pgcleave_bound" CHECK ("d" IS NOT NULL AND ("d" >= ('2001-01-01')::date AND "d" < ('2001-01-08')::date));
ALTER TABLE "public"."s_01_pgcleave_hold" ATTACH PARTITION "public"."s_p2001_01_01" FOR VALUES FROM ('2001-01-01') TO ('2001-01-08');
ALTER TABLE "public"."s_p2001_01_01" OWNER TO "postgres";
CREATE TABLE "public"."s_p2001_01_08" (LIKE "public"."s_01" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING STATISTICS);
ALTER TABLE "public"."s_p2001_01_08" ADD CONSTRAINT "pgcleave_bound" CHECK ("d" IS NOT NULL AND ("d" >= ('2001-01-08')::date AND "d" < ('2001-01-15')::date));
ALTER TABLE "public"."s_01_pgcleave_hold" ATTACH PARTITION "public"."s_p2001_01_08" FOR VALUES FROM ('2001-01-08') TO ('2001-01-15');
ALTER TABLE "public"."s_p2001_01_08" OWNER TO "postgres";
CREATE TABLE "public"."s_p2001_01_15" (LIKE "public"."s_01" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING STATISTICS);
ALTER TABLE "public"."s_p2001_01_15" ADD CONSTRAINT "pgcleave_bound" CHECK ("d" IS NOT NULL AND ("d" >= ('2001-01-15')::date AND "d" < ('2001-01-22')::date));
ALTER TABLE "public"."s_01_pgcleave_hold" ATTACH PARTITION "public"."s_p2001_01_15" FOR VALUES FROM ('2001-01-15') TO ('2001-01-22');
ALTER TABLE "public"."s_p2001_01_15" OWNER TO "postgres";
CREATE TABLE "public"."s_p2001_01_22" (LIKE "public"."s_01" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING STATISTICS);
ALTER TABLE "public"."s_p2001_01_22" ADD CONSTRAINT "pgcleave_bound" CHECK ("d" IS NOT NULL AND ("d" >= ('2001-01-22')::date AND "d" < ('2001-01-29')::date));
ALTER TABLE "public"."s_01_pgcleave_hold" ATTACH PARTITION "public"."s_p2001_01_22" FOR VALUES FROM ('2001-01-22') TO ('2001-01-29');
ALTER TABLE "public"."s_p2001_01_22" OWNER TO "postgres";
CREATE TABLE "public"."s_p2001_01_29" (LIKE "public"."s_01" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING STATISTICS);
ALTER TABLE "public"."s_p2001_01_29" ADD CONSTRAINT "pgcleave_bound" CHECK ("d" IS NOT NULL AND ("d" >= ('2001-01-29')::date AND "d" < ('2001-02-01')::date));
ALTER TABLE "public"."s_01_pgcleave_hold" ATTACH PARTITION "public"."s_p2001_01_29" FOR VALUES FROM ('2001-01-29') TO ('2001-02-01');
ALTER TABLE "public"."s_p2001_01_29" OWNER TO "postgres";
CREATE TABLE "pgcleave"."carve_<oid:public.s_01>_log" AS SELECT "id", "d" FROM ONLY "public"."s_01" WITH NO DATA;
CREATE FUNCTION "pgcleave"."carve_<oid:public.s_01>"() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN IF TG_OP = ''DELETE'' OR (TG_OP = ''UPDATE'' AND (OLD."id", OLD."d") IS DISTINCT FROM (NEW."id", NEW."d")) THEN INSERT INTO "pgcleave"."carve_<oid:public.s_01>_log" ("id", "d") VALUES (OLD."id", OLD."d"); END IF; IF TG_OP <> ''DELETE'' THEN INSERT INTO "pgcleave"."carve_<oid:public.s_01>_log" ("id", "d") VALUES (NEW."id", NEW."d"); END IF; RETURN NULL; END';
CREATE TRIGGER "pgcleave_carve" AFTER INSERT OR UPDATE OR DELETE ON "public"."s_01" FOR EACH ROW EXECUTE FUNCTION "pgcleave"."carve_<oid:public.s_01>"();
COMMIT;
--   undo: DO $pgcleave$ BEGIN IF to_regclass('public.s_01_pgcleave_retired') IS NOT NULL THEN RAISE EXCEPTION 'the swap of % has begun: it can only be finished (pgcleave resume)', 'public.s_01'; END IF; END $pgcleave$; DROP TRIGGER IF EXISTS "pgcleave_carve" ON "public"."s_01"; DROP FUNCTION IF EXISTS "pgcleave"."carve_<oid:public.s_01>"(); DROP TABLE IF EXISTS "pgcleave"."carve_<oid:public.s_01>_log"; DROP TABLE IF EXISTS "public"."s_01_pgcleave_hold"; DROP TABLE IF EXISTS "public"."s_p2001_01_01"; DROP TABLE IF EXISTS "public"."s_p2001_01_08"; DROP TABLE IF EXISTS "public"."s_p2001_01_15"; DROP TABLE IF EXISTS "public"."s_p2001_01_22"; DROP TABLE IF EXISTS "public"."s_p2001_01_29";

-- step 2/5 [carve-copy]: copy the rows of s_01 into s_p2001_01_01, s_p2001_01_08, s_p2001_01_15, s_p2001_01_22, s_p2001_01_29 in one statement (one snapshot), build and analyze their indexes (two connections), then replay the logged keys until few are left
--   locks: ACCESS SHARE on s_01 (reads only)
--   runs: one transaction
--   action: carve.copy {"begun": "SELECT to_regclass('public.s_01_pgcleave_retired') IS NOT NULL", "catchup_rows": 1000, "copy": "INSERT INTO \"public\".\"s_01_pgcleave_hold\" (\"id\", \"d\", \"v\") SELECT \"id\", \"d\", \"v\" FROM ONLY \"public\".\"s_01\"", "index": ["ALTER TABLE \"public\".\"s_p2001_01_01\" ADD PRIMARY KEY (id, d)", "ANALYZE \"public\".\"s_p2001_01_01\"", "ALTER TABLE \"public\".\"s_p2001_01_08\" ADD PRIMARY KEY (id, d)", "ANALYZE \"public\".\"s_p2001_01_08\"", "ALTER TABLE \"public\".\"s_p2001_01_15\" ADD PRIMARY KEY (id, d)", "ANALYZE \"public\".\"s_p2001_01_15\"", "ALTER TABLE \"public\".\"s_p2001_01_22\" ADD PRIMARY KEY (id, d)", "ANALYZE \"public\".\"s_p2001_01_22\"", "ALTER TABLE \"public\".\"s_p2001_01_29\" ADD PRIMARY KEY (id, d)", "ANALYZE \"public\".\"s_p2001_01_29\"", "ALTER TABLE \"public\".\"s_01_pgcleave_hold\" ADD PRIMARY KEY (id, d)"], "index_top": ["ALTER TABLE \"public\".\"s_01_pgcleave_hold\" ADD PRIMARY KEY (id, d)"], "leaf_jobs": [["public.s_p2001_01_01", ["ALTER TABLE \"public\".\"s_p2001_01_01\" ADD PRIMARY KEY (id, d)", "ANALYZE \"public\".\"s_p2001_01_01\""]], ["public.s_p2001_01_08", ["ALTER TABLE \"public\".\"s_p2001_01_08\" ADD PRIMARY KEY (id, d)", "ANALYZE \"public\".\"s_p2001_01_08\""]], ["public.s_p2001_01_15", ["ALTER TABLE \"public\".\"s_p2001_01_15\" ADD PRIMARY KEY (id, d)", "ANALYZE \"public\".\"s_p2001_01_15\""]], ["public.s_p2001_01_22", ["ALTER TABLE \"public\".\"s_p2001_01_22\" ADD PRIMARY KEY (id, d)", "ANALYZE \"public\".\"s_p2001_01_22\""]], ["public.s_p2001_01_29", ["ALTER TABLE \"public\".\"s_p2001_01_29\" ADD PRIMARY KEY (id, d)", "ANALYZE \"public\".\"s_p2001_01_29\""]]], "replay": ["SET LOCAL enable_seqscan = off", "SET LOCAL enable_hashjoin = off", "SET LOCAL enable_mergejoin = off", "SET LOCAL jit = off", "DELETE FROM \"public\".\"s_01_pgcleave_hold\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"carve_<oid:public.s_01>_log\")", "INSERT INTO \"public\".\"s_01_pgcleave_hold\" (\"id\", \"d\", \"v\") SELECT \"id\", \"d\", \"v\" FROM ONLY \"public\".\"s_01\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"carve_<oid:public.s_01>_log\")", "DELETE FROM \"pgcleave\".\"carve_<oid:public.s_01>_log\""]}
BEGIN;
INSERT INTO "public"."s_01_pgcleave_hold" ("id", "d", "v") SELECT "id", "d", "v" FROM ONLY "public"."s_01";
ALTER TABLE "public"."s_p2001_01_01" ADD PRIMARY KEY (id, d);
ANALYZE "public"."s_p2001_01_01";
ALTER TABLE "public"."s_p2001_01_08" ADD PRIMARY KEY (id, d);
ANALYZE "public"."s_p2001_01_08";
ALTER TABLE "public"."s_p2001_01_15" ADD PRIMARY KEY (id, d);
ANALYZE "public"."s_p2001_01_15";
ALTER TABLE "public"."s_p2001_01_22" ADD PRIMARY KEY (id, d);
ANALYZE "public"."s_p2001_01_22";
ALTER TABLE "public"."s_p2001_01_29" ADD PRIMARY KEY (id, d);
ANALYZE "public"."s_p2001_01_29";
ALTER TABLE "public"."s_01_pgcleave_hold" ADD PRIMARY KEY (id, d);
SET LOCAL enable_seqscan = off;
SET LOCAL enable_hashjoin = off;
SET LOCAL enable_mergejoin = off;
SET LOCAL jit = off;
DELETE FROM "public"."s_01_pgcleave_hold" WHERE ("id", "d") IN (SELECT "id", "d" FROM "pgcleave"."carve_<oid:public.s_01>_log");
INSERT INTO "public"."s_01_pgcleave_hold" ("id", "d", "v") SELECT "id", "d", "v" FROM ONLY "public"."s_01" WHERE ("id", "d") IN (SELECT "id", "d" FROM "pgcleave"."carve_<oid:public.s_01>_log");
DELETE FROM "pgcleave"."carve_<oid:public.s_01>_log";
COMMIT;

-- step 3/5 [carve-verify]: validate foreign keys and check in one snapshot (after a replay; the source counted on a second connection that imports the snapshot) that s_p2001_01_01, s_p2001_01_08, s_p2001_01_15, s_p2001_01_22, s_p2001_01_29 hold exactly the rows of s_01
--   locks: SHARE UPDATE EXCLUSIVE on s_p2001_01_01, s_p2001_01_08, s_p2001_01_15, s_p2001_01_22, s_p2001_01_29
--   runs: one transaction
--   action: carve.verify {"begun": "SELECT to_regclass('public.s_01_pgcleave_retired') IS NOT NULL", "count_copies": "SELECT count(*), coalesce(sum(h), 0) FROM (SELECT hash_record_extended(t, 0) AS h FROM \"public\".\"s_01_pgcleave_hold\" t) d", "count_source": "SELECT count(*), coalesce(sum(h), 0) FROM (SELECT hash_record_extended(t, 0) AS h FROM ONLY \"public\".\"s_01\" t) d", "ddl": [], "replay": ["SET LOCAL enable_seqscan = off", "SET LOCAL enable_hashjoin = off", "SET LOCAL enable_mergejoin = off", "SET LOCAL jit = off", "DELETE FROM \"public\".\"s_01_pgcleave_hold\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"carve_<oid:public.s_01>_log\")", "INSERT INTO \"public\".\"s_01_pgcleave_hold\" (\"id\", \"d\", \"v\") SELECT \"id\", \"d\", \"v\" FROM ONLY \"public\".\"s_01\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"carve_<oid:public.s_01>_log\")", "DELETE FROM \"pgcleave\".\"carve_<oid:public.s_01>_log\""]}
BEGIN;
SET LOCAL enable_seqscan = off;
SET LOCAL enable_hashjoin = off;
SET LOCAL enable_mergejoin = off;
SET LOCAL jit = off;
DELETE FROM "public"."s_01_pgcleave_hold" WHERE ("id", "d") IN (SELECT "id", "d" FROM "pgcleave"."carve_<oid:public.s_01>_log");
INSERT INTO "public"."s_01_pgcleave_hold" ("id", "d", "v") SELECT "id", "d", "v" FROM ONLY "public"."s_01" WHERE ("id", "d") IN (SELECT "id", "d" FROM "pgcleave"."carve_<oid:public.s_01>_log");
DELETE FROM "pgcleave"."carve_<oid:public.s_01>_log";
SELECT count(*), coalesce(sum(h), 0) FROM (SELECT hash_record_extended(t, 0) AS h FROM ONLY "public"."s_01" t) d;
SELECT count(*), coalesce(sum(h), 0) FROM (SELECT hash_record_extended(t, 0) AS h FROM "public"."s_01_pgcleave_hold" t) d;
COMMIT;

-- step 4/5 [carve-swap]: short transactions: detach s_01 and attach s_01_pgcleave_hold for FOR VALUES FROM ('2001-01-01') TO ('2001-02-01'); then move 4 piece(s) per transaction from s_01_pgcleave_hold to s (no scan: CHECKs prove every bound)
--   locks: ACCESS EXCLUSIVE on s; ACCESS EXCLUSIVE on s_01
--   runs: one transaction, under lock_timeout with retry
--   action: carve.swap {"catchup_rows": 100, "first": ["SET LOCAL enable_seqscan = off", "SET LOCAL enable_hashjoin = off", "SET LOCAL enable_mergejoin = off", "SET LOCAL jit = off", "LOCK TABLE ONLY \"public\".\"s\", \"public\".\"s_01\" IN ACCESS EXCLUSIVE MODE", "DELETE FROM \"public\".\"s_01_pgcleave_hold\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"carve_<oid:public.s_01>_log\")", "INSERT INTO \"public\".\"s_01_pgcleave_hold\" (\"id\", \"d\", \"v\") SELECT \"id\", \"d\", \"v\" FROM ONLY \"public\".\"s_01\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"carve_<oid:public.s_01>_log\")", "DELETE FROM \"pgcleave\".\"carve_<oid:public.s_01>_log\"", "ALTER TABLE \"public\".\"s\" DETACH PARTITION \"public\".\"s_01\"", "DROP TRIGGER \"pgcleave_carve\" ON \"public\".\"s_01\"", "ALTER TABLE \"public\".\"s_01\" RENAME TO \"s_01_pgcleave_retired\"", "ALTER TABLE \"public\".\"s\" ATTACH PARTITION \"public\".\"s_01_pgcleave_hold\" FOR VALUES FROM ('2001-01-01') TO ('2001-02-01')"], "first_done": "SELECT to_regclass('public.s_01_pgcleave_retired') IS NOT NULL", "groups": [{"done": "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass('public.s_p2001_01_22') AND inhparent = to_regclass('public.s'))", "sql": ["LOCK TABLE ONLY \"public\".\"s\" IN ACCESS EXCLUSIVE MODE", "ALTER TABLE \"public\".\"s\" DETACH PARTITION \"public\".\"s_01_pgcleave_hold\"", "ALTER TABLE \"public\".\"s_01_pgcleave_hold\" DETACH PARTITION \"public\".\"s_p2001_01_01\"", "ALTER TABLE \"public\".\"s\" ATTACH PARTITION \"public\".\"s_p2001_01_01\" FOR VALUES FROM ('2001-01-01') TO ('2001-01-08')", "ALTER TABLE \"public\".\"s_01_pgcleave_hold\" DETACH PARTITION \"public\".\"s_p2001_01_08\"", "ALTER TABLE \"public\".\"s\" ATTACH PARTITION \"public\".\"s_p2001_01_08\" FOR VALUES FROM ('2001-01-08') TO ('2001-01-15')", "ALTER TABLE \"public\".\"s_01_pgcleave_hold\" DETACH PARTITION \"public\".\"s_p2001_01_15\"", "ALTER TABLE \"public\".\"s\" ATTACH PARTITION \"public\".\"s_p2001_01_15\" FOR VALUES FROM ('2001-01-15') TO ('2001-01-22')", "ALTER TABLE \"public\".\"s_01_pgcleave_hold\" DETACH PARTITION \"public\".\"s_p2001_01_22\"", "ALTER TABLE \"public\".\"s\" ATTACH PARTITION \"public\".\"s_p2001_01_22\" FOR VALUES FROM ('2001-01-22') TO ('2001-01-29')", "ALTER TABLE \"public\".\"s\" ATTACH PARTITION \"public\".\"s_01_pgcleave_hold\" FOR VALUES FROM ('2001-01-29') TO ('2001-02-01')"], "what": "s_p2001_01_01, s_p2001_01_08, s_p2001_01_15, s_p2001_01_22"}, {"done": "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass('public.s_p2001_01_29') AND inhparent = to_regclass('public.s'))", "sql": ["LOCK TABLE ONLY \"public\".\"s\" IN ACCESS EXCLUSIVE MODE", "ALTER TABLE \"public\".\"s\" DETACH PARTITION \"public\".\"s_01_pgcleave_hold\"", "ALTER TABLE \"public\".\"s_01_pgcleave_hold\" DETACH PARTITION \"public\".\"s_p2001_01_29\"", "ALTER TABLE \"public\".\"s\" ATTACH PARTITION \"public\".\"s_p2001_01_29\" FOR VALUES FROM ('2001-01-29') TO ('2001-02-01')", "DROP TABLE \"public\".\"s_01_pgcleave_hold\""], "what": "s_p2001_01_29"}], "replay": ["SET LOCAL enable_seqscan = off", "SET LOCAL enable_hashjoin = off", "SET LOCAL enable_mergejoin = off", "SET LOCAL jit = off", "DELETE FROM \"public\".\"s_01_pgcleave_hold\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"carve_<oid:public.s_01>_log\")", "INSERT INTO \"public\".\"s_01_pgcleave_hold\" (\"id\", \"d\", \"v\") SELECT \"id\", \"d\", \"v\" FROM ONLY \"public\".\"s_01\" WHERE (\"id\", \"d\") IN (SELECT \"id\", \"d\" FROM \"pgcleave\".\"carve_<oid:public.s_01>_log\")", "DELETE FROM \"pgcleave\".\"carve_<oid:public.s_01>_log\""]}
BEGIN;
SET LOCAL enable_seqscan = off;
SET LOCAL enable_hashjoin = off;
SET LOCAL enable_mergejoin = off;
SET LOCAL jit = off;
LOCK TABLE ONLY "public"."s", "public"."s_01" IN ACCESS EXCLUSIVE MODE;
DELETE FROM "public"."s_01_pgcleave_hold" WHERE ("id", "d") IN (SELECT "id", "d" FROM "pgcleave"."carve_<oid:public.s_01>_log");
INSERT INTO "public"."s_01_pgcleave_hold" ("id", "d", "v") SELECT "id", "d", "v" FROM ONLY "public"."s_01" WHERE ("id", "d") IN (SELECT "id", "d" FROM "pgcleave"."carve_<oid:public.s_01>_log");
DELETE FROM "pgcleave"."carve_<oid:public.s_01>_log";
ALTER TABLE "public"."s" DETACH PARTITION "public"."s_01";
DROP TRIGGER "pgcleave_carve" ON "public"."s_01";
ALTER TABLE "public"."s_01" RENAME TO "s_01_pgcleave_retired";
ALTER TABLE "public"."s" ATTACH PARTITION "public"."s_01_pgcleave_hold" FOR VALUES FROM ('2001-01-01') TO ('2001-02-01');
LOCK TABLE ONLY "public"."s" IN ACCESS EXCLUSIVE MODE;
ALTER TABLE "public"."s" DETACH PARTITION "public"."s_01_pgcleave_hold";
ALTER TABLE "public"."s_01_pgcleave_hold" DETACH PARTITION "public"."s_p2001_01_01";
ALTER TABLE "public"."s" ATTACH PARTITION "public"."s_p2001_01_01" FOR VALUES FROM ('2001-01-01') TO ('2001-01-08');
ALTER TABLE "public"."s_01_pgcleave_hold" DETACH PARTITION "public"."s_p2001_01_08";
ALTER TABLE "public"."s" ATTACH PARTITION "public"."s_p2001_01_08" FOR VALUES FROM ('2001-01-08') TO ('2001-01-15');
ALTER TABLE "public"."s_01_pgcleave_hold" DETACH PARTITION "public"."s_p2001_01_15";
ALTER TABLE "public"."s" ATTACH PARTITION "public"."s_p2001_01_15" FOR VALUES FROM ('2001-01-15') TO ('2001-01-22');
ALTER TABLE "public"."s_01_pgcleave_hold" DETACH PARTITION "public"."s_p2001_01_22";
ALTER TABLE "public"."s" ATTACH PARTITION "public"."s_p2001_01_22" FOR VALUES FROM ('2001-01-22') TO ('2001-01-29');
ALTER TABLE "public"."s" ATTACH PARTITION "public"."s_01_pgcleave_hold" FOR VALUES FROM ('2001-01-29') TO ('2001-02-01');
LOCK TABLE ONLY "public"."s" IN ACCESS EXCLUSIVE MODE;
ALTER TABLE "public"."s" DETACH PARTITION "public"."s_01_pgcleave_hold";
ALTER TABLE "public"."s_01_pgcleave_hold" DETACH PARTITION "public"."s_p2001_01_29";
ALTER TABLE "public"."s" ATTACH PARTITION "public"."s_p2001_01_29" FOR VALUES FROM ('2001-01-29') TO ('2001-02-01');
DROP TABLE "public"."s_01_pgcleave_hold";
COMMIT;

-- step 5/5 [carve-drop-old]: drop the detached s_01_pgcleave_retired, the key log and the capture function
--   locks: ACCESS EXCLUSIVE on s_01_pgcleave_retired (detached, unused)
--   runs: autocommit, not in a transaction, under lock_timeout with retry
DROP TABLE IF EXISTS "public"."s_01_pgcleave_retired";
DROP TABLE IF EXISTS "pgcleave"."carve_<oid:public.s_01>_log";
DROP FUNCTION IF EXISTS "pgcleave"."carve_<oid:public.s_01>"();
