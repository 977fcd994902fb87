"""Pacing under a per-second limit that something else shares: the stand-in admits
only 5 requests a second for the organization while the extension paces for m3ter's
50.  The first 429 of an overload slows the pace a little (it may be jitter); the
second drops it once to what m3ter admitted (not a fifth per overloaded second), the
rows spend no attempt, and none is lost."""
import email.utils
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

REQUESTS = 40


def set_and_reload_at(**settings):
    """set_and_reload(), then the server's clock (epoch seconds)"""
    set_and_reload(**settings)
    return scalar("SELECT extract(epoch FROM clock_timestamp())")


def refused_once(prefix, rows, retry_after, **settings):
    """rows inserted with the worker off; its first request is refused with a 429 naming retry_after"""
    reset()
    set_and_reload(worker_enabled="off", **settings)
    standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "status": 429,
                                                     "retry_after": retry_after, "count": 1}]})
    insert_usage(rows, prefix)
    set_and_reload(worker_enabled=None)


reset()
set_and_reload(worker_enabled="off")
standin("POST", "/_control/config", {"rate_limit": {"per_second": 5}})
insert_usage(REQUESTS * 1000, "shared-")
set_and_reload(worker_enabled=None)
ok(wait_until(lambda: outbox_counts()["accepted"] == REQUESTS * 1000, timeout=90),
   "every row is accepted under a limit a tenth of the pace", outbox_counts())
reqs = ingest_requests()
throttled = sum(1 for r in reqs if r["status"] == 429)
admitted = [r for r in reqs if r["status"] == 200]
# full requests: a request refused three times goes back to the outbox and may share a later one
ok(REQUESTS <= len(admitted) <= REQUESTS + 2 and sum(r["measurements"] for r in admitted) == REQUESTS * 1000,
   "in %d full requests (or one or two more)" % REQUESTS,
   "%d requests: %s" % (len(admitted), [r["measurements"] for r in admitted]))
note("429s: %d" % throttled)
# Two 429s make an overload: 3% per 429 would take about eighty to get from 48 to 5 a second; a
# drop to what m3ter admitted takes three overloads (a fifth in the first second, at most to a
# quarter), and at a share this small the climb back (half a request a second a second) overshoots
# about once every two seconds, one or two 429s each time (10-17 seen)
ok(2 <= throttled <= 24, "the second 429 brought the pace down to what m3ter admitted: few 429s in all",
   "%d 429s" % throttled)
is_(scalar("SELECT max(attempts) FROM m3ter.outbox"), "1", "the 429s spent no attempt")
is_(standin("GET", "/_control/summary")["duplicates"], 0, "and nothing was stored twice")
standin("POST", "/_control/config", {"rate_limit": None})

# The pace climbs back while idle, and a 429 that leaves the pace (it names a longer wait) keeps
# that climb: it does not start again from the pace of the last answer before the pause
set_and_reload(worker_enabled="off")
time.sleep(8)
climbed = float(scalar("SELECT m3ter.pacing_pace()"))
ok(climbed < 45, "the pace is still below the limit after 8 s idle", climbed)
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "status": 429,
                                                 "retry_after": 2, "count": 1}]})
insert_usage(1000, "kept-")
set_and_reload(worker_enabled=None)
ok(wait_until(lambda: outbox_counts()["accepted"] == REQUESTS * 1000 + 1000, timeout=30),
   "the request refused with Retry-After: 2 got in after", outbox_counts())
after = float(scalar("SELECT m3ter.pacing_pace()"))
ok(after >= climbed, "the pace after it is no lower than before it (%.1f before)" % climbed, after)
# A long delivery (paced to 2 a second) still polls Events and sweeps: it never waits for an idle moment
reset()
set_and_reload(worker_enabled="off", max_requests_per_second="2", events_poll_interval="2s")
insert_usage(30000, "long-")
psql("UPDATE m3ter.event_cursor SET polled_at = NULL")
started = float(set_and_reload_at(worker_enabled=None))
ok(wait_until(lambda: scalar("SELECT coalesce(extract(epoch FROM polled_at), 0) FROM m3ter.event_cursor") != "0"
              and float(scalar("SELECT extract(epoch FROM polled_at) FROM m3ter.event_cursor")) > started + 5
              and outbox_counts()["pending"] > 0, timeout=14, interval=0.5),
   "Events were polled again well into the delivery, rows still to send", outbox_counts())
