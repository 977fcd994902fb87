"""Hostile input for m3ter_submit(), m3ter_create_meter() and INSERTs into
m3ter.outbox: every case is accepted or refused with a clear SQLSTATE error,
never a backend crash or an internal error, and whatever is sent is JSON that
the stand-in parses (it answers 400 "Malformed JSON" otherwise)."""
import json
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

random.seed(int(os.environ.get("RELIABILITY_SEED", "20261123")))
TS = "2024-01-02T03:04:05Z"

ODD_STRINGS = [
    "", " ", "a b", " lead", "trail ", "tab\there", "new\nline", "nul-free \u0001 control", "\u007f",
    "quote\"s", "back\\slash", "both \\\" mixed", "'single'", "$$dollar$$", "emoji \U0001F600",
    "rtl \u202e mark", "zero\u200bwidth", "nbsp\u00a0", "combining e\u0301", "\ufeffbom", "\uffff",
    "CJK \u4e2d\u6587", "x" * 80, "x" * 81, "y" * 5000, "\u00e9" * 80, "\u00e9" * 81,
    "line\u2028sep", "{\"json\": \"in a string\"}", "-- comment", "; DROP TABLE m3ter.outbox; --",
]
ODD_VALUES = [None, True, False, 0, -1, 1.5, 1e308, -1e308, 5e-324, [], [1, 2], {}, {"a": 1}, "s", ""]
NUMBER_TEXTS = ["0", "-0", "1e308", "1.7976931348623157e308", "1.8e308", "-1.8e308", "1e-400", "5e-324",
                "123456789012345678901234567890", "0.1", "-42", "1e400", "-1e400", "1E2"]


def measurement(**over):
    m = {"meter": "api_requests", "account": "acme", "ts": TS, "measure": {"requests": 1}}
    m.update(over)
    return {k: v for k, v in m.items() if v is not _DROP}


_DROP = object()


def submit_cases():
    cases = []
    for field in ("meter", "account", "ts", "ets", "uid"):
        for v in ODD_VALUES + ODD_STRINGS[:20]:
            cases.append(json.dumps(measurement(**{field: v})))
        cases.append(json.dumps(measurement(**{field: _DROP})))
    for field in ("measure", "cost", "income", "who", "where", "what", "other", "metadata"):
        for v in ODD_VALUES:
            cases.append(json.dumps(measurement(**{field: v})))
            cases.append(json.dumps(measurement(**{field: {"k": v}})))
        for s in ODD_STRINGS:
            cases.append(json.dumps(measurement(**{field: {s: "v" if field not in ("measure", "cost", "income") else 1}})))
            cases.append(json.dumps(measurement(**{field: {"k": s}})))
    for n in NUMBER_TEXTS:
        cases.append('{"meter":"api_requests","account":"acme","ts":"%s","measure":{"n":%s}}' % (TS, n))
    # not JSON at all, JSON scalars, NaN and Infinity, deep nesting, huge and long inputs
    cases += ["", "nul", "{", "[", "NaN", "Infinity", '{"measure":{"n":NaN}}', '"just a string"', "42", "null",
              "true", "[]", "[[]]", "[null]", "[1, 2]"]
    deep = '{"a":' * 2000 + "1" + "}" * 2000
    cases.append(json.dumps(measurement(metadata={"deep": "x"}))[:-1] + ',"other":' + deep + "}")
    cases.append(json.dumps(measurement(metadata={"big": "x" * 600000})))
    cases.append(json.dumps(measurement(metadata={"k" * 10000: "v"})))
    cases.append(json.dumps([measurement(uid="bulk-%d" % i) for i in range(1001)]))
    cases.append(json.dumps([measurement(metadata={"blob": "z" * 200000}) for _ in range(5)]))
    cases.append(json.dumps(measurement(colour="red")))
    cases.append(json.dumps({}))
    for ts in ("0000-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2024-02-29T00:00:00Z", "2023-02-29T00:00:00Z",
               "2024-01-02T03:04:60Z", "2024-01-02T24:00:00Z", "2024-01-02T03:04:05.123456789+05:30",
               "2024-01-02T03:04:05+0530", "2024-01-02T03:04:05+24:00", "2024-13-01T00:00:00Z", "20240102T030405Z"):
        cases.append(json.dumps(measurement(ts=ts)))
    return cases


def meter_cases():
    fields = [{"category": "MEASURE", "code": "n", "name": "N"}]
    cases = []
    for name in ODD_STRINGS + [None]:
        cases.append(("name", [name, "code", fields]))
    for code in ODD_STRINGS + [None]:
        cases.append(("code", ["Name", code, fields]))
    for v in ODD_VALUES + ["not json", "[" * 3000 + "]" * 3000]:
        cases.append(("data_fields", ["Name", "code", v]))
        cases.append(("derived_fields", ["Name", "code", fields, v]))
        cases.append(("custom_fields", ["Name", "code", fields, [], None, None, v]))
        cases.append(("field item", ["Name", "code", [v]]))
        for member in ("category", "code", "name", "unit", "calculation"):
            cases.append(("field member", ["Name", "code", [dict(fields[0], **{member: v})]]))
    for n in (0, 15, 16, 100):
        cases.append(("many fields", ["Name", "code", [{"category": "WHO", "code": "f%d" % i, "name": "F"} for i in range(n)]]))
    cases.append(("uuid", ["Name", "code", fields, [], "not-a-uuid"]))
    return cases


