/* m3ter--1.2.sql */

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

-- The default uid of an outbox row: a version 7 UUID, which starts with the
-- time, so new rows add to the right edge of the unique index on uid instead
-- of a random page of it (1.2)
CREATE FUNCTION m3ter.new_uid()
RETURNS text
AS 'MODULE_PATHNAME', 'm3ter_new_uid_sql'
LANGUAGE C VOLATILE PARALLEL SAFE;

--
-- The outbox
--
CREATE TABLE m3ter.outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- written by the application
    uid             text COLLATE "C" NOT NULL DEFAULT m3ter.new_uid(),
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
) WITH (fillfactor = 45);

COMMENT ON TABLE m3ter.outbox IS
    'Usage measurements waiting for, or done with, delivery to m3ter. INSERT here; the worker or m3ter_flush() sends them.';
COMMENT ON COLUMN m3ter.outbox.uid IS 'Unique id of the measurement; every re-send carries it, so m3ter stores it once.';
COMMENT ON COLUMN m3ter.outbox.status IS 'pending (waiting or retrying), accepted (m3ter accepted it) or failed (see error).';
COMMENT ON COLUMN m3ter.outbox.next_attempt_at IS 'A pending row is not sent before this time (retry back-off). Once the row is done it is created_at again.';

-- Where pending rows are found (1.2): no index names a column that writing
-- a row's outcome changes, so that write is a HOT update in place (the page
-- keeps room for it: fillfactor 45), whatever the table holds.  Rows are
-- claimed from two places:
--   fresh rows (next_attempt_at <= created_at, as inserted): by id, after the
--     claim frontier in m3ter.claim_state, which every claim moves on;
--   deferred rows (next_attempt_at > created_at: waiting for a retry, held,
--     or scheduled): by this index, in the order they fall due.  A row
--     leaves it when it is done (next_attempt_at goes back to created_at).
CREATE INDEX outbox_deferred_idx ON m3ter.outbox (next_attempt_at, id) WHERE next_attempt_at > created_at;

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

-- A claim's ids are stored as they are: compressing thousands of ids at every
-- claim cost more than the bytes it saved (1.2)
ALTER TABLE m3ter.inflight ALTER COLUMN ids SET STORAGE EXTERNAL;

-- The fresh rows' claim frontier (1.2): every id up to frontier has been
-- passed by a claim, except the ranges gap_lo[i]..gap_hi[i], ids that were
-- not visible when passed (a transaction still inserting, or one that rolled
-- back) and are read again by each claim until they are settled: the
-- transactions running when sample_id was the last id given out
-- (sample_vxids) have all ended, so no id up to sample_id can still appear.
-- seq_seen is the last id the sequence had given out at the last claim: when
-- the sequence is behind it, it was set back, and claims start over.  Behind
-- the frontier, a sweep looks for pending rows no claim would find (an
-- explicit id below it): it goes on after sweep_from, last done at swept_at.
-- One row, written under the claim lock by whichever sender claims.
CREATE TABLE m3ter.claim_state (
    only_row     boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    frontier     bigint NOT NULL DEFAULT 0,
    gap_lo       bigint[] NOT NULL DEFAULT '{}',
    gap_hi       bigint[] NOT NULL DEFAULT '{}',
    sample_id    bigint,
    sample_vxids bigint[],
    seq_seen     bigint,
    sweep_from   bigint,
    swept_at     timestamptz
);
INSERT INTO m3ter.claim_state DEFAULT VALUES;

COMMENT ON TABLE m3ter.claim_state IS
    'Where claims of fresh outbox rows continue, and the ids passed before they were visible. Written by the extension only.';

-- An UPDATE that makes a row pending again, or moves its next attempt to
-- created_at or before, makes it deferred: behind the frontier only the
-- deferred index would find it (m3ter_retry_failed(), an operator's
-- UPDATE ... SET status = 'pending', next_attempt_at = now())
CREATE FUNCTION m3ter.outbox_keep_pending_found()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- due now, not at created_at: a long delivery's claims have passed that
    NEW.next_attempt_at := GREATEST(now(), NEW.created_at + interval '1 microsecond');
    RETURN NEW;
END
$$;

CREATE TRIGGER outbox_keep_pending_found
    BEFORE UPDATE ON m3ter.outbox
    FOR EACH ROW
    WHEN (NEW.status = 'pending' AND NEW.next_attempt_at <= NEW.created_at
          AND (OLD.status <> 'pending' OR OLD.next_attempt_at <> NEW.next_attempt_at
               OR OLD.created_at <> NEW.created_at))
    EXECUTE FUNCTION m3ter.outbox_keep_pending_found();

