-- pgcleave add-partition public."Metrics"
-- note: path: carve (auto): "Metrics_default" takes writes, so a row FOR VALUES FROM ('300') TO ('400') may arrive while the partition is added; a CHECK excluding the range from the DEFAULT would refuse it (from its creation until the partition exists, the validation reading the whole DEFAULT), so the partition is carved out of "Metrics_default" instead (direct: one short transaction under the parent's lock, any rows of the range moved into the new partition): no application statement is refused
-- note: carve from "Metrics_default" (DEFAULT): method direct: "Metrics_default" holds about 327 rows: the direct method would hold ACCESS EXCLUSIVE on "Metrics" for about 1 ms (within 50 ms)
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
ALTER TABLE "public"."Metrics_1" ADD CONSTRAINT "pgcleave_bound" CHECK ("k" IS NOT NULL AND ("k" >= ('300')::integer AND "k" < ('400')::integer));
WITH moved AS (DELETE FROM ONLY "public"."Metrics_default" WHERE ("k" >= ('300')::integer AND "k" < ('400')::integer) RETURNING *) INSERT INTO "public"."Metrics_1" ("k", "v") SELECT "k", "v" FROM moved;
ALTER TABLE "public"."Metrics" ATTACH PARTITION "public"."Metrics_1" FOR VALUES FROM ('300') TO ('400');
ALTER TABLE "public"."Metrics_1" OWNER TO "postgres";
COMMIT;
--   undo: LOCK TABLE ONLY "public"."Metrics" IN ACCESS EXCLUSIVE MODE; ALTER TABLE "public"."Metrics" DETACH PARTITION "public"."Metrics_1"; INSERT INTO "public"."Metrics_default" ("k", "v") SELECT "k", "v" FROM "public"."Metrics_1"; DROP TABLE "public"."Metrics_1";
