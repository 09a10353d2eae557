-- pgcleave create-index public.r
-- requires: owner of r

-- step 1/9 [index-only:r]: create index r by ref ON ONLY r (invalid until every partition's index is attached; no build)
--   locks: SHARE on r
--   runs: one transaction, under lock_timeout with retry
CREATE INDEX IF NOT EXISTS "r by ref" ON ONLY "public"."r" ("ref", "d");
--   undo: DROP INDEX IF EXISTS "public"."r by ref";

-- step 2/9 [build:r_01]: build index r_01_ref_d_idx on r_01 concurrently
--   locks: SHARE UPDATE EXCLUSIVE on r_01
--   runs: autocommit, not in a transaction
DROP INDEX CONCURRENTLY IF EXISTS "public"."r_01_ref_d_idx";
CREATE INDEX CONCURRENTLY "r_01_ref_d_idx" ON "public"."r_01" ("ref", "d");
--   undo: DROP INDEX CONCURRENTLY IF EXISTS "public"."r_01_ref_d_idx";

-- step 3/9 [attach:r_01_ref_d_idx]: attach index r_01_ref_d_idx to r by ref
--   locks: SHARE UPDATE EXCLUSIVE on "r by ref"; ACCESS EXCLUSIVE on r_01_ref_d_idx (index of r_01)
--   runs: one transaction, under lock_timeout with retry
ALTER INDEX "public"."r by ref" ATTACH PARTITION "public"."r_01_ref_d_idx";

-- step 4/9 [build:r_02]: build index r_02_ref_d_idx on r_02 concurrently
--   locks: SHARE UPDATE EXCLUSIVE on r_02
--   runs: autocommit, not in a transaction
DROP INDEX CONCURRENTLY IF EXISTS "public"."r_02_ref_d_idx";
CREATE INDEX CONCURRENTLY "r_02_ref_d_idx" ON "public"."r_02" ("ref", "d");
--   undo: DROP INDEX CONCURRENTLY IF EXISTS "public"."r_02_ref_d_idx";

-- step 5/9 [attach:r_02_ref_d_idx]: attach index r_02_ref_d_idx to r by ref
--   locks: SHARE UPDATE EXCLUSIVE on "r by ref"; ACCESS EXCLUSIVE on r_02_ref_d_idx (index of r_02)
--   runs: one transaction, under lock_timeout with retry
ALTER INDEX "public"."r by ref" ATTACH PARTITION "public"."r_02_ref_d_idx";

-- step 6/9 [build:r_03]: build index r_03_ref_d_idx on r_03 concurrently
--   locks: SHARE UPDATE EXCLUSIVE on r_03
--   runs: autocommit, not in a transaction
DROP INDEX CONCURRENTLY IF EXISTS "public"."r_03_ref_d_idx";
CREATE INDEX CONCURRENTLY "r_03_ref_d_idx" ON "public"."r_03" ("ref", "d");
--   undo: DROP INDEX CONCURRENTLY IF EXISTS "public"."r_03_ref_d_idx";

-- step 7/9 [attach:r_03_ref_d_idx]: attach index r_03_ref_d_idx to r by ref
--   locks: SHARE UPDATE EXCLUSIVE on "r by ref"; ACCESS EXCLUSIVE on r_03_ref_d_idx (index of r_03)
--   runs: one transaction, under lock_timeout with retry
ALTER INDEX "public"."r by ref" ATTACH PARTITION "public"."r_03_ref_d_idx";

-- step 8/9 [build:r_04]: build index r_04_ref_d_idx on r_04 concurrently
--   locks: SHARE UPDATE EXCLUSIVE on r_04
--   runs: autocommit, not in a transaction
DROP INDEX CONCURRENTLY IF EXISTS "public"."r_04_ref_d_idx";
CREATE INDEX CONCURRENTLY "r_04_ref_d_idx" ON "public"."r_04" ("ref", "d");
--   undo: DROP INDEX CONCURRENTLY IF EXISTS "public"."r_04_ref_d_idx";

-- step 9/9 [attach:r_04_ref_d_idx]: attach index r_04_ref_d_idx to r by ref
--   locks: SHARE UPDATE EXCLUSIVE on "r by ref"; ACCESS EXCLUSIVE on r_04_ref_d_idx (index of r_04)
--   runs: one transaction, under lock_timeout with retry
ALTER INDEX "public"."r by ref" ATTACH PARTITION "public"."r_04_ref_d_idx";
