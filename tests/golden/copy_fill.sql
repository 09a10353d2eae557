-- pgcleave fill public.ledger
-- requires: owner of ledger_intermediate

-- step 1/1 [fill]: copy the rows of ledger into ledger_intermediate in batches of ~500 rows by (id)
--   locks: ACCESS SHARE on ledger; ROW EXCLUSIVE on ledger_intermediate
--   runs: one transaction
--   action: copy.fill {"advisory": <lock>, "batch_size": 500, "columns": ["id", "account", "amount"], "default": ["public", "ledger_default"], "max_rate": null, "order": "key", "pk": ["id"], "pk_types": ["bigint"], "sleep": 0.0, "source": ["public", "ledger"], "state": ["public", "ledger"], "target": ["public", "ledger_intermediate"], "where": null}
BEGIN; SELECT pg_advisory_xact_lock(<lock>); INSERT INTO "public"."ledger_intermediate" ("id", "account", "amount") OVERRIDING SYSTEM VALUE SELECT "id", "account", "amount" FROM ONLY "public"."ledger" WHERE ("id") > ($last) AND ("id") <= ($upper) [ON CONFLICT DO NOTHING]; COMMIT;
