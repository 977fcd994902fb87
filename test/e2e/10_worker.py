"""The background worker delivers m3ter.outbox: promptly, exactly once, in full requests."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

reset()

# it runs, and shows itself
pid = worker_pid()
ok(pid is not None, "the worker shows in pg_stat_activity as 'm3ter outbox worker'")
is_(scalar("SELECT running FROM m3ter_worker_status()"), "t", "m3ter_worker_status() says it is running")

# one row is delivered promptly: the commit wakes the worker
t0 = time.time()
insert_usage(1, "prompt-")
ok(wait_until(lambda: outbox_counts()["accepted"] == 1, timeout=10, interval=0.02),
   "a single inserted row is accepted")
note("insert to accepted: %.0f ms" % ((time.time() - t0) * 1000))
ok(time.time() - t0 < 5, "without waiting for a timer (well under the idle naptime cap)")
is_(stored_uids("prompt-"), {"prompt-1"}, "the stand-in received it")

# 10,000 rows from four sessions at once arrive exactly once
reset()
sessions = [psql_async("; ".join(
    "INSERT INTO m3ter.outbox (uid, meter, account, measure) SELECT 's%d-%d-' || i, 'api_requests', 'acme', "
    "jsonb_build_object('requests', i) FROM generate_series(1, 500) i" % (s, k) for k in range(5)))
    for s in range(4)]
for p in sessions:
    p.wait()
ok(all(p.returncode == 0 for p in sessions), "four sessions inserted 10,000 rows concurrently")
ok(wait_until(lambda: outbox_counts()["accepted"] == 10000, timeout=120),
   "all 10,000 rows become accepted", outbox_counts())
summary = standin("GET", "/_control/summary")
is_(len(stored_uids("s")), 10000, "the stand-in stored 10,000 distinct uids")
is_(summary["duplicates"], 0, "and saw no duplicate")
is_(scalar("SELECT count(*) FROM m3ter.outbox WHERE status <> 'accepted'"), "0", "no row is left behind")
note("requests for 10,000 concurrently inserted rows: %d" % summary["ingest_requests"])

# a backlog is drained in full requests
reset()
set_and_reload(worker_enabled="off")
insert_usage(10000, "backlog-")
time.sleep(1.5)
is_(outbox_counts()["pending"], 10000, "with the worker switched off, rows wait")
ok("disabled" in scalar("SELECT state FROM m3ter_worker_status()"), "and the worker says it is disabled")
set_and_reload(worker_enabled=None)
ok(wait_until(lambda: outbox_counts()["accepted"] == 10000, timeout=60), "switched on again, it drains the backlog")
sizes = [r["measurements"] for r in ingest_requests()]
is_(sizes, [1000] * 10, "in ten requests of 1000 measurements")

# the worker paces itself: requests no closer than 1/max_requests_per_second
reset()
set_and_reload(worker_enabled="off", max_requests_per_second="4")
insert_usage(8000, "paced-")
set_and_reload(worker_enabled=None)
ok(wait_until(lambda: outbox_counts()["accepted"] == 8000, timeout=60), "a paced drain delivers everything")
times = [r["t"] for r in ingest_requests()]
gaps = [b - a for a, b in zip(times, times[1:])]
ok(len(times) == 8 and min(gaps) >= 0.24, "8 requests at most 4 a second", "gaps: %r" % gaps)

# transient failures: rows are retried until accepted, none lost or doubled
reset()
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "status": 503, "count": 2},
                                                {"match": "/measurements", "status": 429, "count": 1}]})
insert_usage(50, "storm-")
ok(wait_until(lambda: outbox_counts()["accepted"] == 50, timeout=30), "rows survive a 503, 503, 429 storm")
ok(int(scalar("SELECT min(attempts) FROM m3ter.outbox")) >= 2, "each row was retried",
   scalar("SELECT min(attempts) || '/' || max(attempts) FROM m3ter.outbox"))
is_(standin("GET", "/_control/summary")["duplicates"], 0, "with no duplicate at the stand-in")

# an unknown organization stops delivery loudly; the rows keep their attempts
reset()
set_and_reload(org_id="00000000-0000-4000-8000-000000000000")
insert_usage(10, "org-")
ok(wait_until(lambda: scalar("SELECT count(*) FROM m3ter.outbox WHERE http_status = 403") == "10", timeout=15),
   "with a wrong org id the rows get the 403 noted")
time.sleep(1.5)
is_(scalar("SELECT status || ':' || attempts FROM m3ter.outbox GROUP BY 1"), "pending:0",
    "they stay pending with no attempt burnt")
ok("Forbidden: unknown organization" in scalar("SELECT last_error FROM m3ter_worker_status()"),
   "the worker reports the server's message")
with open(LOG_FILE) as f:
    ok("m3ter outbox delivery stopped" in f.read(), "and logs a warning")
n_ingest = len(ingest_requests())
time.sleep(3)
# a stopped pass sends at most 2 requests (cached token, then a fresh one), once per idle naptime (1 s here)
extra = len(ingest_requests()) - n_ingest
ok(extra <= 8, "it does not hammer m3ter while stopped: at most one pass a second", "requests in 3 s: %d" % extra)
set_and_reload(org_id=None)
ok(wait_until(lambda: outbox_counts()["accepted"] == 10, timeout=20), "once the setting is fixed they are delivered")

# a worker back from a delivery is woken by the next commit: it takes wake-ups only
# between deliveries, and with naptimes of a minute only the wake brings it
reset()
set_and_reload(worker_naptime="60s", worker_idle_naptime="60s")
insert_usage(3000, "busy-")
ok(wait_until(lambda: outbox_counts()["accepted"] == 3000, timeout=30), "a delivery of 3,000 rows ends")
time.sleep(1)
t0 = time.time()
insert_usage(1, "woken-")
ok(wait_until(lambda: outbox_counts()["accepted"] == 3001, timeout=10, interval=0.02),
   "the next row after it is accepted within seconds, not at the 60 s naptime (%.0f ms)"
   % ((time.time() - t0) * 1000))

# retention: accepted rows older than m3ter.retention are deleted by the worker
reset()
insert_usage(20, "keep-")
ok(wait_until(lambda: outbox_counts()["accepted"] == 20, timeout=10), "rows are accepted")
set_and_reload(retention="1")
ok(wait_until(lambda: outbox_counts()["accepted"] == 0, timeout=15), "with m3ter.retention = 1s they are deleted")
set_and_reload(retention=None)

# the worker restarts after a crash
# Requests are full when rows are large: 4,000 rows of about 10 kB fill requests of 512,000 bytes,
# with no one-row request left over from each claim
reset()
set_and_reload(worker_enabled="off")
insert_usage(4000, "big-", extra="(SELECT jsonb_object_agg('k' || k, repeat(chr(97 + k), 1000)) "
                                 "FROM generate_series(0, 9) k)")
set_and_reload(worker_enabled=None)
ok(wait_until(lambda: outbox_counts()["accepted"] == 4000, timeout=60), "4,000 rows of 10 kB are delivered")
sizes = [r["measurements"] for r in ingest_requests() if r["status"] == 200]
ok(len(sizes) <= 4000 // 49 + 1 and min(sizes[:-1]) >= 45, "in %d full requests" % len(sizes), sizes)

pid = worker_pid()
kill9(pid)
ok(wait_until(lambda: server_up() and worker_pid() not in (None, pid), timeout=30),
   "after kill -9 the worker comes back with a new pid")
# The backlog figure in m3ter.databases during an outage while rows keep arriving: the worker is
# never idle then, yet it counts every pending row again once its last count is 15 s old
reset()
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "status": 503, "count": 100000}]})
deadline = time.time() + 24
n = 0
while time.time() < deadline:
    insert_usage(100, "stream-%d-" % n)
    n += 1
    time.sleep(0.4)
pending = int(scalar("SELECT count(*) FROM m3ter.outbox WHERE status = 'pending'"))
shown = int(scalar("SELECT coalesce(pending, 0) FROM m3ter.databases WHERE datname = current_database()"))
ok(pending // 4 <= shown <= pending, "m3ter.databases counts the rows waiting out the outage (%d pending)" % pending,
   shown)
# between its tries the worker says the rows wait for a retry (not idle), and m3ter_health() warns
state = lambda: scalar("SELECT state FROM m3ter.databases WHERE datname = current_database()")  # noqa: E731
ok(wait_until(lambda: state() == "waiting: retrying after a fault (see last_error)", timeout=20),
   "between tries the worker's state says it is retrying", state())
# (read while the state says so: it turns to delivering at each try)
HEALTH = "SELECT detail FROM m3ter_health() WHERE finding = 'delivery retrying'"
ok(wait_until(lambda: "rows pending" in psql(HEALTH) and "503" in psql(HEALTH), timeout=20),
   "m3ter_health() warns, with the last error", psql(HEALTH))
# the outage ends: the waiting rows go now, and the worker is idle again for the next file
standin("POST", "/_control/reset")
psql("UPDATE m3ter.outbox SET next_attempt_at = now() WHERE status = 'pending'")
ok(wait_until(lambda: outbox_counts()["pending"] == 0, timeout=60), "after the outage every row is delivered",
   outbox_counts())
ok(wait_until(lambda: scalar("SELECT state FROM m3ter.databases WHERE datname = current_database()") == "idle",
              timeout=20), "and the worker is idle")

done()
