"""Text in every server encoding: what m3ter receives is the right Unicode text, what
comes back (m3ter's messages, meters) is stored in the database's encoding or escaped,
and messages are clipped on character boundaries.  Databases in LATIN1, WIN1252 and
SQL_ASCII (whose text m3ter takes to be UTF-8), and EUC_JP for the enrichment events
(m3ter's failed-ingest logs) and a dump of them."""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

ENV = dict(os.environ, PGCLIENTENCODING="UTF8")


def q(sql, db, check=True, client_encoding="UTF8"):
    """psql with UTF-8 on the wire, decoded strictly: a character cut in two fails here."""
    r = subprocess.run([BINDIR + "/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", "-"],
                       input=sql.encode("utf-8"), capture_output=True, timeout=120,
                       env=dict(ENV, PGCLIENTENCODING=client_encoding))
    out, err = r.stdout.decode("utf-8"), r.stderr.decode("utf-8", "replace")
    if check and r.returncode != 0:
        raise RuntimeError("psql failed: %s\n%s" % (sql[:200], err))
    return (out.strip(), err, r.returncode)


def make_db(name, encoding):
    psql("DROP DATABASE IF EXISTS %s" % name)
    psql("CREATE DATABASE %s ENCODING '%s' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0" % (name, encoding))
    psql("CREATE EXTENSION m3ter", name)


def received(uid):
    return [m for m in standin("GET", "/_control/measurements") if m["uid"] == uid]


def flush(db):
    return json.loads(q("SET m3ter.max_retries = 0; SELECT m3ter_flush()", db)[0])


reset()
set_and_reload(worker_enabled="off")

MESSAGE = "Zählerstand ungültig: € 😀"        # ä, ü in LATIN1; € in WIN1252 only; 😀 in neither
LONG = "x" + "é" * 600                         # a message longer than the 500 bytes kept

for db, enc in (("m3ter_latin1", "LATIN1"), ("m3ter_win1252", "WIN1252"), ("m3ter_sqlascii", "SQL_ASCII")):
    make_db(db, enc)
    note("database %s (%s)" % (db, enc))
    standin("POST", "/_control/reset")

    # outgoing: codes, map keys and values reach m3ter as the same Unicode text
    q("""INSERT INTO m3ter.outbox (uid, meter, account, measure, who, metadata)
         VALUES ('%s-1', 'zähler', 'café Müller', '{"größe": 3}', '{"benutzer": "Jürgen"}',
                 '{"straße": "Ölweg ½"}')""" % db, db)
    res = flush(db)
    got = received("%s-1" % db)
    ok(res["accepted"] == 1 and len(got) == 1, "%s: a row with non-ASCII text is accepted" % enc, (res, got))
    if got:
        m = got[0]
        is_((m["meter"], m["account"], m["measure"], m["who"], m["metadata"]),
            ("zähler", "café Müller", {"größe": 3}, {"benutzer": "Jürgen"}, {"straße": "Ölweg ½"}),
            "%s: m3ter received the same Unicode text" % enc)

    # incoming: m3ter's message stored in the database encoding, or escaped
    standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "status": 400,
                                                     "body": json.dumps({"message": MESSAGE}, ensure_ascii=False)}]})
    q("INSERT INTO m3ter.outbox (uid, meter, account) VALUES ('%s-2', 'api', 'acme')" % db, db)
    flush(db)
    stored = q("SELECT status || '|' || error FROM m3ter.outbox WHERE uid = '%s-2'" % db, db)[0]
    want = {"LATIN1": "Zählerstand ungültig: \\u20AC \\U0001F600",
            "WIN1252": "Zählerstand ungültig: € \\U0001F600",
            "SQL_ASCII": MESSAGE}[enc]
    is_(stored, "failed|%s" % want, "%s: m3ter's message is stored in the database's encoding" % enc)

    # a long message is clipped to 500 bytes on a character boundary (a 400 that is not
    # m3ter's JSON would not fail the row at all: it stops delivery, see reliability/60_answers.py)
    standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "status": 400,
                                                     "body": json.dumps({"message": LONG}, ensure_ascii=False)}]})
    q("INSERT INTO m3ter.outbox (uid, meter, account) VALUES ('%s-3', 'api', 'acme')" % db, db)
    flush(db)
    err = q("SELECT error FROM m3ter.outbox WHERE uid = '%s-3'" % db, db)[0]
    msg = err
    nbytes = int(q("SELECT octet_length(error) FROM m3ter.outbox WHERE uid = '%s-3'" % db, db)[0])
    want_chars = {"LATIN1": 500, "WIN1252": 500, "SQL_ASCII": 250}[enc]
    is_((msg, nbytes <= 500), (LONG[:want_chars], True),
        "%s: a long message is clipped to %d characters (%d bytes)" % (enc, want_chars, nbytes))

    # meters from the Config API: created with non-ASCII text, listed back
    name = "Größe %s" % enc
    q("SELECT m3ter_create_meter('%s', 'größe_%s', "
      "'[{\"category\":\"MEASURE\",\"code\":\"menge\",\"name\":\"Menge ½\"}]')" % (name, enc.lower()), db)
    meters = standin("GET", "/_control/meters")
    is_([m["name"] for m in meters if m["code"] == "größe_%s" % enc.lower()], [name],
        "%s: m3ter received the meter's name as Unicode" % enc)

