"""Crashes lose nothing: kill -9 of the worker at random moments, immediate-mode
restarts of the postmaster, and backends cancelled or terminated inside
m3ter_submit() and m3ter_flush().  Afterwards every row is accepted (or
legitimately failed), none is stuck in flight, none is missing at the stand-in,
and duplicates there are only re-sends of the same uid."""
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

random.seed(int(os.environ.get("RELIABILITY_SEED", "20261123")))
KILLS = int(os.environ.get("RELIABILITY_KILLS", 20))
RESTARTS = int(os.environ.get("RELIABILITY_RESTARTS", 3))
ROWS = int(os.environ.get("RELIABILITY_CRASH_ROWS", 40000))
start = log_offset()


def slow_drain(prefix, rows):
    """A backlog drained slowly (one request in flight, each answer after 0.5 s), so
    crashes land mid-request."""
    reset()
    set_and_reload(worker_enabled="off", batch_rows="1000", max_in_flight="1", max_requests_per_second="0")
    insert_usage(rows, prefix)
    standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "delay": 0.5, "count": 100000}]})
    set_and_reload(worker_enabled=None)


def finish(name, prefix, rows, crashes):
    standin("POST", "/_control/faults", {"clear": True})
    ok(wait_until(lambda: outbox_counts()["pending"] == 0, timeout=180), "%s: the drain completes" % name,
       outbox_counts())
    is_(scalar("SELECT count(DISTINCT uid) FROM m3ter.outbox WHERE uid LIKE '%s%%'" % prefix), str(rows),
        "%s: no row was added or removed by the crashes" % name)
    record_scenario(name, rows, prefix, crashes=crashes)


# kill -9 of the worker at random moments within one drain
slow_drain("kill-", ROWS)
kills = 0
deadline = time.time() + 300
while kills < KILLS and time.time() < deadline:
    wait_until(lambda: server_up() and worker_pid() is not None, timeout=60, interval=0.05)
    time.sleep(random.uniform(0.05, 1.0))
    try:
        pending = outbox_counts()["pending"]
        pid = worker_pid()
    except RuntimeError:  # the server is still recovering from the last kill
        continue
    if pending == 0:
        break
    if pid:
        kill9(pid)
        kills += 1
is_(kills, KILLS, "the worker was killed %d times within one drain" % KILLS)
wait_until(server_up, timeout=60)
finish("kill -9 of the worker x%d" % kills, "kill-", ROWS, kills)

# immediate-mode postmaster restarts mid-drain
slow_drain("restart-", ROWS // 2)
restarts = 0
for _ in range(RESTARTS):
    wait_until(lambda: server_up() and len(ingest_requests()) > 0, timeout=60, interval=0.05)
    time.sleep(random.uniform(0.3, 1.5))
    restart_immediate()
    restarts += 1
finish("immediate restart x%d" % restarts, "restart-", ROWS // 2, restarts)

# statement_timeout and pg_cancel_backend stop m3ter_submit waiting on a slow answer
reset()
psql("SELECT m3ter_organization_config()")
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "delay": 30}]})
t0 = time.time()
r = psql("SET statement_timeout = '1s'; SELECT m3ter_submit('{\"meter\":\"m\",\"account\":\"a\",\"ts\":\"2024-01-02T03:04:05Z\"}')",
         check=False)
ok(r.returncode != 0 and "statement timeout" in r.stderr, "statement_timeout cancels m3ter_submit", r.stderr)
ok(time.time() - t0 < 6, "within seconds, not after the 30 s answer")

standin("POST", "/_control/faults", {"clear": True, "faults": [{"match": "/measurements", "delay": 30}]})
p = psql_async("SELECT m3ter_submit('{\"meter\":\"m\",\"account\":\"a\",\"ts\":\"2024-01-02T03:04:05Z\"}')")
time.sleep(1)
t0 = time.time()
psql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE 'SELECT m3ter_submit%' AND pid <> pg_backend_pid()")
p.wait(timeout=30)
ok(p.returncode != 0 and "canceling statement due to user request" in p.stderr.read(), "pg_cancel_backend cancels it")
ok(time.time() - t0 < 5, "promptly")

standin("POST", "/_control/faults", {"clear": True, "faults": [{"match": "/measurements", "delay": 30}]})
p = psql_async("SELECT m3ter_submit('{\"meter\":\"m\",\"account\":\"a\",\"ts\":\"2024-01-02T03:04:05Z\"}')")
time.sleep(1)
psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'SELECT m3ter_submit%' AND pid <> pg_backend_pid()")
p.wait(timeout=30)
ok(p.returncode != 0 and "terminating connection" in p.stderr.read(), "pg_terminate_backend ends a session inside m3ter_submit")
ok(server_up() and not server_crashed_since(start), "and the server carries on")

# m3ter_flush cancelled and terminated mid-request: its rows are pending again, then delivered
for how in ("pg_cancel_backend", "pg_terminate_backend"):
    prefix = "flush-%s-" % how[3:9]
    reset()
    set_and_reload(worker_enabled="off")
    insert_usage(500, prefix)
    standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "delay": 30}]})
    p = psql_async("SELECT m3ter_flush()")
    time.sleep(1)
    psql("SELECT %s(pid) FROM pg_stat_activity WHERE query = 'SELECT m3ter_flush()' AND pid <> pg_backend_pid()" % how)
    p.wait(timeout=30)
    ok(p.returncode != 0, "%s ends m3ter_flush" % how)
    is_(outbox_counts()["pending"], 500, "its rows are pending again, none stuck")
    standin("POST", "/_control/faults", {"clear": True})
    is_(scalar("SELECT m3ter_flush()->>'accepted'"), "500", "the next flush delivers them")
    record_scenario("%s during m3ter_flush" % how, 500, prefix, crashes=1)
    set_and_reload(worker_enabled=None)

ok(not server_crashed_since(start), "no server process died of anything but our kill -9", server_crashed_since(start))
done()