ok(wait_until(lambda: outbox_counts()["accepted"] == 30000, timeout=60), "and the delivery finished")
set_and_reload(max_requests_per_second=None, events_poll_interval=None)

# A 429 with a Retry-After of an hour holds the refused rows for the hour, the cluster for at
# most m3ter.retry_max_delay
def held_an_hour(prefix, fault, what):
    """3,000 rows in 3 requests, the first refused with a 429 that names an hour"""
    reset()
    set_and_reload(worker_enabled="off", retry_max_delay="2s", max_in_flight="1")
    standin("POST", "/_control/faults", {"faults": [dict(fault, match="/measurements", status=429)]})
    insert_usage(3000, prefix)
    set_and_reload(worker_enabled=None)
    ok(wait_until(lambda: outbox_counts()["accepted"] == 2000, timeout=20),
       "%s: the other rows are delivered within seconds" % what, outbox_counts())
    ok(float(scalar("SELECT coalesce(extract(epoch FROM min(next_attempt_at) - now()), 0) FROM m3ter.outbox "
                    "WHERE status = 'pending'")) > 3000, "%s: the refused ones wait out the hour" % what)
    health = psql("SELECT detail FROM m3ter_health() WHERE finding = 'rows held by m3ter'")
    ok(health.startswith("1000 rows of this database wait for the Retry-After"),
       "%s: m3ter_health() says so (the worker is idle)" % what, health)


held_an_hour("hour-", {"retry_after": 3600}, "Retry-After: 3600")
# RFC 9110's other form, an HTTP date
held_an_hour("date-", {"retry_after": email.utils.formatdate(time.time() + 3600, usegmt=True)},
             "Retry-After as a date an hour ahead")
# Retry-After-Ms (as m3ter's generated SDKs read it) wins over Retry-After
held_an_hour("ms-", {"retry_after": 1, "retry_after_ms": 3600000}, "Retry-After-Ms: 3600000 and Retry-After: 1")
# longer than a day (a spent daily quota, say) counts as a day: the rows wait, they do not go at once
held_an_hour("month-", {"retry_after": 2592000}, "Retry-After: 2592000 (30 days)")

# a restart (a clean one, or immediate) does not cut a wait m3ter asked for short: the postmaster
# keeps its end with the 5-minute budget's send times
refused_once("rs-", 3000, 20, retry_max_delay="30s")
ok(wait_until(lambda: psql("SELECT state FROM m3ter.databases WHERE datname = current_database()")
              == "waiting: m3ter asked to wait (Retry-After)", timeout=10), "the worker waits out a Retry-After: 20")
restart_immediate()
time.sleep(4)
is_(len(ingest_requests()), 1, "an immediate restart meanwhile sends nothing more before the wait ends")
is_(psql("SELECT state FROM m3ter.databases WHERE datname = current_database()"),
    "waiting: m3ter asked to wait (Retry-After)", "and the worker says it still waits")
ok(wait_until(lambda: outbox_counts()["accepted"] == 3000, timeout=40), "the rows get in after the wait",
   outbox_counts())
set_and_reload(retry_max_delay=None)

# Rows that fall due while the cluster waits out a Retry-After wait unclaimed: the worker says
# what it waits for, nothing of theirs is in flight, and a worker stopped meanwhile leaves them as
# they were (no attempt counted, no error). They go once the wait ends.
refused_once("ra-", 10, 8, retry_max_delay="20s")
ok(wait_until(lambda: psql("SELECT state FROM m3ter.databases WHERE datname = current_database()")
              == "waiting: m3ter asked to wait (Retry-After)", timeout=10), "the worker waits out the Retry-After")
