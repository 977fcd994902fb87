/* m3ter--1.2--1.3.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "ALTER EXTENSION m3ter UPDATE TO '1.3'" to load this file. \quit

-- Every object new or changed in 1.3 is written here once: make generates the
-- install script m3ter--1.3.sql from m3ter--1.2.sql followed by this script.

--
-- Objects of the user's own that the update would have to drop: views and
-- functions over the figures below (which gain columns, and PostgreSQL cannot
-- add an OUT column in place).  Named before anything changes, with what to
-- do, rather than PostgreSQL's "use DROP ... CASCADE" half-way through.
--
DO $$
DECLARE
    found text;
BEGIN
    WITH target(classid, oid) AS (
        VALUES ('pg_class'::regclass::oid, 'm3ter.outbox_stats'::regclass::oid),
               ('pg_class'::regclass, 'm3ter.databases'::regclass),
               ('pg_type'::regclass, 'm3ter.outbox_stats'::regtype),
               ('pg_type'::regclass, 'm3ter.databases'::regtype),
               ('pg_proc'::regclass, 'm3ter_worker_status()'::regprocedure),
               ('pg_proc'::regclass, 'm3ter_databases()'::regprocedure))
    SELECT string_agg(DISTINCT CASE WHEN r.rulename = '_RETURN' THEN format('view %I.%I', n.nspname, c.relname)
                                    ELSE pg_describe_object(d.classid, d.objid, d.objsubid) END, ', ')
      INTO found
      FROM pg_depend d
      JOIN target t ON d.refclassid = t.classid AND d.refobjid = t.oid
      LEFT JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
      LEFT JOIN pg_class c ON c.oid = r.ev_class
      LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE d.deptype = 'n'
       AND r.ev_class IS DISTINCT FROM 'm3ter.outbox_stats'::regclass
       AND r.ev_class IS DISTINCT FROM 'm3ter.databases'::regclass
       AND NOT EXISTS (SELECT FROM pg_depend e WHERE e.classid = d.classid AND e.objid = d.objid AND e.deptype = 'e');
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'm3ter 1.3 makes m3ter.outbox_stats, m3ter.databases, m3ter_worker_status() and m3ter_databases() again, and objects of yours depend on them'
            USING ERRCODE = 'dependent_objects_still_exist',
                  DETAIL = 'Depending on them: ' || found || '.',
                  HINT = 'Drop those objects, run ALTER EXTENSION m3ter UPDATE again, then create them again (each gains columns at its end in 1.3).';
    END IF;

    -- grants of the user's own on them go with them: named, to be given again
    -- (given by this script they would count as the extension's, and a dump
    -- would leave them out)
    WITH target(classid, objid, subid, defaults, privileges, kind, name, acl, owner) AS (
        SELECT 'pg_class'::regclass, c.oid, 0, 'r'::"char", '', 'TABLE', format('%I.%I', n.nspname, c.relname), c.relacl, c.relowner
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid IN ('m3ter.outbox_stats'::regclass, 'm3ter.databases'::regclass)
        UNION ALL
        SELECT 'pg_class'::regclass, c.oid, a.attnum, 'c', format(' (%I)', a.attname), 'TABLE',
               format('%I.%I', n.nspname, c.relname), a.attacl, c.relowner
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid IN ('m3ter.outbox_stats'::regclass, 'm3ter.databases'::regclass) AND a.attacl IS NOT NULL
        UNION ALL
        SELECT 'pg_proc'::regclass, p.oid, 0, 'f', '', 'FUNCTION',
               format('%I.%I(%s)', n.nspname, p.proname, oidvectortypes(p.proargtypes)), p.proacl, p.proowner
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE p.oid IN ('m3ter_worker_status()'::regprocedure, 'm3ter_databases()'::regprocedure))
    SELECT string_agg(format('GRANT %s%s ON %s %s TO %s%s;', a.privilege_type, t.privileges, t.kind, t.name,
                             CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END,
                             CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END), ' ')
      INTO found
      FROM target t, aclexplode(t.acl) a
     WHERE a.grantee <> t.owner
       -- (not those the extension gave, which PostgreSQL keeps apart, or the defaults)
       AND NOT EXISTS (SELECT FROM aclexplode(coalesce((SELECT i.initprivs FROM pg_init_privs i
                                                         WHERE i.classoid = t.classid AND i.objoid = t.objid
                                                           AND i.objsubid = t.subid),
                                                        acldefault(t.defaults, t.owner))) b
                        WHERE b.grantee = a.grantee AND b.privilege_type = a.privilege_type);
    IF found IS NOT NULL THEN
        RAISE WARNING 'm3ter 1.3 makes m3ter.outbox_stats, m3ter.databases, m3ter_worker_status() and m3ter_databases() again, without the grants you gave on them'
            USING DETAIL = 'Give them again after the update: ' || found;
    END IF;
END
$$;

--
-- Messages (1.3): a missing uid, meter, account or ts is refused by the usage
-- check with a message that names the column; a NOT NULL constraint of the
-- column would answer first, with the whole row in its detail
--
ALTER TABLE m3ter.outbox ALTER COLUMN uid DROP NOT NULL,
                         ALTER COLUMN meter DROP NOT NULL,
                         ALTER COLUMN account DROP NOT NULL,
                         ALTER COLUMN ts DROP NOT NULL;

-- The worker's figures (1.3): the delivery rate (rows accepted a second over
-- about the last minute) and the time the backlog takes at it (NULL when
-- idle).  They are for the roles that may read the other delivery figures
-- (m3ter.databases: superusers and pg_monitor); a role granted SELECT on
-- m3ter.outbox_stats needs EXECUTE on it too.  The views that read these
-- functions are made again below.
DROP VIEW m3ter.outbox_stats;
DROP VIEW m3ter.databases;
DROP FUNCTION m3ter_worker_status();
DROP FUNCTION m3ter_databases();

CREATE FUNCTION m3ter_worker_status(
    OUT running boolean,
    OUT pid int,
    OUT state text,
    OUT started_at timestamptz,
    OUT last_drain_at timestamptz,
    OUT last_accepted_at timestamptz,
    OUT requests bigint,
    OUT measurements bigint,
    OUT accepted bigint,
    OUT failed bigint,
    OUT retried bigint,
    OUT last_error text,
    OUT last_error_at timestamptz,
    OUT resent bigint,
    OUT delivery_rate numeric,
    OUT eta interval)
RETURNS record
AS 'MODULE_PATHNAME', 'm3ter_worker_status'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION m3ter_worker_status() IS
    'This database''s outbox worker and the figures of deliveries made in this database since start, with the delivery rate and the time its backlog takes at it.';
REVOKE EXECUTE ON FUNCTION m3ter_worker_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION m3ter_worker_status() TO pg_monitor;

CREATE FUNCTION m3ter_databases(
    OUT datid oid,
    OUT datname text,
    OUT state text,
    OUT running boolean,
    OUT pid int,
    OUT started_at timestamptz,
    OUT last_drain_at timestamptz,
    OUT last_accepted_at timestamptz,
    OUT requests bigint,
    OUT measurements bigint,
    OUT accepted bigint,
    OUT failed bigint,
    OUT retried bigint,
    OUT resent bigint,
    OUT pending bigint,
    OUT oldest_pending_at timestamptz,
    OUT pending_counted_at timestamptz,
    OUT last_error text,
    OUT last_error_at timestamptz,
    OUT delivery_rate numeric,
    OUT eta interval,
    OUT throttled bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'm3ter_databases'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION m3ter_databases() IS
    'Every database''s outbox worker and delivery figures, cluster-wide; pending as last counted by its worker.';
REVOKE EXECUTE ON FUNCTION m3ter_databases() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION m3ter_databases() TO pg_monitor;

CREATE VIEW m3ter.databases AS
SELECT datid, datname, state, running, pid, started_at, last_drain_at, last_accepted_at,
       requests, measurements, accepted, failed, retried, resent,
       pending, now() - oldest_pending_at AS oldest_pending_age, pending_counted_at,
       last_error, last_error_at, delivery_rate, eta, throttled
  FROM m3ter_databases();

GRANT SELECT ON m3ter.databases TO pg_monitor;

--
-- Pacing (1.3): the last send slots the pacer gave, for checking that no
-- second ever holds more than the per-second limit allows
--
CREATE FUNCTION m3ter.pacing_slots()
RETURNS timestamptz[]
AS 'MODULE_PATHNAME', 'm3ter_pacing_slots'
LANGUAGE C VOLATILE;
REVOKE EXECUTE ON FUNCTION m3ter.pacing_slots() FROM PUBLIC;

-- The Ingest API requests a second the pacer gives now (lowered after 429s)
CREATE FUNCTION m3ter.pacing_pace()
RETURNS float8
AS 'MODULE_PATHNAME', 'm3ter_pacing_pace'
LANGUAGE C VOLATILE;

REVOKE EXECUTE ON FUNCTION m3ter.pacing_pace() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION m3ter.pacing_pace() TO pg_monitor;


--
-- Enrichment events (1.3): the event whose failed-ingest log's download keeps
-- failing in a way that may last (403, 404): after 3 polls in a row it is
-- recorded in m3ter.unmatched_events unread, and the poll goes on past it
--
ALTER TABLE m3ter.event_cursor ADD COLUMN blocked_event text,
                               ADD COLUMN blocked_polls int NOT NULL DEFAULT 0;
COMMENT ON COLUMN m3ter.event_cursor.blocked_event IS
    'The event whose failed-ingest log the last polls could not download (403, 404): recorded unread after 3 polls in a row.';
COMMENT ON COLUMN m3ter.event_cursor.blocked_polls IS 'Polls in a row that failed to download the log of blocked_event.';

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
    -- stored without the library loaded (its check refuses them once it is), in a
    -- catalog every role can read
    IF EXISTS (SELECT FROM pg_db_role_setting s, unnest(s.setconfig) c
                WHERE c LIKE 'm3ter.api\_secret=%' OR c LIKE 'm3ter.access\_key\_id=%') THEN
        RETURN QUERY SELECT 'warning', 'credentials stored per role or database',
            'ALTER ROLE or ALTER DATABASE ... SET put an m3ter credential into pg_db_role_setting, which every role can read.',
            'Remove it (ALTER ROLE/DATABASE ... RESET m3ter.api_secret, m3ter.access_key_id) and use the file named by m3ter.credentials_file.';
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
    FOR r IN SELECT d.datname, d.state, d.pending, d.oldest_pending_age, d.last_error, d.last_error_at,
                    d.last_accepted_at FROM m3ter.databases d LOOP
        IF r.state LIKE 'waiting for a background worker slot%' THEN
            RETURN QUERY SELECT 'warning', 'worker slots short',
                format('Database %I waits for a background worker slot: max_worker_processes is %s.', r.datname,
                       current_setting('max_worker_processes')),
                'Raise max_worker_processes (a restart): the launcher, one worker per database, pg_cron and parallel queries share it.';
        ELSIF r.state LIKE 'waiting: m3ter keeps answering 429%' THEN
            RETURN QUERY SELECT 'warning', 'throttled by m3ter',
                format('Database %I: %s.', r.datname, r.state),
                'Something else spends the organization''s or this address''s request budget (another server, the application''s own calls), or m3ter.max_requests_per_second or m3ter.max_requests_per_5min is above what m3ter allows; rows stay pending.';
        ELSIF r.state LIKE 'waiting: the token endpoint failed%' THEN
            RETURN QUERY SELECT 'warning', 'token endpoint failing',
                format('Database %I: %s rows pending, the oldest for %s; the last error: %s.', r.datname, r.pending,
                       date_trunc('second', r.oldest_pending_age), r.last_error),
                'The worker asks for a bearer token again at growing intervals up to m3ter.retry_max_delay; the rows stay pending and spend no attempt. Check m3ter.api_url (its /oauth/token serves the token) and the network if it goes on.';
        ELSIF r.state LIKE 'waiting: retrying%' THEN
            RETURN QUERY SELECT 'warning', 'delivery retrying',
                format('Database %I: %s rows pending, the oldest for %s; the last error: %s.', r.datname, r.pending,
                       date_trunc('second', r.oldest_pending_age), r.last_error),
                'm3ter or the network failed (a 5xx, a timeout, a refused connection): the rows go again with their uids, at growing intervals up to m3ter.retry_max_delay, until m3ter.give_up_after. Check m3ter.ingest_url and the network if it goes on.';
        ELSIF r.state LIKE 'stopped:%' OR r.state LIKE 'error%' THEN
            RETURN QUERY SELECT 'warning', 'delivery stopped',
                format('Database %I: %s.', r.datname, r.state),
                'See last_error in m3ter.databases and the server log; rows stay pending until the cause is fixed.';
        ELSIF r.state = 'waiting for ALTER EXTENSION m3ter UPDATE' THEN
            RETURN QUERY SELECT 'warning', 'extension not updated',
                format('Database %I has an older SQL version of m3ter than the library: its rows wait.', r.datname),
                'Run ALTER EXTENSION m3ter UPDATE in that database.';
        ELSIF r.state LIKE 'waiting for a restart%' THEN
            RETURN QUERY SELECT 'warning', 'library older than extension',
                format('Database %I has a newer SQL version of m3ter than the library loaded: its rows wait.', r.datname),
                'Restart PostgreSQL so that it loads the m3ter library installed with that version.';
        ELSIF r.state LIKE 'disabled by m3ter.worker_enabled%' OR r.state = 'not in m3ter.database' THEN
            RETURN QUERY SELECT 'info', 'no worker delivers',
                format('Database %I: %s; its rows wait.', r.datname, r.state),
                'Schedule CALL m3ter.flush() with pg_cron there, or change the setting if the worker should deliver.';
            -- the flushes that deliver there say it in last_error: failed since the last row accepted
            IF r.last_error LIKE 'the token endpoint failed%'
               AND r.last_error_at > coalesce(r.last_accepted_at, '-infinity') THEN
                RETURN QUERY SELECT 'warning', 'token endpoint failing',
                    format('Database %I: no row accepted since the last flush''s error (%s): %s.',
                           r.datname, date_trunc('second', r.last_error_at), r.last_error),
                    'CALL m3ter.flush() asks for a bearer token again after a growing wait (it returns with a notice meanwhile); the rows stay pending and spend no attempt. Check m3ter.api_url (its /oauth/token serves the token) and the network if it goes on.';
            END IF;
        END IF;
    END LOOP;
    FOR r IN SELECT c.last_error, c.last_error_at FROM m3ter.event_cursor c WHERE c.last_error IS NOT NULL LOOP
        RETURN QUERY SELECT 'warning', 'enrichment events not read',
            format('The last poll of m3ter''s ingest.validation.failure events (%s) stopped early: %s. Later events wait until it passes.',
                   r.last_error_at, r.last_error),
            'A network fault, 429 or 5xx passes by itself. A failed-ingest log that cannot be downloaded (403, 404) on 3 polls in a row is recorded in m3ter.unmatched_events and the poll goes on past it. See m3ter.event_cursor.';
    END LOOP;
    -- the worker is idle meanwhile: the cluster's hold is m3ter.retry_max_delay at most
    FOR r IN SELECT count(*) AS n, max(o.next_attempt_at) AS until FROM m3ter.outbox o
              WHERE o.next_attempt_at > o.created_at AND o.next_attempt_at > now() + interval '1 minute'
                AND o.status = 'pending' AND o.http_status = 429
             HAVING count(*) > 0 LOOP
        RETURN QUERY SELECT 'warning', 'rows held by m3ter',
            format('%s rows of this database wait for the Retry-After m3ter answered them with, the last until %s.',
                   r.n, r.until),
            'They go then (a day at most). To send them sooner, once m3ter takes them: UPDATE m3ter.outbox SET next_attempt_at = now() WHERE status = ''pending'' AND http_status = 429;';
    END LOOP;
    IF (SELECT c.checks_on AND c.stale FROM @extschema@.m3ter_catalog_status() c) THEN
        RETURN QUERY SELECT 'warning', 'catalog stale',
            'm3ter.catalog_checks is on but the catalog is older than m3ter.catalog_max_age: rows are sent unchecked.',
            'SELECT m3ter_sync_catalog(); and check m3ter.catalog_refresh_interval.';
    END IF;
END
$$;
COMMENT ON FUNCTION m3ter_health() IS
    'Every unsafe or stuck set-up of m3ter found: readable credentials, no worker, TLS verification off, worker slots short, delivery stopped or retrying, a database not updated, rows held by a long Retry-After, enrichment events not read, a stale catalog.';
REVOKE EXECUTE ON FUNCTION m3ter_health() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION m3ter_health() TO pg_monitor;

--
-- Progress (1.3): the delivery rate of the last minute and the time the
-- backlog takes at that rate (NULL while nothing is pending or nothing was
-- accepted in the last minute)
--
CREATE VIEW m3ter.outbox_stats AS
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

-- pg_monitor reads this database's outbox figures too (monitoring/postgres_exporter.yml)
GRANT SELECT ON m3ter.outbox_stats TO pg_monitor;

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

--
-- Reconciliation (1.3): m3ter's usage totals, the figures invoices are built
-- from, against what this database metered
--

-- One usage query (m3ter's Data Explorer), paced at its one request a second
CREATE FUNCTION m3ter.usage_query(body jsonb)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'm3ter_usage_query'
LANGUAGE C VOLATILE STRICT;

REVOKE ALL ON FUNCTION m3ter.usage_query(jsonb) FROM PUBLIC;

-- Look up account codes in m3ter into m3ter.catalog_accounts (their ids)
CREATE FUNCTION m3ter.catalog_lookup_accounts(codes text[])
RETURNS bigint
AS 'MODULE_PATHNAME', 'm3ter_catalog_lookup_accounts'
LANGUAGE C VOLATILE STRICT;

REVOKE ALL ON FUNCTION m3ter.catalog_lookup_accounts(text[]) FROM PUBLIC;

CREATE TABLE m3ter.reconciliations (
    id              bigserial PRIMARY KEY,
    from_ts         timestamptz NOT NULL,
    to_ts           timestamptz NOT NULL,
    meters          text[],
    started_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at     timestamptz,
    queries         integer NOT NULL DEFAULT 0,
    cells_compared  bigint,
    cells_drifting  bigint,
    drift_by_field  jsonb,
    error           text
);

CREATE TABLE m3ter.reconciliation_drift (
    reconciliation  bigint NOT NULL REFERENCES m3ter.reconciliations ON DELETE CASCADE,
    meter           text NOT NULL,
    account         text NOT NULL,
    day             date NOT NULL,
    field           text NOT NULL,
    local_value     numeric NOT NULL,
    m3ter_value     numeric NOT NULL,
    drift           numeric NOT NULL,
    note            text,
    PRIMARY KEY (reconciliation, meter, account, day, field)
);

COMMENT ON TABLE m3ter.reconciliations IS
    'Each run of m3ter_reconcile(): its window, the cells compared and drifting, the total drift by field, or its error.';
COMMENT ON TABLE m3ter.reconciliation_drift IS
    'The cells (meter, account, UTC day, field) whose m3ter total differed from the accepted rows here, per run.';

GRANT SELECT ON m3ter.reconciliations, m3ter.reconciliation_drift TO pg_monitor;

SELECT pg_catalog.pg_extension_config_dump('m3ter.reconciliations', '');
SELECT pg_catalog.pg_extension_config_dump('m3ter.reconciliations_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('m3ter.reconciliation_drift', '');

-- The rows of a usage query's answer, read in one place and tolerantly: m3ter
-- does not publish their shape.  Assumed: one row per group and aggregation,
-- {"accountId", "meterId", "timestamp" (the start of the day), "fieldCode",
-- "function", "value"}; a few other spellings are taken too, and the groups
-- and the aggregation as objects of their own ({"groups": {"ACCOUNT",
-- "TIME"}, "aggregation": {"fieldCode"}, "result"}).  A row read in part has
-- NULLs where it was not understood (item: the row as m3ter sent it).
-- The UTC day of a usage row's time: an ISO 8601 text (a day without a zone
-- is m3ter's UTC day), or milliseconds since 1970 as a number or a text of
-- digits; NULL for anything else (the row is then not read: M3300)
CREATE FUNCTION m3ter.usage_day(t jsonb)
RETURNS date
LANGUAGE plpgsql STABLE
SET TimeZone = 'UTC'
AS $$
BEGIN
    IF jsonb_typeof(t) = 'number' OR (jsonb_typeof(t) = 'string' AND t #>> '{}' ~ '^[0-9]{11,}$') THEN
        RETURN (to_timestamp((t #>> '{}')::numeric / 1000) AT TIME ZONE 'UTC')::date;
    END IF;
    RETURN ((t #>> '{}')::timestamptz AT TIME ZONE 'UTC')::date;
EXCEPTION WHEN data_exception THEN
    RETURN NULL;
END
$$;

-- A usage row's value: a number, or a text of one; anything else (NaN, a
-- word, an object) ends the run
CREATE FUNCTION m3ter.usage_value(v text)
RETURNS numeric
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    n numeric;
BEGIN
    n := v::numeric;
    IF n = 'NaN' OR n IN ('Infinity', '-Infinity') THEN
        RAISE invalid_text_representation;
    END IF;
    RETURN n;
EXCEPTION WHEN data_exception THEN
    RAISE EXCEPTION 'm3ter''s usage answer has a value m3ter_reconcile() does not read: %', left(v, 200)
        USING ERRCODE = 'M3300',
              HINT = 'Nothing was compared.';
END
$$;

CREATE FUNCTION m3ter.usage_rows(answer jsonb)
RETURNS TABLE (account_id text, meter_id text, day date, field text, value numeric, item jsonb,
               aggregate text)
LANGUAGE sql STABLE
AS $$
    SELECT coalesce(r->>'accountId', r->>'account_id', r#>>'{account,id}', r#>>'{groups,ACCOUNT}',
                    r#>>'{groups,account}', r#>>'{groups,accountId}'),
           coalesce(r->>'meterId', r->>'meter_id', r#>>'{meter,id}', r#>>'{aggregation,meterId}'),
           m3ter.usage_day(t),
           coalesce(r->>'fieldCode', r->>'field_code', r->>'field', r#>>'{aggregation,fieldCode}'),
           m3ter.usage_value(coalesce(r->>'value', r->>'sum', r->>'SUM', r->>'result')),
           r,
           upper(coalesce(r->>'function', r#>>'{aggregation,function}', 'SUM'))
      FROM jsonb_array_elements(CASE jsonb_typeof(answer->'data') WHEN 'array' THEN answer->'data'
                                     ELSE '[]' END) r,
           LATERAL (SELECT coalesce(r->'timestamp', r->'startDate', r->'date', r->'time',
                                    r#>'{groups,TIME}', r#>'{groups,time}') AS t) ts
$$;

-- The most items one usage query answers
CREATE FUNCTION m3ter.usage_query_limit()
RETURNS integer
LANGUAGE sql IMMUTABLE
AS $$ SELECT 20000 $$;

-- Query m3ter's daily SUMs of fields for a meter and accounts over [from_ts, to_ts)
-- into pg_temp.m3ter_remote; an answer that may be cut (hasMoreData, or a full
-- page) is asked again in halves: of the days first, then of the accounts.
-- Returns the queries made.
CREATE FUNCTION m3ter.reconcile_query(meter_id text, fields text[], account_ids text[],
                                      from_ts timestamptz, to_ts timestamptz)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    answer  jsonb;
    unread  jsonb;
    mid     timestamptz;
    half    integer;
BEGIN
    answer := m3ter.usage_query(jsonb_build_object(
        'startDate', to_char(from_ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'endDate', to_char(to_ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'meterIds', jsonb_build_array(meter_id),
        'accountIds', to_jsonb(account_ids),
        'aggregations', (SELECT jsonb_agg(jsonb_build_object('meterId', meter_id, 'fieldCode', f,
                                                             'fieldType', 'MEASURE', 'function', 'SUM'))
                           FROM unnest(fields) f),
        'groups', '[{"groupType": "ACCOUNT"}, {"groupType": "TIME", "frequency": "DAY"}]'::jsonb,
        'limit', m3ter.usage_query_limit()));
    IF coalesce((answer->>'hasMoreData')::boolean, false)
       OR (jsonb_typeof(answer->'data') = 'array'
           AND jsonb_array_length(answer->'data') >= m3ter.usage_query_limit()) THEN
        mid := date_trunc('day', from_ts + (to_ts - from_ts) / 2, 'UTC');
        IF mid > from_ts AND mid < to_ts THEN
            RETURN 1 + m3ter.reconcile_query(meter_id, fields, account_ids, from_ts, mid)
                     + m3ter.reconcile_query(meter_id, fields, account_ids, mid, to_ts);
        END IF;
        half := cardinality(account_ids) / 2;
        IF half >= 1 THEN
            RETURN 1 + m3ter.reconcile_query(meter_id, fields, account_ids[1:half], from_ts, to_ts)
                     + m3ter.reconcile_query(meter_id, fields, account_ids[half + 1:], from_ts, to_ts);
        END IF;
        RAISE EXCEPTION 'm3ter''s usage answer for one account and one day was cut'
            USING ERRCODE = 'M3300',
                  DETAIL = format('Meter %s, account %s, from %s: hasMoreData with %s items.',
                                  meter_id, account_ids[1], from_ts, jsonb_array_length(answer->'data')),
                  HINT = 'Nothing was compared. Leave this meter out (the meters argument) to reconcile the others.';
    END IF;
    -- a row not understood would count as no usage, and its cell as drift: nothing is compared then
    SELECT u.item INTO unread
      FROM m3ter.usage_rows(answer) u
     WHERE u.account_id IS NULL OR u.day IS NULL OR u.field IS NULL
        OR (u.value IS NULL AND NOT (u.item ?| ARRAY['value', 'sum', 'SUM', 'result']))
     LIMIT 1;
    IF unread IS NOT NULL OR jsonb_typeof(answer->'data') IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'm3ter''s usage answer has rows of a shape m3ter_reconcile() does not read'
            USING ERRCODE = 'M3300',
                  DETAIL = format('A row: %s', left(coalesce(unread, answer)::text, 500)),
                  HINT = 'm3ter does not publish the shape of these rows; the shapes read are listed in docs/accepted.md. Nothing was compared.';
    END IF;
    -- (rows of another aggregation than the SUM asked for, should m3ter add them, are not usage)
    INSERT INTO pg_temp.m3ter_remote
    SELECT coalesce(u.meter_id, reconcile_query.meter_id), u.account_id, u.day, u.field, sum(u.value)
      FROM m3ter.usage_rows(answer) u
     WHERE u.value IS NOT NULL AND u.aggregate = 'SUM'
       -- (a row of a day outside the window asked for is not this window's usage)
       AND u.day BETWEEN (from_ts AT TIME ZONE 'UTC')::date
                     AND ((to_ts - interval '1 microsecond') AT TIME ZONE 'UTC')::date
     GROUP BY 1, 2, 3, 4;
    RETURN 1;
END
$$;

REVOKE ALL ON FUNCTION m3ter.reconcile_query(text, text[], text[], timestamptz, timestamptz) FROM PUBLIC;

-- Is a drift only floating-point noise?  m3ter sums doubles: a difference of
-- at most a billionth of the larger side (and of 1e-9 near zero) is no drift.
CREATE FUNCTION m3ter.is_drift(local_value numeric, m3ter_value numeric)
RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT abs(m3ter_value - local_value) > 1e-9 * greatest(abs(local_value), abs(m3ter_value), 1)
$$;

-- The accounts of accepted rows looked up per query
CREATE FUNCTION m3ter.reconcile_accounts_per_query()
RETURNS integer
LANGUAGE sql IMMUTABLE
AS $$ SELECT 100 $$;

-- The schema of the functions users call (CREATE EXTENSION chose it)
CREATE FUNCTION m3ter.extension_schema()
RETURNS name
LANGUAGE sql STABLE
AS $$
    SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'm3ter'
$$;

-- Accepted rows deleted (1.3): the latest ts of an accepted row that left the
-- outbox (m3ter.retention, a DELETE, a TRUNCATE).  A reconciliation window
-- must start after it: m3ter's usage of the deleted rows would show as
-- drift, and settling it would bill it back.  The outbox's delete triggers
-- add a row (the mark is the latest): a row that each updated would hold
-- the worker's retention, and every other delete, behind a transaction of
-- the user's that deleted and stays open.  The worker drops the rows under
-- the latest.  pg_dump keeps them, as it keeps the outbox's.
CREATE TABLE m3ter.retention_state (
    deleted_ts_max timestamptz NOT NULL
);

COMMENT ON TABLE m3ter.retention_state IS
    'The latest ts of an accepted outbox row deleted (m3ter.retention, a DELETE, a TRUNCATE), as its largest deleted_ts_max: reconciliation windows start after it.';
SELECT pg_catalog.pg_extension_config_dump('m3ter.retention_state', '');

-- A row trigger keeps the latest ts of the accepted rows a statement deletes
-- in memory (outbox_deletes.c), the statement's trigger writes it once; a
-- TRUNCATE's trigger reads the rows before they go
CREATE FUNCTION m3ter.outbox_note_deleted()
RETURNS trigger
AS 'MODULE_PATHNAME', 'm3ter_outbox_note_deleted'
LANGUAGE C;

CREATE FUNCTION m3ter.deleted_ts_max()
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'm3ter_deleted_ts_max'
LANGUAGE C VOLATILE;

-- Move the mark to latest if that is later (NULL: nothing deleted)
CREATE FUNCTION m3ter.mark_deleted(latest timestamptz)
RETURNS void
LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO m3ter.retention_state (deleted_ts_max) SELECT latest WHERE latest IS NOT NULL
$$;

CREATE FUNCTION m3ter.outbox_record_deleted()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    latest timestamptz;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        SELECT max(ts) INTO latest FROM m3ter.outbox WHERE status = 'accepted';
    ELSE
        latest := m3ter.deleted_ts_max();
    END IF;
    IF latest IS NOT NULL THEN
        PERFORM m3ter.mark_deleted(latest);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_note_deleted
    BEFORE DELETE ON m3ter.outbox
    FOR EACH ROW
    WHEN (OLD.status = 'accepted')
    EXECUTE FUNCTION m3ter.outbox_note_deleted();

CREATE TRIGGER outbox_deleted
    AFTER DELETE ON m3ter.outbox
    FOR EACH STATEMENT
    EXECUTE FUNCTION m3ter.outbox_record_deleted();

CREATE TRIGGER outbox_truncating
    BEFORE TRUNCATE ON m3ter.outbox
    FOR EACH STATEMENT
    EXECUTE FUNCTION m3ter.outbox_record_deleted();

-- a subscriber's outbox (blue/green: a copy of the publisher's) marks what
-- the publisher deletes as well, or reconciling it there would see drift
ALTER TABLE m3ter.outbox ENABLE ALWAYS TRIGGER outbox_note_deleted,
                         ENABLE ALWAYS TRIGGER outbox_deleted,
                         ENABLE ALWAYS TRIGGER outbox_truncating;

REVOKE ALL ON FUNCTION m3ter.deleted_ts_max(), m3ter.mark_deleted(timestamptz), m3ter.outbox_record_deleted()
    FROM PUBLIC;

-- What was deleted before 1.3 is not known row by row.  When rows are
-- missing (the sequence gave more ids than the outbox holds), the mark
-- starts where m3ter.retention reached: it deleted rows accepted before
-- then, whose ts are earlier still.  Rows of the user's deleted before 1.3
-- are not known; m3ter.retention = -1 (rows kept) marks nothing.
DO $$
DECLARE
    kept interval;
BEGIN
    IF (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM m3ter.outbox_id_seq)
       <= (SELECT count(*) FROM m3ter.outbox) THEN
        RETURN;
    END IF;
    BEGIN
        kept := coalesce(nullif(current_setting('m3ter.retention', true), ''), '7d')::interval;
    EXCEPTION WHEN data_exception THEN
        kept := interval '7 days';
    END;
    IF kept >= interval '0' THEN
        PERFORM m3ter.mark_deleted(now() - kept);
    END IF;
END
$$;

CREATE FUNCTION m3ter.deleted_through()
RETURNS timestamptz
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT max(deleted_ts_max) FROM m3ter.retention_state $$;

-- The first UTC midnight after the accepted rows deleted: where a
-- reconciliation window may start (NULL when none were deleted).  In hours,
-- not days: a day added in the session's time zone is 23 or 25 hours at a
-- change of summer time.
CREATE FUNCTION m3ter.reconcilable_from()
RETURNS timestamptz
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT date_trunc('day', m3ter.deleted_through(), 'UTC') + interval '24 hours' $$;

CREATE FUNCTION m3ter_reconcile(from_ts timestamptz, to_ts timestamptz, meters text[] DEFAULT NULL,
                                only_drift boolean DEFAULT true)
RETURNS TABLE (meter text, account text, day date, field text,
               local_value numeric, m3ter_value numeric, drift numeric)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    run       bigint;
    started   timestamptz := clock_timestamp();
    queries   integer := 0;
    m         record;
    ids       text[];
    per_query integer := m3ter.reconcile_accounts_per_query();
    i         integer;
    unknown   text;
    deleted   timestamptz := m3ter.deleted_through();
BEGIN
    PERFORM m3ter.require_primary('m3ter_reconcile()');
    IF from_ts IS NULL OR to_ts IS NULL OR from_ts >= to_ts OR from_ts = '-infinity' OR to_ts = 'infinity' THEN
        RAISE EXCEPTION 'invalid window for m3ter_reconcile(): from % to %', from_ts, to_ts
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Give two finite timestamps, the first before the second: the window is [from_ts, to_ts) on the rows'' ts.';
    END IF;
    IF from_ts < '0001-01-01 00:00:00+00' OR to_ts > '10000-01-01 00:00:00+00' THEN
        RAISE EXCEPTION 'timestamp out of range for m3ter'
            USING ERRCODE = 'datetime_field_overflow',
                  DETAIL = 'm3ter takes timestamps from year 1 to year 9999.';
    END IF;
    -- (m3ter is asked from the window's start in milliseconds)
    IF date_trunc('milliseconds', from_ts) <= deleted THEN
        RAISE EXCEPTION 'the window of m3ter_reconcile() starts before accepted rows deleted from the outbox'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The latest ts of a deleted row (m3ter.retention, a DELETE or a TRUNCATE) is %s: m3ter''s usage of such rows would show as drift, and settling it would bill it back.',
                                  deleted),
                  HINT = format('Start the window at %s or later, or keep rows longer (m3ter.retention).',
                                to_char(m3ter.reconcilable_from() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS"+00"'));
    END IF;
    IF meters IS NOT NULL AND (cardinality(meters) = 0 OR array_position(meters, NULL) IS NOT NULL) THEN
        RAISE EXCEPTION 'invalid meters for m3ter_reconcile(): %', meters
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Name one meter code or more, or pass NULL for every meter of the window.';
    END IF;

    -- left by a call that failed earlier in this session
    IF to_regclass('pg_temp.m3ter_local') IS NOT NULL THEN
        DROP TABLE pg_temp.m3ter_local, pg_temp.m3ter_remote;
    END IF;
    IF to_regclass('pg_temp.m3ter_cells') IS NOT NULL THEN
        DROP TABLE pg_temp.m3ter_cells;
    END IF;
    CREATE TEMP TABLE m3ter_local (meter text, account text, day date, field text, value numeric);
    CREATE TEMP TABLE m3ter_remote (meter_id text, account_id text, day date, field text, value numeric);

    -- this database's accepted rows (corrections included), summed by cell
    INSERT INTO pg_temp.m3ter_local
    SELECT o.meter, o.account, (o.ts AT TIME ZONE 'UTC')::date, kv.key, sum(kv.value::numeric)
      FROM m3ter.outbox o,
           LATERAL (SELECT key, value FROM jsonb_each_text(coalesce(o.measure, '{}'))
                    UNION ALL SELECT key, value FROM jsonb_each_text(coalesce(o.cost, '{}'))
                    UNION ALL SELECT key, value FROM jsonb_each_text(coalesce(o.income, '{}'))) kv
     WHERE o.status = 'accepted' AND o.ts >= from_ts AND o.ts < to_ts
       AND (meters IS NULL OR o.meter = ANY (meters))
       AND NOT coalesce(o.metadata ? 'm3ter_settles', false)   -- m3ter_settle_drift()'s rows
     GROUP BY 1, 2, 3, 4;

    -- codes become ids: meters through the catalog (synced when one is missing),
    -- accounts looked up in m3ter when the catalog has no id for them
    IF EXISTS (SELECT FROM (SELECT DISTINCT l.meter FROM pg_temp.m3ter_local l
                            UNION SELECT unnest(meters)) x
                WHERE NOT EXISTS (SELECT FROM m3ter.catalog_meters c WHERE c.code = x.meter AND c.id IS NOT NULL)) THEN
        EXECUTE format('SELECT %I.m3ter_sync_catalog(false)', m3ter.extension_schema());
    END IF;
    -- every run, known or not: an account deleted and created again in m3ter keeps its code, not its id
    SELECT array_agg(DISTINCT l.account) INTO ids
      FROM pg_temp.m3ter_local l;
    IF ids IS NOT NULL THEN
        PERFORM m3ter.catalog_lookup_accounts(ids);
    END IF;

    SELECT string_agg(x.code, ', ') INTO unknown
      FROM unnest(meters) x(code)
     WHERE NOT EXISTS (SELECT FROM m3ter.catalog_meters c WHERE c.code = x.code AND c.id IS NOT NULL);
    IF unknown IS NOT NULL THEN
        RAISE NOTICE 'm3ter has no meter with the code %', unknown
            USING HINT = 'Its usage here, if any, shows as drift with m3ter_value 0.';
    END IF;
    unknown := NULL;

    -- m3ter's totals, meter by meter, for the accounts metered here
    FOR m IN
        SELECT c.code, c.id,
               array(SELECT f FROM (SELECT DISTINCT l.field AS f FROM pg_temp.m3ter_local l WHERE l.meter = c.code
                                    UNION
                                    SELECT d->>'code' FROM jsonb_array_elements(c.data_fields) d
                                     WHERE upper(d->>'category') IN ('MEASURE', 'COST', 'INCOME')) x
                      WHERE f IS NOT NULL ORDER BY f) AS fields,
               array(SELECT DISTINCT a.id FROM pg_temp.m3ter_local l
                       JOIN m3ter.catalog_accounts a ON a.code = l.account AND a.id IS NOT NULL
                      WHERE l.meter = c.code ORDER BY a.id) AS accounts
          FROM m3ter.catalog_meters c
         WHERE c.id IS NOT NULL
           AND (c.code = ANY (meters) OR EXISTS (SELECT FROM pg_temp.m3ter_local l WHERE l.meter = c.code))
         ORDER BY c.code
    LOOP
        CONTINUE WHEN cardinality(m.fields) = 0 OR cardinality(m.accounts) = 0;
        i := 1;
        WHILE i <= cardinality(m.accounts) LOOP
            queries := queries + m3ter.reconcile_query(m.id, m.fields, m.accounts[i:i + per_query - 1],
                                                       from_ts, to_ts);
            i := i + per_query;
        END LOOP;
    END LOOP;

    -- both sides, cell by cell; a cell missing on one side is 0 there
    CREATE TEMP TABLE m3ter_cells AS
    WITH remote AS (
        SELECT c.code AS meter, a.code AS account, r.day, r.field, sum(r.value) AS value
          FROM pg_temp.m3ter_remote r
          JOIN m3ter.catalog_meters c ON c.id = r.meter_id
          JOIN m3ter.catalog_accounts a ON a.id = r.account_id
         GROUP BY 1, 2, 3, 4),
    cells AS (
        SELECT coalesce(l.meter, r.meter) AS meter, coalesce(l.account, r.account) AS account,
               coalesce(l.day, r.day) AS day, coalesce(l.field, r.field) AS field,
               coalesce(l.value, 0) AS local_value, coalesce(r.value, 0) AS m3ter_value
          FROM pg_temp.m3ter_local l
          FULL JOIN remote r ON r.meter = l.meter AND r.account = l.account AND r.day = l.day AND r.field = l.field)
    SELECT c.*, c.m3ter_value - c.local_value AS drift,
           m3ter.is_drift(c.local_value, c.m3ter_value) AS drifting,
           CASE WHEN NOT EXISTS (SELECT FROM m3ter.catalog_meters k WHERE k.code = c.meter AND k.id IS NOT NULL)
                THEN 'm3ter has no meter with this code'
                WHEN NOT EXISTS (SELECT FROM m3ter.catalog_accounts k WHERE k.code = c.account AND k.id IS NOT NULL)
                THEN 'm3ter has no account with this code' END AS note
      FROM cells c;

    INSERT INTO m3ter.reconciliations (from_ts, to_ts, meters, queries, started_at, finished_at, cells_compared,
                                       cells_drifting, drift_by_field)
    SELECT from_ts, to_ts, meters, queries, started, clock_timestamp(), count(*), count(*) FILTER (WHERE c.drifting),
           (SELECT coalesce(jsonb_object_agg(f.field, f.drift), '{}')
              FROM (SELECT d.field, sum(d.drift) AS drift FROM pg_temp.m3ter_cells d
                     WHERE d.drifting GROUP BY d.field) f)
      FROM pg_temp.m3ter_cells c
    RETURNING id INTO run;
    INSERT INTO m3ter.reconciliation_drift
    SELECT run, c.meter, c.account, c.day, c.field, c.local_value, c.m3ter_value, c.drift, c.note
      FROM pg_temp.m3ter_cells c WHERE c.drifting;

    SELECT string_agg(DISTINCT format('%s (%s)', c.note, CASE WHEN c.note LIKE '%meter%' THEN c.meter
                                                              ELSE c.account END), ', ')
      INTO unknown
      FROM pg_temp.m3ter_cells c WHERE c.note IS NOT NULL AND c.drifting;
    IF unknown IS NOT NULL THEN
        RAISE NOTICE 'some codes are unknown to m3ter: %', unknown
            USING HINT = 'Their usage shows as drift with m3ter_value 0; see m3ter.reconciliation_drift.note.';
    END IF;

    RETURN QUERY SELECT c.meter, c.account, c.day, c.field, c.local_value, c.m3ter_value, c.drift
                   FROM pg_temp.m3ter_cells c
                  WHERE c.drifting OR NOT only_drift
                  ORDER BY 1, 2, 3, 4;
    DROP TABLE pg_temp.m3ter_local, pg_temp.m3ter_remote, pg_temp.m3ter_cells;
END
$$;

REVOKE ALL ON FUNCTION m3ter_reconcile(timestamptz, timestamptz, text[], boolean) FROM PUBLIC;

COMMENT ON FUNCTION m3ter_reconcile(timestamptz, timestamptz, text[], boolean) IS
    'Compares m3ter''s daily usage totals with this database''s accepted rows, cell by cell (meter, account, UTC day, field); keeps each run in m3ter.reconciliations.';

-- The numeric data fields of a category of a meter (from the catalog), each 0
CREATE FUNCTION m3ter.zero_fields(meter text, category text)
RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT coalesce(jsonb_object_agg(f->>'code', 0), '{}')
      FROM m3ter.catalog_meters c, jsonb_array_elements(c.data_fields) f
     WHERE c.code = meter AND upper(f->>'category') = category
$$;

-- Settle a run's drift in m3ter: for each drifting meter, account and day, one
-- outbox row whose fields carry minus the drift (ts the start of the day, so
-- it lands in the same cell), marked in its metadata (m3ter_settles: the run)
-- so that reconciliation leaves it out of the local side.  Returns the rows.
CREATE FUNCTION m3ter_settle_drift(reconciliation bigint DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    run   bigint := reconciliation;
    n     integer;
BEGIN
    PERFORM m3ter.require_primary('m3ter_settle_drift()');
    IF run IS NULL THEN
        SELECT max(r.id) INTO run FROM m3ter.reconciliations r WHERE r.error IS NULL;
    END IF;
    IF NOT EXISTS (SELECT FROM m3ter.reconciliations r WHERE r.id = run AND r.error IS NULL) THEN
        RAISE EXCEPTION 'no finished reconciliation has id %', coalesce(run::text, '(none)')
            USING ERRCODE = 'no_data_found',
                  HINT = 'Run m3ter_reconcile() first; m3ter.reconciliations lists the runs.';
    END IF;
    IF EXISTS (SELECT FROM m3ter.outbox o WHERE o.metadata->>'m3ter_settles' = run::text) THEN
        RAISE EXCEPTION 'reconciliation % is already settled', run
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Reconcile again to see what drift is left.';
    END IF;
    -- the same drift must not be settled twice: settle only what the newest run of
    -- these days saw, and only once the earlier settlements are in m3ter's totals
    IF EXISTS (SELECT FROM m3ter.reconciliations r, m3ter.reconciliations o
                WHERE o.id = run AND r.id > run AND r.error IS NULL
                  AND r.from_ts < o.to_ts AND o.from_ts < r.to_ts) THEN
        RAISE EXCEPTION 'reconciliation % is out of date: a later run covers its days', run
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Settle the latest run of these days instead.';
    END IF;
    IF EXISTS (SELECT FROM m3ter.outbox o WHERE o.metadata ? 'm3ter_settles' AND o.status = 'pending') THEN
        RAISE EXCEPTION 'earlier settlements are still pending'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Wait until they are accepted, reconcile again, then settle what that run finds.';
    END IF;
    IF EXISTS (SELECT FROM m3ter.outbox o, m3ter.reconciliations r
                WHERE r.id = run AND o.metadata ? 'm3ter_settles' AND o.status = 'accepted'
                  AND o.accepted_at > r.started_at) THEN
        RAISE EXCEPTION 'reconciliation % started before settlements that m3ter has since accepted', run
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Reconcile again, then settle what that run finds.';
    END IF;
    WITH cells AS (
        SELECT d.meter, d.account, d.day,
               upper(coalesce((SELECT f->>'category' FROM m3ter.catalog_meters c,
                                      jsonb_array_elements(c.data_fields) f
                                WHERE c.code = d.meter AND f->>'code' = d.field LIMIT 1), 'MEASURE')) AS category,
               d.field, -d.drift AS value
          FROM m3ter.reconciliation_drift d
         WHERE d.reconciliation = run AND d.note IS NULL),
    rows AS (
        SELECT c.meter, c.account, c.day,
               jsonb_object_agg(c.field, c.value) FILTER (WHERE c.category NOT IN ('COST', 'INCOME')) AS measure,
               jsonb_object_agg(c.field, c.value) FILTER (WHERE c.category = 'COST') AS cost,
               jsonb_object_agg(c.field, c.value) FILTER (WHERE c.category = 'INCOME') AS income
          FROM cells c GROUP BY 1, 2, 3),
    ins AS (
        INSERT INTO m3ter.outbox (meter, account, ts, measure, cost, income, who, "where", what, other, metadata)
        SELECT r.meter, r.account,
               greatest(r.day::timestamp AT TIME ZONE 'UTC', (SELECT w.from_ts FROM m3ter.reconciliations w WHERE w.id = run)),
               nullif(m3ter.zero_fields(r.meter, 'MEASURE') || coalesce(r.measure, '{}'), '{}'),
               nullif(m3ter.zero_fields(r.meter, 'COST') || coalesce(r.cost, '{}'), '{}'),
               nullif(m3ter.zero_fields(r.meter, 'INCOME') || coalesce(r.income, '{}'), '{}'),
               t.who, t."where", t.what, t.other,
               coalesce(t.metadata, '{}') || jsonb_build_object('m3ter_settles', run::text)
          FROM rows r
          LEFT JOIN LATERAL (SELECT o.who, o."where", o.what, o.other, o.metadata FROM m3ter.outbox o
                              WHERE o.meter = r.meter AND o.account = r.account AND o.status = 'accepted'
                                AND o.ts >= r.day::timestamp AT TIME ZONE 'UTC'
                                AND o.ts < (r.day + 1)::timestamp AT TIME ZONE 'UTC'
                              LIMIT 1) t ON true
        RETURNING 1)
    SELECT count(*) INTO n FROM ins;
    RETURN n;
END
$$;

REVOKE ALL ON FUNCTION m3ter_settle_drift(bigint) FROM PUBLIC;

COMMENT ON FUNCTION m3ter_settle_drift(bigint) IS
    'Queues rows that bring m3ter''s totals back to this database''s for each drifting cell of a reconciliation (the last by default).';

-- The worker's scheduled reconciliation (m3ter.reconcile_interval): the days
-- from days before the lag up to the start of the day the lag ago; a failed
-- run is kept with its error
CREATE FUNCTION m3ter.reconcile_scheduled(lag_s integer, days integer)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    window_end    timestamptz := date_trunc('day', now() - make_interval(secs => lag_s), 'UTC');
    window_start  timestamptz := window_end - make_interval(hours => 24 * days);
BEGIN
    -- only the days after the accepted rows deleted
    window_start := GREATEST(window_start, m3ter.reconcilable_from());
    IF window_start >= window_end THEN
        RETURN;
    END IF;
    EXECUTE format('SELECT count(*) FROM %I.m3ter_reconcile($1, $2)', m3ter.extension_schema())
      USING window_start, window_end;
EXCEPTION WHEN OTHERS THEN
    INSERT INTO m3ter.reconciliations (from_ts, to_ts, finished_at, error)
    VALUES (window_start, window_end, clock_timestamp(), SQLSTATE || ': ' || SQLERRM);
    RAISE LOG 'm3ter scheduled reconciliation failed: %', SQLERRM;
END
$$;

REVOKE ALL ON FUNCTION m3ter.reconcile_scheduled(integer, integer) FROM PUBLIC;

-- the reconciliation's helpers are for its functions only
REVOKE ALL ON FUNCTION m3ter.deleted_through(), m3ter.reconcilable_from() FROM PUBLIC;
REVOKE ALL ON FUNCTION m3ter.usage_day(jsonb), m3ter.usage_value(text), m3ter.usage_rows(jsonb), m3ter.usage_query_limit(), m3ter.is_drift(numeric, numeric),
    m3ter.reconcile_accounts_per_query(), m3ter.extension_schema(), m3ter.zero_fields(text, text) FROM PUBLIC;

--
-- Monitoring: the catalog's age for the exporter's pg_monitor role
--
GRANT SELECT ON m3ter.catalog_state TO pg_monitor;

--
-- The outbox's CHECK: one constraint over the whole row.  PostgreSQL reads a
-- CHECK's expression back from its stored text at every statement: three
-- constraints, one of them a call with thirteen columns, cost a single-row
-- INSERT more than the row's own write.  The existing rows passed the old
-- constraints, and pass this one (the scan that proves it holds the lock).
--
CREATE FUNCTION m3ter.check_outbox_row(m3ter.outbox)
RETURNS boolean
AS 'MODULE_PATHNAME', 'm3ter_check_outbox_row'
LANGUAGE C VOLATILE STRICT;

ALTER TABLE m3ter.outbox
    DROP CONSTRAINT outbox_usage_check,
    DROP CONSTRAINT outbox_status_check,
    DROP CONSTRAINT outbox_attempts_check,
    ADD CONSTRAINT outbox_row_check CHECK (m3ter.check_outbox_row(outbox)) NO INHERIT;

-- (NO INHERIT: a table that inherits the outbox has another row type, which
-- the check does not take.  m3ter.check_usage() stays: a table copied from
-- the 1.2 outbox with its constraints still calls it.)

-- The launcher learns of the update at commit: a worker that left while the
-- extension was away (dropped, then installed at an older version) starts again
SELECT m3ter.launcher_wake();
