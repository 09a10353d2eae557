-- pgcleave carve public."Metrics"
-- note: carve from "Metrics_default" (DEFAULT): method direct: chosen with --method direct
-- requires: owner of "Metrics"
-- requires: CREATE on schema public
-- requires: owner of "Metrics_default"

-- step 1/1 [carve-direct]: one transaction: move the rows into Metrics_1 and attach (PostgreSQL scans the rest of "Metrics_default" under the lock)
--   locks: ACCESS EXCLUSIVE on "Metrics"; ACCESS EXCLUSIVE on "Metrics_default"
--   runs: one transaction, under lock_timeout with retry
BEGIN;
LOCK TABLE ONLY "public"."Metrics" IN ACCESS EXCLUSIVE MODE;
LOCK TABLE ONLY "public"."Metrics_default" IN ACCESS EXCLUSIVE MODE;
CREATE TABLE "public"."Metrics_1" (LIKE "public"."Metrics_default" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING INDEXES INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING STATISTICS);
ALTER TABLE "public"."Metrics_1" ADD CONSTRAINT "pgcleave_bound" CHECK ("k" IS NOT NULL AND ("k" >= ('100')::integer AND "k" < ('200')::integer));
WITH moved AS (DELETE FROM ONLY "public"."Metrics_default" WHERE ("k" >= ('100')::integer AND "k" < ('200')::integer) RETURNING *) INSERT INTO "public"."Metrics_1" ("k", "v") SELECT "k", "v" FROM moved;
ALTER TABLE "public"."Metrics" ATTACH PARTITION "public"."Metrics_1" FOR VALUES FROM ('100') TO ('200');
ALTER TABLE "public"."Metrics_1" OWNER TO "postgres";
COMMIT;
--   undo: LOCK TABLE ONLY "public"."Metrics" IN ACCESS EXCLUSIVE MODE; ALTER TABLE "public"."Metrics" DETACH PARTITION "public"."Metrics_1"; INSERT INTO "public"."Metrics_default" ("k", "v") SELECT "k", "v" FROM "public"."Metrics_1"; DROP TABLE "public"."Metrics_1";
