"""Answers m3ter does not document for ingest, and odd pages from whatever sits
in between: nothing but a row-level 400 may fail rows.  401 and a stale-token
403 get one fresh token and one more try; redirects, 404, 405 and other
unexpected statuses stop delivery with the rows pending and the reason noted,
without a storm of requests; an HTML 502 from a proxy is retried like any 502;
a token endpoint that is down spends no attempt."""
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

N = 200


def stopping_answer(name, prefix, status, body, headers_note):
    """status answers every ingest request for a while: delivery stops, then resumes."""
    reset()
    set_and_reload(worker_enabled="off", max_requests_per_second="0", worker_idle_naptime="1s")
    insert_usage(N, prefix)
    standin("POST", "/_control/faults", {"faults": [fault(status=status, body=body, count=100000)]})
    set_and_reload(worker_enabled=None)
    ok(wait_until(lambda: scalar("SELECT count(*) FROM m3ter.outbox WHERE http_status = %d" % status) == str(N),
                  timeout=20), "%s: the rows get the status noted" % name, outbox_counts())
    time.sleep(2.5)
    counts = outbox_counts()
    is_(counts["failed"], 0, "%s: no row is failed" % name)
    is_(scalar("SELECT max(attempts) FROM m3ter.outbox"), "0", "%s: no attempt is spent" % name)
    error = scalar("SELECT DISTINCT error FROM m3ter.outbox")
    ok(headers_note in error, "%s: the reason says what happened" % name, error)
    sent = len(ingest_requests())
    # one pass a second while stopped (idle naptime 1 s), a request or two each: no storm
    ok(sent <= 12, "%s: %d requests in about 3 s, not a split storm" % (name, sent), sent)
    standin("POST", "/_control/faults", {"clear": True})
    ok(wait_until(lambda: outbox_counts()["accepted"] == N, timeout=20),
       "%s: delivered once the answers are right again" % name, outbox_counts())
    record_scenario(name, N, prefix)


stopping_answer("401 on every ingest request", "a401-", 401, {"message": "Unauthorized"}, "HTTP 401")
stopping_answer("301 redirect (an http:// URL)", "a301-", 301,
                "<html><body>301 Moved Permanently</body></html>", "redirect")
stopping_answer("405 Method Not Allowed", "a405-", 405, {"message": "Method Not Allowed"}, "HTTP 405")
stopping_answer("400 HTML page from a proxy", "a400html-", 400,
                "<html><body><h1>400 Bad Request</h1></body></html>", "not m3ter's JSON")
# a 400 that is not m3ter's JSON error (a load balancer's "Bad Request", nothing at all) may refuse
# every request: splitting would fail every row, 2n - 1 requests; it stops delivery instead
stopping_answer("400 in plain text from a load balancer", "a400txt-", 400, "Bad Request", "not m3ter's JSON")
stopping_answer("400 with an empty body", "a400empty-", 400, "", "empty body")
stopping_answer("400 with only a line break", "a400blank-", 400, "\r\n", "empty body")
# a 2xx that is not m3ter's answer (a proxy's "OK", a result other than accepted): m3ter did
# not take the rows, which stay pending
stopping_answer("200 in plain text from a proxy", "a200txt-", 200, "OK", "not m3ter's JSON")
stopping_answer("200 whose result is not accepted", "a200rej-", 200, {"result": "rejected"}, "HTTP 200")
stopping_answer("200 with an empty JSON object", "a200obj-", 200, {}, "HTTP 200")
stopping_answer("200 with JSON and more after it", "a200junk-", 200, '{"result": "accepted"} OK', "HTTP 200")
# UTF-16 starts with a NUL byte: read as a C string, the body would be blank (a gateway's success)
UTF16 = '{"result": "accepted"}'.encode("utf-16-be").decode("latin-1")
stopping_answer("200 in UTF-16 (a NUL byte first)", "a200nul-", 200, UTF16, "a NUL byte")
standin("POST", "/_control/faults", {"faults": [fault(status=200, body=UTF16, count=1)], "clear": True})
r = psql("\\set VERBOSITY verbose\nSELECT m3ter_submit('{\"meter\": \"m\", \"account\": \"a\", "
         "\"ts\": \"2026-01-02T03:04:05Z\"}')", check=False)
ok(r.returncode != 0 and "M3300" in r.stderr and "NUL byte" in r.stderr,
   "m3ter_submit() with that answer raises M3300, not accepted", r.stdout + r.stderr)
standin("POST", "/_control/faults", {"clear": True})

