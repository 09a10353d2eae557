-- pgcleave maintain public.r
-- note: policy: range (d), every 1 month, premake 0, retention 2 months then archive (copy) to <archive_dir>
-- requires: owner of r
-- requires: CREATE on schema public
-- requires: a writable archive directory <archive_dir>

-- step 1/3 [prearchive:r_01]: archive r_01 (FOR VALUES FROM ('2001-01-01') TO ('2001-02-01')) to <archive_dir>/public.r_01.copy.gz while it is still attached, from one snapshot (readers and writers go on)
--   locks: ACCESS SHARE on r_01
--   runs: one transaction, under lock_timeout with retry
--   action: retention.prearchive {"bound": "FOR VALUES FROM ('2001-01-01') TO ('2001-02-01')", "dir": "<archive_dir>", "format": "copy", "key_column": "d", "key_type": "date", "parent": {"name": "r", "schema": "public"}, "partition": {"name": "r_01", "schema": "public"}}
BEGIN;
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;
SELECT count(*) || ':' || coalesce(sum(hashtextextended(t::text, 0)), 0) FROM ONLY "public"."r_01" t  -- recorded in the manifest;
COPY (SELECT * FROM ONLY "public"."r_01") TO STDOUT  -- gzip into <archive_dir>/public.r_01.copy.gz, read back and counted;
COMMIT;

-- step 2/3 [detach:r_01]: detach r_01 from r concurrently
--   locks: SHARE UPDATE EXCLUSIVE on r; ACCESS EXCLUSIVE on r_01 (waits for older snapshots)
--   runs: autocommit, not in a transaction, under lock_timeout with retry
--   action: retention.detach {"concurrently": true, "parent": {"name": "r", "schema": "public"}, "partition": {"name": "r_01", "schema": "public"}}
ALTER TABLE "public"."r" DETACH PARTITION "public"."r_01" CONCURRENTLY;
--   if the job stops here: rows of r_01 are not visible through r and not archived yet (detached by retention)

-- step 3/3 [archive:r_01]: check r_01 (FOR VALUES FROM ('2001-01-01') TO ('2001-02-01')) against its archive <archive_dir>/public.r_01.copy.gz (write it again if the table changed since), then drop it
--   locks: SHARE on r_01 (detached); ACCESS EXCLUSIVE on r_01 (detached, to drop it)
--   runs: one transaction, under lock_timeout with retry
--   action: retention.archive {"bound": "FOR VALUES FROM ('2001-01-01') TO ('2001-02-01')", "dir": "<archive_dir>", "format": "copy", "key_column": "d", "key_type": "date", "parent": {"name": "r", "schema": "public"}, "partition": {"name": "r_01", "schema": "public"}}
BEGIN;
LOCK TABLE "public"."r_01" IN SHARE MODE;
SELECT count(*) || ':' || coalesce(sum(hashtextextended(t::text, 0)), 0) FROM ONLY "public"."r_01" t  -- as in the manifest: only the DROP; otherwise (written to after the archive) the COPY again;
COPY (SELECT * FROM ONLY "public"."r_01") TO STDOUT  -- gzip into <archive_dir>/public.r_01.copy.gz, read back and counted;
DROP TABLE "public"."r_01";
COMMIT;
