\pset format unaligned
-- Version 1.0, then ALTER EXTENSION m3ter UPDATE; the library refuses SQL
-- versions it does not support with a hint, instead of misbehaving
DROP EXTENSION m3ter;
CREATE EXTENSION m3ter VERSION '1.0';
INSERT INTO m3ter.outbox (uid, meter, account, measure) VALUES ('version-1', 'api', 'acme', '{"n": 1}');
SELECT err($$SELECT m3ter_create_meter(NULL, 'api', '[]')$$);
SELECT err($$SELECT * FROM m3ter_list_meters()$$);
SELECT err($$SELECT m3ter_organization_config()$$);
ALTER EXTENSION m3ter UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'm3ter';
SELECT err($$SELECT m3ter_create_meter(NULL, 'api', '[]')$$);
SELECT uid, status FROM m3ter.outbox;
-- the outbox is dumped with its data after the update too
SELECT c.relname FROM pg_extension e, unnest(e.extconfig) AS t(oid) JOIN pg_class c ON c.oid = t.oid
 WHERE e.extname = 'm3ter' ORDER BY 1;
-- an installed version this library does not know
UPDATE pg_extension SET extversion = '9.9' WHERE extname = 'm3ter';
SELECT err($$SELECT m3ter_create_meter('API', 'api', '[]')$$);
UPDATE pg_extension SET extversion = '1.3' WHERE extname = 'm3ter';
SELECT err($$SELECT m3ter_create_meter(NULL, 'api', '[]')$$);
DELETE FROM m3ter.outbox;
-- a new install has the same configuration tables
DROP EXTENSION m3ter;
CREATE EXTENSION m3ter;
SELECT c.relname FROM pg_extension e, unnest(e.extconfig) AS t(oid) JOIN pg_class c ON c.oid = t.oid
 WHERE e.extname = 'm3ter' ORDER BY 1;
