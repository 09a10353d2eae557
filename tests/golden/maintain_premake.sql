-- pgcleave maintain public.r
-- note: policy: range (d), every 1 month, premake 3, no retention
-- requires: owner of r
-- requires: CREATE on schema public

-- step 1/1 [premake:create]: create 2 partition(s) of r: r_p2001_05, r_p2001_06
--   locks: ACCESS EXCLUSIVE on r
--   runs: one transaction, under lock_timeout with retry
BEGIN;
CREATE TABLE "public"."r_p2001_05" PARTITION OF "public"."r" FOR VALUES FROM ('2001-05-01') TO ('2001-06-01');
CREATE TABLE "public"."r_p2001_06" PARTITION OF "public"."r" FOR VALUES FROM ('2001-06-01') TO ('2001-07-01');
COMMIT;
--   undo: DROP TABLE IF EXISTS "public"."r_p2001_06"; DROP TABLE IF EXISTS "public"."r_p2001_05";
