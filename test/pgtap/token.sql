-- OAuth2 client credentials: caching, refresh, refused credentials
BEGIN;
SELECT plan(16);
SELECT standin.reset();
SET m3ter.max_requests_per_second = 0;
-- the cluster shares one token: another spelling of the URL makes this test's own
SELECT set_config('m3ter.api_url', current_setting('m3ter.api_url') || '//', true);
\set m '''{"meter":"m","account":"a","ts":"2024-01-02T03:04:05Z"}'''

SELECT m3ter_submit(:m);
SELECT m3ter_submit(:m);
SELECT m3ter_organization_config();
SELECT is((standin.summary()->>'token_requests')::int, 1, 'one token serves several calls on both hosts');
SELECT is((SELECT status FROM standin.requests() WHERE path = '/oauth/token'), 200, 'the token request used valid Basic credentials');

-- the server forgets the token: one 403, one new token, the call goes through
SELECT standin.reset();
SELECT standin.config('{"expire_tokens": true}');
SELECT lives_ok($$SELECT m3ter_submit('{"meter":"m","account":"a","ts":"2024-01-02T03:04:05Z"}')$$,
                'a call with an expired token succeeds');
SELECT results_eq($$SELECT path || ' ' || status FROM standin.requests() ORDER BY n$$,
                  ARRAY['/organizations/5f3b8c2e-1d4a-4e6b-9c7d-0a1b2c3d4e5f/measurements 403',
                        '/oauth/token 200',
                        '/organizations/5f3b8c2e-1d4a-4e6b-9c7d-0a1b2c3d4e5f/measurements 200'],
                  'after a 403 the token is renewed once and the call repeated');

-- a short-lived token is renewed before it runs out, without a 403
SELECT standin.reset();
SELECT standin.config('{"token_ttl": 2}');
SELECT set_config('m3ter.api_url', current_setting('m3ter.api_url') || '/', true);
SELECT m3ter_submit(:m);
SELECT is((standin.summary()->>'token_requests')::int, 1, 'changing a setting makes the next call fetch a new token');
SELECT pg_sleep(2.1);
SELECT m3ter_submit(:m);
SELECT is((standin.summary()->>'token_requests')::int, 2, 'a token is renewed when its lifetime is nearly over');
SELECT is((SELECT count(*)::int FROM standin.requests() WHERE status = 403), 0, 'without provoking a 403');

-- wrong credentials: a clear error that shows no secret
SELECT standin.reset();
SET m3ter.api_secret = 'wrong-secret-value';
SELECT throws_ok($$SELECT m3ter_submit('{"meter":"m","account":"a","ts":"2024-01-02T03:04:05Z"}')$$,
                 'M3401', 'submitting measurements to m3ter failed: m3ter refused the credentials (HTTP 401)',
                 'refused credentials raise M3401');
SELECT is((SELECT count(*)::int FROM standin.requests() WHERE path = '/oauth/token'), 1, 'and are not retried');
CREATE FUNCTION pg_temp.error_text(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE m text; d text; h text;
BEGIN EXECUTE q; RETURN '';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
    RETURN concat_ws(' ', m, d, h);
END $$;
SELECT unalike(pg_temp.error_text($$SELECT m3ter_organization_config()$$), '%wrong-secret-value%',
              'the error does not show the secret');
RESET m3ter.api_secret;

-- an unknown organization: 403 even with a fresh token, not retried further
SELECT m3ter_organization_config();  -- a valid cached token
SELECT standin.reset();
SET m3ter.org_id = '00000000-0000-4000-8000-000000000000';
SELECT throws_ok($$SELECT m3ter_submit('{"meter":"m","account":"a","ts":"2024-01-02T03:04:05Z"}')$$,
                 'M3403', 'submitting measurements to m3ter failed with HTTP status 403',
                 'an unknown organization raises M3403');
SELECT is((SELECT count(*)::int FROM standin.ingest_requests()), 2,
          'the 403 is tried once more with a renewed token, then given up');
SELECT alike(pg_temp.error_text($$SELECT m3ter_submit('{"meter":"m","account":"a","ts":"2024-01-02T03:04:05Z"}')$$),
            '%m3ter said: Forbidden: unknown organization%', 'the server''s message reaches the error detail');
RESET m3ter.org_id;

-- the token endpoint failing is named as such, not as the call's own API
SELECT standin.reset();
SELECT standin.config('{"expire_tokens": true}');
SELECT standin.fault('{"match": "/oauth/token", "status": 503, "count": 2}');
SET m3ter.max_retries = 0;
SELECT throws_ok($$SELECT m3ter_submit('{"meter":"m","account":"a","ts":"2024-01-02T03:04:05Z"}')$$,
                 'M3500', 'submitting measurements to m3ter failed: m3ter''s token endpoint answered HTTP status 503',
                 'a failing token endpoint is named in the error');
SELECT is((SELECT count(*)::int FROM standin.requests() WHERE path = '/oauth/token' AND status = 503), 1,
          'the token endpoint was asked once (m3ter.max_retries 0)');
RESET m3ter.max_retries;

-- missing credentials name the setting
SET m3ter.access_key_id = '';
SELECT throws_ok($$SELECT m3ter_organization_config()$$, '55000', 'm3ter credentials are not set',
                 'missing credentials are named');
RESET m3ter.access_key_id;

SELECT * FROM finish();
ROLLBACK;
