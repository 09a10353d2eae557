-- pgcleave add-partition public."Metrics"
-- note: path: check (chosen with --method check)
-- note: "Metrics_default" is not scanned under the exclusive lock: the validated CHECK proves it holds no row of the new partition
-- note: from the CHECK's creation until Metrics_1 exists (the validation reads "Metrics_default"), an INSERT of a row of the new range fails: it may not go to the DEFAULT and has no partition yet. For a range that is receiving rows, use `pgcleave carve`, which keeps accepting them
-- requires: owner of "Metrics"
-- requires: CREATE on schema public
-- requires: owner of "Metrics_default"

-- step 1/4 [add-exclusion-check]: add CHECK (NOT FOR VALUES FROM ('300') TO ('400')) NOT VALID on the DEFAULT "Metrics_default" (no scan)
--   locks: ACCESS EXCLUSIVE on "Metrics_default" (brief, no scan)
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "public"."Metrics_default" ADD CONSTRAINT "pgcleave_excl_Metrics_1" CHECK (NOT ("k" >= ('300')::integer AND "k" < ('400')::integer)) NOT VALID;
--   undo: ALTER TABLE "public"."Metrics_default" DROP CONSTRAINT IF EXISTS "pgcleave_excl_Metrics_1";
--   if the job stops here: refuses INSERTs of FOR VALUES FROM ('300') TO ('400') (the DEFAULT "Metrics_default" may not take them any more, and their partition is not there yet); undone at once on a failure

-- step 2/4 [validate-exclusion-check]: validate it: scans "Metrics_default" while writes continue (fails if it holds rows of FOR VALUES FROM ('300') TO ('400'): carve them instead)
--   locks: SHARE UPDATE EXCLUSIVE on "Metrics_default"
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "public"."Metrics_default" VALIDATE CONSTRAINT "pgcleave_excl_Metrics_1";

-- step 3/4 [create-partition]: create Metrics_1 FOR VALUES FROM ('300') TO ('400')
--   locks: ACCESS EXCLUSIVE on "Metrics"; ACCESS EXCLUSIVE on "Metrics_default" (no scan)
--   runs: one transaction, under lock_timeout with retry
CREATE TABLE "public"."Metrics_1" PARTITION OF "public"."Metrics" FOR VALUES FROM ('300') TO ('400');
--   undo: DO $pgcleave$ BEGIN IF EXISTS (SELECT 1 FROM "public"."Metrics_1") THEN RAISE EXCEPTION 'partition % holds rows; carve them back before undoing', 'public."Metrics_1"'; END IF; END $pgcleave$; DROP TABLE "public"."Metrics_1";

-- step 4/4 [drop-exclusion-check]: drop the helper CHECK from "Metrics_default" again
--   locks: ACCESS EXCLUSIVE on "Metrics_default" (brief)
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "public"."Metrics_default" DROP CONSTRAINT IF EXISTS "pgcleave_excl_Metrics_1";
--   undo: ALTER TABLE "public"."Metrics_default" ADD CONSTRAINT "pgcleave_excl_Metrics_1" CHECK (NOT ("k" >= ('300')::integer AND "k" < ('400')::integer)) NOT VALID;