insert_usage(10, "ra-late-")
time.sleep(1.5)
CLAIMED_LATE = ("SELECT count(*) FROM m3ter.inflight f JOIN m3ter.outbox o ON o.id = ANY (f.ids) "
                "WHERE o.uid LIKE 'ra-late-%'")
is_(psql(CLAIMED_LATE), "0", "rows due during the wait are not claimed")
terminate_worker()
is_(psql("SELECT count(*) FROM m3ter.outbox WHERE uid LIKE 'ra-late-%' AND (attempts <> 0 OR error IS NOT NULL)"),
    "0", "a worker stopped during the wait leaves them untouched: no attempt, no error")
ok(wait_until(lambda: outbox_counts()["accepted"] == 20, timeout=30), "all are delivered after the wait",
   outbox_counts())
is_(psql("SELECT count(*) FROM m3ter.outbox WHERE uid LIKE 'ra-late-%' AND attempts = 1"), "10", "in one attempt each")

# CALL m3ter.flush() (it commits as it goes) claims nothing during such a wait either: it returns
# with a notice, and a statement_timeout or a cancel leaves no row claimed in flight
reset()
set_and_reload(worker_enabled="off", retry_max_delay="20s")
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "status": 429, "retry_after": 8,
                                                 "count": 1}]})
insert_usage(10, "cf-")
psql("CALL m3ter.flush()")
insert_usage(10, "cf-late-")
r = psql("SET statement_timeout = '3s';\nCALL m3ter.flush()", check=False)
ok(r.returncode == 0 and "m3ter asked to wait (Retry-After)" in r.stderr,
   "CALL m3ter.flush() during the wait returns with a notice of it", r.stderr)
is_(psql(CLAIMED_LATE.replace("ra-late-", "cf-late-")), "0", "and leaves no row claimed")
time.sleep(8)
psql("CALL m3ter.flush()")
is_(psql("SELECT count(*) FROM m3ter.outbox WHERE status = 'accepted' AND attempts = 1"), "20",
    "after the wait a flush delivers all, one attempt each")
set_and_reload(worker_enabled=None)

# rows m3ter refused with a 429 wait for their retry under the 429's own states, never as
# "retrying after a fault" (that one is for 5xx, timeouts and network faults)
refused_once("ra3-", 10, 3)
seen = set()
t_end = time.time() + 6
while time.time() < t_end and outbox_counts()["accepted"] < 10:
    seen.add(psql("SELECT state FROM m3ter.databases WHERE datname = current_database()"))
    time.sleep(0.1)
ok(outbox_counts()["accepted"] == 10 and "waiting: retrying after a fault (see last_error)" not in seen,
   "a Retry-After: 3 is waited out without a fault's state", sorted(seen))

# a value that is neither delay-seconds nor a date names no wait: the 429 is waited out as one without
reset()
set_and_reload(worker_enabled="off", retry_max_delay="2s", max_in_flight="1")
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "status": 429, "retry_after": v}
                                                for v in ("1e4", "0x5000", "9000 seconds")]})
insert_usage(3000, "odd-")
set_and_reload(worker_enabled=None)
ok(wait_until(lambda: outbox_counts()["accepted"] == 3000, timeout=30),
   "Retry-After: 1e4, 0x5000 or '9000 seconds' holds no row", outbox_counts())

# m3ter_submit does not sit out a Retry-After longer than m3ter.retry_max_delay in its session:
# it fails at once with the wait in its hint, and sends no second request
reset()
set_and_reload(retry_max_delay="2s")
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "status": 429, "retry_after": 3600}]})
r = psql("\\set VERBOSITY verbose\nSELECT m3ter_submit('{\"meter\": \"api_requests\", \"account\": \"acme\", "
         "\"ts\": \"2024-01-02T03:04:05Z\", \"measure\": {\"requests\": 1}}')", check=False)
ok(r.returncode != 0 and "M3429" in r.stderr and "wait 3600 s (Retry-After)" in r.stderr,
   "m3ter_submit fails with M3429 and the wait in its hint", r.stderr)
is_(len(ingest_requests()), 1, "after one request")
set_and_reload(retry_max_delay=None, max_in_flight=None)

