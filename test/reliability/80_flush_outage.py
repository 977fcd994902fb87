"""Delivery over time: a cancelled CALL m3ter.flush() keeps what it delivered
and re-sends at most the claim it was on; a long m3ter outage (compressed by
settings) keeps rows pending until it ends, failing them only by age; with
200,000 rows waiting for a retry, claims and the next-due lookup stay cheap."""
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

# --- a cancelled flush ------------------------------------------------------
reset()
set_and_reload(worker_enabled="off", max_requests_per_second="0", batch_rows="1000", max_in_flight="1")
insert_usage(3000, "cflush-")
standin("POST", "/_control/faults", {"faults": [fault(delay=1.0, count=100)]})
call = psql_async("CALL m3ter.flush()")
ok(wait_until(lambda: len([r for r in ingest_requests() if r["status"] == 200]) >= 2, timeout=30, interval=0.05),
   "cancelled flush: two requests answered")
time.sleep(0.3)                        # the third is in flight
psql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE 'CALL m3ter.flush%'")
call.wait(timeout=30)
ok(call.returncode != 0 and "canceling statement" in call.stderr.read(), "cancelled flush: the CALL was cancelled")
is_(outbox_counts()["accepted"], 2000, "cancelled flush: what m3ter answered for stayed accepted")
standin("POST", "/_control/faults", {"clear": True})
time.sleep(1.2)                        # the cancelled request's answer arrives at the stand-in
is_(json.loads(psql("CALL m3ter.flush()"))["accepted"], 1000, "a second flush delivers the rest")
dups = standin("GET", "/_control/summary")["duplicates"]
ok(dups <= 1000, "cancelled flush: at most one claim (1000) re-sent: %d" % dups)
note("cancelled flush: %d measurements re-sent" % dups)
record_scenario("CALL m3ter.flush() cancelled on its third request", 3000, "cflush-")
is_(scalar("SELECT count(*) FROM m3ter.inflight"), "0", "no in-flight record is left behind")

# --- a flush while m3ter answers every request with 429 ----------------------
# each due row is taken once a call: the flush returns with the rows pending (a pg_cron job
# is not held as long as m3ter throttles), and the server stays up (the 429's message
# outlives the claim that carried it)
reset()
# (429s that go on hold the cluster for a growing wait, up to m3ter.retry_max_delay: 2 s here)
set_and_reload(worker_enabled="off", retry_max_delay="2s")
insert_usage(3000, "t429-")
standin("POST", "/_control/faults", {"faults": [fault(status=429, body={"message": "Too many"}, count=100000)]})
set_and_reload(worker_enabled=None)     # the worker meets them first and lowers the cluster's pace
time.sleep(4)
set_and_reload(worker_enabled="off")
# (the worker puts back what it holds once its third 429 in a row comes: the flushes meet them next)
ok(wait_until(lambda: scalar("SELECT count(*) FROM m3ter.inflight") == "0", timeout=15),
   "flush under 429s: the stopped worker holds no row")
started = scalar("SELECT pg_postmaster_start_time()")
results = []
notices = []
for _ in range(3):
    r = psql("SET statement_timeout = '30s'; CALL m3ter.flush()", check=False)
    results.append(json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else r.stderr.strip()[:200])
    notices.append(r.stderr)
ok(any("m3ter keeps answering 429: the cluster sends nothing for" in n for n in notices),
   "flush under 429s: a NOTICE says why it sends nothing", notices)
ok(all(isinstance(x, dict) and x["accepted"] == 0 and x["retried"] + x["failed"] <= 3000 for x in results),
   "flush under 429s: each of three calls returns, nothing accepted", results)
is_(scalar("SELECT pg_postmaster_start_time()"), started, "flush under 429s: the server did not restart")
is_(outbox_counts()["pending"], 3000, "flush under 429s: every row is still pending")
is_(scalar("SELECT max(attempts) FROM m3ter.outbox"), "0", "flush under 429s: no attempt spent")
standin("POST", "/_control/faults", {"clear": True})
flushed = []
ok(wait_until(lambda: flushed.append(json.loads(psql("CALL m3ter.flush()"))["accepted"]) or sum(flushed) == 3000,
              timeout=8, interval=0.5),
   "flush under 429s: once m3ter admits again, flushes deliver them within the hold (2 s here)", flushed)
record_scenario("CALL m3ter.flush() under sustained 429s", 3000, "t429-")

