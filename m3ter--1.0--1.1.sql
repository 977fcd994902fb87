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
       w.state        AS worker_state,
       count(*) FILTER (WHERE o.status = 'rejected') AS rejected,
       count(*) FILTER (WHERE o.status = 'pending' AND o.error LIKE 'held: %') AS held
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

--
-- What m3ter really ingested: post-acceptance failures, checks before
-- sending, corrections
--

-- 'rejected': m3ter answered "accepted", then its enrichment stage dropped the
-- row (an ingest.validation.failure event names its uid)
ALTER TABLE m3ter.outbox DROP CONSTRAINT outbox_status_check;
ALTER TABLE m3ter.outbox ADD CONSTRAINT outbox_status_check
    CHECK (status IN ('pending', 'accepted', 'failed', 'rejected'));
ALTER TABLE m3ter.outbox
    ADD COLUMN rejection_type    text,
    ADD COLUMN rejected_at       timestamptz,
    ADD COLUMN corrects          text COLLATE "C",
    ADD COLUMN correction_factor numeric;

COMMENT ON COLUMN m3ter.outbox.status IS
    'pending (waiting, retrying or held), accepted (m3ter accepted it), failed (see error) or rejected (accepted, then dropped by m3ter''s enrichment; see rejection_type and error).';
COMMENT ON COLUMN m3ter.outbox.rejection_type IS 'The failure type of m3ter''s ingest event, e.g. UndefinedMeter or MissingField.';
COMMENT ON COLUMN m3ter.outbox.corrects IS 'For a correction queued by m3ter_adjust(): the uid of the row it corrects.';
COMMENT ON COLUMN m3ter.outbox.correction_factor IS 'For a correction: the factor its numeric maps were multiplied by.';

-- Corrections of a row, for m3ter_adjust()
CREATE INDEX outbox_corrects_idx ON m3ter.outbox (corrects) WHERE corrects IS NOT NULL;

