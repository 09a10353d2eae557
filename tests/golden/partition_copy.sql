-- pgcleave partition public.ledger
-- note: 5 partitions of 1000 plus a DEFAULT partition; ledger is kept as ledger_retired, in sync, until `pgcleave unprep`
-- requires: owner of ledger
-- requires: CREATE on schema public

-- step 1/11 [create-intermediate]: create ledger_intermediate partitioned by range (id), its key, indexes and DEFAULT partition
--   locks: ACCESS SHARE on ledger
--   runs: one transaction, under lock_timeout with retry
BEGIN;
CREATE TABLE "public"."ledger_intermediate" (LIKE "public"."ledger" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMMENTS INCLUDING STATISTICS INCLUDING COMPRESSION) PARTITION BY RANGE ("id");
ALTER TABLE "public"."ledger_intermediate" ADD CONSTRAINT "ledger_intermediate_pkey" PRIMARY KEY ("id");
CREATE INDEX "ledger_intermediate_account" ON "public"."ledger_intermediate" USING btree (account);
CREATE TABLE "public"."ledger_default" PARTITION OF "public"."ledger_intermediate" DEFAULT;
INSERT INTO pgcleave.copies (table_schema, table_name, table_oid, intermediate, retired, by_column, "interval", time_zone, deferred) VALUES ('public', 'ledger', <oid:public.ledger>, 'ledger_intermediate', 'ledger_retired', 'id', '1000', 'UTC', '[]'::jsonb);
COMMIT;
--   undo: DROP TABLE IF EXISTS "public"."ledger_intermediate"; DELETE FROM pgcleave.copies WHERE table_schema = 'public' AND table_name = 'ledger';

-- step 2/11 [partition ledger_p0]: create partition ledger_p0 for [0, 1000)
--   locks: ACCESS EXCLUSIVE on ledger_intermediate
--   runs: one transaction, under lock_timeout with retry
CREATE TABLE "public"."ledger_p0" PARTITION OF "public"."ledger_intermediate" FOR VALUES FROM ('0') TO ('1000');
--   undo: DROP TABLE "public"."ledger_p0";

-- step 3/11 [partition ledger_p1000]: create partition ledger_p1000 for [1000, 2000)
--   locks: ACCESS EXCLUSIVE on ledger_intermediate
--   runs: one transaction, under lock_timeout with retry
CREATE TABLE "public"."ledger_p1000" PARTITION OF "public"."ledger_intermediate" FOR VALUES FROM ('1000') TO ('2000');
--   undo: DROP TABLE "public"."ledger_p1000";

-- step 4/11 [partition ledger_p2000]: create partition ledger_p2000 for [2000, 3000)
--   locks: ACCESS EXCLUSIVE on ledger_intermediate
--   runs: one transaction, under lock_timeout with retry
CREATE TABLE "public"."ledger_p2000" PARTITION OF "public"."ledger_intermediate" FOR VALUES FROM ('2000') TO ('3000');
--   undo: DROP TABLE "public"."ledger_p2000";

-- step 5/11 [partition ledger_p3000]: create partition ledger_p3000 for [3000, 4000)
--   locks: ACCESS EXCLUSIVE on ledger_intermediate
--   runs: one transaction, under lock_timeout with retry
CREATE TABLE "public"."ledger_p3000" PARTITION OF "public"."ledger_intermediate" FOR VALUES FROM ('3000') TO ('4000');
--   undo: DROP TABLE "public"."ledger_p3000";

-- step 6/11 [partition ledger_p4000]: create partition ledger_p4000 for [4000, 5000)
--   locks: ACCESS EXCLUSIVE on ledger_intermediate
--   runs: one transaction, under lock_timeout with retry
CREATE TABLE "public"."ledger_p4000" PARTITION OF "public"."ledger_intermediate" FOR VALUES FROM ('4000') TO ('5000');
--   undo: DROP TABLE "public"."ledger_p4000";

