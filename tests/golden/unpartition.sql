-- pgcleave unpartition public.orders
-- note: orders_old becomes orders again; partitions dropped: none
-- requires: owner of orders
-- requires: CREATE on schema public

-- step 1/1 [unpartition]: one transaction: detach orders_old, move 0 rows of 0 other partition(s) into it, give it back the name orders
--   locks: ACCESS EXCLUSIVE on orders
--   runs: one transaction, under lock_timeout with retry
BEGIN;
LOCK TABLE "public"."orders" IN ACCESS EXCLUSIVE MODE;
ALTER TABLE "public"."orders" DETACH PARTITION "public"."orders_old";
ALTER TABLE "public"."orders_old" DROP CONSTRAINT IF EXISTS "pgcleave_cutoff";
ALTER TABLE "public"."orders" RENAME TO "orders_pgcleave_undo";
ALTER TABLE "public"."orders_old" RENAME TO "orders";
INSERT INTO "public"."orders" ("id", "region", "total") SELECT "id", "region", "total" FROM "public"."orders_pgcleave_undo";
ALTER SEQUENCE "public"."orders_id_seq" OWNED BY "public"."orders"."id";
CREATE OR REPLACE VIEW "public"."big_orders" AS  SELECT orders.id,
    orders.region,
    orders.total
   FROM orders
  WHERE (orders.total > 100);
DROP TABLE "public"."orders_pgcleave_undo";
ALTER INDEX "public"."orders_region_old" RENAME TO "orders_region";
DELETE FROM pgcleave.policies WHERE table_schema = 'public' AND table_name = 'orders';
ALTER TABLE "public"."orders" OWNER TO "postgres";
COMMIT;