# While a Retry-After holds the cluster's sends, the worker's state says so: not a bare
# "delivering" with nothing moving; then idle again once the rows are in
refused_once("hold-", 2000, 6)
state_sql = "SELECT state FROM m3ter.databases WHERE datname = current_database()"
ok(wait_until(lambda: scalar(state_sql) == "waiting: m3ter asked to wait (Retry-After)", timeout=10,
              interval=0.2), "during a 6 s Retry-After the state says m3ter asked to wait", scalar(state_sql))
ok(wait_until(lambda: outbox_counts()["accepted"] == 2000, timeout=30), "the rows get in after it", outbox_counts())
ok(wait_until(lambda: scalar(state_sql) == "idle", timeout=10), "and the worker is idle", scalar(state_sql))
# a longer one puts the row back pending and the worker rests: it still says why nothing moves
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "status": 429, "retry_after": 8,
                                                 "count": 1}]})
insert_usage(1, "held-long-")
ok(wait_until(lambda: scalar(state_sql) == "waiting: m3ter asked to wait (Retry-After)", timeout=5, interval=0.2),
   "resting through an 8 s Retry-After, the state says m3ter asked to wait", scalar(state_sql))
ok(wait_until(lambda: outbox_counts()["accepted"] == 2001, timeout=30), "the row gets in after it", outbox_counts())


def refused_then_pace(prefix, faults, refusals, accepted):
    """600 rows in 60 requests with the faults (one or a list) queued at the stand-in (worker
    off meanwhile): check they all get in with that many 429s, and return the pace after"""
    set_and_reload(worker_enabled="off")
    faults = faults if isinstance(faults, list) else [faults]
    standin("POST", "/_control/faults",
            {"faults": [dict(f, match="/measurements", status=429) for f in faults]})
    insert_usage(600, prefix)
    set_and_reload(worker_enabled=None)
    ok(wait_until(lambda: outbox_counts()["accepted"] == accepted, timeout=60),
       "60 requests, %d refused, all delivered" % refusals, outbox_counts())
    is_(sum(1 for r in ingest_requests() if r["status"] == 429), refusals, "%d 429s" % refusals)
    return float(scalar("SELECT m3ter.pacing_pace()"))


# One 429 alone (arrival jitter, a token bucket's bunching) costs the refused request, not the pace
reset()
set_and_reload(worker_enabled="off", batch_rows="10")
insert_usage(10, "warm-")
set_and_reload(worker_enabled=None)
ok(wait_until(lambda: outbox_counts()["accepted"] == 10, timeout=20), "a few rows after a quiet while")
ok(float(scalar("SELECT m3ter.pacing_pace()")) > 47, "the pace is back at the limit (48 a second)",
   scalar("SELECT m3ter.pacing_pace()"))
# (mid-stream: a 429 to a cluster's first request says nothing of its pace)
pace = refused_then_pace("one429-", {"match_body": '"one429-317"'}, 1, 610)
ok(pace > 45, "it lowered the pace by a few percent, not a fifth or to what m3ter had admitted", pace)
# Two lone 429s within a second, admitted requests around them (jitter meeting a token bucket of
# one): the cluster's own bunching, not another's share; to what m3ter admitted would be 44 or less
reset()
set_and_reload(batch_rows="10")
ok(wait_until(lambda: float(scalar("SELECT m3ter.pacing_pace()")) > 47.5, timeout=60),
   "the pace is back at the limit", scalar("SELECT m3ter.pacing_pace()"))
time.sleep(2.5)  # and the last case's overload over 2 s ago: these two are not one in a series
pace = refused_then_pace("lone429-", [{"match_body": '"lone429-205"'}, {"match_body": '"lone429-305"'}], 2, 600)
ok(pace > 44.5, "two lone 429s lowered the pace 3% each (to 45.2), not to what m3ter had admitted", pace)

