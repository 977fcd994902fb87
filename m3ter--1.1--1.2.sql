/* m3ter--1.1--1.2.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION m3ter UPDATE TO '1.2'" to load this file. \quit

--
-- Delivery (1.2): writing a row's outcome no longer touches an index
--

-- No insert may run while the frontier is set: every id is visible or gone
LOCK TABLE m3ter.outbox IN ACCESS EXCLUSIVE MODE;

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


-- Fresh rows (as inserted, not retried) are claimed after the frontier:
-- start it before the first of them still pending
UPDATE m3ter.claim_state
   SET frontier = coalesce((SELECT min(id) - 1 FROM m3ter.outbox
                             WHERE status = 'pending' AND next_attempt_at <= created_at),
                           (SELECT max(id) FROM m3ter.outbox), 0);

-- Done rows that had been deferred are not deferred (1.2 resets next_attempt_at when a row is done)
UPDATE m3ter.outbox SET next_attempt_at = created_at
 WHERE status <> 'pending' AND next_attempt_at > created_at;

ALTER TABLE m3ter.outbox SET (fillfactor = 45);

-- The default uid of an outbox row: a version 7 UUID, which starts with the
-- time, so new rows add to the right edge of the unique index on uid instead
-- of a random page of it
CREATE FUNCTION m3ter.new_uid()
RETURNS text
AS 'MODULE_PATHNAME', 'm3ter_new_uid_sql'
LANGUAGE C VOLATILE PARALLEL SAFE;
ALTER TABLE m3ter.outbox ALTER COLUMN uid SET DEFAULT m3ter.new_uid();

-- A claim's ids are stored as they are: compressing thousands of ids at every
-- claim cost more than the bytes it saved (1.2)
ALTER TABLE m3ter.inflight ALTER COLUMN ids SET STORAGE EXTERNAL;

DROP INDEX m3ter.outbox_due_idx;
DROP INDEX m3ter.outbox_accepted_idx;
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

COMMENT ON COLUMN m3ter.outbox.next_attempt_at IS 'A pending row is not sent before this time (retry back-off). Once the row is done it is created_at again.';

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

CREATE OR REPLACE FUNCTION m3ter_retry_failed(only_uids text[] DEFAULT NULL)
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

CREATE OR REPLACE FUNCTION m3ter_release_held(only_accounts text[] DEFAULT NULL)
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

REVOKE ALL ON m3ter.claim_state FROM PUBLIC;
REVOKE ALL ON m3ter.outbox_pending FROM PUBLIC;