# while stopped, one row a pass tries whether m3ter takes them again; a reload (the settings
# fixed, or not) tries a whole request at once: rows that came meanwhile all get the reason
reset()
set_and_reload(max_requests_per_second="0")
standin("POST", "/_control/faults", {"faults": [fault(status=405, body={"message": "Method Not Allowed"},
                                                      count=100000)]})
state_sql = "SELECT state FROM m3ter.databases WHERE datname = current_database()"
insert_usage(1, "astop-")
ok(wait_until(lambda: scalar(state_sql) == "stopped: m3ter refused the delivery", timeout=10),
   "a 405 stops delivery", scalar(state_sql))
insert_usage(N, "areload-")
time.sleep(2)
noted_sql = "SELECT count(*) FROM m3ter.outbox WHERE uid LIKE 'areload-%' AND http_status = 405"
ok(int(scalar(noted_sql)) < 10, "while stopped, a row or so a pass is tried", scalar(noted_sql))
set_and_reload()
ok(wait_until(lambda: scalar(noted_sql) == str(N), timeout=5),
   "after a reload every row is tried at once and has the reason noted", scalar(noted_sql))
standin("POST", "/_control/faults", {"clear": True})
set_and_reload()
ok(wait_until(lambda: outbox_counts()["accepted"] == N + 1, timeout=20), "and delivered once m3ter takes them",
   outbox_counts())

# a single 401: one fresh token, the same request again, nothing stops
reset()
set_and_reload(max_requests_per_second="0")
standin("POST", "/_control/faults", {"faults": [fault(status=401, count=1)]})
insert_usage(N, "a401once-")
ok(wait_until(lambda: outbox_counts()["accepted"] == N, timeout=20), "one 401: the rows are delivered")
statuses = [r["status"] for r in ingest_requests()]
is_(statuses, [401, 200], "one 401: a fresh token and one more try")
record_scenario("a single 401 (fresh token, one retry)", N, "a401once-")

# an HTML 502 from a proxy is a 502: retried, delivered
scenario("502 HTML page from a proxy", "a502html-",
         [fault(status=502, body="<html><body>502 Bad Gateway</body></html>", count=3)])

# the token endpoint down: nothing is sent, no attempt is spent, then delivery goes on
reset()
set_and_reload(worker_enabled="off", max_requests_per_second="0", retry_max_delay="1s")
standin("POST", "/_control/config", {"expire_tokens": True})
standin("POST", "/_control/faults", {"faults": [{"match": "/oauth/token", "status": 503, "count": 4}]})
insert_usage(N, "atoken-")
set_and_reload(worker_enabled=None)
ok(wait_until(lambda: outbox_counts()["accepted"] == N, timeout=60), "token endpoint down: delivered once it is back",
   outbox_counts())
token_503 = sum(1 for r in standin("GET", "/_control/requests") if r["path"] == "/oauth/token" and r["status"] == 503)
is_(token_503, 4, "token endpoint down: the four failures were waited out")
is_(scalar("SELECT max(attempts) FROM m3ter.outbox WHERE uid LIKE 'atoken-%'"), "1",
    "token endpoint down: each row counts one attempt, the one that delivered it")
record_scenario("token endpoint down (4 × 503)", N, "atoken-")

# down for longer (the wait grows past a second): the rows claimed before go back, none waits in
# flight, the worker says why it waits, and a worker stopped meanwhile counts none as sent
reset()
set_and_reload(worker_enabled="off", retry_max_delay="5s")
standin("POST", "/_control/config", {"expire_tokens": True})
standin("POST", "/_control/faults", {"faults": [{"match": "/oauth/token", "status": 503, "count": 5}]})
insert_usage(5000, "atokenlong-")
set_and_reload(worker_enabled=None)
ok(wait_until(lambda: scalar(state_sql) == "waiting: the token endpoint failed (see last_error)", timeout=10,
              interval=0.1), "token endpoint down for longer: the worker says it waits for it", scalar(state_sql))
is_(psql("SELECT coalesce(sum(cardinality(ids)), 0) FROM m3ter.inflight"), "0",
    "token endpoint down for longer: no row waits in flight (5,000 were claimed before)")
health = psql("SELECT detail FROM m3ter_health() WHERE finding = 'token endpoint failing'")
ok("5000 rows pending" in health and "503" in health, "token endpoint down for longer: m3ter_health() warns, "
   "with the last error", health)
terminate_worker()
ok(wait_until(lambda: outbox_counts()["accepted"] == 5000, timeout=90),
   "token endpoint down for longer: delivered once it is back", outbox_counts())