# a meter named with characters LATIN1 cannot hold, listed in the LATIN1 database
q("SELECT m3ter_create_meter('Preis € 😀', 'preis', '[{\"category\":\"COST\",\"code\":\"eur\",\"name\":\"Euro €\"}]')",
  "postgres")
listed = q("SELECT m->>'name' || '|' || (m->'dataFields'->0->>'name') FROM m3ter_list_meters() m "
           "WHERE m->>'code' = 'preis'", "m3ter_latin1")[0]
is_(listed, "Preis \\u20AC \\U0001F600|Euro \\u20AC", "LATIN1: listed meters hold escapes for what LATIN1 cannot hold")
listed = q("SELECT m->>'name' FROM m3ter_list_meters() m WHERE m->>'code' = 'preis'", "m3ter_win1252")[0]
is_(listed, "Preis € \\U0001F600", "WIN1252: the euro sign converts, the emoji is escaped")

# code rules decoded as Unicode in every encoding
_, err, rc = q("INSERT INTO m3ter.outbox (meter, account) VALUES ('api', E'ac\\u00a0me')", "m3ter_latin1", check=False)
ok(rc != 0 and "non-printable or whitespace" in err, "LATIN1: a no-break space in a code is refused", err)
out, err, rc = q("INSERT INTO m3ter.outbox (uid, meter, account) VALUES ('w-1', 'a…b', 'acme') RETURNING uid",
                 "m3ter_win1252", check=False)
ok(rc == 0, "WIN1252: an ellipsis (byte 0x85 there) is a printable character", err)
_, err, rc = q("INSERT INTO m3ter.outbox (meter, account) VALUES ('api', 'acme\ufeff')", "m3ter_sqlascii", check=False)
ok(rc != 0 and "non-printable or whitespace" in err, "SQL_ASCII: a zero-width no-break space (UTF-8) is refused", err)
out, err, rc = q("INSERT INTO m3ter.outbox (uid, meter, account) VALUES ('s-1', repeat('é', 80), 'acme') RETURNING uid",
                 "m3ter_sqlascii", check=False)
ok(rc == 0, "SQL_ASCII: an 80-character meter code of 160 bytes is taken", err)
# (client_encoding SQL_ASCII: the error names the value, whose bytes are not UTF-8)
_, err, rc = q("INSERT INTO m3ter.outbox (meter, account) VALUES ('api', 'caf' || chr(233))", "m3ter_sqlascii",
               check=False, client_encoding="SQL_ASCII")
ok(rc != 0 and "must be UTF-8" in err, "SQL_ASCII: bytes that are not UTF-8 are refused at INSERT", err)
_, err, rc = q("INSERT INTO m3ter.outbox (meter, account, who) VALUES ('api', 'acme', jsonb_build_object('u', 'J' || chr(252) || 'rgen'))",
               "m3ter_sqlascii", check=False, client_encoding="SQL_ASCII")
ok(rc != 0 and "must be UTF-8" in err, "SQL_ASCII: and in map values", err)
# two uids whose bytes are not UTF-8 would both reach m3ter as U+FFFD, one uid: refused
_, err, rc = q("INSERT INTO m3ter.outbox (uid, meter, account) VALUES ('x' || chr(233), 'api', 'acme')",
               "m3ter_sqlascii", check=False, client_encoding="SQL_ASCII")