-- step 7/11 [capture]: start capturing every change of ledger into ledger_intermediate
--   locks: SHARE ROW EXCLUSIVE on ledger
--   runs: one transaction, under lock_timeout with retry
BEGIN;
CREATE OR REPLACE FUNCTION "pgcleave"."copy_capture_<oid:public.ledger>"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS '
BEGIN
  IF TG_OP = ''INSERT'' THEN
    INSERT INTO "public"."ledger_intermediate" ("id", "account", "amount") OVERRIDING SYSTEM VALUE VALUES (NEW."id", NEW."account", NEW."amount") ON CONFLICT ("id") DO UPDATE SET "account" = EXCLUDED."account", "amount" = EXCLUDED."amount";
  ELSIF TG_OP = ''UPDATE'' THEN
    IF ROW(OLD."id") IS DISTINCT FROM ROW(NEW."id") THEN
    PERFORM pg_catalog.pg_advisory_xact_lock_shared(<lock> + (w::bigint << 32)) FROM pg_catalog.generate_series(0, 7) w;
    DELETE FROM "public"."ledger_intermediate" WHERE "id" = OLD."id";
    END IF;
    INSERT INTO "public"."ledger_intermediate" ("id", "account", "amount") OVERRIDING SYSTEM VALUE VALUES (NEW."id", NEW."account", NEW."amount") ON CONFLICT ("id") DO UPDATE SET "account" = EXCLUDED."account", "amount" = EXCLUDED."amount";
  ELSE
    PERFORM pg_catalog.pg_advisory_xact_lock_shared(<lock> + (w::bigint << 32)) FROM pg_catalog.generate_series(0, 7) w;
    DELETE FROM "public"."ledger_intermediate" WHERE "id" = OLD."id";
  END IF;
  RETURN NULL;
END
';
CREATE TRIGGER "pgcleave_capture" AFTER INSERT OR UPDATE OR DELETE ON "public"."ledger" FOR EACH ROW EXECUTE FUNCTION "pgcleave"."copy_capture_<oid:public.ledger>"();
CREATE OR REPLACE FUNCTION "pgcleave"."copy_truncate_<oid:public.ledger>"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS '
BEGIN
  TRUNCATE "public"."ledger_intermediate";
  RETURN NULL;
END
';
CREATE TRIGGER "pgcleave_capture_truncate" AFTER TRUNCATE ON "public"."ledger" FOR EACH STATEMENT EXECUTE FUNCTION "pgcleave"."copy_truncate_<oid:public.ledger>"();
COMMIT;
--   undo: DROP TRIGGER IF EXISTS "pgcleave_capture" ON "public"."ledger"; DROP TRIGGER IF EXISTS "pgcleave_capture_truncate" ON "public"."ledger"; DROP FUNCTION IF EXISTS "pgcleave"."copy_capture_<oid:public.ledger>"();

-- step 8/11 [fill]: copy the rows of ledger into ledger_intermediate in batches of ~10000 rows by block ranges
--   locks: ACCESS SHARE on ledger; ROW EXCLUSIVE on ledger_intermediate
--   runs: one transaction
--   action: copy.fill {"advisory": <lock>, "batch_size": 10000, "columns": ["id", "account", "amount"], "default": ["public", "ledger_default"], "max_rate": null, "order": "physical", "pk": ["id"], "pk_types": ["bigint"], "sleep": 0.0, "source": ["public", "ledger"], "state": ["public", "ledger"], "target": ["public", "ledger_intermediate"], "where": null}
BEGIN; SELECT pg_advisory_xact_lock(<lock>); INSERT INTO "public"."ledger_intermediate" ("id", "account", "amount") OVERRIDING SYSTEM VALUE SELECT "id", "account", "amount" FROM ONLY "public"."ledger" WHERE ctid >= '($block,0)' AND ctid < '($block + n,0)' [ON CONFLICT DO NOTHING]; COMMIT;

-- step 9/11 [analyze]: ANALYZE ledger_intermediate and its partitions
--   locks: SHARE UPDATE EXCLUSIVE on ledger_intermediate and each partition
--   runs: autocommit, not in a transaction
ANALYZE "public"."ledger_intermediate";

