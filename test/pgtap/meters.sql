-- m3ter_create_meter, m3ter_list_meters, m3ter_organization_config against the stand-in
BEGIN;
SELECT plan(14);
SELECT standin.reset();
SET m3ter.max_requests_per_second = 0;

SELECT m3ter_create_meter('API requests', 'api_requests',
    '[{"category":"MEASURE","code":"requests","name":"Requests","unit":"requests"},
      {"category":"WHERE","code":"region","name":"Region"}]',
    '[{"category":"MEASURE","code":"doubled","name":"Doubled","calculation":"requests * 2"}]',
    product_id => '0b1f3c4e-5d6a-4b7c-8d9e-0f1a2b3c4d5e',
    custom_fields => '{"team":"billing","tier":3}') AS meter \gset
SELECT ok((:'meter'::jsonb) ? 'id', 'the created meter has an id');
SELECT is((:'meter'::jsonb)->>'version', '1', 'at version 1');
SELECT is((SELECT m - 'id' - 'version' - 'dtCreated' - 'dtLastModified' - 'createdBy' - 'lastModifiedBy' FROM standin.meters() m),
          '{"name":"API requests","code":"api_requests",
            "dataFields":[{"category":"MEASURE","code":"requests","name":"Requests","unit":"requests"},
                          {"category":"WHERE","code":"region","name":"Region"}],
            "derivedFields":[{"category":"MEASURE","code":"doubled","name":"Doubled","calculation":"requests * 2"}],
            "productId":"0b1f3c4e-5d6a-4b7c-8d9e-0f1a2b3c4d5e","customFields":{"team":"billing","tier":3}}'::jsonb,
          'the stand-in received the documented body, without version');

-- without derived fields, an empty array is sent
SELECT m3ter_create_meter('Storage', 'storage', '[{"category":"MEASURE","code":"gb","name":"GB"}]');
SELECT is((SELECT m->'derivedFields' FROM standin.meters() m WHERE m->>'code' = 'storage'), '[]',
          'derivedFields defaults to an empty array, never null');

-- the server's 400 reaches the user
SELECT throws_ok($$SELECT m3ter_create_meter('Again', 'storage', '[{"category":"MEASURE","code":"gb","name":"GB"}]')$$,
                 'M3400', 'creating an m3ter meter failed with HTTP status 400', 'a duplicate code is refused by m3ter');

-- listing follows nextToken across pages of 100, the most m3ter's lists take (the stand-in
-- refuses more with a 400)
SELECT count(m3ter_create_meter('Meter ' || i, 'meter_' || i, '[{"category":"MEASURE","code":"n","name":"N"}]'))
  FROM generate_series(1, 448) i;
SELECT is((SELECT count(*)::int FROM m3ter_list_meters()), 450, 'all 450 meters are listed');
SELECT is((SELECT count(*)::int FROM standin.requests() WHERE method = 'GET' AND path LIKE '%/meters'), 5,
          'in five pages');
SELECT is((SELECT count(DISTINCT m->>'code')::int FROM m3ter_list_meters() m), 450, 'with no meter twice');

SELECT is(m3ter_organization_config()->>'organizationId', current_setting('m3ter.org_id'),
          'the organization config is returned');
SELECT is((SELECT count(*)::int FROM standin.requests() WHERE path LIKE '%/organizationconfig'), 1, 'with one request');

-- a 2xx that is not m3ter's list or object: not an empty listing, not a meter created
SELECT standin.fault('{"match": "/meters", "status": 200, "body": {}, "count": 1}');
SELECT throws_ok('SELECT count(*) FROM m3ter_list_meters()', 'M3300', NULL,
                 'a page with no data list raises M3300 (it read as no meters)');
SELECT standin.fault('{"match": "/meters", "status": 200, "body": {"data": null}, "count": 1}');
SELECT throws_ok('SELECT count(*) FROM m3ter_list_meters()', 'M3300', NULL, 'and so does {"data": null}');
SELECT standin.fault('{"match": "/meters", "status": 200, "body": [], "count": 1}');
SELECT throws_ok($$SELECT m3ter_create_meter('Arr', 'arr', '[{"category":"MEASURE","code":"n","name":"N"}]')$$,
                 'M3300', NULL, 'an array for a created meter raises M3300');
SELECT standin.fault('{"match": "/meters", "status": 200, "body": " ", "count": 1}');
SELECT throws_ok($$SELECT m3ter_create_meter('Blank', 'blank', '[{"category":"MEASURE","code":"n","name":"N"}]')$$,
                 'M3300', NULL, 'a blank answer for a created meter raises M3300 (not M3500, nothing retried)');

SELECT * FROM finish();
ROLLBACK;
