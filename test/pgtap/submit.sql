-- m3ter_submit against the stand-in: what is sent, how it is split, uids
BEGIN;
SELECT plan(17);
SELECT standin.reset();
SET m3ter.max_requests_per_second = 0;

-- one measurement, uid generated and returned
SELECT m3ter_submit('{"meter":"api_requests","account":"acme","ts":"2024-01-02T03:04:05Z",
                      "measure":{"requests":218,"bytes":-1.5},"what":{"action":"send \"msg\""},
                      "where":{"region":"eu-west-1"},"ets":"2024-01-02T04:04:05.123456+01:00"}') AS r \gset
SELECT is((:'r'::jsonb)->>'result', 'accepted', 'a single measurement is accepted');
SELECT is(jsonb_array_length((:'r'::jsonb)->'uids'), 1, 'one uid is returned');
SELECT matches((:'r'::jsonb)->'uids'->>0, '^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$',
               'a missing uid is generated as a version 7 UUID');
SELECT is((SELECT m FROM standin.measurements() m),
          jsonb_build_object('uid', (:'r'::jsonb)->'uids'->>0, 'meter', 'api_requests', 'account', 'acme',
                             'ts', '2024-01-02T03:04:05.000Z', 'ets', '2024-01-02T03:04:05.123Z',
                             'measure', '{"requests":218,"bytes":-1.5}'::jsonb,
                             'what', '{"action":"send \"msg\""}'::jsonb, 'where', '{"region":"eu-west-1"}'::jsonb),
          'the stand-in stored the measurement given, its times in UTC with milliseconds as the outbox sends them');

-- a given uid is kept, and a re-send with it is stored once
SELECT is(m3ter_submit('{"uid":"u-1","meter":"m","account":"a","ts":"2024-01-02T03:04:05Z"}')->'uids',
          '["u-1"]', 'a given uid is kept');
SELECT m3ter_submit('{"uid":"u-1","meter":"m","account":"a","ts":"2024-01-02T03:04:05Z"}');
SELECT is((standin.summary()->>'duplicates')::int, 1, 'a re-send with the same uid is seen as a duplicate');
SELECT is((standin.summary()->>'accepted')::int, 2, 'and stored once');

-- 2500 measurements: full requests of 1000
SELECT standin.reset();
SELECT m3ter_submit((SELECT jsonb_agg(jsonb_build_object('uid', 'c-' || i, 'meter', 'm', 'account', 'a',
                                                          'ts', '2024-01-02T03:04:05Z', 'measure', jsonb_build_object('n', i)))
                      FROM generate_series(1, 2500) i)) AS r \gset
SELECT is((:'r'::jsonb)->>'measurements', '2500', 'all 2500 measurements are reported accepted');
SELECT is((:'r'::jsonb)->>'requests', '3', 'in three requests (the token is cached)');
-- several requests are in flight at once, so they may arrive in any order
SELECT results_eq($$SELECT measurements FROM standin.ingest_requests() ORDER BY measurements DESC$$,
                  ARRAY[1000, 1000, 500], 'requests are as full as the 1000-measurement limit allows');
SELECT is((standin.summary()->>'accepted')::int, 2500, 'the stand-in stored 2500 measurements');
SELECT is((SELECT count(*)::int FROM standin.measurements() m WHERE m->>'uid' LIKE 'c-%'), 2500, 'every uid arrived');

-- large measurements: the byte limit binds before the count limit
SELECT standin.reset();
SELECT m3ter_submit((SELECT jsonb_agg(jsonb_build_object('meter', 'm', 'account', 'a', 'ts', '2024-01-02T03:04:05Z',
                                                          'metadata', jsonb_build_object('blob', repeat('x', 100000))))
                      FROM generate_series(1, 12) i)) AS r \gset
SELECT is((:'r'::jsonb)->>'measurements', '12', 'twelve 100 kB measurements are accepted');
SELECT ok((SELECT bool_and(bytes < 512000) FROM standin.ingest_requests()), 'every request stays under 512,000 bytes');
SELECT results_eq($$SELECT measurements FROM standin.ingest_requests() ORDER BY measurements DESC$$,
                  ARRAY[5, 5, 2], 'each request holds as many as fit (five of about 100 kB)');
SELECT ok((SELECT min(bytes) FROM standin.ingest_requests() WHERE measurements = 5) > 500000,
          'a full request is within 2% of the byte limit');
SELECT is((SELECT count(*)::int FROM standin.requests() WHERE status <> 200), 0, 'no request was refused');

SELECT * FROM finish();
ROLLBACK;