-- TRUNCATE empties the outbox: claims start over from the first id, whatever
-- the sequence does next (RESTART IDENTITY or not), and the answers to
-- requests still in flight are not written (their ids may be new rows')
CREATE FUNCTION m3ter.outbox_truncated()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE m3ter.claim_state
       SET frontier = 0, gap_lo = '{}', gap_hi = '{}', sample_id = NULL, sample_vxids = NULL,
           seq_seen = NULL, sweep_from = NULL;
    DELETE FROM m3ter.inflight;
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_truncated
    AFTER TRUNCATE ON m3ter.outbox
    FOR EACH STATEMENT
    EXECUTE FUNCTION m3ter.outbox_truncated();

-- A row's usage cannot change once it has been sent (accepted, tried, or in
-- flight): m3ter keeps the first measurement of a uid, so the change would
-- never reach it.  A row that failed may be corrected and retried.
CREATE FUNCTION m3ter.outbox_refuse_sent_change()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF OLD.status <> 'pending' OR OLD.attempts > 0
       OR EXISTS (SELECT 1 FROM m3ter.inflight f WHERE OLD.id = ANY (f.ids)) THEN
        RAISE EXCEPTION 'outbox row "%" has been sent to m3ter: its usage cannot change', OLD.uid
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'm3ter keeps the first measurement it receives for a uid and ignores one sent again with it.',
                  HINT = 'Queue a correction with m3ter_adjust(uid, factor), or insert a new row with a new uid.';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER outbox_sent_is_final
    BEFORE UPDATE OF uid, meter, account, ts, ets, measure, cost, income, who, "where", what, other, metadata
    ON m3ter.outbox
    FOR EACH ROW
    WHEN (OLD.status <> 'failed'
          AND (OLD.uid, OLD.meter, OLD.account, OLD.ts, OLD.ets, OLD.measure, OLD.cost, OLD.income, OLD.who,
               OLD."where", OLD.what, OLD.other, OLD.metadata)
              IS DISTINCT FROM
              (NEW.uid, NEW.meter, NEW.account, NEW.ts, NEW.ets, NEW.measure, NEW.cost, NEW.income, NEW.who,
               NEW."where", NEW.what, NEW.other, NEW.metadata))
    EXECUTE FUNCTION m3ter.outbox_refuse_sent_change();

-- The time from which a row is due now and counts as deferred
CREATE FUNCTION m3ter.due_now(created_at timestamptz)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT GREATEST(pg_catalog.now(), created_at + interval '1 microsecond') $$;


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
           SET status = 'pending', attempts = 0, next_attempt_at = m3ter.due_now(created_at)
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
       w.state        AS worker_state,
       count(*) FILTER (WHERE o.status = 'rejected') AS rejected,
       count(*) FILTER (WHERE o.status = 'pending' AND o.error LIKE 'held: %') AS held
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

-- Every pending row, found the way claims find them (no full scan): the
-- deferred ones, the fresh ones after the frontier, and the fresh ones
-- before it that are in flight or were passed before they were visible
CREATE VIEW m3ter.outbox_pending AS
SELECT o.* FROM m3ter.outbox o
 WHERE o.next_attempt_at > o.created_at AND o.status = 'pending'
UNION ALL
SELECT o.* FROM m3ter.claim_state s JOIN m3ter.outbox o ON o.id > s.frontier
 WHERE o.next_attempt_at <= o.created_at AND o.status = 'pending'
UNION ALL
SELECT o.* FROM m3ter.outbox o
 WHERE o.id IN (SELECT pg_catalog.unnest(f.ids) FROM m3ter.inflight f)
   AND o.id <= (SELECT s.frontier FROM m3ter.claim_state s)
   AND o.next_attempt_at <= o.created_at AND o.status = 'pending'
UNION ALL
-- the gaps by range over the primary key: a gap can span any number of ids
SELECT o.* FROM m3ter.claim_state s
 CROSS JOIN LATERAL ROWS FROM (pg_catalog.unnest(s.gap_lo), pg_catalog.unnest(s.gap_hi)) AS g(lo, hi)
 JOIN m3ter.outbox o ON o.id >= g.lo AND o.id <= LEAST(g.hi, s.frontier)
 WHERE o.next_attempt_at <= o.created_at AND o.status = 'pending'
   AND NOT EXISTS (SELECT 1 FROM m3ter.inflight f WHERE o.id = ANY (f.ids));

COMMENT ON VIEW m3ter.outbox_pending IS 'The pending rows of m3ter.outbox, read through the claims'' own paths.';

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
         WHERE next_attempt_at > created_at AND status = 'pending' AND error LIKE 'held: %'
           AND (only_accounts IS NULL OR account = ANY (only_accounts))),
    known AS (
        INSERT INTO m3ter.catalog_accounts (code, source)
        SELECT account, 'operator' FROM held
        ON CONFLICT (code) DO NOTHING),
    bump AS (
        UPDATE m3ter.catalog_state SET version = version + 1),
    r AS (
        UPDATE m3ter.outbox o
           SET next_attempt_at = m3ter.due_now(o.created_at), error = NULL
          FROM held
         WHERE o.account = held.account AND o.next_attempt_at > o.created_at
           AND o.status = 'pending' AND o.error LIKE 'held: %'
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
