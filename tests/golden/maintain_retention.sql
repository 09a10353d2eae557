-- pgcleave maintain public.r
-- note: policy: range (d), every 1 month, premake 0, retention 2 months then archive (copy) to <archive_dir>
-- requires: owner of r
-- requires: CREATE on schema public
-- requires: a writable archive directory <archive_dir>

-- step 1/2 [detach:r_01]: detach r_01 from r concurrently
--   locks: SHARE UPDATE EXCLUSIVE on r; ACCESS EXCLUSIVE on r_01 (waits for older snapshots)
--   runs: autocommit, not in a transaction, under lock_timeout with retry
--   action: retention.detach {"concurrently": true, "parent": {"name": "r", "schema": "public"}, "partition": {"name": "r_01", "schema": "public"}}
ALTER TABLE "public"."r" DETACH PARTITION "public"."r_01" CONCURRENTLY;
--   if the job stops here: rows of r_01 are not visible through r and not archived yet (detached by retention)

-- step 2/2 [archive:r_01]: archive r_01 (FOR VALUES FROM ('2001-01-01') TO ('2001-02-01')) to <archive_dir>/public.r_01.copy.gz, verify, then drop it
--   locks: SHARE on r_01 (detached); ACCESS EXCLUSIVE on r_01 (detached, to drop it)
--   runs: one transaction, under lock_timeout with retry
--   action: retention.archive {"bound": "FOR VALUES FROM ('2001-01-01') TO ('2001-02-01')", "dir": "<archive_dir>", "format": "copy", "key_column": "d", "key_type": "date", "parent": {"name": "r", "schema": "public"}, "partition": {"name": "r_01", "schema": "public"}}
BEGIN;
LOCK TABLE "public"."r_01" IN SHARE MODE;
COPY (SELECT * FROM ONLY "public"."r_01") TO STDOUT  -- gzip into <archive_dir>/public.r_01.copy.gz, read back and counted;
DROP TABLE "public"."r_01";
COMMIT;
