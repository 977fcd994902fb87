"""Every message true, and none repeats a credential.

- Refused credentials are M3401 wherever they surface: a call, CALL m3ter.flush()'s warning, the
  worker's log line.
- A hint says how often a call was retried: not at all with m3ter.max_retries = 0.
- A session that sets, refuses and reloads credentials leaves no credential value in any message
  to the client or in the server log.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

SUBMIT = "SELECT m3ter_submit('{\"meter\":\"api_requests\",\"account\":\"acme\",\"ts\":\"2024-01-02T03:04:05Z\"}')"
WRONG = "wrong-secret-7d1c"


def verbose(sql):
    """psql with SQLSTATEs in every message; returns (returncode, stderr)"""
    r = psql("\\set VERBOSITY verbose\n" + sql, check=False)
    return r.returncode, r.stderr


reset()
set_and_reload(worker_enabled="off")
start = log_offset()

# refused credentials: M3401 from a call and from a flush's warning, whatever the rows
insert_usage(3, "msg-")
rc, err = verbose("SET m3ter.api_secret = '%s';\n%s" % (WRONG, SUBMIT))
ok(rc != 0 and "M3401" in err, "m3ter_submit() with a refused secret raises M3401", err)
rc, err = verbose("SET m3ter.api_secret = '%s';\nCALL m3ter.flush();" % WRONG)
ok("WARNING:  M3401:" in err and "M3403" not in err, "CALL m3ter.flush() warns M3401 for refused credentials", err)
rc, err = verbose("SET m3ter.api_secret = '%s';\nSELECT m3ter_flush();" % WRONG)
ok("WARNING:  M3401:" in err, "m3ter_flush() warns M3401 too", err)
is_(outbox_counts()["pending"], 3, "the rows stay pending")
# a token URL that is not m3ter's (a 404, a token-less 200) is the URL's fault, not the credentials'
# (each with a new api_url, so that the call asks for a new token)
standin("POST", "/_control/faults", {"faults": [{"match": "/oauth/token", "status": 404}]})
rc, err = verbose("SET m3ter.api_url = '%s/';\n%s" % (STANDIN_URL, SUBMIT))
ok(rc != 0 and "M3404" in err and "m3ter.api_url" in err, "a 404 from the token URL raises M3404, naming api_url",
   err)
standin("POST", "/_control/faults", {"faults": [{"match": "/oauth/token", "status": 200, "body": {"ok": True}}]})
rc, err = verbose("SET m3ter.api_url = '%s//';\n%s" % (STANDIN_URL, SUBMIT))
ok(rc != 0 and "M3300" in err and "without an access_token" in err,
   "a token-less 200 from the token URL raises M3300, not M3401", err)
# a token endpoint that takes the grant form-encoded only (RFC 6749, m3ter's curl example) is
# asked once more in that encoding, and one that takes JSON only is not asked twice
for encoding, statuses in (("form", [400, 200]), ("json", [200])):
    standin("POST", "/_control/config", {"token_body": encoding})
    before = len([r for r in standin("GET", "/_control/requests") if r["path"].endswith("/oauth/token")])
    rc, err = verbose("SET m3ter.api_url = '%s/%s';\n%s" % (STANDIN_URL, "/" * len(statuses) * 3, SUBMIT))
    tokens = [r for r in standin("GET", "/_control/requests") if r["path"].endswith("/oauth/token")][before:]
    ok(rc == 0 and [r["status"] for r in tokens] == statuses,
       "a token endpoint that takes only %s gets the grant that way (token answers %s)" % (encoding, statuses),
       "%s %s" % ([r["status"] for r in tokens], err))
standin("POST", "/_control/config", {"token_body": "any"})
# m3ter_submit's hint counts the token fetch's retries when the token endpoint is what failed
standin("POST", "/_control/faults", {"faults": [{"match": "/oauth/token", "status": 503, "count": 3}]})
rc, err = verbose("SET m3ter.api_url = '%s/////////////';\nSET m3ter.max_retries = 2;\n"
                  "SET m3ter.retry_max_delay = '1s';\n%s" % (STANDIN_URL, SUBMIT))
ok(rc != 0 and "retried 2 times" in err, "a token endpoint down: the hint counts the token fetch's retries", err)
standin("POST", "/_control/faults", {"clear": True})
# a bearer token too long to keep is said once in the log, not silently fetched for every call
offset = log_offset()
standin("POST", "/_control/config", {"token_pad": 9000})
rc, err = verbose("SET m3ter.api_url = '%s//////////////////';\n%s" % (STANDIN_URL, SUBMIT))
standin("POST", "/_control/config", {"token_pad": 0})
with open(LOG_FILE, "rb") as f:
    f.seek(offset)
    logged = f.read().decode("utf-8", "replace")
ok(rc == 0 and "too long to keep: each call fetches a new one" in logged,
   "a 9 kB bearer token works, and the log says it is not kept", err + logged[-2000:])
# a create that failed with a 504 and was refused when retried ("already exists") may have
# taken effect the first time: the hint does not say it was not retried
standin("POST", "/_control/faults", {"faults": [
    {"match": "/meters", "status": 504, "count": 1},
    {"match": "/meters", "status": 400, "body": {"message": "A meter with this code already exists"}, "count": 1}]})
rc, err = verbose("SET m3ter.retry_max_delay = '1s'; SELECT m3ter_create_meter('Storage', 'storage_gb', "
                  "'[{\"category\": \"MEASURE\", \"code\": \"gb\", \"name\": \"GB\"}]')")
ok(rc != 0 and "M3400" in err and "retried 1 time after failing" in err and "not retried" not in err,
   "a create refused after a retry says an earlier attempt may have taken effect", err)
standin("POST", "/_control/faults", {"clear": True})

# the worker logs the same SQLSTATE (log_error_verbosity = verbose writes it)
psql("ALTER SYSTEM SET log_error_verbosity = 'verbose'")
set_and_reload(api_secret=WRONG, worker_enabled=None)


def log_since(offset):
    with open(LOG_FILE, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


ok(wait_until(lambda: "m3ter outbox delivery stopped" in log_since(start), timeout=20),
   "the worker stops delivery and logs why", log_since(start)[-3000:])
logged = log_since(start)
line = [x for x in logged.splitlines() if "WARNING:" in x and "m3ter outbox delivery stopped" in x]
ok(line and "M3401" in line[-1], "the worker's warning carries M3401", line[-1:] or logged[-2000:])
set_and_reload(api_secret=None, worker_enabled="off")
psql("ALTER SYSTEM RESET log_error_verbosity")
psql("SELECT pg_reload_conf()")

# hints count the retries that were made
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "status": 500, "count": 5}], "clear": True})
rc, err = verbose("SET m3ter.max_retries = 0;\nSET m3ter.retry_max_delay = '1s';\n" + SUBMIT)
ok(rc != 0 and "M3500" in err and "not retried" in err and "was retried" not in err,
   "with m3ter.max_retries = 0 the hint says the call was not retried", err)
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "status": 500, "count": 5}], "clear": True})
rc, err = verbose("SET m3ter.max_retries = 2;\nSET m3ter.retry_max_delay = '1s';\n" + SUBMIT)
ok(rc != 0 and "retried 2 times" in err, "with m3ter.max_retries = 2 the hint says it was retried 2 times", err)
standin("POST", "/_control/faults", {"faults": [], "clear": True})

# credentials set, refused and reloaded: no value in any client message or the log
start = log_offset()
secrets = ["refused-secret-91ab", "refused-key-44f0", "session-secret-c3d2"]
client = []
for sql in ["ALTER DATABASE postgres SET m3ter.api_secret = '%s'" % secrets[0],
            "ALTER ROLE postgres SET m3ter.access_key_id = '%s'" % secrets[1],
            "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql SET m3ter.api_secret = '%s' AS 'SELECT 1'"
            % secrets[0],
            "SET m3ter.api_secret = '%s'; SELECT pg_reload_conf(); %s" % (secrets[2], SUBMIT),
            "SET m3ter.org_id = 'not-a-uuid'"]:
    rc, err = verbose(sql)
    client.append(err)
client = "\n".join(client)
ok("cannot be set per role, per database or per function" in client, "the refusals say why", client)
time.sleep(0.5)
# PostgreSQL's STATEMENT lines repeat the statement text itself, whatever a library does:
# the README says so; the messages are what the extension controls
logged = "\n".join(x for x in log_since(start).splitlines() if "STATEMENT:" not in x)
ok("cannot be set per role" in logged, "the refusals reach the server log")
leaks = [s for s in secrets if s in client or s in logged]
ok(not leaks, "no credential value in a client message or the server log", leaks)
ok("m3ter.org_id must be a UUID" in client, "a malformed m3ter.org_id is refused when set", client)

# m3ter_health(): nothing to say on the suite's cluster but what is set to say it
health = psql("SELECT finding FROM m3ter_health()")
ok("credentials readable" not in health and "no background worker" not in health,
   "m3ter_health() finds preloaded credentials safe", health)
psql("DROP DATABASE IF EXISTS m3ter_nowarn; CREATE DATABASE m3ter_nowarn")
r = psql("CREATE EXTENSION m3ter", db="m3ter_nowarn", check=False)
ok(r.returncode == 0 and "WARNING" not in r.stderr, "with the library preloaded CREATE EXTENSION warns of nothing",
   r.stderr)
psql("DROP DATABASE m3ter_nowarn")
health = psql("SET m3ter.tls_verify = off; SELECT finding FROM m3ter_health()")
ok("m3ter.tls_verify is off" in health, "and says when TLS verification is off", health)
psql("DROP ROLE IF EXISTS m3ter_health_mon; CREATE ROLE m3ter_health_mon IN ROLE pg_monitor")
r = psql("SET ROLE m3ter_health_mon; SELECT count(*) FROM m3ter_health()", check=False)
ok(r.returncode == 0, "a pg_monitor member may call it", r.stderr)
psql("DROP ROLE m3ter_health_mon")
done()
