"""Crashes and cancels lose nothing: kill -9 of the worker, immediate restarts, cancelled calls."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403


def drain_with_crashes(prefix, rows, crash, times):
    """Insert a backlog, let the worker drain it slowly, crash() it `times` times mid-request."""
    reset()
    set_and_reload(worker_enabled="off", batch_rows="2000")
    insert_usage(rows, prefix)
    # every request answered after 0.4 s, so crashes land while requests are in flight
    standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "delay": 0.4, "count": 1000}]})
    set_and_reload(worker_enabled=None)
    for _ in range(times):
        wait_until(lambda: len(ingest_requests()) > 0 and worker_pid() is not None, timeout=30, interval=0.05)
        time.sleep(0.5)
        crash()
        wait_until(server_up, timeout=60, interval=0.2)
    standin("POST", "/_control/faults", {"clear": True})  # no more delays

# kill -9 of the worker in the middle of requests, five times
def kill_worker():
    pid = worker_pid()
    if pid:
        kill9(pid)

drain_with_crashes("k9-", 12000, kill_worker, 5)
ok(wait_until(lambda: outbox_counts()["accepted"] == 12000, timeout=120), "after five kill -9, every row is accepted",
   outbox_counts())
is_(len(stored_uids("k9-")), 12000, "and every uid reached the stand-in")
is_(scalar("SELECT count(*) FROM m3ter.outbox WHERE status = 'pending' OR accepted_at IS NULL"), "0",
    "no row is stuck in flight")
is_(scalar("SELECT count(DISTINCT uid) FROM m3ter.outbox"), "12000", "re-sends kept their uid (no new rows)")
note("duplicates seen by the stand-in (re-sends of the same uid after crashes): %d"
     % standin("GET", "/_control/summary")["duplicates"])

# immediate-mode postmaster restarts mid-drain, three times
def restart_immediate():
    pg_ctl("-m", "immediate", "restart")

drain_with_crashes("im-", 12000, restart_immediate, 3)
ok(wait_until(lambda: outbox_counts()["accepted"] == 12000, timeout=120),
   "after three immediate restarts, every row is accepted", outbox_counts())
is_(len(stored_uids("im-")), 12000, "and every uid reached the stand-in")
note("duplicates seen by the stand-in (re-sends of the same uid after crashes): %d"
     % standin("GET", "/_control/summary")["duplicates"])

# statement_timeout and pg_cancel_backend stop a call waiting on a slow answer
reset()
psql("SELECT m3ter_organization_config()")
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "delay": 30}]})
t0 = time.time()
r = psql("SET statement_timeout = '1s'; SELECT m3ter_submit('{\"meter\":\"m\",\"account\":\"a\",\"ts\":\"2024-01-02T03:04:05Z\"}')",
         check=False)
ok(r.returncode != 0 and "statement timeout" in r.stderr, "statement_timeout cancels m3ter_submit", r.stderr)
ok(time.time() - t0 < 6, "within seconds, not after the 30 s answer")

standin("POST", "/_control/reset")
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "delay": 30}]})
p = psql_async("SELECT m3ter_submit('{\"meter\":\"m\",\"account\":\"a\",\"ts\":\"2024-01-02T03:04:05Z\"}')")
time.sleep(1)
t0 = time.time()
psql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE 'SELECT m3ter_submit%' AND pid <> pg_backend_pid()")
p.wait(timeout=30)
ok(p.returncode != 0 and "canceling statement due to user request" in p.stderr.read(), "pg_cancel_backend cancels it")
ok(time.time() - t0 < 5, "promptly")

# a flush terminated mid-request leaves its rows pending, and the next flush delivers them
reset()
set_and_reload(worker_enabled="off")
insert_usage(500, "term-")
standin("POST", "/_control/reset")
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "delay": 30}]})
p = psql_async("SELECT m3ter_flush()")
time.sleep(1)
psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'SELECT m3ter_flush()' AND pid <> pg_backend_pid()")
p.wait(timeout=30)
ok(p.returncode != 0, "the terminated flush ended")
is_(outbox_counts()["pending"], 500, "its rows are pending again, none stuck")
standin("POST", "/_control/reset")
is_(scalar("SELECT m3ter_flush()->>'accepted'"), "500", "the next flush delivers them")
set_and_reload(worker_enabled=None)
done()