is_(psql("SELECT count(*) FROM m3ter.outbox WHERE attempts <> 1"), "0",
    "token endpoint down for longer: one attempt each, though a worker stopped during the wait")

# CALL m3ter.flush() does not sit out the growing wait: it returns with a notice, no row in flight
reset()
set_and_reload(worker_enabled="off", retry_max_delay="20s")
standin("POST", "/_control/faults", {"faults": [{"match": "/oauth/token", "status": 503, "count": 3}]})
standin("POST", "/_control/config", {"expire_tokens": True})
insert_usage(3000, "atokenflush-")
t0 = time.time()
r = psql("CALL m3ter.flush()", check=False)
ok(r.returncode == 0 and "the m3ter token endpoint failed: the flush returns rather than wait" in r.stderr
   and time.time() - t0 < 8, "CALL m3ter.flush() returns with a notice of the token endpoint's wait",
   "%.1f s: %s" % (time.time() - t0, r.stderr))
is_(psql("SELECT count(*) FROM m3ter.inflight"), "0", "and leaves no row in flight")
FLUSH_HEALTH = "SELECT detail FROM m3ter_health() WHERE finding = 'token endpoint failing'"
health = psql(FLUSH_HEALTH)
ok("no row accepted since the last flush's error" in health and "503" in health,
   "with no worker, m3ter_health() warns of the token endpoint from the flush's failure", health)
# the wait is the cluster's: a flush right after it does not ask the endpoint again
standin("POST", "/_control/faults", {"clear": True})
asked = len([x for x in standin("GET", "/_control/requests") if x["path"] == "/oauth/token"])
r = psql("CALL m3ter.flush()", check=False)
ok("the flush returns rather than wait" in r.stderr
   and len([x for x in standin("GET", "/_control/requests") if x["path"] == "/oauth/token"]) == asked,
   "a second CALL m3ter.flush() during the wait returns with its notice, the endpoint not asked", r.stderr)
ok(wait_until(lambda: psql("CALL m3ter.flush()") is not None and outbox_counts()["pending"] == 0, timeout=10,
              interval=0.5), "once the wait is over, a flush asks again and delivers", outbox_counts())
is_(psql("SELECT count(*) FROM m3ter.outbox WHERE status = 'accepted' AND attempts = 1"), "3000",
    "one attempt each")
is_(psql(FLUSH_HEALTH), "", "and m3ter_health() no longer warns once a flush delivered")

# SELECT m3ter_flush() gives up on a token endpoint that stays down as a call does (after
# m3ter.max_retries more tries): an error, nothing sent, and the claim lock free again
standin("POST", "/_control/faults", {"faults": [{"match": "/oauth/token", "status": 503, "count": 100}]})
standin("POST", "/_control/config", {"expire_tokens": True})
insert_usage(100, "atokenfn-")
t0 = time.time()
r = psql("\\set VERBOSITY verbose\nSET m3ter.max_retries = 2;\nSET statement_timeout = '60s';\nSELECT m3ter_flush()", check=False)
ok(r.returncode != 0 and "m3ter_flush() failed: m3ter's token endpoint answered HTTP status 503" in r.stderr
   and time.time() - t0 < 15, "m3ter_flush() fails after its retries while the token endpoint is down",
   "%.1f s: %s" % (time.time() - t0, r.stderr))
is_(psql("SELECT count(*) FROM m3ter.outbox WHERE uid LIKE 'atokenfn-%' AND status = 'pending' AND attempts = 0"),
    "100", "its rows stay pending, no attempt spent")
r = psql("SET statement_timeout = '5s';\nCALL m3ter.flush()", check=False)
ok(r.returncode == 0, "and a CALL m3ter.flush() after it is not blocked", r.stderr)

def token_asks(since):
    """When the token endpoint was asked since then (the stand-in keeps the latest requests only)"""
    return [x["t"] for x in standin("GET", "/_control/requests") if x["path"] == "/oauth/token" and x["t"] >= since]


# a token another process got ends the worker's wait: the rows go at once, not when it ends
def token_503s():
    return len([x for x in standin("GET", "/_control/requests") if x["path"] == "/oauth/token" and x["status"] == 503])


before = token_503s()
# (the event poll every second: it asks for a token too, and must wait as well)
set_and_reload(worker_enabled=None, retry_max_delay="60s", events_poll_interval="1s")
ok(wait_until(lambda: token_503s() >= before + 1, timeout=30, interval=0.2)
   and wait_until(lambda: scalar(state_sql) == "waiting: the token endpoint failed (see last_error)", timeout=5),
   "the worker waits for the token endpoint (27 s after the flush's and its own failures)", scalar(state_sql))
