\pset format unaligned
-- m3ter_submit checks every measurement before it sends anything
-- (no request reaches m3ter in this file: each call fails validation first)
SELECT err($$SELECT m3ter_submit('42')$$);
SELECT err($$SELECT m3ter_submit('[]')$$);
SELECT err($$SELECT m3ter_submit('[1]')$$);
SELECT err($$SELECT m3ter_submit('{"account":"acme","ts":"2024-01-02T03:04:05Z"}')$$);
SELECT err($$SELECT m3ter_submit('{"meter":"m","ts":"2024-01-02T03:04:05Z"}')$$);
SELECT err($$SELECT m3ter_submit('{"meter":"m","account":"acme"}')$$);
SELECT err($$SELECT m3ter_submit('{"meter":" m","account":"acme","ts":"2024-01-02T03:04:05Z"}')$$);
SELECT err($$SELECT m3ter_submit('{"meter":"m","account":"ac\tme","ts":"2024-01-02T03:04:05Z"}')$$);
SELECT err($$SELECT m3ter_submit('{"meter":"m","account":"acme ","ts":"2024-01-02T03:04:05Z"}')$$);
SELECT err(format($$SELECT m3ter_submit('{"meter":"%s","account":"acme","ts":"2024-01-02T03:04:05Z"}')$$, repeat('m', 81)));
SELECT err($$SELECT m3ter_submit('{"meter":"m","account":"acme","ts":"2024-01-02 03:04:05"}')$$);
SELECT err($$SELECT m3ter_submit('{"meter":"m","account":"acme","ts":"2024-02-30T03:04:05Z"}')$$);
SELECT err($$SELECT m3ter_submit('{"meter":"m","account":"acme","ts":"2024-01-02T03:04:05"}')$$);
SELECT err($$SELECT m3ter_submit('{"meter":"m","account":"acme","ts":1704164645}')$$);
SELECT err($$SELECT m3ter_submit('{"meter":"m","account":"acme","ts":"2024-01-02T03:04:05Z","ets":"soon"}')$$);
SELECT err($$SELECT m3ter_submit('{"meter":"m","account":"acme","ts":"2024-01-02T03:04:05Z","measure":[1]}')$$);
SELECT err($$SELECT m3ter_submit('{"meter":"m","account":"acme","ts":"2024-01-02T03:04:05Z","measure":{"n":"3"}}')$$);
SELECT err($$SELECT m3ter_submit('{"meter":"m","account":"acme","ts":"2024-01-02T03:04:05Z","cost":{"n":1e400}}')$$);
SELECT err($$SELECT m3ter_submit('{"meter":"m","account":"acme","ts":"2024-01-02T03:04:05Z","who":{"user":7}}')$$);
SELECT err($$SELECT m3ter_submit('{"meter":"m","account":"acme","ts":"2024-01-02T03:04:05Z","where":{"r":{"nested":"x"}}}')$$);
SELECT err($$SELECT m3ter_submit('{"meter":"m","account":"acme","ts":"2024-01-02T03:04:05Z","what":{"":"x"}}')$$);
SELECT err($$SELECT m3ter_submit('{"meter":"m","account":"acme","ts":"2024-01-02T03:04:05Z","colour":"red"}')$$);
SELECT err($$SELECT m3ter_submit('{"meter":"m","account":"acme","ts":"2024-01-02T03:04:05Z","uid":""}')$$);
SELECT err($$SELECT m3ter_submit('{"meter":"m","account":"acme","ts":"2024-01-02T03:04:05Z","uid":7}')$$);
SELECT err($$SELECT m3ter_submit(jsonb_build_object('meter', 'm', 'account', 'acme', 'ts', '2024-01-02T03:04:05Z', 'uid', repeat('u', 513)))$$);
-- a uid given twice in one call: m3ter would store only one of them
SELECT err($$SELECT m3ter_submit('[{"meter":"m","account":"acme","ts":"2024-01-02T03:04:05Z","uid":"u-1","measure":{"n":1}},
                                   {"meter":"m","account":"acme","ts":"2024-01-02T03:04:05Z","uid":"u-2","measure":{"n":2}},
                                   {"meter":"m","account":"acme","ts":"2024-01-02T03:04:05Z","uid":"u-1","measure":{"n":3}}]')$$);
-- the second measurement of an array is named by its index
SELECT err($$SELECT m3ter_submit('[{"meter":"m","account":"a","ts":"2024-01-02T03:04:05Z"},{"meter":"m","account":"a","ts":"2024-01-02T03:04:05Z","income":{"x":true}}]')$$);
-- one measurement too large for any request
SELECT err(format($$SELECT m3ter_submit('{"meter":"m","account":"a","ts":"2024-01-02T03:04:05Z","metadata":{"blob":"%s"}}')$$, repeat('x', 512000)));
-- NULL in, NULL out (the function is strict)
SELECT m3ter_submit(NULL) IS NULL AS null_in_null_out;
