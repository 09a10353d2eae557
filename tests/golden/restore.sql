-- pgcleave restore public.r
-- note: restore 123 rows of r_01 (FOR VALUES FROM ('2001-01-01') TO ('2001-02-01')) from <archive_dir>/public.r_01.copy.gz
-- WARNING: the policy of r retires data older than 2 months: if this range is that old, the next `maintain` retires it again (change it with `pgcleave config --retention`, or restore with --as-table)
-- requires: owner of r
-- requires: CREATE on schema public

-- step 1/4 [restore:create]: create r_01 like r, with a CHECK of its bound
--   locks: no table lock
--   runs: one transaction, under lock_timeout with retry
BEGIN;
CREATE TABLE "public"."r_01" (LIKE "public"."r" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES INCLUDING GENERATED INCLUDING STORAGE);
ALTER TABLE "public"."r_01" ADD CONSTRAINT pgcleave_bound CHECK ("d" IS NOT NULL AND "d" >= ('2001-01-01')::date AND "d" < ('2001-02-01')::date);
COMMIT;
--   undo: DROP TABLE IF EXISTS "public"."r_01";

-- step 2/4 [restore:load]: COPY the 123 archived rows into r_01 and check count and checksum against the manifest
--   locks: ROW EXCLUSIVE on r_01 (new)
--   runs: one transaction
--   action: retention.load {"cols": ["id", "d", "ref", "v"], "manifest": "<archive_dir>/public.r_01.json", "table": {"name": "r_01", "schema": "public"}}
COPY "public"."r_01" ("id", "d", "ref", "v") FROM STDIN  -- from <archive_dir>/public.r_01.copy.gz;

-- step 3/4 [restore:attach]: attach r_01 to r (no scan: CHECKs prove it)
--   locks: SHARE UPDATE EXCLUSIVE on r; ACCESS EXCLUSIVE on r_01 and the DEFAULT
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "public"."r" ATTACH PARTITION "public"."r_01" FOR VALUES FROM ('2001-01-01') TO ('2001-02-01');

-- step 4/4 [restore:record]: mark the archive restored
--   locks: no table lock
--   runs: one transaction
UPDATE pgcleave.archives SET restored_at = now() WHERE partition = 'public.r_01' AND path = '<archive_dir>/public.r_01.json' AND restored_at IS NULL;
