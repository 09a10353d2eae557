-- pgcleave drop-index public.r
-- note: dropping a partitioned index takes ACCESS EXCLUSIVE on the table and its partitions for the few milliseconds the catalog change takes; it is tried under lock_timeout and retried
-- requires: owner of r

-- step 1/1 [drop:r_v]: drop partitioned index r_v and its partitions' indexes (catalog only; PostgreSQL has no DROP INDEX CONCURRENTLY for it)
--   locks: ACCESS EXCLUSIVE on r; ACCESS EXCLUSIVE on its partitions
--   runs: one transaction, under lock_timeout with retry
DROP INDEX IF EXISTS "public"."r_v";
