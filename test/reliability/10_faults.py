"""Faults at m3ter's side: each scenario drains rows through the worker while the
stand-in misbehaves, then checks every row: accepted and stored, or failed for
the one reason expected; none lost, none stuck pending."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

scenario("429 without Retry-After", "r429-", [fault(status=429, count=3)])
is_(sum(1 for r in ingest_requests() if r["status"] == 429), 3, "429: three requests were throttled")
is_(scalar("SELECT max(attempts) FROM m3ter.outbox"), "1",
    "429: waited out in memory while the pacing slowed down, no attempt spent")

scenario("429 with Retry-After: 2", "r429ra-", [fault(status=429, retry_after=2, count=1)])
gap = scalar("SELECT extract(epoch FROM max(accepted_at) - min(created_at)) FROM m3ter.outbox")
ok(float(gap) >= 2.0, "429 with Retry-After: the retry waited 2 s", gap)

scenario("500, 502, 504 bursts", "r5xx-", [fault(status=500, count=2), fault(status=502, count=2),
                                           fault(status=504, count=2)])

scenario("400 for one measurement in a batch", "r400-", config={"reject_meters": ["retired_meter"]},
         extra_rows=1, expect_failed=1,
         during=lambda: insert_usage(1, "r400-poison-", meter="retired_meter"))
is_(scalar("SELECT http_status || ' ' || error FROM m3ter.outbox WHERE status = 'failed'"),
    "400 measurements[0]: no meter with code retired_meter", "the poison row carries m3ter's message")


def expire_tokens_mid_drain():
    wait_until(lambda: len(ingest_requests()) >= 1, timeout=10, interval=0.02)
    standin("POST", "/_control/config", {"expire_tokens": True})


# three requests at least, whatever ROWS is, one at a time, so the expiry lands between them
scenario("403 expired token mid-drain", "rtok-", [fault(delay=0.2, count=4)], during=expire_tokens_mid_drain,
         settings={"batch_rows": str(max(1, ROWS // 3)), "max_in_flight": "1"})
is_(scalar("SELECT max(attempts) FROM m3ter.outbox"), "1", "an expired token burns no attempt")
ok(any(r["status"] == 403 for r in ingest_requests()), "a 403 for the expired token was answered")


def fix_org_later():
    time.sleep(2)
    is_(scalar("SELECT status || ' ' || attempts FROM m3ter.outbox GROUP BY 1"), "pending 0",
        "403 unknown org: rows stay pending, no attempt burnt")
    set_and_reload(org_id=None)


scenario("403 unknown org, then fixed", "rorg-", settings={"org_id": "00000000-0000-4000-8000-000000000000"},
         during=fix_org_later)
# (a refused request's measurements are not counted; a single row takes a few hundred bytes)
refused = [r["bytes"] < 2000 for r in ingest_requests() if r["status"] == 403]
ok(True in refused and all(refused[refused.index(True):]),
   "after the stop the worker tried again with a single row, not the whole backlog",
   [r["bytes"] for r in ingest_requests() if r["status"] == 403])
# four requests in flight: the first is refused twice (stale token, then fresh) and stops delivery
# while the other three are still out; their 403s arrive after the stop and must come back too
scenario("403 unknown org with requests in flight", "rorgfl-", [fault(delay=0, count=1), fault(delay=1, count=3)],
         settings={"org_id": "00000000-0000-4000-8000-000000000000", "batch_rows": str(max(1, ROWS // 4)),
                   "max_in_flight": "4"},
         during=fix_org_later, timeout=30)

# rows of about 128 kB: four fill a request to within a few bytes of the limit
big = "jsonb_build_object('blob', repeat('x', 127800))"
scenario("403 for an oversize payload (never provoked)", "rbig-", rows=40, extra=big)
reqs = ingest_requests()
ok(all(r["bytes"] < 512000 for r in reqs) and not any(r["status"] == 403 for r in reqs),
   "every request stayed under 512,000 bytes; no 403 for size", max(r["bytes"] for r in reqs))
ok(min(r["bytes"] for r in reqs if r["status"] == 200) > 500000, "and requests were still full")
# (an INSERT refuses a large row; numbers with thousands of decimal places make a small row's JSON
# too large to check there)
scenario("a row over 512,000 bytes", "rhuge-", rows=1,
         measure="(SELECT jsonb_object_agg('k' || j, ('1.' || repeat('0', 16000))::numeric) FROM generate_series(1, 40) j)",
         expect_failed=1)
ok(scalar("SELECT error FROM m3ter.outbox").startswith("a request with this measurement alone would take"), "it is failed with the reason")
try:
    insert_usage(1, "rhuge-blob-", extra="jsonb_build_object('blob', repeat('x', 520000))")
    refused = ""
except RuntimeError as e:
    refused = str(e)
ok("is too large for m3ter" in refused and scalar("SELECT count(*) FROM m3ter.outbox WHERE uid LIKE 'rhuge-blob-%'") == "0",
   "a row of 520,000 bytes is refused at INSERT", refused[-300:])

scenario("a response that never comes (timeout)", "rslow-", [fault(delay=5, count=2)],
         settings={"request_timeout": "1s"})
ok(int(scalar("SELECT max(attempts) FROM m3ter.outbox")) >= 2, "timed-out requests were retried")
set_and_reload(request_timeout=None)

scenario("a connection reset mid-body", "rreset-", [fault(reset_mid_body=True, count=2)])
scenario("a connection reset after m3ter accepted", "rresetacc-", [fault(reset_mid_body=True, after_accept=True, count=2)])
ok(standin("GET", "/_control/summary")["duplicates"] > 0,
   "re-sent measurements were deduplicated by uid at the stand-in")

scenario("a slow trickle response", "rtrickle-", [fault(trickle=2, count=1)])
is_(scalar("SELECT max(attempts) FROM m3ter.outbox"), "1", "a slow but complete answer is not retried")


def down_30s():
    wait_until(lambda: len(ingest_requests()) >= 1, timeout=10, interval=0.02)
    standin_stop()
    time.sleep(30)
    standin_start()


scenario("the stand-in down for 30 s and back", "rdown-", [fault(delay=1, count=3)], during=down_30s,  # 3 claims
         settings={"retry_max_delay": "5s", "batch_rows": str(max(1, ROWS // 3)), "max_in_flight": "1"},
         timeout=120)
ok(int(scalar("SELECT max(attempts) FROM m3ter.outbox")) >= 2, "rows were retried while it was down")

scenario("an empty success body", "rempty-", [fault(empty_body=True, count=2)])
scenario("a malformed success body", "rbad-", [fault(malformed_body=True, count=2)])
scenario("5% random 5xx for the whole drain", "rrandom-", config={"random_5xx": 0.05}, rows=ROWS * 3,
         settings={"batch_rows": "1000"})
done()