# the wait is the cluster's: a new worker, another database's and a flush wait out what is
# left, without asking
JOINS = "answers_join"
psql("DROP DATABASE IF EXISTS %s" % JOINS)
psql("CREATE DATABASE %s" % JOINS)
terminate_worker()
before = token_503s()
r = psql("CALL m3ter.flush()", check=False)
left = re.search(r"rather than wait (\d+) s", r.stderr)
ok(left and int(left.group(1)) >= 10, "CALL m3ter.flush() names the cluster's wait (more than 10 s left)", r.stderr)
psql("CREATE EXTENSION m3ter", JOINS)
insert_usage(5, "atokenjoin-", db=JOINS)
set_and_reload(database="")
time.sleep(4)
is_(token_503s(), before, "neither a new worker, another database's nor the flush asks the token endpoint")
is_(scalar(state_sql), "waiting: the token endpoint failed (see last_error)", "and the new worker says it waits")
is_(psql("SELECT state || ' | ' || coalesce(last_error, '(none)') FROM m3ter.databases WHERE datname = '%s'"
         % JOINS), "waiting: the token endpoint failed (see last_error) | "
    "the token endpoint failed: Injected fault: HTTP 503", "so does the other database's, naming the failure")
standin("POST", "/_control/faults", {"clear": True})
psql("SELECT m3ter_submit('{\"meter\": \"api_requests\", \"account\": \"acme\", "
     "\"ts\": \"2024-01-02T03:04:05Z\", \"measure\": {\"requests\": 1}}')")
t0 = time.time()
ok(wait_until(lambda: outbox_counts()["pending"] == 0, timeout=6, interval=0.2),
   "a token cached by a call ends the worker's wait: its rows go within seconds",
   "%s after %.1f s" % (outbox_counts(), time.time() - t0))
ok(wait_until(lambda: psql("SELECT count(*) FROM m3ter.outbox WHERE status = 'accepted'", JOINS) == "5",
              timeout=10), "the other database's rows go too")
set_and_reload(events_poll_interval=None, database=None)
psql("DROP DATABASE %s" % JOINS)

# while the worker asks a token endpoint that failed again (a request that times out, here),
# its state still says it waits for it, not delivering, and m3ter_health() keeps its warning
set_and_reload(request_timeout="2s")
standin("POST", "/_control/faults", {"faults": [{"match": "/oauth/token", "delay": 3, "count": 100}]})
standin("POST", "/_control/config", {"expire_tokens": True})
insert_usage(100, "atokenslow-")
ok(wait_until(lambda: scalar(state_sql) == "waiting: the token endpoint failed (see last_error)", timeout=10,
              interval=0.1), "a token endpoint that times out: the worker waits for it", scalar(state_sql))
states = set()
t0 = time.time()
while time.time() - t0 < 7:
    states.add(scalar(state_sql))
    time.sleep(0.1)
is_(sorted(states), ["waiting: the token endpoint failed (see last_error)"],
    "and says so while it asks again, not delivering")

standin("POST", "/_control/faults", {"clear": True})
set_and_reload(request_timeout=None)
ok(wait_until(lambda: outbox_counts()["pending"] == 0, timeout=70), "they go once it answers", outbox_counts())

# a lower m3ter.retry_max_delay (a reload) shortens the cluster's wait under way
standin("POST", "/_control/faults", {"faults": [{"match": "/oauth/token", "status": 503, "count": 100}]})
standin("POST", "/_control/config", {"expire_tokens": True})
before = token_503s()
insert_usage(100, "atokenmax-")
ok(wait_until(lambda: token_503s() >= before + 3, timeout=15, interval=0.1),
   "the endpoint answers 503: the wait grows (1 s, 3 s, then 9 s)")
time.sleep(0.5)
before = token_503s()
set_and_reload(retry_max_delay="1s")
ok(wait_until(lambda: token_503s() > before, timeout=3, interval=0.1),
   "a reload to m3ter.retry_max_delay = 1s: the endpoint is asked again within a second or two, not after 9 s")
standin("POST", "/_control/faults", {"clear": True})
ok(wait_until(lambda: outbox_counts()["pending"] == 0, timeout=10), "and the rows go once it answers",
   outbox_counts())

