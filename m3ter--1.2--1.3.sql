/* m3ter--1.2--1.3.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "ALTER EXTENSION m3ter UPDATE TO '1.3'" to load this file. \quit

-- Every object new or changed in 1.3 is written here once: make generates the
-- install script m3ter--1.3.sql from m3ter--1.2.sql followed by this script.

--
-- Messages (1.3): a missing uid, meter, account or ts is refused by the usage
-- check with a message that names the column; a NOT NULL constraint of the
-- column would answer first, with the whole row in its detail
--
ALTER TABLE m3ter.outbox ALTER COLUMN uid DROP NOT NULL,
                         ALTER COLUMN meter DROP NOT NULL,
                         ALTER COLUMN account DROP NOT NULL,
                         ALTER COLUMN ts DROP NOT NULL;

-- Privileges (1.3): the worker's figures are for the roles that may read the
-- other delivery figures (m3ter.databases: superusers and pg_monitor); a role
-- granted SELECT on m3ter.outbox_stats needs EXECUTE on it too
REVOKE EXECUTE ON FUNCTION m3ter_worker_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION m3ter_worker_status() TO pg_monitor;

--
-- Pacing (1.3): the last send slots the pacer gave, for checking that no
-- second ever holds more than the per-second limit allows
--
CREATE FUNCTION m3ter.pacing_slots()
RETURNS timestamptz[]
AS 'MODULE_PATHNAME', 'm3ter_pacing_slots'
LANGUAGE C VOLATILE;
REVOKE EXECUTE ON FUNCTION m3ter.pacing_slots() FROM PUBLIC;

--
-- Monitoring (1.3): pg_monitor reads this database's outbox figures too
-- (monitoring/postgres_exporter.yml)
--
GRANT SELECT ON m3ter.outbox_stats TO pg_monitor;

--
-- Health (1.3): every unsafe or stuck set-up, said out loud
--
CREATE FUNCTION m3ter_health(
    OUT severity text,
    OUT finding text,
    OUT detail text,
    OUT hint text)
RETURNS SETOF record
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    preloaded boolean := 'm3ter' = ANY (string_to_array(replace(current_setting('shared_preload_libraries'), ' ', ''), ','));
    session_loaded boolean := 'm3ter' = ANY (string_to_array(replace(current_setting('session_preload_libraries'), ' ', ''), ','));
    r record;
BEGIN
    IF NOT preloaded AND NOT session_loaded
       AND (coalesce(current_setting('m3ter.api_secret', true), '') <> ''
            OR coalesce(current_setting('m3ter.access_key_id', true), '') <> '') THEN
        RETURN QUERY SELECT 'warning', 'credentials readable by every role',
            'm3ter is not in shared_preload_libraries: until a session loads the library, m3ter.api_secret and m3ter.access_key_id from postgresql.conf are placeholders that any role can SHOW.',
            'Move them into the file named by m3ter.credentials_file, or add m3ter to session_preload_libraries (a reload).';
    END IF;
    IF NOT preloaded THEN
        RETURN QUERY SELECT 'info', 'no background worker',
            'm3ter is not in shared_preload_libraries: no worker delivers the outbox, and pacing and the token are per session.',
            'Schedule CALL m3ter.flush() with pg_cron, or preload the library (a restart).';
    END IF;
    IF NOT coalesce(nullif(current_setting('m3ter.tls_verify', true), ''), 'on')::boolean THEN
        RETURN QUERY SELECT 'warning', 'm3ter.tls_verify is off',
            'm3ter''s TLS certificate and host name are not verified: the credentials and usage may go to anyone on the way.',
            'ALTER SYSTEM RESET m3ter.tls_verify; SELECT pg_reload_conf();';
    END IF;
    FOR r IN SELECT d.datname, d.state FROM m3ter.databases d LOOP
        IF r.state LIKE 'waiting for a background worker slot%' THEN
            RETURN QUERY SELECT 'warning', 'worker slots short',
                format('Database %I waits for a background worker slot: max_worker_processes is %s.', r.datname,
                       current_setting('max_worker_processes')),
                'Raise max_worker_processes (a restart): the launcher, one worker per database, pg_cron and parallel queries share it.';
        ELSIF r.state LIKE 'stopped:%' OR r.state LIKE 'error%' THEN
            RETURN QUERY SELECT 'warning', 'delivery stopped',
                format('Database %I: %s.', r.datname, r.state),
                'See last_error in m3ter.databases and the server log; rows stay pending until the cause is fixed.';
        END IF;
    END LOOP;
    IF (SELECT c.checks_on AND c.stale FROM @extschema@.m3ter_catalog_status() c) THEN
        RETURN QUERY SELECT 'warning', 'catalog stale',
            'm3ter.catalog_checks is on but the catalog is older than m3ter.catalog_max_age: rows are sent unchecked.',
            'SELECT m3ter_sync_catalog(); and check m3ter.catalog_refresh_interval.';
    END IF;
END
$$;
COMMENT ON FUNCTION m3ter_health() IS
    'Every unsafe or stuck set-up of m3ter found: readable credentials, no worker, TLS verification off, worker slots short, delivery stopped, a stale catalog.';
REVOKE EXECUTE ON FUNCTION m3ter_health() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION m3ter_health() TO pg_monitor;

--
-- Progress (1.3): the delivery rate of the last minute and the time the
-- backlog takes at that rate (NULL while nothing is pending or nothing was
-- accepted in the last minute)
--
CREATE OR REPLACE VIEW m3ter.outbox_stats AS
SELECT count(*) FILTER (WHERE o.status = 'pending')  AS pending,
       count(*) FILTER (WHERE o.status = 'accepted') AS accepted,
       count(*) FILTER (WHERE o.status = 'failed')   AS failed,
       now() - min(o.created_at) FILTER (WHERE o.status = 'pending') AS oldest_pending_age,
       (SELECT e.error FROM m3ter.outbox e
         WHERE e.error IS NOT NULL
         ORDER BY e.sent_at DESC NULLS LAST, e.id DESC LIMIT 1) AS last_error,
       w.requests     AS requests_sent,
       w.measurements AS measurements_sent,
       w.running      AS worker_running,
       w.resent       AS measurements_resent,
       w.state        AS worker_state,
       count(*) FILTER (WHERE o.status = 'rejected') AS rejected,
       count(*) FILTER (WHERE o.status = 'pending' AND o.error LIKE 'held: %') AS held,
       round(count(*) FILTER (WHERE o.accepted_at > now() - interval '1 minute') / 60.0, 2) AS delivery_rate,
       CASE WHEN count(*) FILTER (WHERE o.status = 'pending') > 0
                 AND count(*) FILTER (WHERE o.accepted_at > now() - interval '1 minute') > 0
            THEN make_interval(secs => round(count(*) FILTER (WHERE o.status = 'pending')
                               / (count(*) FILTER (WHERE o.accepted_at > now() - interval '1 minute') / 60.0)))
       END AS eta
  FROM m3ter_worker_status() w LEFT JOIN m3ter.outbox o ON true  -- one row, also when the outbox is empty
 GROUP BY w.requests, w.measurements, w.running, w.resent, w.state;

--
-- Credentials every role can read (1.3): without the library preloaded,
-- m3ter.* lines of postgresql.conf are placeholders any role can SHOW until
-- a session loads the library; say so when the extension is created
--
DO $m3ter$
BEGIN
    IF EXISTS (SELECT FROM m3ter_health() h WHERE h.finding = 'credentials readable by every role') THEN
        RAISE WARNING 'm3ter credentials set in postgresql.conf are readable by every role'
            USING DETAIL = 'm3ter is not in shared_preload_libraries: until a session loads the library, m3ter.api_secret and m3ter.access_key_id are placeholders that any role can SHOW.',
                  HINT = 'Move them into the file named by m3ter.credentials_file, or add m3ter to session_preload_libraries (a reload).';
    END IF;
END
$m3ter$;
