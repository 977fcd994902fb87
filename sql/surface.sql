\pset format unaligned
-- The library is loaded first, as preloading does: until a session loads it,
-- m3ter.* values from postgresql.conf are placeholders (see the README)
LOAD 'm3ter';
-- What CREATE EXTENSION installs, and who may use it
SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args, n.nspname
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'm3ter'
 ORDER BY n.nspname, p.proname;

-- Settings and their contexts (m3ter.database, a postmaster setting, exists only
-- when the library is preloaded)
SELECT name, setting, context, unit FROM pg_settings WHERE name LIKE 'm3ter.%'
   AND name NOT IN ('m3ter.api_url', 'm3ter.ingest_url', 'm3ter.org_id', 'm3ter.database', 'm3ter.max_databases') ORDER BY name;

-- A role that is not a superuser
CREATE ROLE m3ter_regress_app LOGIN;
SET ROLE m3ter_regress_app;
SELECT err($$SHOW m3ter.api_secret$$);
SELECT err($$SHOW m3ter.access_key_id$$);
SELECT err($$SELECT current_setting('m3ter.api_secret')$$);
SELECT err($$SELECT current_setting('m3ter.access_key_id')$$);
SELECT count(*) AS secret_rows_in_pg_settings FROM pg_settings WHERE name IN ('m3ter.api_secret', 'm3ter.access_key_id');
SELECT count(*) AS secret_rows_in_show_all FROM (SELECT * FROM pg_show_all_settings()) s WHERE name IN ('m3ter.api_secret', 'm3ter.access_key_id');
SELECT err($$SET m3ter.api_secret = 'stolen'$$);
SELECT err($$SET m3ter.tls_verify = off$$);
SELECT err($$SET m3ter.ingest_url = 'http://attacker.example'$$);
-- calling m3ter needs a grant
SELECT err($$SELECT m3ter_submit('{"meter":"m","account":"a","ts":"2024-01-02T03:04:05Z"}')$$);
SELECT err($$SELECT m3ter_flush()$$);
SELECT err($$SELECT m3ter_create_meter('n', 'c', '[]')$$);
SELECT err($$SELECT * FROM m3ter_list_meters()$$);
SELECT err($$SELECT m3ter_organization_config()$$);
SELECT err($$INSERT INTO m3ter.outbox (meter, account) VALUES ('api', 'acme')$$);
RESET ROLE;

-- the grants the README shows: this role may only write usage
GRANT USAGE ON SCHEMA m3ter TO m3ter_regress_app;
GRANT INSERT (uid, meter, account, ts, ets, measure, cost, income, who, "where", what, other, metadata)
   ON m3ter.outbox TO m3ter_regress_app;
SET ROLE m3ter_regress_app;
INSERT INTO m3ter.outbox (meter, account, measure) VALUES ('api', 'acme', '{"n": 1}');
SELECT err($$INSERT INTO m3ter.outbox (meter, account, status) VALUES ('api', 'acme', 'accepted')$$);
SELECT err($$UPDATE m3ter.outbox SET status = 'accepted'$$);
SELECT err($$SELECT * FROM m3ter.outbox$$);
RESET ROLE;
SELECT meter, account, status FROM m3ter.outbox;
DELETE FROM m3ter.outbox;
-- a role granted EXECUTE on m3ter_flush may drain the outbox it cannot read
GRANT EXECUTE ON FUNCTION m3ter_flush(int) TO m3ter_regress_app;
SET ROLE m3ter_regress_app;
SELECT m3ter_flush();
RESET ROLE;
REVOKE EXECUTE ON FUNCTION m3ter_flush(int) FROM m3ter_regress_app;
REVOKE ALL ON m3ter.outbox FROM m3ter_regress_app;
REVOKE ALL ON SCHEMA m3ter FROM m3ter_regress_app;
DROP ROLE m3ter_regress_app;

-- the superuser sees the settings
SELECT current_setting('m3ter.api_secret') <> '' AS superuser_reads_secret;
