/* m3ter--1.1.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION m3ter" to load this file. \quit

-- The schema m3ter holds the outbox and the internal helpers; the functions
-- users call live in the extension's schema (public by default).

--
-- Schema (1.1): CREATE EXTENSION m3ter SCHEMA m3ter puts everything in the
-- schema m3ter; any other target schema needs m3ter free for the internals.
--
DO $m3ter$
BEGIN
    -- during CREATE EXTENSION the target schema is first on the search_path
    IF current_schema() IS DISTINCT FROM 'm3ter' THEN
        IF EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'm3ter') THEN
            RAISE EXCEPTION 'schema "m3ter" already exists'
                USING ERRCODE = 'duplicate_schema',
                      DETAIL = 'The extension m3ter keeps its outbox and internal functions in a schema named m3ter.',
                      HINT = 'Install the extension into that schema (CREATE EXTENSION m3ter SCHEMA m3ter), or drop or rename it.';
        END IF;
        CREATE SCHEMA m3ter;
    END IF;
END
$m3ter$;

--
-- Internal helpers
--

-- The CHECK of m3ter.outbox: true, or an error that names the bad field.  A row
-- that passes also marks its transaction, whose commit wakes the worker.
CREATE FUNCTION m3ter.check_usage(uid text, meter text, account text, ts timestamptz, ets timestamptz,
                                  measure jsonb, cost jsonb, income jsonb, who jsonb, "where" jsonb,
                                  what jsonb, other jsonb, metadata jsonb)
RETURNS boolean
AS 'MODULE_PATHNAME', 'm3ter_check_usage'
LANGUAGE C VOLATILE;

--
-- The outbox
--
CREATE TABLE m3ter.outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- written by the application
    uid             text COLLATE "C" NOT NULL DEFAULT gen_random_uuid()::text,
    meter           text NOT NULL,
    account         text NOT NULL,
    ts              timestamptz NOT NULL DEFAULT now(),
    ets             timestamptz,
    measure         jsonb,
    cost            jsonb,
    income          jsonb,
    who             jsonb,
    "where"         jsonb,
    what            jsonb,
    other           jsonb,
    metadata        jsonb,
    -- written by the extension
    status          text NOT NULL DEFAULT 'pending',
    attempts        int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    http_status     int,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    accepted_at     timestamptz,

    CONSTRAINT outbox_uid_key UNIQUE (uid),
    CONSTRAINT outbox_usage_check CHECK (m3ter.check_usage(uid, meter, account, ts, ets, measure, cost, income,
                                                            who, "where", what, other, metadata)),
    CONSTRAINT outbox_status_check CHECK (status IN ('pending', 'accepted', 'failed')),
    CONSTRAINT outbox_attempts_check CHECK (attempts >= 0)
);

COMMENT ON TABLE m3ter.outbox IS
    'Usage measurements waiting for, or done with, delivery to m3ter. INSERT here; the worker or m3ter_flush() sends them.';
COMMENT ON COLUMN m3ter.outbox.uid IS 'Unique id of the measurement; every re-send carries it, so m3ter stores it once.';
COMMENT ON COLUMN m3ter.outbox.status IS 'pending (waiting or retrying), accepted (m3ter accepted it) or failed (see error).';
COMMENT ON COLUMN m3ter.outbox.next_attempt_at IS 'A pending row is not sent before this time (retry back-off).';

-- Pending rows in the order they fall due, for claims and the next-due lookup:
-- rows waiting for a retry cost nothing until they are due
CREATE INDEX outbox_due_idx ON m3ter.outbox (next_attempt_at, id) WHERE status = 'pending';

-- Accepted rows by age, for the retention deletes
CREATE INDEX outbox_accepted_idx ON m3ter.outbox (accepted_at) WHERE status = 'accepted';

-- Rows in flight: each claim records the ids it took until m3ter has answered
-- for all of them.  A record whose sender no longer runs is stale; the next
-- claim deletes it and its rows go again with the same uids.
CREATE TABLE m3ter.inflight (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_pid   int NOT NULL,
    owner_start timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    ids         bigint[] NOT NULL
);

COMMENT ON TABLE m3ter.inflight IS
    'Outbox rows sent and not yet answered, by sender. Written by the extension only.';

--
-- pg_dump (1.1): the outbox is data, not part of the extension's definition;
-- dumps carry its rows and the position of its id sequence.
--
SELECT pg_catalog.pg_extension_config_dump('m3ter.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('m3ter.outbox_id_seq', '');

--
-- Functions users call
--

CREATE FUNCTION m3ter_submit(measurements jsonb)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'm3ter_submit'
LANGUAGE C VOLATILE STRICT;

COMMENT ON FUNCTION m3ter_submit(jsonb) IS
    'Submits one measurement or an array of them to the m3ter Ingest API now.';

CREATE FUNCTION m3ter_create_meter(
    name text,
    code text,
    data_fields jsonb,
    derived_fields jsonb DEFAULT '[]',
    product_id uuid DEFAULT NULL,
    group_id uuid DEFAULT NULL,
    custom_fields jsonb DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'm3ter_create_meter'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION m3ter_create_meter(text, text, jsonb, jsonb, uuid, uuid, jsonb) IS
    'Creates a Meter through the m3ter Config API and returns it.';

CREATE FUNCTION m3ter_list_meters()
RETURNS SETOF jsonb
AS 'MODULE_PATHNAME', 'm3ter_list_meters'
LANGUAGE C VOLATILE;

CREATE FUNCTION m3ter_organization_config()
RETURNS jsonb
AS 'MODULE_PATHNAME', 'm3ter_organization_config'
LANGUAGE C VOLATILE;

-- SECURITY DEFINER: a role granted EXECUTE may drain the outbox without
-- rights on its status columns
CREATE FUNCTION m3ter_flush(max_rows int DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'm3ter_flush'
LANGUAGE C VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION m3ter_flush(int) IS
    'Delivers the due rows of m3ter.outbox now (all, or max_rows) in the caller''s transaction and returns what happened.';

-- The flush for pg_cron: commits after each claim and each batch of answers.
-- Not SECURITY DEFINER (such a procedure may not commit): it switches to the
-- extension owner's rights itself for its own work.
CREATE PROCEDURE m3ter.flush(max_rows int DEFAULT NULL, INOUT result jsonb DEFAULT NULL)
AS 'MODULE_PATHNAME', 'm3ter_flush_procedure'
LANGUAGE C;

COMMENT ON PROCEDURE m3ter.flush(int, jsonb) IS
    'Delivers the due rows of m3ter.outbox now, committing as it goes; returns what happened.';

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
    OUT resent bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'm3ter_worker_status'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION m3ter_worker_status() IS
    'This database''s outbox worker and the figures of deliveries made in this database since start.';

-- Refuse, clearly, to write on a standby (SQLSTATE M3R01); SQL-language
-- functions that write call it first
CREATE FUNCTION m3ter.require_primary(what text)
RETURNS void
AS 'MODULE_PATHNAME', 'm3ter_require_primary_sql'
LANGUAGE C VOLATILE STRICT;

-- Put failed rows back in the queue, for example after fixing a meter
CREATE FUNCTION m3ter_retry_failed(only_uids text[] DEFAULT NULL)
RETURNS bigint
LANGUAGE sql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT m3ter.require_primary('m3ter_retry_failed()');
    WITH r AS (
        UPDATE m3ter.outbox
           SET status = 'pending', attempts = 0, next_attempt_at = now()
         WHERE status = 'failed'
           AND (only_uids IS NULL OR uid = ANY (only_uids))
        RETURNING 1)
    SELECT count(*) FROM r
$$;

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
       w.state        AS worker_state
  FROM m3ter_worker_status() w LEFT JOIN m3ter.outbox o ON true  -- one row, also when the outbox is empty
 GROUP BY w.requests, w.measurements, w.running, w.resent, w.state;

--
-- Every database, every node: the launcher starts a worker in every
-- database that has the extension; it learns of this one at commit.
-- m3ter.databases shows every database's worker and figures, cluster-wide,
-- for pg_monitor.
--
CREATE FUNCTION m3ter.launcher_wake()
RETURNS void
AS 'MODULE_PATHNAME', 'm3ter_launcher_wake'
LANGUAGE C VOLATILE;

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
    OUT last_error_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'm3ter_databases'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION m3ter_databases() IS
    'Every database''s outbox worker and delivery figures, cluster-wide; pending as last counted by its worker.';

CREATE VIEW m3ter.databases AS
SELECT datid, datname, state, running, pid, started_at, last_drain_at, last_accepted_at,
       requests, measurements, accepted, failed, retried, resent,
       pending, now() - oldest_pending_at AS oldest_pending_age, pending_counted_at,
       last_error, last_error_at
  FROM m3ter_databases();

REVOKE EXECUTE ON FUNCTION m3ter.launcher_wake() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION m3ter.require_primary(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION m3ter_databases() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION m3ter_databases() TO pg_monitor;
GRANT USAGE ON SCHEMA m3ter TO pg_monitor;
GRANT SELECT ON m3ter.databases TO pg_monitor;

SELECT m3ter.launcher_wake();

--
-- Privileges: calling m3ter is not for every role.  GRANT EXECUTE to the
-- roles that may; GRANT INSERT on the user columns of m3ter.outbox to the
-- roles that write usage.
--
REVOKE ALL ON SCHEMA m3ter FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA m3ter FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION m3ter_submit(jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION m3ter_create_meter(text, text, jsonb, jsonb, uuid, uuid, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION m3ter_list_meters() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION m3ter_organization_config() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION m3ter_flush(int) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION m3ter_retry_failed(text[]) FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE m3ter.flush(int, jsonb) FROM PUBLIC;
