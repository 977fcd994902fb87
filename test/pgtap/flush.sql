-- m3ter_flush(): the outbox delivery rules, in one transaction against the stand-in
BEGIN;
SELECT plan(33);
SET m3ter.max_requests_per_second = 0;
SELECT m3ter_organization_config();  -- a cached token
SELECT standin.reset();
DELETE FROM m3ter.outbox;  -- start from an empty outbox (rolled back at the end)

CREATE FUNCTION pg_temp.usage(n int, prefix text, meter text DEFAULT 'api_requests') RETURNS void
LANGUAGE sql AS $$
    INSERT INTO m3ter.outbox (uid, meter, account, measure, who, "where", what)
    SELECT prefix || i, meter, 'acct-' || (i % 7), jsonb_build_object('requests', i, 'bytes', i * 10),
           '{"user": "u1"}', '{"region": "eu-west-1"}', '{"action": "send"}'
      FROM generate_series(1, n) i
$$;

-- a backlog drains in full requests, older rows first
SELECT pg_temp.usage(2500, 'a-');
SELECT m3ter_flush() AS r \gset
SELECT is((:'r'::jsonb)->>'accepted', '2500', 'flush reports 2500 accepted');
SELECT is((:'r'::jsonb)->>'requests', '3', 'in three requests');
SELECT results_eq($$SELECT measurements FROM standin.ingest_requests() ORDER BY measurements DESC$$, ARRAY[1000, 1000, 500],
                  'requests are full');
SELECT is((SELECT count(*)::int FROM m3ter.outbox WHERE status = 'accepted' AND http_status = 200
            AND attempts = 1 AND accepted_at IS NOT NULL AND sent_at IS NOT NULL AND error IS NULL), 2500,
          'every row is accepted with its status columns written');
SELECT is((SELECT count(*)::int FROM standin.measurements() m WHERE m->>'uid' LIKE 'a-%'), 2500,
          'the stand-in stored every row');
SELECT is((SELECT min((m->'measure'->>'requests')::int) FROM standin.measurements() m
            WHERE m->>'uid' IN (SELECT uid FROM m3ter.outbox ORDER BY id LIMIT 1000)), 1,
          'the first request carried the oldest rows');
SELECT is((SELECT m FROM standin.measurements() m WHERE m->>'uid' = 'a-7') - 'ts',
          '{"uid":"a-7","meter":"api_requests","account":"acct-0","measure":{"requests":7,"bytes":70},
            "who":{"user":"u1"},"where":{"region":"eu-west-1"},"what":{"action":"send"}}'::jsonb,
          'a row is sent as the measurement it describes');
SELECT matches((SELECT m->>'ts' FROM standin.measurements() m WHERE m->>'uid' = 'a-7'),
               '^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$', 'ts is ISO 8601 in UTC');
SELECT is(m3ter_flush()->>'requests', '0', 'a second flush finds nothing to send');

-- max_rows bounds one flush
SELECT standin.reset();
SELECT pg_temp.usage(300, 'b-');
SELECT is(m3ter_flush(120)->>'accepted', '120', 'm3ter_flush(120) sends 120 rows');
SELECT is((SELECT count(*)::int FROM m3ter.outbox WHERE uid LIKE 'b-%' AND status = 'pending'), 180, 'and leaves the rest pending');
SELECT is(m3ter_flush()->>'accepted', '180', 'the next flush sends the rest');

-- one poison row among 999 good ones: found by halving, marked failed, the rest delivered
SELECT standin.reset();
SELECT standin.config('{"reject_meters": ["no_such_meter"]}');
SELECT pg_temp.usage(500, 'c-');
SELECT pg_temp.usage(1, 'poison-', 'no_such_meter');
SELECT pg_temp.usage(499, 'd-');
SELECT m3ter_flush() AS r \gset
SELECT is((:'r'::jsonb)->>'accepted', '999', 'the 999 good rows are accepted');
SELECT is((:'r'::jsonb)->>'failed', '1', 'one row failed');
SELECT results_eq($$SELECT uid COLLATE "default", status, http_status, error FROM m3ter.outbox WHERE status = 'failed'$$,
                  $$VALUES ('poison-1', 'failed', 400, 'measurements[0]: no meter with code no_such_meter')$$,
                  'the poison row is failed with m3ter''s message');
SELECT ok((:'r'::jsonb->>'requests')::int <= 21, 'isolating it took at most 21 requests');
SELECT is((SELECT count(*)::int FROM standin.measurements()), 999, 'the stand-in stored the 999');

-- transient failures keep rows pending with a growing next_attempt_at
SELECT standin.reset();
SELECT pg_temp.usage(10, 'e-');
SELECT standin.fault('{"match": "/measurements", "status": 503}');
SELECT m3ter_flush() AS r \gset
SELECT is((:'r'::jsonb)->>'retried', '10', 'a 503 leaves the rows for a retry');
SELECT results_eq($$SELECT DISTINCT status, attempts, http_status FROM m3ter.outbox WHERE uid LIKE 'e-%'$$,
                  $$VALUES ('pending', 1, 503)$$, 'pending, one attempt, the status noted');
