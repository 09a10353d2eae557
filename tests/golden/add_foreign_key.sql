-- pgcleave add-foreign-key public.r
-- note: rows are checked by VALIDATE, which lets writes continue; the statements that take write-blocking locks do not read rows
-- requires: owner of r
-- requires: REFERENCES on refs

-- step 1/9 [fk-add:r_01]: add foreign key r_ref_fk on r_01 NOT VALID (no scan)
--   locks: SHARE ROW EXCLUSIVE on r_01; SHARE ROW EXCLUSIVE on refs
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "public"."r_01" ADD CONSTRAINT "r_ref_fk" FOREIGN KEY ("ref") REFERENCES "public"."refs" ("id") ON DELETE RESTRICT NOT VALID;
--   undo: ALTER TABLE "public"."r_01" DROP CONSTRAINT IF EXISTS "r_ref_fk";
--   if the job stops here: refuses rows of r_01 that foreign key r_ref_fk rejects; undone at once on a failure

-- step 2/9 [fk-validate:r_01]: validate r_ref_fk on r_01 (scans; writes continue)
--   locks: SHARE UPDATE EXCLUSIVE on r_01; ROW SHARE on refs
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "public"."r_01" VALIDATE CONSTRAINT "r_ref_fk";

-- step 3/9 [fk-add:r_02]: add foreign key r_ref_fk on r_02 NOT VALID (no scan)
--   locks: SHARE ROW EXCLUSIVE on r_02; SHARE ROW EXCLUSIVE on refs
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "public"."r_02" ADD CONSTRAINT "r_ref_fk" FOREIGN KEY ("ref") REFERENCES "public"."refs" ("id") ON DELETE RESTRICT NOT VALID;
--   undo: ALTER TABLE "public"."r_02" DROP CONSTRAINT IF EXISTS "r_ref_fk";
--   if the job stops here: refuses rows of r_02 that foreign key r_ref_fk rejects; undone at once on a failure

-- step 4/9 [fk-validate:r_02]: validate r_ref_fk on r_02 (scans; writes continue)
--   locks: SHARE UPDATE EXCLUSIVE on r_02; ROW SHARE on refs
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "public"."r_02" VALIDATE CONSTRAINT "r_ref_fk";

-- step 5/9 [fk-add:r_03]: add foreign key r_ref_fk on r_03 NOT VALID (no scan)
--   locks: SHARE ROW EXCLUSIVE on r_03; SHARE ROW EXCLUSIVE on refs
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "public"."r_03" ADD CONSTRAINT "r_ref_fk" FOREIGN KEY ("ref") REFERENCES "public"."refs" ("id") ON DELETE RESTRICT NOT VALID;
--   undo: ALTER TABLE "public"."r_03" DROP CONSTRAINT IF EXISTS "r_ref_fk";
--   if the job stops here: refuses rows of r_03 that foreign key r_ref_fk rejects; undone at once on a failure

-- step 6/9 [fk-validate:r_03]: validate r_ref_fk on r_03 (scans; writes continue)
--   locks: SHARE UPDATE EXCLUSIVE on r_03; ROW SHARE on refs
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "public"."r_03" VALIDATE CONSTRAINT "r_ref_fk";

-- step 7/9 [fk-add:r_04]: add foreign key r_ref_fk on r_04 NOT VALID (no scan)
--   locks: SHARE ROW EXCLUSIVE on r_04; SHARE ROW EXCLUSIVE on refs
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "public"."r_04" ADD CONSTRAINT "r_ref_fk" FOREIGN KEY ("ref") REFERENCES "public"."refs" ("id") ON DELETE RESTRICT NOT VALID;
--   undo: ALTER TABLE "public"."r_04" DROP CONSTRAINT IF EXISTS "r_ref_fk";
--   if the job stops here: refuses rows of r_04 that foreign key r_ref_fk rejects; undone at once on a failure

-- step 8/9 [fk-validate:r_04]: validate r_ref_fk on r_04 (scans; writes continue)
--   locks: SHARE UPDATE EXCLUSIVE on r_04; ROW SHARE on refs
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "public"."r_04" VALIDATE CONSTRAINT "r_ref_fk";

-- step 9/9 [fk-adopt:r]: add foreign key r_ref_fk on the parent r: adopts the partitions' validated keys, no scan
--   locks: SHARE ROW EXCLUSIVE on r; SHARE ROW EXCLUSIVE on its partitions; ACCESS EXCLUSIVE on refs
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "public"."r" ADD CONSTRAINT "r_ref_fk" FOREIGN KEY ("ref") REFERENCES "public"."refs" ("id") ON DELETE RESTRICT;
--   undo: ALTER TABLE "public"."r" DROP CONSTRAINT IF EXISTS "r_ref_fk";
