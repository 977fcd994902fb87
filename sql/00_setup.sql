-- Shared by the regression files: show an error with its SQLSTATE, message,
-- detail and hint.
CREATE FUNCTION err(query text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    st text; msg text; det text; hnt text;
BEGIN
    EXECUTE query;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                            det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
    -- a failing row holds generated uids and timestamps: keep the output stable
    det := regexp_replace(det, '^Failing row contains \(.*\)\.$', 'Failing row contains (...).');
    RETURN st || ': ' || msg
        || CASE WHEN det <> '' THEN E'\n  DETAIL: ' || det ELSE '' END
        || CASE WHEN hnt <> '' THEN E'\n  HINT: ' || hnt ELSE '' END;
END
$$;