# --- a long outage, compressed: retries by time, failure by age -------------
is_(scalar("SELECT setting FROM pg_settings WHERE name = 'm3ter.give_up_after'"), str(7 * 86400),
    "by default rows ride out 7 days of transient faults")
is_(scalar("SELECT setting FROM pg_settings WHERE name = 'm3ter.max_attempts'"), "0",
    "and no attempt count fails them")
reset()
set_and_reload(max_requests_per_second="0", retry_max_delay="1s", give_up_after="120s")
standin("POST", "/_control/config", {"random_5xx": 1.0})
insert_usage(3000, "outage-")
time.sleep(15)
counts = outbox_counts()
attempts = int(scalar("SELECT min(attempts) FROM m3ter.outbox"))
ok(counts["pending"] == 3000 and attempts >= 5,
   "outage: after 15 s of 5xx every row is pending, retried %d times or more" % attempts, counts)
standin("POST", "/_control/config", {"random_5xx": 0.0})
ok(wait_until(lambda: outbox_counts()["accepted"] == 3000, timeout=30), "outage over: every row delivered",
   outbox_counts())
record_scenario("15 s of 5xx (a 24-hour outage, compressed by settings)", 3000, "outage-")

reset()
set_and_reload(max_requests_per_second="0", retry_max_delay="1s", give_up_after="4s")
standin("POST", "/_control/config", {"random_5xx": 1.0})
insert_usage(300, "gaveup-")
ok(wait_until(lambda: outbox_counts()["failed"] == 300, timeout=30),
   "an outage longer than m3ter.give_up_after fails the rows", outbox_counts())
error = scalar("SELECT min(error) FROM m3ter.outbox")
ok(error.startswith("gave up after"), "they say they gave up, and why", error)
standin("POST", "/_control/config", {"random_5xx": 0.0})
record_scenario("an outage longer than m3ter.give_up_after (4 s)", 300, "gaveup-", expect_failed=300)

# --- 200,000 rows waiting for a retry: claims stay cheap ---------------------
reset()
set_and_reload(worker_enabled="off")
# (from an empty table: the dead index entries that earlier scenarios' retries left are not
# what this measures)
psql("TRUNCATE m3ter.outbox")
psql("INSERT INTO m3ter.outbox (uid, meter, account, measure, next_attempt_at) "
     "SELECT 'later-' || i, 'api_requests', 'acme', '{\"requests\": 1}', now() + interval '1 hour' "
     "FROM generate_series(1, 200000) i", timeout=600)
psql("VACUUM ANALYZE m3ter.outbox")
insert_usage(10, "due-")


def explain(sql):
    """The plan, its execution time and the buffers its top node touched."""
    plan = psql("EXPLAIN (ANALYZE, BUFFERS, TIMING) " + sql)
    ms = float(re.search(r"Execution Time: ([0-9.]+) ms", plan).group(1))
    top = next(line for line in plan.splitlines() if "Buffers:" in line)
    return plan, ms, sum(int(x) for x in re.findall(r"(?:hit|read)=(\d+)", top))


claim_plan, claim_ms, claim_buf = explain(
    "SELECT id FROM m3ter.outbox WHERE next_attempt_at > created_at AND status = 'pending' "
    "AND next_attempt_at <= now() AND (next_attempt_at, id) > ('-infinity', 0) ORDER BY next_attempt_at, id LIMIT 1000")
due_plan, due_ms, due_buf = explain(
    "SELECT o.next_attempt_at FROM m3ter.outbox o WHERE o.next_attempt_at > o.created_at AND o.status = 'pending' "
    "AND NOT EXISTS (SELECT 1 FROM m3ter.inflight f WHERE o.id = ANY (f.ids)) ORDER BY o.next_attempt_at, o.id LIMIT 1")
note("with 200,000 rows not yet due: claim %.2f ms (%d buffers), next-due lookup %.2f ms (%d buffers)"
     % (claim_ms, claim_buf, due_ms, due_buf))
ok("outbox_deferred_idx" in claim_plan and claim_buf < 50, "the claim walks the deferred index, not the waiting rows",
   claim_plan)
ok("outbox_deferred_idx" in due_plan and due_buf < 100, "the next-due lookup reads the index's first entries", due_plan)
t0 = time.time()
r = json.loads(psql("SELECT m3ter_flush()"))
note("m3ter_flush() with 10 due and 200,000 waiting: %.0f ms" % ((time.time() - t0) * 1000))
is_(r["accepted"], 10, "the 10 due rows go, the 200,000 wait")
psql("DELETE FROM m3ter.outbox")
done()
