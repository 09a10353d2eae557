-- pgcleave drop-partition public."Metrics"
-- requires: owner of "Metrics"

-- step 1/1 [drop-partition]: drop the empty partition "Metrics 300" of "Metrics"
--   locks: ACCESS EXCLUSIVE on "Metrics 300"; ACCESS EXCLUSIVE on "Metrics"
--   runs: one transaction, under lock_timeout with retry
BEGIN;
LOCK TABLE "public"."Metrics 300" IN ACCESS EXCLUSIVE MODE;
DO $$ BEGIN IF EXISTS (SELECT FROM "public"."Metrics 300") THEN RAISE EXCEPTION 'partition % holds rows: not dropped', '"Metrics 300"'; END IF; END $$;
DROP TABLE "public"."Metrics 300";
COMMIT;
