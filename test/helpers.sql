-- test/helpers.sql: SQL access to the m3ter stand-in's control API, for pgTAP.
-- Installed into the pgTAP test database by test/run.sh.  The stand-in serves
-- on the same address as m3ter.api_url; curl runs as the server's OS user.

CREATE SCHEMA standin;

CREATE FUNCTION standin.shell_quote(s text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT '''' || replace(s, '''', '''\''''') || '''' $$;

-- One call to the stand-in; its JSON answer
CREATE FUNCTION standin.call(method text, path text, body jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    cmd text;
    answer text;
BEGIN
    cmd := 'curl -fsS -X ' || method || ' -H ''Content-Type: application/json'' '
        || CASE WHEN body IS NULL THEN '' ELSE '-d ' || standin.shell_quote(body::text) || ' ' END
        || standin.shell_quote(current_setting('m3ter.api_url') || path);
    IF to_regclass('pg_temp.standin_answer') IS NULL THEN
        CREATE TEMP TABLE standin_answer (line text);
    END IF;
    TRUNCATE standin_answer;
    EXECUTE format('COPY standin_answer FROM PROGRAM %L WITH (FORMAT csv, QUOTE E''\x01'', DELIMITER E''\x02'')', cmd);
    SELECT string_agg(line, E'\n') INTO answer FROM standin_answer;
    RETURN answer::jsonb;
END
$$;

CREATE FUNCTION standin.reset() RETURNS void
LANGUAGE sql AS $$ SELECT standin.call('POST', '/_control/reset'); $$;

-- Queue faults: standin.fault('{"match": "/measurements", "status": 503, "count": 2}')
CREATE FUNCTION standin.fault(VARIADIC faults jsonb[]) RETURNS void
LANGUAGE sql AS $$ SELECT standin.call('POST', '/_control/faults', jsonb_build_object('faults', to_jsonb(faults))); $$;

CREATE FUNCTION standin.config(settings jsonb) RETURNS void
LANGUAGE sql AS $$ SELECT standin.call('POST', '/_control/config', settings); $$;

CREATE FUNCTION standin.summary() RETURNS jsonb
LANGUAGE sql AS $$ SELECT standin.call('GET', '/_control/summary'); $$;

-- The request log: one row per request the stand-in answered (or dropped)
CREATE FUNCTION standin.requests()
RETURNS TABLE (n int, t float8, method text, path text, status int, measurements int, bytes int, note text)
LANGUAGE sql AS $$
    SELECT (row_number() OVER ())::int, (r->>'t')::float8, r->>'method', r->>'path', (r->>'status')::int,
           (r->>'measurements')::int, (r->>'bytes')::int, r->>'note'
      FROM jsonb_array_elements(standin.call('GET', '/_control/requests')) r
$$;

-- The ingest requests only
CREATE FUNCTION standin.ingest_requests()
RETURNS TABLE (n int, t float8, status int, measurements int, bytes int, note text)
LANGUAGE sql AS $$
    SELECT (row_number() OVER (ORDER BY r.n))::int, r.t, r.status, r.measurements, r.bytes, r.note
      FROM standin.requests() r WHERE r.path LIKE '%/measurements'
$$;

-- Every measurement the stand-in stored
CREATE FUNCTION standin.measurements() RETURNS SETOF jsonb
LANGUAGE sql AS $$ SELECT jsonb_array_elements(standin.call('GET', '/_control/measurements')) $$;

CREATE FUNCTION standin.meters() RETURNS SETOF jsonb
LANGUAGE sql AS $$ SELECT jsonb_array_elements(standin.call('GET', '/_control/meters')) $$;