-- step 10/11 [verify]: compare ledger and ledger_intermediate: row count and hash per partition range, in one snapshot
--   locks: ACCESS SHARE on ledger, ledger_intermediate
--   runs: one transaction
--   action: copy.verify {"table": ["public", "ledger"]}
BEGIN;
-- in one REPEATABLE READ snapshot, for each table:;
SELECT width_bucket(id, ARRAY[<partition bounds>]), count(*), sum(hashtextextended(ROW(...)::text, 0)) ... GROUP BY 1;
COMMIT;

-- step 11/11 [swap]: swap ledger and ledger_intermediate (the old table stays as ledger_retired, kept in sync)
--   locks: ACCESS EXCLUSIVE on ledger; ACCESS EXCLUSIVE on ledger_intermediate
--   runs: one transaction, under lock_timeout with retry
BEGIN;
LOCK TABLE "public"."ledger" IN ACCESS EXCLUSIVE MODE;
LOCK TABLE "public"."ledger_intermediate" IN ACCESS EXCLUSIVE MODE;
DROP TRIGGER IF EXISTS "pgcleave_capture" ON "public"."ledger";
DROP TRIGGER IF EXISTS "pgcleave_capture_truncate" ON "public"."ledger";
ALTER TABLE "public"."ledger" RENAME TO "ledger_retired";
ALTER TABLE "public"."ledger_intermediate" RENAME TO "ledger";
ALTER INDEX "public"."ledger_account" RENAME TO "ledger_retired_account";
ALTER TABLE "public"."ledger_retired" RENAME CONSTRAINT "ledger_pkey" TO "ledger_retired_pkey";
ALTER INDEX "public"."ledger_intermediate_account" RENAME TO "ledger_account";
ALTER TABLE "public"."ledger" RENAME CONSTRAINT "ledger_intermediate_pkey" TO "ledger_pkey";
ALTER TABLE "public"."ledger" OWNER TO "postgres";
CREATE OR REPLACE FUNCTION "pgcleave"."copy_capture_back_<oid:public.ledger>"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS '
BEGIN
  IF TG_OP = ''INSERT'' THEN
    INSERT INTO "public"."ledger_retired" ("id", "account", "amount") OVERRIDING SYSTEM VALUE VALUES (NEW."id", NEW."account", NEW."amount") ON CONFLICT ("id") DO UPDATE SET "account" = EXCLUDED."account", "amount" = EXCLUDED."amount";
  ELSIF TG_OP = ''UPDATE'' THEN
    IF ROW(OLD."id") IS DISTINCT FROM ROW(NEW."id") THEN
    PERFORM pg_catalog.pg_advisory_xact_lock_shared(<lock> + (w::bigint << 32)) FROM pg_catalog.generate_series(0, 7) w;
    DELETE FROM "public"."ledger_retired" WHERE "id" = OLD."id";
    END IF;
    INSERT INTO "public"."ledger_retired" ("id", "account", "amount") OVERRIDING SYSTEM VALUE VALUES (NEW."id", NEW."account", NEW."amount") ON CONFLICT ("id") DO UPDATE SET "account" = EXCLUDED."account", "amount" = EXCLUDED."amount";
  ELSE
    PERFORM pg_catalog.pg_advisory_xact_lock_shared(<lock> + (w::bigint << 32)) FROM pg_catalog.generate_series(0, 7) w;
    DELETE FROM "public"."ledger_retired" WHERE "id" = OLD."id";
  END IF;
  RETURN NULL;
END
';
CREATE TRIGGER "pgcleave_capture_back" AFTER INSERT OR UPDATE OR DELETE ON "public"."ledger" FOR EACH ROW EXECUTE FUNCTION "pgcleave"."copy_capture_back_<oid:public.ledger>"();
CREATE OR REPLACE FUNCTION "pgcleave"."copy_truncate_<oid:public.ledger>"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS '
BEGIN
  TRUNCATE "public"."ledger_retired";
  RETURN NULL;
END
';
CREATE TRIGGER "pgcleave_capture_truncate" AFTER TRUNCATE ON "public"."ledger" FOR EACH STATEMENT EXECUTE FUNCTION "pgcleave"."copy_truncate_<oid:public.ledger>"();
UPDATE pgcleave.copies SET state = 'swapped', swapped_at = now() WHERE table_schema = 'public' AND table_name = 'ledger';
COMMIT;
