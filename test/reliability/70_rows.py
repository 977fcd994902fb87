"""Rows that strain delivery: 1,500 rows of 300 kB drain with the worker's
private memory bounded by what is in flight, not by the rows' size; a row
whose JSON cannot be written (a poisoned drain) is narrowed down to, marked
failed with the error, and everything else flows."""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

BIG_ROWS = int(os.environ.get("RELIABILITY_BIG_ROWS", 1500))
BIG_BYTES = 300 * 1000


def rss_anon_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


# 1,500 rows of 300 kB: each goes alone in a request; memory stays flat
reset()
set_and_reload(worker_enabled="off", max_requests_per_second="0")
standin("POST", "/_control/config", {"fast": True})
psql("INSERT INTO m3ter.outbox (uid, meter, account, measure, metadata) "
     "SELECT 'big-' || i, 'api_requests', 'acme', '{\"requests\": 1}', "
     "jsonb_build_object('blob', repeat(md5(i::text), %d)) FROM generate_series(1, %d) i"
     % (BIG_BYTES // 32, BIG_ROWS), timeout=600)
pid = worker_pid()
idle_kb = rss_anon_kb(pid)
peak_kb = idle_kb
set_and_reload(worker_enabled=None)
deadline = time.time() + 300
while time.time() < deadline:
    peak_kb = max(peak_kb, rss_anon_kb(pid))
    if scalar("SELECT count(*) FROM m3ter.outbox WHERE status = 'pending'") == "0":
        break
    time.sleep(0.1)
counts = outbox_counts()
is_(counts["accepted"], BIG_ROWS, "%d rows of 300 kB are all accepted" % BIG_ROWS)
growth_mb = (peak_kb - idle_kb) / 1024.0
note("worker private memory (RssAnon): idle %.1f MB, peak %.1f MB, growth %.1f MB"
     % (idle_kb / 1024.0, peak_kb / 1024.0, growth_mb))
ok(growth_mb < 64, "the worker's private memory grew by %.1f MB (under 64 MB)" % growth_mb)
is_(worker_pid(), pid, "the same worker did it (no crash, no restart)")
with open(os.path.join(os.environ["M3TER_TMP"], "reliability.jsonl"), "a") as f:
    f.write(json.dumps({"scenario": "1,500 rows of 300 kB (worker RssAnon peak +%.0f MB)" % growth_mb,
                        "rows_in": BIG_ROWS, "accepted": counts["accepted"], "failed": counts["failed"],
                        "duplicates": 0, "lost": BIG_ROWS - counts["accepted"] - counts["failed"],
                        "crashes": 0}) + "\n")
standin("POST", "/_control/config", {"fast": False})
psql("DELETE FROM m3ter.outbox")

# a poisoned drain: one row's JSON cannot be written; it alone fails
reset()
set_and_reload(worker_enabled="off", max_requests_per_second="0", test_fault_uid="poison-1234")
insert_usage(3000, "poison-")
set_and_reload(worker_enabled=None)
ok(wait_until(lambda: scalar("SELECT count(*) FROM m3ter.outbox WHERE status = 'pending'") == "0", timeout=60),
   "poisoned drain: nothing stays pending", outbox_counts())
is_(scalar("SELECT uid || ' ' || status FROM m3ter.outbox WHERE status <> 'accepted'"), "poison-1234 failed",
    "poisoned drain: the row that raises is the one failed")
error = scalar("SELECT error FROM m3ter.outbox WHERE uid = 'poison-1234'")
ok("cannot be written as JSON" in error, "poisoned drain: its error says why", error)
record_scenario("a poisoned drain (one row raises when written)", 3000, "poison-", expect_failed=1)
set_and_reload(test_fault_uid=None)
done()
