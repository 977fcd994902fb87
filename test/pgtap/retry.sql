-- m3ter's error and retry rules, as seen by the stand-in: number and spacing of requests
BEGIN;
SELECT plan(19);
SET m3ter.max_requests_per_second = 0;
SET m3ter.max_retries = 3;
\set m '''{"meter":"m","account":"a","ts":"2024-01-02T03:04:05Z"}'''
SELECT m3ter_organization_config();  -- a cached token, so only ingest requests follow

-- 429 twice: wait at least 1 s, then at least 3 s
SELECT standin.reset();
SELECT standin.fault('{"match": "/measurements", "status": 429, "count": 2}');
SELECT lives_ok(format('SELECT m3ter_submit(%L)', :m), 'a call succeeds after two 429 answers');
SELECT results_eq($$SELECT status FROM standin.ingest_requests() ORDER BY n$$, ARRAY[429, 429, 200],
                  'it was sent three times');
SELECT ok((SELECT t FROM standin.ingest_requests() WHERE n = 2) - (SELECT t FROM standin.ingest_requests() WHERE n = 1) >= 1.0,
          'the first retry waited at least 1 s');
SELECT ok((SELECT t FROM standin.ingest_requests() WHERE n = 3) - (SELECT t FROM standin.ingest_requests() WHERE n = 2) >= 3.0,
          'the second retry waited at least 3 s');

-- Retry-After is honoured when it asks for longer
SELECT standin.reset();
SELECT standin.fault('{"match": "/measurements", "status": 429, "retry_after": 2, "count": 1}');
SELECT lives_ok(format('SELECT m3ter_submit(%L)', :m), 'a call succeeds after a 429 with Retry-After: 2');
SELECT ok((SELECT max(t) - min(t) FROM standin.ingest_requests()) >= 2.0, 'the retry waited the 2 s asked for');

-- 500, 502, 504 are retried
SELECT standin.reset();
SELECT standin.fault('{"match": "/measurements", "status": 500}', '{"match": "/measurements", "status": 502}',
                     '{"match": "/measurements", "status": 504}');
SET m3ter.retry_max_delay = '1s';
SELECT lives_ok(format('SELECT m3ter_submit(%L)', :m), 'a call succeeds after 500, 502 and 504');
SELECT results_eq($$SELECT status FROM standin.ingest_requests() ORDER BY n$$, ARRAY[500, 502, 504, 200],
                  'each server error was retried');

-- a dropped connection is a network fault, retried
SELECT standin.reset();
SELECT standin.fault('{"match": "/measurements", "drop": true}');
SELECT lives_ok(format('SELECT m3ter_submit(%L)', :m), 'a call succeeds after a dropped connection');
SELECT is((SELECT count(*)::int FROM standin.ingest_requests()), 2, 'it was sent twice');

-- retries are bounded by m3ter.max_retries
SELECT standin.reset();
SET m3ter.max_retries = 1;
SELECT standin.fault('{"match": "/measurements", "status": 503, "count": 5}');
SELECT throws_ok(format('SELECT m3ter_submit(%L)', :m), 'M3500',
                 'submitting measurements to m3ter failed with HTTP status 503', 'retries give up with M3500');
SELECT is((SELECT count(*)::int FROM standin.ingest_requests()), 2, 'after 1 + m3ter.max_retries requests');
SET m3ter.max_retries = 3;

-- 400 and 404 are not retried; the server's message reaches the user
SELECT standin.reset();
SELECT standin.call('POST', '/_control/faults', '{"faults": []}');
SELECT standin.config('{"reject_meters": ["unknown_meter"]}');
SELECT throws_ok($$SELECT m3ter_submit('{"meter":"unknown_meter","account":"a","ts":"2024-01-02T03:04:05Z"}')$$,
                 'M3400', 'submitting measurements to m3ter failed with HTTP status 400', 'a 400 raises M3400');
SELECT is((SELECT count(*)::int FROM standin.ingest_requests()), 1, 'a 400 is not retried');
CREATE FUNCTION pg_temp.detail(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE d text;
BEGIN EXECUTE q; RETURN '';
EXCEPTION WHEN OTHERS THEN GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL; RETURN d;
END $$;
SELECT is(pg_temp.detail($$SELECT m3ter_submit('{"meter":"unknown_meter","account":"a","ts":"2024-01-02T03:04:05Z"}')$$),
          'm3ter said: measurements[0]: no meter with code unknown_meter', 'the detail carries m3ter''s message');
SELECT standin.reset();
SELECT standin.fault('{"match": "/measurements", "status": 404, "body": {"message": "Not found"}}');
SELECT throws_ok(format('SELECT m3ter_submit(%L)', :m), 'M3404', NULL, 'a 404 raises M3404');
SELECT is((SELECT count(*)::int FROM standin.ingest_requests()), 1, 'a 404 is not retried');

-- 413: the request is narrowed (halved) and sent again
SELECT standin.reset();
SELECT standin.fault('{"match": "/measurements", "status": 413}');
SELECT lives_ok($$SELECT m3ter_submit((SELECT jsonb_agg(jsonb_build_object('meter','m','account','a','ts','2024-01-02T03:04:05Z'))
                                        FROM generate_series(1, 10)))$$, 'a call succeeds after a 413');
SELECT results_eq($$SELECT status || ':' || measurements FROM standin.ingest_requests() ORDER BY n$$,
                  ARRAY['413:0', '200:5', '200:5'], 'the request was split in halves');

SELECT * FROM finish();
ROLLBACK;
