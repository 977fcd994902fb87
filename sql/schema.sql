\pset format unaligned
-- Where the extension puts things: the outbox and internal helpers in schema
-- m3ter, the functions users call in the schema CREATE EXTENSION chose
SELECT n.nspname AS extension_schema FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname = 'm3ter';
DROP EXTENSION m3ter;
-- a schema m3ter that is not the extension's: a clear error
CREATE SCHEMA m3ter;
SELECT err($$CREATE EXTENSION m3ter$$);
-- installed into it, everything lives there
CREATE EXTENSION m3ter SCHEMA m3ter;
SELECT p.proname, n.nspname
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'm3ter'
 ORDER BY n.nspname, p.proname;
INSERT INTO m3ter.outbox (uid, meter, account) VALUES ('schema-1', 'api', 'acme');
SELECT m3ter.m3ter_retry_failed() AS retried;
DROP EXTENSION m3ter;
SELECT count(*) AS m3ter_schema_kept FROM pg_namespace WHERE nspname = 'm3ter';
DROP SCHEMA m3ter;
-- the usual install: functions in public, the m3ter schema made and owned by it
CREATE EXTENSION m3ter;
SELECT n.nspname AS extension_schema FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname = 'm3ter';
