\pset format unaligned
-- The library is loaded in this session first: before it is, the server knows
-- m3ter.* values from postgresql.conf only as placeholders, which any role can
-- read (see the README: preload the library, or use m3ter.credentials_file).
LOAD 'm3ter';
-- A monitoring role (pg_monitor includes pg_read_all_settings) reads no credential
CREATE ROLE m3ter_regress_monitor LOGIN IN ROLE pg_monitor;
CREATE FUNCTION pg_temp.show_all_mentions(needle text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE r record; n bigint := 0;
BEGIN
    FOR r IN EXECUTE 'SHOW ALL' LOOP
        IF r.name LIKE 'm3ter.%' AND (r.name LIKE needle OR r.setting LIKE needle) THEN n := n + 1; END IF;
    END LOOP;
    RETURN n;
END $$;
SET ROLE m3ter_regress_monitor;
SHOW m3ter.api_secret;
SHOW m3ter.access_key_id;
SELECT current_setting('m3ter.api_secret') AS api_secret, current_setting('m3ter.access_key_id') AS access_key_id;
SELECT count(*) AS rows_in_pg_settings FROM pg_settings
 WHERE name IN ('m3ter.api_secret', 'm3ter.access_key_id') OR setting LIKE 'standin-%' OR reset_val LIKE 'standin-%';
SELECT count(*) AS rows_in_pg_show_all_settings FROM pg_show_all_settings() s
 WHERE name IN ('m3ter.api_secret', 'm3ter.access_key_id') OR setting LIKE 'standin-%';
SELECT pg_temp.show_all_mentions('%secret%') + pg_temp.show_all_mentions('%access_key%')
     + pg_temp.show_all_mentions('standin-%') AS rows_in_show_all;
SELECT err($$SELECT * FROM pg_file_settings$$);
SELECT err($$SELECT * FROM pg_show_all_file_settings()$$);
SELECT count(*) AS secret_rows_in_pg_db_role_setting FROM pg_db_role_setting
 WHERE array_to_string(setconfig, ' ') LIKE '%m3ter.%';
RESET ROLE;
-- per-role, per-database and per-function settings land in catalogs every role
-- can read: the credentials are refused there
SELECT err($$ALTER ROLE m3ter_regress_monitor SET m3ter.api_secret = 'leaked'$$);
SELECT err(format($$ALTER DATABASE %I SET m3ter.access_key_id = 'leaked'$$, current_database()));
SELECT err($$CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql SET m3ter.api_secret = 'leaked' AS 'SELECT 1'$$);
SELECT count(*) AS m3ter_rows_in_pg_db_role_setting FROM pg_db_role_setting
 WHERE array_to_string(setconfig, ' ') LIKE '%m3ter.%';
-- the credentials file is a superuser-only, reloadable setting
SELECT context, setting FROM pg_settings WHERE name = 'm3ter.credentials_file';
SET ROLE m3ter_regress_monitor;
SELECT err($$SET m3ter.credentials_file = '/tmp/x'$$);
RESET ROLE;
-- the worker's figures: pg_monitor reads them, a plain role does not
CREATE ROLE m3ter_regress_plain LOGIN;
SET ROLE m3ter_regress_monitor;
SELECT count(*) AS monitor_reads_worker_status FROM m3ter_worker_status();
SET ROLE m3ter_regress_plain;
SELECT err($$SELECT * FROM m3ter_worker_status()$$);
RESET ROLE;
DROP ROLE m3ter_regress_plain;
-- every function and procedure of the extension that PUBLIC may execute: the
-- checks of the outbox (1.2's too: a copy of the 1.2 outbox calls it), the uid
-- default and its triggers' functions only
SELECT p.oid::regprocedure AS executable_by_public
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'm3ter'
 WHERE has_function_privilege('public', p.oid, 'EXECUTE')
 ORDER BY p.oid::regprocedure::text;
DROP ROLE m3ter_regress_monitor;
-- the superuser reads the settings
SELECT current_setting('m3ter.api_secret') NOT IN ('', '********') AS superuser_reads_secret;
