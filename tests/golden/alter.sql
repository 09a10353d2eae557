-- pgcleave alter public."Ex"
-- note: remote partitions on: public."Ex d" (db2)
-- requires: owner of "Ex"
-- requires: owner of "Ex d" on server db2
-- requires: max_prepared_transactions > 0 (two-phase commit) on server db2

-- step 1/2 [alter]: prepare the change on 1 shard table(s), then apply it to "Ex" and decide (two-phase commit)
--   locks: ACCESS EXCLUSIVE on "Ex"
--   runs: one transaction, under lock_timeout with retry
--   action: alter.apply {"shards": [{"partition": "public.\"Ex d\"", "remote": ["public", "Ex d"], "server": "db2", "statement": "ALTER TABLE \"public\".\"Ex d\" ADD COLUMN \"Due On\" date"}], "statement": "ALTER TABLE \"public\".\"Ex\" ADD COLUMN \"Due On\" date", "table": ["public", "Ex"], "target": "\"Ex\""}
BEGIN;
LOCK TABLE ONLY "public"."Ex" IN ACCESS EXCLUSIVE MODE;
-- on db2: BEGIN; ALTER TABLE "public"."Ex d" ADD COLUMN "Due On" date; PREPARE TRANSACTION '<gid>';
ALTER TABLE "public"."Ex" ADD COLUMN "Due On" date;
UPDATE pgcleave.twophase SET state = 'commit' WHERE gid IN (<gids>);
COMMIT;

-- step 2/2 [commit-prepared]: commit the prepared change on every shard
--   locks: no table lock
--   runs: autocommit, not in a transaction
--   action: alter.commit {}
-- on db2: COMMIT PREPARED '<gid>';
