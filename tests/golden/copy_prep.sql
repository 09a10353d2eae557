-- pgcleave prep public.ledger
-- note: from now on every write to ledger also writes ledger_intermediate (in the same transaction)
-- requires: owner of ledger
-- requires: CREATE on schema public

-- step 1/5 [create-intermediate]: create ledger_intermediate partitioned by range (id), its key, indexes and DEFAULT partition
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

-- step 2/5 [partition ledger_p2000]: create partition ledger_p2000 for [2000, 3000)
--   locks: ACCESS EXCLUSIVE on ledger_intermediate; ACCESS EXCLUSIVE on ledger_default
--   runs: one transaction, under lock_timeout with retry
BEGIN;
LOCK TABLE "public"."ledger_intermediate" IN ACCESS EXCLUSIVE MODE;
LOCK TABLE "public"."ledger_default" IN ACCESS EXCLUSIVE MODE;
CREATE TEMP TABLE "pgcleave_moving" ON COMMIT DROP AS SELECT "id", "account", "amount" FROM "public"."ledger_default" WHERE "id" >= '2000'::bigint AND "id" < '3000'::bigint;
DELETE FROM "public"."ledger_default" WHERE "id" >= '2000'::bigint AND "id" < '3000'::bigint;
CREATE TABLE "public"."ledger_p2000" PARTITION OF "public"."ledger_intermediate" FOR VALUES FROM ('2000') TO ('3000');
INSERT INTO "public"."ledger_intermediate" ("id", "account", "amount") OVERRIDING SYSTEM VALUE SELECT "id", "account", "amount" FROM "pgcleave_moving";
DROP TABLE "pgcleave_moving";
COMMIT;
--   undo: DROP TABLE "public"."ledger_p2000";

-- step 3/5 [partition ledger_p3000]: create partition ledger_p3000 for [3000, 4000)
--   locks: ACCESS EXCLUSIVE on ledger_intermediate; ACCESS EXCLUSIVE on ledger_default
--   runs: one transaction, under lock_timeout with retry
BEGIN;
LOCK TABLE "public"."ledger_intermediate" IN ACCESS EXCLUSIVE MODE;
LOCK TABLE "public"."ledger_default" IN ACCESS EXCLUSIVE MODE;
CREATE TEMP TABLE "pgcleave_moving" ON COMMIT DROP AS SELECT "id", "account", "amount" FROM "public"."ledger_default" WHERE "id" >= '3000'::bigint AND "id" < '4000'::bigint;
DELETE FROM "public"."ledger_default" WHERE "id" >= '3000'::bigint AND "id" < '4000'::bigint;
CREATE TABLE "public"."ledger_p3000" PARTITION OF "public"."ledger_intermediate" FOR VALUES FROM ('3000') TO ('4000');
INSERT INTO "public"."ledger_intermediate" ("id", "account", "amount") OVERRIDING SYSTEM VALUE SELECT "id", "account", "amount" FROM "pgcleave_moving";
DROP TABLE "pgcleave_moving";
COMMIT;
--   undo: DROP TABLE "public"."ledger_p3000";

-- step 4/5 [partition ledger_p4000]: create partition ledger_p4000 for [4000, 5000)
--   locks: ACCESS EXCLUSIVE on ledger_intermediate; ACCESS EXCLUSIVE on ledger_default
--   runs: one transaction, under lock_timeout with retry
BEGIN;
LOCK TABLE "public"."ledger_intermediate" IN ACCESS EXCLUSIVE MODE;
LOCK TABLE "public"."ledger_default" IN ACCESS EXCLUSIVE MODE;
CREATE TEMP TABLE "pgcleave_moving" ON COMMIT DROP AS SELECT "id", "account", "amount" FROM "public"."ledger_default" WHERE "id" >= '4000'::bigint AND "id" < '5000'::bigint;
DELETE FROM "public"."ledger_default" WHERE "id" >= '4000'::bigint AND "id" < '5000'::bigint;
CREATE TABLE "public"."ledger_p4000" PARTITION OF "public"."ledger_intermediate" FOR VALUES FROM ('4000') TO ('5000');
INSERT INTO "public"."ledger_intermediate" ("id", "account", "amount") OVERRIDING SYSTEM VALUE SELECT "id", "account", "amount" FROM "pgcleave_moving";
DROP TABLE "pgcleave_moving";
COMMIT;
--   undo: DROP TABLE "public"."ledger_p4000";

-- step 5/5 [capture]: start capturing every change of ledger into ledger_intermediate
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