# 429s in a row early in a burst (a brief intrusion: another sender's moment, a gateway's hiccup)
# halve the pace blind, with no whole second sent to measure a share by; with no 429 after it the
# pace climbs back within about a second instead of 1% of the rate a second
reset()
set_and_reload(batch_rows="10")
ok(wait_until(lambda: float(scalar("SELECT m3ter.pacing_pace()")) > 47.5, timeout=60),
   "the pace is back at the limit", scalar("SELECT m3ter.pacing_pace()"))
time.sleep(2.5)
refused_then_pace("early-", [{"match_body": '"early-105"'}, {"match_body": '"early-115"'}], 2, 600)
time.sleep(1.5)
pace = float(scalar("SELECT m3ter.pacing_pace()"))
ok(pace > 45, "1.5 s after the burst the pace is back near the limit (a slow climb leaves it near 25)", pace)

# A 429 that names its own wait says nothing of the pace, and is not counted either: a lone 429
# right after it is not "one in a row" (which would drop the pace to what m3ter admitted, by half
# this early in a burst). 100 ms round trips keep the three in flight together.
reset()
set_and_reload(batch_rows="10")
ok(wait_until(lambda: float(scalar("SELECT m3ter.pacing_pace()")) > 47.5, timeout=60),
   "the pace is back at the limit", scalar("SELECT m3ter.pacing_pace()"))
time.sleep(2.5)
standin("POST", "/_control/config", {"latency_ms": 100})
pace = refused_then_pace("named1-", [{"match_body": '"named1-205"'},
                                     {"match_body": '"named1-305"', "retry_after": 2},
                                     {"match_body": '"named1-315"'}], 3, 600)
ok(pace > 44.5, "a lone 429 after one that named its wait lowered the pace 3%, not by half", pace)
standin("POST", "/_control/config", {"latency_ms": 0})

# 429s that name their wait (Retry-After: 2) are waited out, and leave the pace as it was
reset()
pace = refused_then_pace("named-", {"retry_after": 2, "count": 5}, 5, 600)
ok(pace > 45, "the pace is as it was (3% for each would leave 41)", pace)
set_and_reload(batch_rows=None)

# 429s that go on (a budget spent by others; a window that counts refused requests too): the wait
# between tries grows, 1 s, then 3 s, then m3ter.retry_max_delay (4 s here), not 1 s each time
reset()
set_and_reload(worker_enabled="off", retry_max_delay="4s")
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "status": 429, "count": 6}]})
insert_usage(10, "goes-on-")
set_and_reload(worker_enabled=None)
state_sql = "SELECT state FROM m3ter.databases WHERE datname = current_database()"
ok(wait_until(lambda: scalar(state_sql).startswith("waiting: m3ter keeps answering 429"), timeout=10,
              interval=0.2), "while the 429s go on, the state says so", scalar(state_sql))
# a call from SQL does not sit out the cluster's growing wait (minutes, at its longest): it fails
# at once with M3429, what is left of the wait in its hint, and sends nothing
t0 = time.time()
r = psql("\\set VERBOSITY verbose\nSELECT m3ter_submit('{\"meter\": \"api_requests\", \"account\": \"acme\", "
         "\"ts\": \"2024-01-02T03:04:05Z\", \"measure\": {\"requests\": 1}}')", check=False)
ok(r.returncode != 0 and "M3429" in r.stderr and "a wait that grows while m3ter answers 429" in r.stderr
   and time.time() - t0 < 1.5, "m3ter_submit meanwhile fails at once with M3429 and the wait in its hint",
   "%.1f s: %s" % (time.time() - t0, r.stderr))
ok(wait_until(lambda: psql("SELECT count(*) FROM m3ter_health() WHERE finding = 'throttled by m3ter'") == "1",
              timeout=10, interval=0.2), "and m3ter_health() warns")
ok(wait_until(lambda: outbox_counts()["accepted"] == 10, timeout=40), "the rows get in after", outbox_counts())
times = [r["t"] for r in ingest_requests()]
gaps = [round(b - a, 1) for a, b in zip(times, times[1:])]
is_(len(times), 7, "after 6 refused requests")
ok(0.9 <= gaps[0] < 2 and 2.8 <= gaps[1] < 4 and all(3.8 <= g < 5 for g in gaps[2:]),
   "the waits grew: about 1 s, 3 s, then 4 s each (m3ter.retry_max_delay)", gaps)
