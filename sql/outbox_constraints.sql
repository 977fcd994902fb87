\pset format unaligned
-- Bad rows are refused at INSERT, whole, with a clear error
SELECT err($$INSERT INTO m3ter.outbox (account) VALUES ('acme')$$);
SELECT err($$INSERT INTO m3ter.outbox (meter) VALUES ('api')$$);
SELECT err($$INSERT INTO m3ter.outbox (meter, account) VALUES ('api calls ', 'acme')$$);
SELECT err($$INSERT INTO m3ter.outbox (meter, account) VALUES ('api', E'ac\u00a0me')$$);
SELECT err($$INSERT INTO m3ter.outbox (meter, account, measure) VALUES ('api', 'acme', '[1,2]')$$);
SELECT err($$INSERT INTO m3ter.outbox (meter, account, measure) VALUES ('api', 'acme', '{"n":"1"}')$$);
SELECT err($$INSERT INTO m3ter.outbox (meter, account, cost) VALUES ('api', 'acme', '{"n":null}')$$);
SELECT err($$INSERT INTO m3ter.outbox (meter, account, who) VALUES ('api', 'acme', '{"user":1}')$$);
SELECT err($$INSERT INTO m3ter.outbox (meter, account, metadata) VALUES ('api', 'acme', '"text"')$$);
SELECT err($$INSERT INTO m3ter.outbox (meter, account, ts) VALUES ('api', 'acme', 'infinity')$$);
SELECT err($$INSERT INTO m3ter.outbox (meter, account, uid) VALUES ('api', 'acme', '')$$);
SELECT err($$INSERT INTO m3ter.outbox (meter, account, status) VALUES ('api', 'acme', 'sending')$$);
-- a multi-row INSERT with one bad row leaves nothing behind
SELECT err($$INSERT INTO m3ter.outbox (meter, account, measure) VALUES ('api', 'acme', '{"n":1}'), ('api', 'acme', '{"n":"x"}')$$);
SELECT count(*) AS rows_after_bad_inserts FROM m3ter.outbox;
-- negative values and past timestamps are legal (adjustments)
INSERT INTO m3ter.outbox (uid, meter, account, ts, measure, "where")
VALUES ('adj-1', 'api', 'acme', '2020-01-01 00:00:00+00', '{"requests": -5}', '{"region": "eu-west-1"}');
SELECT uid, status, attempts, next_attempt_at <= now() AS due, http_status, error FROM m3ter.outbox;
-- a uid of up to 512 bytes, no longer (it is kept in a unique index)
SELECT err($$INSERT INTO m3ter.outbox (uid, meter, account) VALUES (repeat('u', 513), 'api', 'acme')$$);
INSERT INTO m3ter.outbox (uid, meter, account) VALUES (repeat('u', 512), 'api', 'acme');
SELECT err($$INSERT INTO m3ter.outbox (uid, meter, account) VALUES (repeat(md5('x'), 200), 'api', 'acme')$$);
DELETE FROM m3ter.outbox WHERE uid LIKE 'uuu%';
-- a row's usage may change until it is sent, not after (m3ter keeps a uid's first measurement)
INSERT INTO m3ter.outbox (uid, meter, account, measure) VALUES ('edit-1', 'api', 'acme', '{"n": 1}');
UPDATE m3ter.outbox SET measure = '{"n": 2}' WHERE uid = 'edit-1';
UPDATE m3ter.outbox SET attempts = 1 WHERE uid = 'edit-1';
SELECT err($$UPDATE m3ter.outbox SET measure = '{"n": 3}' WHERE uid = 'edit-1'$$);
UPDATE m3ter.outbox SET measure = '{"n": 2}' WHERE uid = 'edit-1';
UPDATE m3ter.outbox SET status = 'failed' WHERE uid = 'edit-1';
UPDATE m3ter.outbox SET measure = '{"n": 4}' WHERE uid = 'edit-1';
SELECT uid, status, measure FROM m3ter.outbox WHERE uid = 'edit-1';
DELETE FROM m3ter.outbox WHERE uid = 'edit-1';
-- a uid is used once
SELECT err($$INSERT INTO m3ter.outbox (uid, meter, account) VALUES ('adj-1', 'api', 'acme')$$);
-- generated uids are version 7 UUIDs: they start with the time, so they sort in the order rows were made
INSERT INTO m3ter.outbox (meter, account) VALUES ('api', 'acme');
SELECT 1 AS slept FROM pg_sleep(0.002);
INSERT INTO m3ter.outbox (meter, account) VALUES ('api', 'acme');
SELECT 1 AS slept FROM pg_sleep(0.002);
INSERT INTO m3ter.outbox (meter, account) VALUES ('api', 'acme'), ('api', 'acme');
SELECT count(*) FILTER (WHERE uid ~ '^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$') AS uuid_v7_uids,
       count(DISTINCT uid) AS distinct_uids,
       (array_agg(id ORDER BY uid))[1:2] = (array_agg(id ORDER BY id))[1:2] AS uids_in_order_made,
       bool_and(abs(extract(epoch FROM clock_timestamp()) * 1000
                    - ('x' || lpad(replace(left(uid, 13), '-', ''), 16, '0'))::bit(64)::bigint) < 60000) AS uid_time_is_now
  FROM m3ter.outbox WHERE uid <> 'adj-1';
