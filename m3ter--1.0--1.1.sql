/* m3ter--1.0--1.1.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION m3ter UPDATE TO '1.1'" to load this file. \quit

--
-- pg_dump (1.1): the outbox is data, not part of the extension's definition;
-- dumps carry its rows and the position of its id sequence.
--
SELECT pg_catalog.pg_extension_config_dump('m3ter.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('m3ter.outbox_id_seq', '');

--
-- Schema (1.1): nothing to do on update.  New installs refuse a schema m3ter
-- that is not the extension's, or use it when it is the target schema
-- (CREATE EXTENSION m3ter SCHEMA m3ter); a 1.0 install already has its own.
--

--
-- Delivery: claims in the order rows fall due, in-flight records, the
-- committing flush procedure, retention by index
--
DROP INDEX m3ter.outbox_pending_idx;
CREATE INDEX outbox_due_idx ON m3ter.outbox (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX outbox_accepted_idx ON m3ter.outbox (accepted_at) WHERE status = 'accepted';

CREATE TABLE m3ter.inflight (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_pid   int NOT NULL,
    owner_start timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    ids         bigint[] NOT NULL
);
COMMENT ON TABLE m3ter.inflight IS
    'Outbox rows sent and not yet answered, by sender. Written by the extension only.';
REVOKE ALL ON m3ter.inflight FROM PUBLIC;

DROP FUNCTION m3ter.backoff_delay(int, int);

CREATE PROCEDURE m3ter.flush(max_rows int DEFAULT NULL, INOUT result jsonb DEFAULT NULL)
AS 'MODULE_PATHNAME', 'm3ter_flush_procedure'
LANGUAGE C;
COMMENT ON PROCEDURE m3ter.flush(int, jsonb) IS
    'Delivers the due rows of m3ter.outbox now, committing as it goes; returns what happened.';
REVOKE EXECUTE ON PROCEDURE m3ter.flush(int, jsonb) FROM PUBLIC;

COMMENT ON FUNCTION m3ter_flush(int) IS
    'Delivers the due rows of m3ter.outbox now (all, or max_rows) in the caller''s transaction and returns what happened.';

--
-- Every database, every node: a launcher starts a worker in every database
-- that has the extension (it learns of this one at commit), the figures are
-- per database (m3ter_worker_status() gains resent), m3ter.databases shows
-- them all cluster-wide for pg_monitor, and functions that write refuse to
-- run on a standby with a clear error (SQLSTATE M3R01).
--
CREATE FUNCTION m3ter.require_primary(what text)
RETURNS void
AS 'MODULE_PATHNAME', 'm3ter_require_primary_sql'
LANGUAGE C VOLATILE STRICT;

CREATE OR REPLACE FUNCTION m3ter_retry_failed(only_uids text[] DEFAULT NULL)
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

DROP VIEW m3ter.outbox_stats;
DROP FUNCTION m3ter_worker_status();

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
