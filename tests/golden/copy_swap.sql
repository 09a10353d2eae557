-- pgcleave swap public.ledger
-- note: ledger becomes ledger_retired; changes keep flowing into it until `pgcleave unprep ledger`, so `pgcleave unswap ledger` loses nothing
-- requires: owner of ledger
-- requires: CREATE on schema public
-- requires: owner of ledger_intermediate

-- step 1/2 [verify]: compare ledger and ledger_intermediate: row count and hash per partition range, in one snapshot
--   locks: ACCESS SHARE on ledger, ledger_intermediate
--   runs: one transaction
--   action: copy.verify {"table": ["public", "ledger"]}
BEGIN;
-- in one REPEATABLE READ snapshot, for each table:;
SELECT width_bucket(id, ARRAY[<partition bounds>]), count(*), sum(hashtextextended(ROW(...)::text, 0)) ... GROUP BY 1;
COMMIT;

-- step 2/2 [swap]: swap ledger and ledger_intermediate (the old table stays as ledger_retired, kept in sync)
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
