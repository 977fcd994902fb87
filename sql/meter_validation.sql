\pset format unaligned
-- m3ter_create_meter checks the Create Meter rules before it calls m3ter
CREATE FUNCTION pg_temp.fields() RETURNS jsonb LANGUAGE sql
AS $$ SELECT '[{"category":"MEASURE","code":"requests","name":"Requests","unit":"requests"}]'::jsonb $$;
SELECT err($$SELECT m3ter_create_meter(NULL, 'api', pg_temp.fields())$$);
SELECT err($$SELECT m3ter_create_meter('', 'api', pg_temp.fields())$$);
SELECT err(format($$SELECT m3ter_create_meter('%s', 'api', pg_temp.fields())$$, repeat('n', 201)));
SELECT err($$SELECT m3ter_create_meter('API', '', pg_temp.fields())$$);
SELECT err($$SELECT m3ter_create_meter('API', ' api', pg_temp.fields())$$);
SELECT err($$SELECT m3ter_create_meter('API', E'api\n', pg_temp.fields())$$);
SELECT err(format($$SELECT m3ter_create_meter('API', '%s', pg_temp.fields())$$, repeat('c', 81)));
SELECT err($$SELECT m3ter_create_meter('API', 'api', NULL)$$);
SELECT err($$SELECT m3ter_create_meter('API', 'api', '[]')$$);
SELECT err($$SELECT m3ter_create_meter('API', 'api', '{"category":"MEASURE"}')$$);
SELECT err($$SELECT m3ter_create_meter('API', 'api', (SELECT jsonb_agg(jsonb_build_object('category','WHO','code','f'||i,'name','F'||i)) FROM generate_series(1,16) i))$$);
SELECT err($$SELECT m3ter_create_meter('API', 'api', '[{"category":"SIZE","code":"c","name":"n"}]')$$);
SELECT err($$SELECT m3ter_create_meter('API', 'api', '[{"code":"c","name":"n"}]')$$);
SELECT err($$SELECT m3ter_create_meter('API', 'api', '[{"category":"WHO","name":"n"}]')$$);
SELECT err($$SELECT m3ter_create_meter('API', 'api', '[{"category":"WHO","code":"c"}]')$$);
SELECT err($$SELECT m3ter_create_meter('API', 'api', '[{"category":"WHO","code":"c","name":""}]')$$);
SELECT err($$SELECT m3ter_create_meter('API', 'api', '[{"category":"WHO","code":"c c ","name":"n"}]')$$);
SELECT err($$SELECT m3ter_create_meter('API', 'api', '[{"category":"WHO","code":"c","name":"n","colour":"red"}]')$$);
SELECT err($$SELECT m3ter_create_meter('API', 'api', '[{"category":"WHO","code":"c","name":"n","unit":5}]')$$);
SELECT err($$SELECT m3ter_create_meter('API', 'api', pg_temp.fields(), NULL)$$);
SELECT err($$SELECT m3ter_create_meter('API', 'api', pg_temp.fields(), '{}')$$);
SELECT err($$SELECT m3ter_create_meter('API', 'api', pg_temp.fields(), '[{"category":"MEASURE","code":"d","name":"D"}]')$$);
SELECT err($$SELECT m3ter_create_meter('API', 'api', pg_temp.fields(), '[{"category":"MEASURE","code":"d","name":"D","calculation":""}]')$$);
SELECT err($$SELECT m3ter_create_meter('API', 'api', pg_temp.fields(), '[{"category":"MEASURE","code":"requests","name":"D","calculation":"requests * 2"}]')$$);
SELECT err($$SELECT m3ter_create_meter('API', 'api', pg_temp.fields(), (SELECT jsonb_agg(jsonb_build_object('category','COST','code','d'||i,'name','D'||i,'calculation','1')) FROM generate_series(1,16) i))$$);
SELECT err($$SELECT m3ter_create_meter('API', 'api', pg_temp.fields(), custom_fields => '[1]')$$);
SELECT err($$SELECT m3ter_create_meter('API', 'api', pg_temp.fields(), custom_fields => '{"team":{"a":1}}')$$);
SELECT err($$SELECT m3ter_create_meter('API', 'api', pg_temp.fields(), product_id => 'not-a-uuid')$$);
-- deeper than the JSON library takes: a clear limit error, not an internal one
SELECT err(format($$SELECT m3ter_create_meter('API', 'api', '%s%s')$$, repeat('[', 3000), repeat(']', 3000)));
