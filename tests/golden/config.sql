-- pgcleave config public.r
-- note: adopting r (4 partitions, whatever their names: pgcleave orders them by their bounds)
-- requires: owner of r

-- step 1/1 [policy]: store the policy of r: range (d), every 1 month, premake 2, retention 2 months then drop
--   locks: no table lock
--   runs: one transaction
INSERT INTO pgcleave.policies (table_schema, table_name, "strategy", "key_column", "interval", "premake", "retention", "retention_action", "archive_dir", "time_zone", "sub_strategy", "sub_key_column", "sub_interval", "placement", "options", "archive_format") VALUES ('public', 'r', 'range', 'd', '1 month', 2, '2 months', 'drop', NULL, 'UTC', NULL, NULL, NULL, '[]'::jsonb, '{}'::jsonb, 'copy') ON CONFLICT (table_schema, table_name) DO UPDATE SET ("strategy", "key_column", "interval", "premake", "retention", "retention_action", "archive_dir", "time_zone", "sub_strategy", "sub_key_column", "sub_interval", "placement", "options", "archive_format", updated_at) = (EXCLUDED."strategy", EXCLUDED."key_column", EXCLUDED."interval", EXCLUDED."premake", EXCLUDED."retention", EXCLUDED."retention_action", EXCLUDED."archive_dir", EXCLUDED."time_zone", EXCLUDED."sub_strategy", EXCLUDED."sub_key_column", EXCLUDED."sub_interval", EXCLUDED."placement", EXCLUDED."options", EXCLUDED."archive_format", now());