ok(rc != 0 and "invalid uid" in err and "must be UTF-8" in err, "SQL_ASCII: and in a uid", err)
out, err, rc = q("SELECT m3ter_submit(jsonb_build_object('uid', 'x' || chr(232), 'meter', 'api', 'account', 'acme', "
                 "'ts', '2024-01-01T00:00:00Z', 'measure', jsonb_build_object('n', 1)))",
                 "m3ter_sqlascii", check=False, client_encoding="SQL_ASCII")
ok(rc != 0 and "must be UTF-8" in err, "SQL_ASCII: and in m3ter_submit()'s uids", err)


def raised_in_sqlascii(call):
    """What call raises in the SQL_ASCII database, as a notice: 'raised SQLSTATE message'"""
    return q("DO $$ BEGIN PERFORM %s; EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'raised %% %%', SQLSTATE, SQLERRM; "
             "END $$" % call, "m3ter_sqlascii", check=False, client_encoding="SQL_ASCII")[1]


err = raised_in_sqlascii("m3ter_submit(jsonb_build_object('meter', 'api', 'account', 'caf' || chr(233), "
                         "'ts', '2024-01-01T00:00:00Z', 'measure', jsonb_build_object('n', 1)))")
ok("raised 22021" in err, "SQL_ASCII: m3ter_submit() raises 22021 for it, as the Errors table says", err)
_, err, rc = q("SELECT m3ter_create_meter('Cafe', 'cafe_meter', jsonb_build_array(jsonb_build_object("
               "'category', 'MEASURE', 'code', 'r', 'name', 'Caf' || chr(233))))",
               "m3ter_sqlascii", check=False, client_encoding="SQL_ASCII")
ok(rc != 0 and '"dataFields"[0]."name" of the meter is not valid UTF-8' in err,
   "SQL_ASCII: m3ter_create_meter() names the value that is not UTF-8", err)
err = raised_in_sqlascii("m3ter_create_meter('Cafe', 'caf' || chr(233), "
                         "'[{\"category\": \"MEASURE\", \"code\": \"r\", \"name\": \"R\"}]')")
ok("raised 22021" in err, "SQL_ASCII: m3ter_create_meter() raises 22021 for a code that is not UTF-8", err)
# a field's member name that is not UTF-8 is named by where it is, not echoed in the message
err = raised_in_sqlascii("m3ter_create_meter('Cafe', 'cafe_meter', ("
                         "'[{\"category\": \"MEASURE\", \"code\": \"r\", \"name\": \"R\", \"x' || chr(233) || '\": 1}]')::jsonb)")
ok("raised 22021 invalid member name of data_fields[0]" in err and "\ufffd" not in err and "x\xe9" not in err,
   "SQL_ASCII: m3ter_create_meter() raises 22021 for a member name that is not UTF-8, without echoing it", err)

# an account code with characters of the database encoding is looked up in m3ter as UTF-8
standin("POST", "/_control/accounts", {"accounts": ["Zürich AG"]})
for db in ("m3ter_latin1", "m3ter_win1252"):
    is_(q("SELECT m3ter.catalog_lookup_accounts(ARRAY['Zürich AG'])", db)[0], "1",
        "%s: the account 'Zürich AG' is found in m3ter" % db)


def in_encoding(text, enc):
    """text from m3ter as a database in enc stores it: what enc cannot hold as \\uXXXX or \\UXXXXXXXX"""
    if enc == "SQL_ASCII":
        return text
    codec = {"LATIN1": "latin-1", "WIN1252": "cp1252", "EUC_JP": "euc_jp"}[enc]
    out = ""
    for c in text:
        try:
            c.encode(codec)
            out += c
        except UnicodeEncodeError:
            out += ("\\u%04X" if ord(c) <= 0xFFFF else "\\U%08X") % ord(c)
    return out


# enrichment events: the messages and uids of m3ter's failed-ingest logs (UTF-8), and an
# m3terEvent serialized into a string (its escapes decoded to UTF-8), stored in the database's
# encoding, or escaped
LOG_MSG = "Meter isn’t defined – fix 😀"        # ’ in WIN1252 and EUC_JP, – in WIN1252 only, 😀 in none
EVENT_MSG = "Feld „Größe“ fehlt in Zürich"      # „ in WIN1252 only, “ in WIN1252 and EUC_JP
EVENT_ROWS = "SELECT string_agg(uid || '|' || status || '|' || rejection_type || '|' || error, ' / ' ORDER BY uid) " \
             "FROM m3ter.outbox WHERE uid LIKE '%-ev_'"