-- Every ingest.validation.failure event handled, once each; matched = false
-- keeps those naming no uid of this database for the operator
CREATE TABLE m3ter.ingest_events (
    event_id    text PRIMARY KEY,
    event_time  timestamptz,
    error_type  text,
    message     text,
    file        text,
    uids        text[] NOT NULL DEFAULT '{}',
    rejected    int NOT NULL DEFAULT 0,
    duplicates  int NOT NULL DEFAULT 0,
    matched     boolean NOT NULL,
    note        text,
    event       jsonb,
    handled_at  timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE m3ter.ingest_events IS
    'ingest.validation.failure events read from m3ter''s Events API, each handled once in the transaction that marked its rows.';
COMMENT ON COLUMN m3ter.ingest_events.rejected IS 'Rows of this database marked rejected for this event.';
COMMENT ON COLUMN m3ter.ingest_events.duplicates IS 'DuplicateUid for a row already accepted: a re-send, counted, the row unchanged.';
COMMENT ON COLUMN m3ter.ingest_events.matched IS 'false: the event names no uid of this database (or its log could not be read; see note).';

CREATE VIEW m3ter.unmatched_events AS
SELECT event_id, event_time, error_type, message, uids, note, event, handled_at
  FROM m3ter.ingest_events
 WHERE NOT matched;

-- Where the next poll of the Events API starts; one row, written in the
-- transaction that marks the rows
CREATE TABLE m3ter.event_cursor (
    only_row        boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    next_token      text,
    polled_at       timestamptz,
    events_handled  bigint NOT NULL DEFAULT 0,
    last_error      text,
    last_error_at   timestamptz
);
INSERT INTO m3ter.event_cursor DEFAULT VALUES;

-- The catalog synced from m3ter that the checks before sending use
CREATE TABLE m3ter.catalog_meters (
    code            text COLLATE "C" PRIMARY KEY,
    id              text,
    data_fields     jsonb NOT NULL DEFAULT '[]',
    derived_fields  jsonb NOT NULL DEFAULT '[]',
    synced_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE m3ter.catalog_accounts (
    code       text COLLATE "C" PRIMARY KEY,
    id         text,
    source     text NOT NULL CHECK (source IN ('m3ter', 'operator')),
    synced_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE m3ter.catalog_state (
    only_row            boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version             bigint NOT NULL DEFAULT 0,
    meters_synced_at    timestamptz,
    accounts_synced_at  timestamptz,
    last_error          text,
    last_error_at       timestamptz
);
INSERT INTO m3ter.catalog_state DEFAULT VALUES;

COMMENT ON TABLE m3ter.catalog_meters IS 'Meters as m3ter last listed them (m3ter_sync_catalog()).';
COMMENT ON TABLE m3ter.catalog_accounts IS 'Account codes m3ter knows (source m3ter), or an operator released (source operator).';

-- Read the events m3ter raised after accepting rows and mark those rows
CREATE FUNCTION m3ter_poll_events()
RETURNS jsonb
AS 'MODULE_PATHNAME', 'm3ter_poll_events'
LANGUAGE C VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION m3ter_poll_events() IS
    'Reads new ingest.validation.failure events from m3ter and marks the rows they name rejected.';

-- Refresh the meter (and account) catalog from m3ter
CREATE FUNCTION m3ter_sync_catalog(accounts boolean DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'm3ter_sync_catalog'
LANGUAGE C VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION m3ter_sync_catalog(boolean) IS
    'Copies m3ter''s meters (and the accounts of pending rows) into the catalog the checks before sending use.';

-- Counters of the checks before sending (shared memory)
CREATE FUNCTION m3ter.catalog_counters(
    OUT rows_failed_by_checks bigint,
    OUT rows_held bigint,
    OUT rows_unchecked bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'm3ter_catalog_counters'
LANGUAGE C VOLATILE;

CREATE FUNCTION m3ter_catalog_status(
    OUT meters bigint,
    OUT accounts bigint,
    OUT meters_synced_at timestamptz,
    OUT accounts_synced_at timestamptz,
    OUT checks_on boolean,
    OUT stale boolean,
    OUT rows_failed_by_checks bigint,
    OUT rows_held bigint,
    OUT rows_unchecked bigint,
    OUT last_error text)
RETURNS record
LANGUAGE sql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (SELECT count(*) FROM m3ter.catalog_meters),
           (SELECT count(*) FROM m3ter.catalog_accounts),
           s.meters_synced_at, s.accounts_synced_at,
           current_setting('m3ter.catalog_checks')::boolean,
           coalesce(s.meters_synced_at <= now() - current_setting('m3ter.catalog_max_age')::interval, true),
           c.rows_failed_by_checks, c.rows_held, c.rows_unchecked, s.last_error
      FROM m3ter.catalog_state s, m3ter.catalog_counters() c
$$;

COMMENT ON FUNCTION m3ter_catalog_status() IS
    'The synced catalog: its size and age, and what the checks before sending did since the server started.';

-- Send rows held for an unknown account: their codes count as known from now on
CREATE FUNCTION m3ter_release_held(only_accounts text[] DEFAULT NULL)
RETURNS bigint
LANGUAGE sql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT m3ter.require_primary('m3ter_release_held()');
    WITH held AS (
        SELECT DISTINCT account FROM m3ter.outbox
         WHERE status = 'pending' AND error LIKE 'held: %'
           AND (only_accounts IS NULL OR account = ANY (only_accounts))),
    known AS (
        INSERT INTO m3ter.catalog_accounts (code, source)
        SELECT account, 'operator' FROM held
        ON CONFLICT (code) DO NOTHING),
    bump AS (
        UPDATE m3ter.catalog_state SET version = version + 1),
    r AS (
        UPDATE m3ter.outbox o
           SET next_attempt_at = now(), error = NULL
          FROM held
         WHERE o.account = held.account AND o.status = 'pending' AND o.error LIKE 'held: %'
        RETURNING 1)
    SELECT count(*) FROM r
$$;

-- A numeric map multiplied by factor
CREATE FUNCTION m3ter.scale_map(map jsonb, factor numeric)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE WHEN map IS NULL THEN NULL
                ELSE coalesce((SELECT jsonb_object_agg(key, (value #>> '{}')::numeric * factor)
                                 FROM jsonb_each(map)), '{}') END
$$;

-- Queue a correction of an accepted row: same meter, account, ts and string
-- maps, numeric maps multiplied by factor, a new uid
CREATE FUNCTION m3ter_adjust(uid text, factor numeric DEFAULT -1)
RETURNS text
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    o        m3ter.outbox%ROWTYPE;
    applied  numeric;
    new_uid  text := gen_random_uuid()::text;
BEGIN
    PERFORM m3ter.require_primary('m3ter_adjust()');
    IF factor IS NULL OR factor = 0 OR factor = 'NaN' OR factor IN ('Infinity', '-Infinity') THEN
        RAISE EXCEPTION 'the correction factor must be a non-zero number'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use -1 to reverse the row, or a fraction such as -0.5.';
    END IF;
    SELECT * INTO o FROM m3ter.outbox t WHERE t.uid = m3ter_adjust.uid FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no outbox row has uid "%"', m3ter_adjust.uid
            USING ERRCODE = 'no_data_found';
    END IF;
    IF o.status <> 'accepted' THEN
        RAISE EXCEPTION 'only an accepted row can be corrected; the row with uid "%" is %', o.uid, o.status
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = CASE o.status
                      WHEN 'pending' THEN 'm3ter has not accepted it yet.'
                      ELSE 'm3ter holds nothing of it to correct.' END,
                  HINT = CASE o.status
                      WHEN 'pending' THEN 'Wait until it is accepted, or change the pending row itself.'
                      ELSE 'Insert a new row instead.' END;
    END IF;
    IF o.corrects IS NOT NULL THEN
        RAISE EXCEPTION 'the row with uid "%" is itself a correction', o.uid
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('Adjust the row it corrects, uid "%s".', o.corrects);
    END IF;
    SELECT coalesce(sum(c.correction_factor), 0) INTO applied
      FROM m3ter.outbox c
     WHERE c.corrects = o.uid AND c.status NOT IN ('failed', 'rejected');
    IF 1 + applied <= 0 THEN
        RAISE EXCEPTION 'the row with uid "%" is already fully reversed', o.uid
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Its corrections add up to a factor of %s.', applied);
    END IF;
    IF 1 + applied + factor < 0 THEN
        RAISE EXCEPTION 'a factor of % would reverse more than the row with uid "%" has left', factor, o.uid
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('Its corrections add up to a factor of %s; at most %s is left to reverse.',
                                  applied, 1 + applied);
    END IF;
    INSERT INTO m3ter.outbox (uid, meter, account, ts, ets, measure, cost, income,
                              who, "where", what, other, metadata, corrects, correction_factor)
    VALUES (new_uid, o.meter, o.account, o.ts, o.ets,
            m3ter.scale_map(o.measure, factor), m3ter.scale_map(o.cost, factor),
            m3ter.scale_map(o.income, factor),
            o.who, o."where", o.what, o.other, o.metadata, o.uid, factor);
    RETURN new_uid;
END
$$;

COMMENT ON FUNCTION m3ter_adjust(text, numeric) IS
    'Queues a correction of an accepted row (numeric maps times factor, a new uid) and returns its uid.';

REVOKE ALL ON ALL TABLES IN SCHEMA m3ter FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION m3ter_poll_events() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION m3ter_sync_catalog(boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION m3ter_catalog_status() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION m3ter.catalog_counters() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION m3ter_release_held(text[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION m3ter_adjust(text, numeric) FROM PUBLIC;

REVOKE EXECUTE ON FUNCTION m3ter.launcher_wake() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION m3ter.require_primary(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION m3ter_databases() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION m3ter_databases() TO pg_monitor;
GRANT USAGE ON SCHEMA m3ter TO pg_monitor;
GRANT SELECT ON m3ter.databases TO pg_monitor;

SELECT m3ter.launcher_wake();
