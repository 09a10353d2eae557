-- pgcleave partition public.orders
-- note: strategy default: chosen with --strategy
-- WARNING: the primary key (id) does not include the partition key region: the partitioned table orders gets no primary key; every partition keeps its own PRIMARY KEY (id), so values are unique within a partition but no longer across partitions (a second row with an existing key can be inserted into another partition). orders has no primary key any more (each partition keeps its own): ActiveRecord finds none (`create!` returns id nil, `find` raises): set `self.primary_key = :id` in the model; Django reads no key from the database: keep `id` as `primary_key=True` in the model, and `bulk_create(update_conflicts=True, unique_fields=[...])` must name the whole key; SQLAlchemy maps the model's key, but reflected/automap tables get no primary key: set `__mapper_args__ = {"primary_key": [orders.c.id]}`; `ON CONFLICT (id)` on orders fails (no unique index on it to infer)
-- requires: owner of orders
-- requires: CREATE on schema public
-- requires: owner of big_orders

-- step 1/1 [cut-over]: one short transaction: rename orders to orders_old, create the partitioned orders, attach orders_old as its DEFAULT partition (no scan)
--   locks: ACCESS EXCLUSIVE on orders
--   runs: one transaction, under lock_timeout with retry
BEGIN;
LOCK TABLE "public"."orders" IN ACCESS EXCLUSIVE MODE;
ALTER TABLE "public"."orders" RENAME TO "orders_old";
ALTER INDEX "public"."orders_region" RENAME TO "orders_region_old";
CREATE TABLE "public"."orders" (LIKE "public"."orders_old" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY INCLUDING GENERATED INCLUDING STATISTICS INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING COMMENTS) PARTITION BY LIST ("region");
CREATE INDEX "orders_region" ON "public"."orders" USING btree (region);
ALTER TABLE "public"."orders" ATTACH PARTITION "public"."orders_old" DEFAULT;
ALTER SEQUENCE "public"."orders_id_seq" OWNED BY "public"."orders"."id";
ALTER TABLE "public"."orders" OWNER TO "postgres";
CREATE OR REPLACE VIEW "public"."big_orders" AS  SELECT orders.id,
    orders.region,
    orders.total
   FROM orders
  WHERE (orders.total > 100);
INSERT INTO pgcleave.policies (table_schema, table_name, "strategy", "key_column", "interval", "premake", "retention", "retention_action", "archive_dir", "time_zone", "sub_strategy", "sub_key_column", "sub_interval", "placement", "options", "archive_format") VALUES ('public', 'orders', 'list', 'region', NULL, 3, NULL, 'detach', NULL, 'UTC', NULL, NULL, NULL, '[]'::jsonb, '{"conversion": "default", "old_table": "orders_old", "partition_keys": [["constraint", "PRIMARY KEY (id)"]]}'::jsonb, 'copy') ON CONFLICT (table_schema, table_name) DO UPDATE SET ("strategy", "key_column", "interval", "premake", "retention", "retention_action", "archive_dir", "time_zone", "sub_strategy", "sub_key_column", "sub_interval", "placement", "options", "archive_format", updated_at) = (EXCLUDED."strategy", EXCLUDED."key_column", EXCLUDED."interval", EXCLUDED."premake", EXCLUDED."retention", EXCLUDED."retention_action", EXCLUDED."archive_dir", EXCLUDED."time_zone", EXCLUDED."sub_strategy", EXCLUDED."sub_key_column", EXCLUDED."sub_interval", EXCLUDED."placement", EXCLUDED."options", EXCLUDED."archive_format", now());
COMMIT;
--   undo: LOCK TABLE "public"."orders" IN ACCESS EXCLUSIVE MODE; ALTER TABLE "public"."orders" DETACH PARTITION "public"."orders_old"; ALTER TABLE "public"."orders_old" DROP CONSTRAINT IF EXISTS "pgcleave_cutoff"; ALTER TABLE "public"."orders" RENAME TO "orders_pgcleave_undo"; ALTER TABLE "public"."orders_old" RENAME TO "orders"; INSERT INTO "public"."orders" ("id", "region", "total") SELECT "id", "region", "total" FROM "public"."orders_pgcleave_undo"; ALTER SEQUENCE "public"."orders_id_seq" OWNED BY "public"."orders"."id"; CREATE OR REPLACE VIEW "public"."big_orders" AS  SELECT orders.id,
    orders.region,
    orders.total
   FROM orders
  WHERE (orders.total > 100); DROP TABLE "public"."orders_pgcleave_undo"; ALTER INDEX "public"."orders_region_old" RENAME TO "orders_region"; DELETE FROM pgcleave.policies WHERE table_schema = 'public' AND table_name = 'orders';
