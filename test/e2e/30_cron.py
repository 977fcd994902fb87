"""m3ter_flush() scheduled by pg_cron, and flushes racing the worker."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

# the worker and several m3ter_flush() calls draining at once never send a row twice
reset()
set_and_reload(worker_enabled="off", batch_rows="500")
insert_usage(10000, "race-")
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "delay": 0.05, "count": 1000}]})
set_and_reload(worker_enabled=None)
flushers = [psql_async("SET m3ter.max_requests_per_second = 0; SELECT m3ter_flush(); SELECT m3ter_flush()")
            for _ in range(3)]
for p in flushers:
    p.wait(timeout=120)
ok(all(p.returncode == 0 for p in flushers), "three flushes ran while the worker drained")
ok(wait_until(lambda: outbox_counts()["accepted"] == 10000, timeout=120), "all 10,000 rows are accepted")
is_(standin("GET", "/_control/summary")["duplicates"], 0, "no row was sent twice")
is_(len(stored_uids("race-")), 10000, "every uid arrived")

# a transaction that called m3ter_flush() holds the claims until it ends: the worker's state
# names it, in full, and the worker delivers once it commits
reset()
set_and_reload(worker_enabled="off")
insert_usage(1000, "held-")
holder = psql_async("BEGIN; SELECT m3ter_flush(1); SELECT pg_sleep(6); COMMIT;")
time.sleep(1)
set_and_reload(worker_enabled=None)
state_sql = "SELECT state FROM m3ter.databases WHERE datname = current_database()"
ok(wait_until(lambda: scalar(state_sql)
              == "waiting: a transaction that called m3ter_flush() holds the claim lock", timeout=5),
   "while it is open the worker says what it waits for", scalar(state_sql))
holder.wait(timeout=30)
ok(wait_until(lambda: outbox_counts()["accepted"] == 1000, timeout=30), "then the worker delivers the rest",
   outbox_counts())
ok(wait_until(lambda: scalar(state_sql) == "idle", timeout=10), "and is idle", scalar(state_sql))

# pg_cron drives m3ter_flush() where the worker is not wanted
reset()
set_and_reload(worker_enabled="off")
psql("SELECT cron.schedule('m3ter-flush', '* * * * *', 'SELECT m3ter_flush()')")
insert_usage(2000, "cron-")
ok(wait_until(lambda: outbox_counts()["accepted"] == 2000, timeout=75, interval=1),
   "a pg_cron job delivers the outbox within a minute", outbox_counts())
run = scalar("SELECT status || '|' || return_message FROM cron.job_run_details ORDER BY runid DESC LIMIT 1")
ok(run.startswith("succeeded|"), "cron.job_run_details records a successful run", run)
psql("SELECT cron.unschedule('m3ter-flush')")
set_and_reload(worker_enabled=None)
done()
