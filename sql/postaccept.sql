\pset format unaligned
-- The 1.0 -> 1.1 upgrade script yields what a fresh 1.1 install has
CREATE FUNCTION pg_temp.m3ter_objects() RETURNS SETOF text LANGUAGE sql AS $$
SELECT pg_describe_object(d.classid, d.objid, d.objsubid) AS obj
  FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
 WHERE e.extname = 'm3ter' AND d.deptype = 'e'
UNION ALL
SELECT 'column ' || attname || ' ' || format_type(atttypid, atttypmod) || ' collate ' || coalesce(attcollation::regcollation::text, '')
  FROM pg_attribute WHERE attrelid = 'm3ter.outbox'::regclass AND attnum > 0 AND NOT attisdropped
UNION ALL
SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE conrelid = 'm3ter.outbox'::regclass
UNION ALL
SELECT 'index ' || pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 'm3ter.outbox'::regclass
UNION ALL
SELECT 'view ' || c.relname || ' ' || pg_get_viewdef(c.oid)
  FROM pg_class c WHERE c.relnamespace = 'm3ter'::regnamespace AND c.relkind = 'v'
$$;
CREATE TEMP TABLE fresh AS SELECT obj FROM pg_temp.m3ter_objects() obj;
DROP EXTENSION m3ter;
CREATE EXTENSION m3ter VERSION '1.0';
ALTER EXTENSION m3ter UPDATE TO '1.3';
SELECT extversion FROM pg_extension WHERE extname = 'm3ter';
SELECT 'only in fresh: ' || obj FROM (SELECT obj FROM fresh EXCEPT ALL SELECT obj FROM pg_temp.m3ter_objects() obj) a
UNION ALL
SELECT 'only in upgraded: ' || obj FROM (SELECT obj FROM pg_temp.m3ter_objects() obj EXCEPT ALL SELECT obj FROM fresh) b;
SELECT count(*) > 40 AS compared_objects FROM fresh;
DROP EXTENSION m3ter;
CREATE EXTENSION m3ter;

-- 'rejected' is a status; others are still refused
INSERT INTO m3ter.outbox (uid, meter, account, status, rejection_type) VALUES ('r-1', 'api', 'acme', 'rejected', 'UndefinedMeter');
SELECT err($$INSERT INTO m3ter.outbox (meter, account, status) VALUES ('api', 'acme', 'dropped')$$);

-- m3ter_adjust(): numeric maps times factor, everything else as it was, a new uid
INSERT INTO m3ter.outbox (uid, meter, account, ts, ets, status, measure, cost, who, "where")
VALUES ('a-1', 'api', 'acme', '2024-01-02 03:04:05+00', '2024-01-02 04:00:00+00', 'accepted',
        '{"requests": 5, "bytes": 2.5}', '{"usd": 0.1}', '{"user": "u-1"}', '{"region": "eu"}'),
       ('a-2', 'api', 'acme', '2024-01-02 03:04:05+00', NULL, 'accepted', '{"requests": 4}', NULL, NULL, NULL),
       ('p-1', 'api', 'acme', '2024-01-02 03:04:05+00', NULL, 'pending', '{"requests": 4}', NULL, NULL, NULL),
       ('f-1', 'api', 'acme', '2024-01-02 03:04:05+00', NULL, 'failed', '{"requests": 4}', NULL, NULL, NULL);
SELECT m3ter_adjust('a-1') ~ '^[0-9a-f-]{36}$' AS new_uid;
SELECT meter, account, ts, ets, status, measure, cost, income, who, "where", corrects, correction_factor
  FROM m3ter.outbox WHERE corrects = 'a-1';
SELECT err($$SELECT m3ter_adjust('a-1')$$);
SELECT err($$SELECT m3ter_adjust('p-1')$$);
SELECT err($$SELECT m3ter_adjust('f-1')$$);
SELECT err($$SELECT m3ter_adjust('r-1')$$);
SELECT err($$SELECT m3ter_adjust('nope')$$);
SELECT err($$SELECT m3ter_adjust('a-2', 0)$$);
SELECT err($$SELECT m3ter_adjust('a-2', -1.5)$$);
SELECT m3ter_adjust('a-2', 0.5) IS NOT NULL AS raised_by_half;
SELECT m3ter_adjust('a-2', -1.25) IS NOT NULL AS reversed_but_a_quarter;
SELECT err($$SELECT m3ter_adjust('a-2', -0.5)$$);
SELECT measure FROM m3ter.outbox WHERE corrects = 'a-2' ORDER BY id;
UPDATE m3ter.outbox SET status = 'accepted' WHERE corrects = 'a-2';
SELECT regexp_replace(err(format('SELECT m3ter_adjust(%L)', (SELECT uid FROM m3ter.outbox WHERE corrects = 'a-2' LIMIT 1))), '[0-9a-f-]{36}', '<uid>') AS err;
-- a failed correction does not count
UPDATE m3ter.outbox SET status = 'failed' WHERE corrects = 'a-1';
SELECT m3ter_adjust('a-1', -1) IS NOT NULL AS reversed_again_after_a_failed_correction;

-- held rows: counted, and released with their account marked known
INSERT INTO m3ter.outbox (uid, meter, account, error, next_attempt_at)
VALUES ('h-1', 'api', 'typo', 'held: account "typo" is not an account in m3ter', now() + interval '1 hour');
SELECT pending, failed, rejected, held FROM m3ter.outbox_stats;
SELECT m3ter_release_held(ARRAY['other']) AS released_other, m3ter_release_held() AS released;
SELECT error, next_attempt_at <= now() AS due FROM m3ter.outbox WHERE uid = 'h-1';
SELECT code, source FROM m3ter.catalog_accounts;
SELECT meters, accounts, checks_on, stale FROM m3ter_catalog_status();
DELETE FROM m3ter.outbox;
DELETE FROM m3ter.catalog_accounts;

-- the tables and functions are not for every role
CREATE ROLE m3ter_regress_reader LOGIN;
SET ROLE m3ter_regress_reader;
SELECT err($$SELECT m3ter_adjust('a-1')$$);
SELECT err($$SELECT m3ter_poll_events()$$);
SELECT err($$SELECT m3ter_sync_catalog()$$);
SELECT err($$SELECT * FROM m3ter.ingest_events$$);
RESET ROLE;
DROP ROLE m3ter_regress_reader;