make_db("m3ter_eucjp", "EUC_JP")
for db, enc in (("m3ter_latin1", "LATIN1"), ("m3ter_win1252", "WIN1252"), ("m3ter_sqlascii", "SQL_ASCII"),
                ("m3ter_eucjp", "EUC_JP")):
    standin("POST", "/_control/reset")
    q("INSERT INTO m3ter.outbox (uid, meter, account) SELECT '%s-ev' || i, 'api', 'acme' "
      "FROM generate_series(1, 2) i" % db, db)
    flush(db)
    is_(q("SELECT count(*) FROM m3ter.outbox WHERE uid LIKE '%s-ev_' AND status = 'accepted'" % db, db)[0], "2",
        "%s: two rows accepted" % enc)
    standin("POST", "/_control/events", {
        "event_data": {"errorType": "UndefinedMeter", "message": "x"},
        "log": json.dumps({"errorType": "UndefinedMeter", "errorMessage": LOG_MSG,
                           "measurement": {"uid": "%s-ev1" % db}}, ensure_ascii=False)})
    standin("POST", "/_control/events", {
        "event_data": {"errorType": "UndefinedMeter", "message": EVENT_MSG},
        "log": json.dumps({"errorType": "UndefinedMeter", "errorMessage": LOG_MSG,
                           "measurement": {"uid": "elsewhere-ü"}}, ensure_ascii=False)})
    polled = q("SET m3ter.max_retries = 0; SELECT m3ter_poll_events()", db, check=False)
    standin("POST", "/_control/enrichment", {"event_as_string": True})
    standin("POST", "/_control/events", {
        "event_data": {"errorType": "MissingField", "message": EVENT_MSG},
        "log": json.dumps({"measurement": {"uid": "%s-ev2" % db}})})
    polled2 = q("SET m3ter.max_retries = 0; SELECT m3ter_poll_events()", db, check=False)
    standin("POST", "/_control/enrichment", {"event_as_string": False})
    ok(polled[2] == 0 and polled2[2] == 0, "%s: the polls read the three events" % enc, polled[1] + polled2[1])
    out, err, rc = q(EVENT_ROWS, db, check=False)
    is_(out, "%s-ev1|rejected|UndefinedMeter|%s / %s-ev2|rejected|MissingField|%s"
        % (db, in_encoding(LOG_MSG, enc), db, in_encoding(EVENT_MSG, enc)),
        "%s: the rows are rejected with m3ter's messages of the log and of a serialized event, "
        "in the database's encoding" % enc)
    out, err, rc = q("SELECT array_to_string(uids, ',') || '|' || error_type || '|' || message "
                     "FROM m3ter.unmatched_events", db, check=False)
    is_(out, "%s|UndefinedMeter|%s" % (in_encoding("elsewhere-ü", enc), in_encoding(EVENT_MSG, enc)),
        "%s: an event naming no row of this database is kept with its log's uid" % enc)

# the EUC_JP database's dump restores with the rows and their messages
psql("DROP DATABASE IF EXISTS m3ter_eucjp2")
psql("CREATE DATABASE m3ter_eucjp2 ENCODING 'EUC_JP' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
with tempfile.TemporaryDirectory() as d:
    os.chmod(d, 0o777)
    dump = os.path.join(d, "eucjp.dump")
    r = subprocess.run([BINDIR + "/pg_dump", "-Fc", "-d", "m3ter_eucjp", "-f", dump], capture_output=True, text=True)
    ok(r.returncode == 0, "EUC_JP: pg_dump of the database", r.stderr)
    r = subprocess.run([BINDIR + "/pg_restore", "-d", "m3ter_eucjp2", dump], capture_output=True, text=True)
    ok(r.returncode == 0, "EUC_JP: pg_restore into a new database", r.stderr)
is_(q(EVENT_ROWS, "m3ter_eucjp2", check=False)[0],
    "m3ter_eucjp-ev1|rejected|UndefinedMeter|%s / m3ter_eucjp-ev2|rejected|MissingField|%s"
    % (in_encoding(LOG_MSG, "EUC_JP"), in_encoding(EVENT_MSG, "EUC_JP")),
    "EUC_JP: the restored outbox holds the rejected rows and their messages")

for db in ("m3ter_latin1", "m3ter_win1252", "m3ter_sqlascii", "m3ter_eucjp", "m3ter_eucjp2"):
    psql("DROP DATABASE %s" % db)
set_and_reload(worker_enabled=None)
done()
