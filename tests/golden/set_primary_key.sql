-- pgcleave set-primary-key public.r
-- note: 4 partitions; no step reads the rows under a lock that blocks writes: indexes are built CONCURRENTLY, NOT NULL is proven by validated CHECKs, the parent's key adopts the partitions' keys
-- requires: owner of r
-- requires: CREATE on schema public

-- step 1/9 [build:r_01]: build unique index r_01_id_d_pkey on r_01 concurrently
--   locks: SHARE UPDATE EXCLUSIVE on r_01
--   runs: autocommit, not in a transaction
DROP INDEX CONCURRENTLY IF EXISTS "public"."r_01_id_d_pkey";
CREATE UNIQUE INDEX CONCURRENTLY "r_01_id_d_pkey" ON "public"."r_01" ("id", "d");
--   undo: DROP INDEX CONCURRENTLY IF EXISTS "public"."r_01_id_d_pkey";

-- step 2/9 [build:r_02]: build unique index r_02_id_d_pkey on r_02 concurrently
--   locks: SHARE UPDATE EXCLUSIVE on r_02
--   runs: autocommit, not in a transaction
DROP INDEX CONCURRENTLY IF EXISTS "public"."r_02_id_d_pkey";
CREATE UNIQUE INDEX CONCURRENTLY "r_02_id_d_pkey" ON "public"."r_02" ("id", "d");
--   undo: DROP INDEX CONCURRENTLY IF EXISTS "public"."r_02_id_d_pkey";

-- step 3/9 [build:r_03]: build unique index r_03_id_d_pkey on r_03 concurrently
--   locks: SHARE UPDATE EXCLUSIVE on r_03
--   runs: autocommit, not in a transaction
DROP INDEX CONCURRENTLY IF EXISTS "public"."r_03_id_d_pkey";
CREATE UNIQUE INDEX CONCURRENTLY "r_03_id_d_pkey" ON "public"."r_03" ("id", "d");
--   undo: DROP INDEX CONCURRENTLY IF EXISTS "public"."r_03_id_d_pkey";

-- step 4/9 [build:r_04]: build unique index r_04_id_d_pkey on r_04 concurrently
--   locks: SHARE UPDATE EXCLUSIVE on r_04
--   runs: autocommit, not in a transaction
DROP INDEX CONCURRENTLY IF EXISTS "public"."r_04_id_d_pkey";
CREATE UNIQUE INDEX CONCURRENTLY "r_04_id_d_pkey" ON "public"."r_04" ("id", "d");
--   undo: DROP INDEX CONCURRENTLY IF EXISTS "public"."r_04_id_d_pkey";

-- step 5/9 [swap:r_01]: make r_01_id_d_pkey the primary key of r_01 (catalog only)
--   locks: ACCESS EXCLUSIVE on r_01
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "public"."r_01" ADD CONSTRAINT "r_01_id_d_pkey" PRIMARY KEY USING INDEX "r_01_id_d_pkey";

-- step 6/9 [swap:r_02]: make r_02_id_d_pkey the primary key of r_02 (catalog only)
--   locks: ACCESS EXCLUSIVE on r_02
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "public"."r_02" ADD CONSTRAINT "r_02_id_d_pkey" PRIMARY KEY USING INDEX "r_02_id_d_pkey";

-- step 7/9 [swap:r_03]: make r_03_id_d_pkey the primary key of r_03 (catalog only)
--   locks: ACCESS EXCLUSIVE on r_03
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "public"."r_03" ADD CONSTRAINT "r_03_id_d_pkey" PRIMARY KEY USING INDEX "r_03_id_d_pkey";

-- step 8/9 [swap:r_04]: make r_04_id_d_pkey the primary key of r_04 (catalog only)
--   locks: ACCESS EXCLUSIVE on r_04
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "public"."r_04" ADD CONSTRAINT "r_04_id_d_pkey" PRIMARY KEY USING INDEX "r_04_id_d_pkey";

-- step 9/9 [adopt:r]: ADD PRIMARY KEY (id, d) on the parent r: adopts the partitions' keys, no build
--   locks: ACCESS EXCLUSIVE on r; SHARE on its partitions
--   runs: one transaction, under lock_timeout with retry
ALTER TABLE "public"."r" ADD CONSTRAINT "r_pkey" PRIMARY KEY ("id", "d");
