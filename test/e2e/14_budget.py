"""The 5-minute budget in a long drain, scaled down so that it runs in a minute.

m3ter allows 5,000 requests per rolling 5 minutes from one source address. A
drain longer than that spends the budget at the per-second rate first, then
holds the sustained rate with no 429. Here the stand-in counts a budget of 200
requests in any 20 seconds (a sliding window, with arrival jitter) and the
extension is told the same (m3ter.max_requests_per_5min, m3ter.requests_window);
requests of 10 rows make 5,000 rows 500 requests: 200 at once, then 200 more
once the first have left the window, then the rest. Functional, not timed: no
429, every row accepted once, and no window of the pacer's own slots over the
budget. bench/network.py ("long") prints the ratio to the ceiling."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

WINDOW, BUDGET, ROWS = 20, 200, 5000


def window_clear():
    """Wait until none of the cluster's earlier requests lies within a window: the budget counts them"""
    wait_until(lambda: psql("SELECT coalesce(max(s) < now() - interval '%d seconds', true) "
                            "FROM unnest(m3ter.pacing_slots()) s" % (WINDOW + 1)) == "t", timeout=WINDOW + 5)


def spend_budget(budget, prefix):
    """A budget of `budget` requests a window, at m3ter (a sliding window) and in the
    extension, spent by requests of 10 rows"""
    reset()
    set_and_reload(worker_enabled="off", batch_rows="10", max_requests_per_5min=str(budget),
                   requests_window="%ds" % WINDOW)
    standin("POST", "/_control/config", {"rate_limit": {"model": "sliding", "window": WINDOW,
                                                        "window_max": budget}})
    window_clear()
    insert_usage(budget * 10, prefix)
    set_and_reload(worker_enabled=None)
    ok(wait_until(lambda: outbox_counts()["accepted"] == budget * 10, timeout=60),
       "%d requests spend the budget" % budget, outbox_counts())


reset()
set_and_reload(worker_enabled="off", batch_rows="10", max_requests_per_5min=str(BUDGET),
               requests_window="%ds" % WINDOW)
standin("POST", "/_control/config", {"rate_limit": {"model": "sliding", "window": WINDOW, "window_max": BUDGET,
                                                    "jitter_ms": 5, "stall_every": 11, "stall_ms": 30}})
insert_usage(ROWS, "budget-")
window_clear()
started = float(psql("SELECT extract(epoch FROM clock_timestamp())"))
set_and_reload(worker_enabled=None)
ok(wait_until(lambda: outbox_counts()["accepted"] == ROWS, timeout=150),
   "all %d rows accepted through a budget of %d requests in %d s" % (ROWS, BUDGET, WINDOW), outbox_counts())

sent = ingest_requests()
refused = [r for r in sent if r["status"] == 429]
is_(len(refused), 0, "no request was refused: the budget held under a sliding %d-second window" % WINDOW)
is_(len(stored_uids("budget-")), ROWS, "the stand-in stored every uid")
is_(standin("GET", "/_control/summary")["duplicates"], 0, "none twice")
admitted = sorted(r["t"] for r in sent if 200 <= r["status"] < 300)
ok(len(admitted) > 2 * BUDGET, "the drain took more requests than two budgets (%d)" % len(admitted))

# the pacer's own record: no window of its slots holds more than the budget
slots = sorted(float(x) for x in psql("SELECT extract(epoch FROM s) FROM unnest(m3ter.pacing_slots()) s").split()
               if float(x) >= started)
worst = max(sum(1 for u in slots if t - WINDOW < u <= t) for t in slots)
note("%d slots; at most %d in any %d seconds; last admission %.1f s after the first"
     % (len(slots), worst, WINDOW, admitted[-1] - admitted[0]))
ok(len(slots) >= len(admitted) and worst <= BUDGET,
   "no %d seconds of the pacer's slots hold more than %d" % (WINDOW, BUDGET), "%d at worst" % worst)
# and it spent the budget at the per-second rate first (not spread evenly over the window)
first = [t for t in admitted if t < admitted[0] + 10]
ok(len(first) >= BUDGET, "the first budget went out within 10 seconds (%d requests)" % len(first))

# A clean restart keeps the budget spent: the postmaster saves the last window's send times at
# shutdown and reads them back, so the next requests wait for the window to free instead of
# spending the budget again into 429s (m3ter counts its window whatever the cluster does)
RESTART_BUDGET = 40
spend_budget(RESTART_BUDGET, "spent-")
pg_ctl("-m", "fast", "restart")
recent = int(psql("SELECT count(*) FROM unnest(m3ter.pacing_slots()) s WHERE s > now() - interval '%d seconds'"
                  % WINDOW))
ok(recent >= RESTART_BUDGET, "after a restart the pacer still holds the window's %d send times" % RESTART_BUDGET,
   "%d" % recent)
insert_usage(100, "after-restart-")
ok(wait_until(lambda: outbox_counts()["accepted"] == RESTART_BUDGET * 10 + 100, timeout=WINDOW * 3),
   "the rows inserted after it are delivered once the window frees", outbox_counts())
is_(len([r for r in ingest_requests() if r["status"] == 429]), 0, "with no 429")

# Rows due while the budget is spent wait unclaimed: the worker says so, nothing of them is in
# flight, and a worker stopped meanwhile leaves them as they were (no attempt counted, no error);
# a flush returns at once and says why. They go, each once, when the window frees.
HOLD_BUDGET = 5
BUDGET_STATE = "waiting: the 5-minute request budget is spent (m3ter.max_requests_per_5min)"
spend_budget(HOLD_BUDGET, "spend-")
insert_usage(30, "held-")
ok(wait_until(lambda: psql("SELECT state FROM m3ter.databases WHERE datname = current_database()")
              == BUDGET_STATE, timeout=10),
   "the worker's state says the rows wait for the budget",
   psql("SELECT state FROM m3ter.databases WHERE datname = current_database()"))
time.sleep(1)
is_(psql("SELECT count(*) FROM m3ter.inflight"), "0", "no row is claimed while the budget holds them")
terminate_worker()
is_(psql("SELECT count(*) FROM m3ter.outbox WHERE uid LIKE 'held-%' "
         "AND (attempts <> 0 OR error IS NOT NULL OR status <> 'pending')"), "0",
    "a worker stopped while they wait leaves them untouched: no attempt, no error")
r = psql("SET client_min_messages = notice; SELECT m3ter_flush()", check=False)
ok('"requests": 0' in r.stdout and "m3ter allows no more requests from this address yet" in r.stderr,
   "m3ter_flush() returns at once with a notice of the wait", r.stdout + r.stderr)
ok(wait_until(lambda: outbox_counts()["accepted"] == HOLD_BUDGET * 10 + 30, timeout=WINDOW * 3),
   "they are delivered once the window frees", outbox_counts())
is_(psql("SELECT count(*) FROM m3ter.outbox WHERE uid LIKE 'held-%' AND attempts = 1 AND error IS NULL"), "30",
    "each with one attempt")
is_(len(stored_uids("held-")), 30, "the stand-in stored each uid")
is_(standin("GET", "/_control/summary")["duplicates"], 0, "none twice")
is_(len([r for r in ingest_requests() if r["status"] == 429]), 0, "with no 429")

standin("POST", "/_control/config", {"rate_limit": None})
set_and_reload(requests_window=None, max_requests_per_5min=None, batch_rows=None)
done()