SELECT ok((SELECT bool_and(next_attempt_at >= clock_timestamp() + interval '0.5 s') FROM m3ter.outbox WHERE uid LIKE 'e-%'),
          'not due again for about a second');
SELECT is(m3ter_flush()->>'requests', '0', 'a flush before then sends nothing');
UPDATE m3ter.outbox SET next_attempt_at = now() WHERE uid LIKE 'e-%';
-- (Retry-After holds every sender of the cluster back, the worker of the next suites too: keep it short)
SELECT standin.fault('{"match": "/measurements", "status": 429, "retry_after": 5}');
SELECT m3ter_flush();
SELECT ok((SELECT bool_and(next_attempt_at >= clock_timestamp() + interval '4 s') FROM m3ter.outbox WHERE uid LIKE 'e-%'),
          'Retry-After: 5 pushes the next attempt 5 s away');
SELECT is((SELECT max(attempts) FROM m3ter.outbox WHERE uid LIKE 'e-%'), 1, 'the 429 spent no attempt');
-- throttled however often, a row is never failed for its attempts
UPDATE m3ter.outbox SET next_attempt_at = now() WHERE uid LIKE 'e-%';
SET m3ter.max_attempts = 2;
SELECT standin.fault('{"match": "/measurements", "status": 429, "retry_after": 3}');
SELECT m3ter_flush();
RESET m3ter.max_attempts;
SELECT results_eq($$SELECT DISTINCT status, attempts, http_status FROM m3ter.outbox WHERE uid LIKE 'e-%'$$,
                  $$VALUES ('pending', 1, 429)$$, 'a 429 at m3ter.max_attempts - 1 leaves the rows pending');
UPDATE m3ter.outbox SET next_attempt_at = now() WHERE uid LIKE 'e-%';
SELECT is(m3ter_flush()->>'accepted', '10', 'the next send delivers them');

-- after m3ter.max_attempts the rows are failed and visible
SELECT standin.reset();
SET m3ter.max_attempts = 2;
SELECT pg_temp.usage(3, 'f-');
SELECT standin.fault('{"match": "/measurements", "status": 500, "count": 2}');
SELECT m3ter_flush();
UPDATE m3ter.outbox SET next_attempt_at = now() WHERE uid LIKE 'f-%';
SELECT m3ter_flush();
SELECT results_eq($$SELECT DISTINCT status, attempts, http_status FROM m3ter.outbox WHERE uid LIKE 'f-%'$$,
                  $$VALUES ('failed', 2, 500)$$, 'after max_attempts the rows are failed');
RESET m3ter.max_attempts;
SELECT is(m3ter_retry_failed(ARRAY['f-1', 'f-2', 'f-3']), 3::bigint, 'm3ter_retry_failed() puts them back');
SELECT is(m3ter_flush()->>'accepted', '3', 'and they are delivered');

-- a row too large to ever send is failed without a request: the INSERT refuses a large row,
-- but numbers with thousands of decimal places make a small row's JSON too large to check there
SELECT standin.reset();
INSERT INTO m3ter.outbox (uid, meter, account, measure)
VALUES ('huge-1', 'm', 'a', (SELECT jsonb_object_agg('k' || i, ('1.' || repeat('0', 16000))::numeric)
                               FROM generate_series(1, 40) i));
SELECT m3ter_flush();
SELECT alike((SELECT status || ': ' || error FROM m3ter.outbox WHERE uid = 'huge-1'),
            'failed: a request with this measurement alone would take % bytes (% of them the measurement as JSON); m3ter takes requests under 512000 bytes',
            'a row over 512,000 bytes is failed with the reason');
SELECT is((SELECT count(*)::int FROM standin.ingest_requests()), 0, 'it was never sent');

-- an unknown organization stops sending; the rows stay pending, attempts untouched
SELECT standin.reset();
SELECT pg_temp.usage(5, 'g-');
SET m3ter.org_id = '00000000-0000-4000-8000-000000000000';
SET client_min_messages = error;
SELECT m3ter_flush() AS r \gset
RESET client_min_messages;
SELECT is((:'r'::jsonb)->>'stopped', 'true', 'flush reports that sending stopped');
SELECT results_eq($$SELECT DISTINCT status, attempts, http_status FROM m3ter.outbox WHERE uid LIKE 'g-%'$$,
                  $$VALUES ('pending', 0, 403)$$, 'rows stay pending with no attempt burnt');
RESET m3ter.org_id;
SELECT is(m3ter_flush()->>'accepted', '5', 'once the setting is fixed they are delivered');

SELECT * FROM finish();
ROLLBACK;