def sql_literal(s):
    return "'" + s.replace("'", "''") + "'"


def sql_value(v):
    if v is None:
        return "NULL"
    if isinstance(v, str):
        return sql_literal(v)
    return sql_literal(json.dumps(v))


# a function that runs one statement and says how it went: ok, or the SQLSTATE and message
psql("""
CREATE OR REPLACE FUNCTION hostile_try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE stmt;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ' ' || replace(SQLERRM, E'\n', ' ');
END $$""")
reset()
set_and_reload(max_requests_per_second="0", worker_enabled="off")
standin("POST", "/_control/reset")
start = log_offset()

statements = []
for c in submit_cases():
    statements.append(("m3ter_submit", "SELECT m3ter_submit(%s::jsonb)" % sql_literal(c)))
used = set()
for i, (what, args) in enumerate(meter_cases()):
    name, code, data = args[0], args[1], args[2]
    rest = args[3:] + [None] * (7 - len(args)) if len(args) > 3 else []
    code = code if code != "code" else "hostile_%d" % i
    parts = [sql_value(name), sql_value(code), sql_value(data) + "::jsonb" if data is not None and not isinstance(data, str) else sql_value(data)]
    if rest:
        parts.append(sql_value(rest[0]) + "::jsonb" if rest[0] is not None else "'[]'")
    if len(rest) > 1:
        parts.append(sql_value(rest[1]) + "::uuid" if rest[1] is not None else "NULL")
        parts.append("NULL")
        parts.append(sql_value(rest[3]) + "::jsonb" if rest[3] is not None else "NULL")
    statements.append(("m3ter_create_meter " + what, "SELECT m3ter_create_meter(%s)" % ", ".join(parts)))
for field in ("meter", "account", "measure", "who", "metadata", "uid", "ts"):
    for v in ODD_STRINGS + ODD_VALUES:
        if field in ("meter", "account", "uid", "ts"):
            value = sql_literal(v if isinstance(v, str) else json.dumps(v))
        else:
            value = sql_value(v) + "::jsonb" if v is not None else "NULL"
        cols = {"meter": "'api_requests'", "account": "'acme'"}
        cols[field] = value
        statements.append(("INSERT " + field, "INSERT INTO m3ter.outbox (%s) VALUES (%s)" % (
            ", ".join('"%s"' % k for k in cols), ", ".join(cols.values()))))

outcomes = {}
internal = []
batch = 50
for i in range(0, len(statements), batch):
    chunk = statements[i:i + batch]
    sql = " UNION ALL ".join("SELECT %d, hostile_try(%s)" % (j, sql_literal(stmt)) for j, (_, stmt) in enumerate(chunk))
    r = psql(sql, check=False, timeout=600)
    if r.returncode != 0:
        internal.append(("batch %d" % i, r.stderr[:300]))
        continue
    for line in r.stdout.split("\n"):  # not splitlines(): results may hold U+2028
        if not line:
            continue
        if "|" not in line:
            internal.append(("unexpected output", line[:200]))
            continue
        j, result = line.split("|", 1)
        kind, stmt = chunk[int(j)]
        code = result.split(" ", 1)[0]
        outcomes.setdefault(kind.split(" ")[0], {}).setdefault(code, 0)
        outcomes[kind.split(" ")[0]][code] += 1
        if code.startswith("XX") or code == "58000":
            internal.append((stmt[:200], result[:200]))

total = sum(sum(v.values()) for v in outcomes.values())
note("%d hostile statements; outcomes by SQLSTATE: %s" % (total, json.dumps(outcomes, sort_keys=True)))
is_(total, len(statements), "every hostile statement ran to an answer (the session survived them all)")
ok(not internal, "none ended in an internal error or a lost session", internal[:5])
ok(not server_crashed_since(start), "no server process crashed", server_crashed_since(start))
ok(all(code == "ok" or len(code) == 5 for v in outcomes.values() for code in v), "every refusal carries a SQLSTATE")
reqs = standin("GET", "/_control/requests")
bad = [r for r in reqs if r["status"] == 400 and "Malformed" in (r["note"] or "")]
ok(not bad, "every request body sent was JSON the stand-in could parse", bad[:3])
accepted_submits = sum(v for k, v in outcomes.get("m3ter_submit", {}).items() if k == "ok")
ok(accepted_submits > 50 and sum(outcomes["m3ter_submit"].values()) - accepted_submits > 200,
   "a good share was accepted (%d) and refused (%d)" % (accepted_submits,
                                                         sum(outcomes["m3ter_submit"].values()) - accepted_submits))
ok(all(r["status"] in (200, 400) for r in reqs if r["path"].endswith("/measurements")),
   "what reached the ingest endpoint was accepted, or refused by its validation")
with open(os.path.join(os.environ["M3TER_TMP"], "reliability.jsonl"), "a") as f:
    f.write(json.dumps({"scenario": "hostile input (%d statements)" % total, "rows_in": total,
                        "accepted": sum(v.get("ok", 0) for v in outcomes.values()),
                        "failed": total - sum(v.get("ok", 0) for v in outcomes.values()),
                        "duplicates": 0, "lost": 0, "crashes": len(server_crashed_since(start))}) + "\n")
psql("DELETE FROM m3ter.outbox; DROP FUNCTION hostile_try(text)")
set_and_reload(worker_enabled=None, max_requests_per_second=None)
done()