set_and_reload(retry_max_delay=None)

# the rows claimed for requests not yet running when the 429s went on are handed back during the
# growing wait: none sits in flight unsent, and a worker stopped meanwhile counts none as sent
reset()
set_and_reload(worker_enabled="off", retry_max_delay="6s")
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "status": 429, "count": 12}]})
insert_usage(5000, "back-")
set_and_reload(worker_enabled=None)
ok(wait_until(lambda: scalar(state_sql).startswith("waiting: m3ter keeps answering 429"), timeout=10,
              interval=0.1), "the worker waits out the 429s", scalar(state_sql))
# (within the first second of the 3 s wait: the state is said as it begins, the rows of requests
# still running when it began go back as their 429s come)
ok(wait_until(lambda: psql("SELECT coalesce(sum(cardinality(ids)), 0) FROM m3ter.inflight") == "0",
              timeout=1, interval=0.05),
   "no row is in flight during the wait (5,000 were claimed before it)",
   psql("SELECT coalesce(sum(cardinality(ids)), 0) FROM m3ter.inflight"))
terminate_worker()
ok(wait_until(lambda: outbox_counts()["accepted"] == 5000, timeout=60), "all get in after the 429s",
   outbox_counts())
is_(psql("SELECT count(*) FROM m3ter.outbox WHERE attempts <> 1"), "0",
    "each in one attempt: the stopped worker counted none as sent")
is_(standin("GET", "/_control/summary")["duplicates"], 0, "and none twice at m3ter")
set_and_reload(retry_max_delay=None)

# a 2xx for a request sent after the 429 that began a growing wait ends the wait: m3ter admits
# again, and the rest go at the pace, the rows of the refused requests too (they waited the whole
# wait, 3 s or 9 s here, while m3ter admitted)
reset()
set_and_reload(worker_enabled="off", retry_max_delay="20s")
standin("POST", "/_control/config", {"latency_ms": 150})
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "status": 429, "count": 16}]})
insert_usage(20000, "admits-")
set_and_reload(worker_enabled=None)
ok(wait_until(lambda: outbox_counts()["accepted"] == 20000, timeout=60), "20,000 rows get in after 16 429s",
   outbox_counts())
standin("POST", "/_control/config", {"latency_ms": 0})
reqs = ingest_requests()
first_ok = min(r["answered"] for r in reqs if r["status"] == 200)
after = [first_ok] + [r["t"] for r in reqs if r["t"] > first_ok]
gaps = [round(b - a, 2) for a, b in zip(after, after[1:])]
ok(len(after) > 1 and max(gaps) < 1.5, "after the first 2xx no request waits out what is left of the wait",
   "gaps after the first 2xx: %s" % gaps)
set_and_reload(retry_max_delay=None)

# an operator who lowers m3ter.retry_max_delay (a reload) and makes the rows due shortens a wait
# under way (here the 9 s one, after two refusals)
reset()
set_and_reload(worker_enabled="off", retry_max_delay="60s")
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "status": 429, "count": 100000}]})
insert_usage(10, "shorten-")
set_and_reload(worker_enabled=None)
ok(wait_until(lambda: len(ingest_requests()) >= 3, timeout=15), "three refusals: the 9 s wait begins")
sent = len(ingest_requests())
set_and_reload(retry_max_delay="1s")
psql("UPDATE m3ter.outbox SET next_attempt_at = now() WHERE status = 'pending'")
t0 = time.time()
ok(wait_until(lambda: len(ingest_requests()) > sent, timeout=5, interval=0.1),
   "the next try comes within seconds, not after the 9 s", "%.1f s" % (time.time() - t0))
standin("POST", "/_control/faults", {"clear": True})
ok(wait_until(lambda: outbox_counts()["accepted"] == 10, timeout=20), "and the rows get in", outbox_counts())
set_and_reload(retry_max_delay=None)

done()