# a token due for renewal (its last tenth here) still serves while the endpoint fails to renew it,
# here by hanging: the ask to renew waits briefly (half the time the token has left, 2 s at most)
reset()
set_and_reload(worker_enabled="off")
standin("POST", "/_control/config", {"token_ttl": 10, "expire_tokens": True})
SUBMIT = ("SELECT m3ter_submit('{\"meter\": \"api_requests\", \"account\": \"acme\", "
          "\"ts\": \"2024-01-02T03:04:05Z\", \"measure\": {\"requests\": 1}}')")
psql(SUBMIT)   # (m3ter refuses the cached token: this fetches one that lives 10 s)
t0 = time.time()
standin("POST", "/_control/faults", {"faults": [{"match": "/oauth/token", "delay": 5, "count": 100}]})
time.sleep(max(0.0, t0 + 9.3 - time.time()))
r = psql("SET m3ter.max_retries = 0;\n" + SUBMIT, check=False)
ok(r.returncode == 0 and time.time() - t0 < 10,
   "a token in its last second serves while the endpoint hangs, not after the request's timeout",
   "%.1f s: %s" % (time.time() - t0, r.stderr))
# ... and the wait that failure began holds no rows meanwhile: a flush sends them with it
insert_usage(20, "atokenold-")
r = psql("CALL m3ter.flush()", check=False)
took = time.time() - t0
is_(psql("SELECT count(*) FROM m3ter.outbox WHERE uid LIKE 'atokenold-%' AND status = 'accepted'"), "20",
    "rows committed then go with it, not after the wait (%.1f s of the token's 10)" % took)
ok(took < 10 and "rather than wait" not in r.stderr, "and the flush does not wait", r.stderr)

# processes that wait for another's ask of the token endpoint take its failure as their answer:
# they do not ask again one after another (against a slow endpoint, each for its time)
time.sleep(max(0.0, t0 + 10.5 - time.time()))     # (the token has expired)
standin("POST", "/_control/faults", {"clear": True, "faults": [
    {"match": "/oauth/token", "status": 503, "delay": 2, "count": 20}]})
T0 = time.time()
first = psql_async("SET m3ter.max_retries = 0; " + SUBMIT)
time.sleep(0.5)
second = psql_async("SET m3ter.max_retries = 0; " + SUBMIT)
t1 = time.time()
errors = [p.communicate(timeout=30)[1] for p in (first, second)]
waited = time.time() - t1
ok(all("token endpoint answered HTTP status 503" in e for e in errors),
   "two calls during one slow failed ask both fail with its answer", errors)
is_(len(token_asks(T0)), 1, "the endpoint was asked once, not once a call")
ok(waited < 3.5, "the second call is answered when the first ask is (%.1f s), not after an ask of its own" % waited)
# ... and their retries, due at the same time after the same answer, share an ask each round
# (each waits from that answer, not from when it asked)
T0 = time.time()
calls = [psql_async("SET m3ter.max_retries = 2; " + SUBMIT)]
time.sleep(0.5)
calls.append(psql_async("SET m3ter.max_retries = 2; " + SUBMIT))
ended = []
for p in calls:
    p.communicate(timeout=60)
    ended.append(time.time())
times = sorted(token_asks(T0))
is_(len(times), 3, "two calls with two retries each ask the endpoint three times in all")
ok(len(times) == 3 and times[1] - times[0] >= 2.7 and times[2] - times[1] >= 4.7,
   "a second after the first answer, then 3 s after the second", times)
ok(abs(ended[1] - ended[0]) < 1, "and both calls fail together", ended)
standin("POST", "/_control/faults", {"clear": True})
standin("POST", "/_control/config", {"token_ttl": 3600})
psql(SUBMIT)    # (a token had ends the cluster's wait those failures grew: the next file starts afresh)

# the event poll that meets the token endpoint's failure names it, not the Events API
CURSOR = "SELECT coalesce(last_error, '') || ' | ' || coalesce(last_error_at::text, '') FROM m3ter.event_cursor"
before = psql(CURSOR)
set_and_reload(worker_enabled=None, retry_max_delay="2s", events_poll_interval="1s")
standin("POST", "/_control/faults", {"faults": [{"match": "/oauth/token", "status": 503, "count": 100}]})
standin("POST", "/_control/config", {"expire_tokens": True})
ok(wait_until(lambda: psql(CURSOR) != before and psql(CURSOR) != " | ", timeout=15, interval=0.2),
   "the event poll meets the failing token endpoint", psql(CURSOR))
ok(psql(CURSOR).startswith("asking for a bearer token: "), "and names it", psql(CURSOR))
standin("POST", "/_control/faults", {"clear": True})
psql(SUBMIT)
set_and_reload(worker_enabled=None, retry_max_delay=None, events_poll_interval=None)
done()