DELETE FROM m3ter.outbox;
-- a missing uid or ts is named too (no row dumped in a detail)
SELECT err($$INSERT INTO m3ter.outbox (uid, meter, account) VALUES (NULL, 'api', 'acme')$$);
SELECT err($$INSERT INTO m3ter.outbox (meter, account, ts) VALUES ('api', 'acme', NULL)$$);
SELECT err($$INSERT INTO m3ter.outbox (meter, account) VALUES ('api', NULL)$$);
SELECT err($$INSERT INTO m3ter.outbox (meter, account) VALUES ('', 'acme')$$);
-- the CHECK's function called by hand with no row answers NULL (it must not crash the server)
SELECT m3ter.check_outbox_row(NULL) IS NULL AS no_row_no_answer;
-- a column altered by hand to another type is refused, not read as the check reads it
BEGIN;
ALTER TABLE m3ter.outbox RENAME COLUMN metadata TO metadata_old;
ALTER TABLE m3ter.outbox ADD COLUMN metadata text;
SELECT err($$INSERT INTO m3ter.outbox (meter, account, metadata) VALUES ('api', 'acme', 'x')$$);
ROLLBACK;
-- a long bad status is not repeated in full
SELECT err($$INSERT INTO m3ter.outbox (meter, account, status) VALUES ('api', 'acme', repeat('x', 1000))$$);
-- a row that no request could carry is refused at INSERT (54000, as m3ter_submit() refuses it) ...
SELECT err($$INSERT INTO m3ter.outbox (uid, meter, account, ts, metadata)
             VALUES ('huge', 'api', 'acme', '2026-01-01', jsonb_build_object('blob', repeat('x', 511900)))$$);
SELECT err($$INSERT INTO m3ter.outbox (uid, meter, account, ts, metadata)
             VALUES ('huge-escaped', 'api', 'acme', '2026-01-01', jsonb_build_object('blob', repeat(E'\x01', 90000)))$$);
-- (also when its value comes from another table, compressed)
CREATE TEMP TABLE staging AS SELECT jsonb_build_object('blob', repeat('x', 511900)) AS metadata;
SELECT err($$INSERT INTO m3ter.outbox (uid, meter, account, ts, metadata)
             SELECT 'huge-copied', 'api', 'acme', '2026-01-01', metadata FROM staging$$);
DROP TABLE staging;
-- ... and one that fits is taken
SELECT err($$INSERT INTO m3ter.outbox (uid, meter, account, ts, metadata)
             VALUES ('large', 'api', 'acme', '2026-01-01', jsonb_build_object('blob', repeat('x', 511000)))$$);
-- (also a row inserted to be sent later)
SELECT err($$INSERT INTO m3ter.outbox (uid, meter, account, ts, metadata, next_attempt_at)
             VALUES ('huge-later', 'api', 'acme', '2026-01-01', jsonb_build_object('blob', repeat('x', 511900)),
                     now() + interval '1 hour')$$);
-- an application's UPDATE that makes a pending row too large is refused, also one held for later
SELECT err($$UPDATE m3ter.outbox SET metadata = jsonb_build_object('blob', repeat('x', 511900)) WHERE uid = 'large'$$);
INSERT INTO m3ter.outbox (uid, meter, account, ts, next_attempt_at) VALUES ('later', 'api', 'acme', '2026-01-01', now() + interval '1 hour');
SELECT err($$UPDATE m3ter.outbox SET "where" = jsonb_build_object('blob', repeat('x', 511900)) WHERE uid = 'later'$$);
-- the size is checked on a row as an application writes it (pending, untried, no error): a failed
-- row may be corrected at any size, and the extension's writes to it are not refused
UPDATE m3ter.outbox SET status = 'failed', error = 'bad meter' WHERE uid = 'later';
SELECT err($$UPDATE m3ter.outbox SET "where" = jsonb_build_object('blob', repeat('x', 511900)) WHERE uid = 'later'$$);
SELECT err($$UPDATE m3ter.outbox SET error = 'still too large', http_status = NULL WHERE uid = 'later'$$);
DELETE FROM m3ter.outbox;
