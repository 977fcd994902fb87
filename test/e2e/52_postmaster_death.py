"""A worker whose postmaster dies stops at once, mid-drain and mid-request.

What it would send or commit after the death is lost with the server or never
reaches a standby promoted in its place, so every row it sent after would be
sent again from there (under Patroni, a leader node's death re-sent thousands).
Runs on a cluster of its own: its postmaster is killed with -9."""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

ROWS = 20000


def alive(pid):
    """Running, not gone and not a zombie waiting for init (its parent is dead) to reap it"""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


node = Cluster("pmdeath", "m3ter.database = ''\nm3ter.worker_idle_naptime = '1s'\nm3ter.max_in_flight = 2\n"
               "m3ter.batch_rows = 1000")
node.pg_ctl("start")
node.psql("CREATE EXTENSION m3ter")
standin("POST", "/_control/reset")
# each request answered after 0.5 s: the drain of 20 requests, two at a time, lasts about 5 s
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "delay": 0.5, "count": 100000}]})
node.psql("ALTER SYSTEM SET m3ter.worker_enabled = off; SELECT pg_reload_conf()")
time.sleep(0.5)
insert_usage(ROWS, "pmdeath-", db=node.conninfo())
node.psql("ALTER SYSTEM RESET m3ter.worker_enabled; SELECT pg_reload_conf()")
ok(wait_until(lambda: len(ingest_requests()) >= 3, timeout=30, interval=0.02), "the drain is under way")
worker = int(node.psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'm3ter outbox worker'"))

postmaster = node.postmaster_pid()
t_kill = time.time()
kill9(postmaster)
ok(wait_until(lambda: not alive(worker), timeout=5, interval=0.02),
   "the worker exits within seconds of its postmaster's death")
note("postmaster killed to worker gone: %.0f ms" % ((time.time() - t_kill) * 1000))
time.sleep(2)
# a request already on its way when the postmaster died may still arrive a moment later
late = [r for r in ingest_requests() if r["t"] > t_kill + 0.2]
before = [r for r in ingest_requests() if r["t"] <= t_kill + 0.2]
note("%d requests before the death, %d after" % (len(before), len(late)))
is_(len(late), 0, "no request reaches m3ter after the postmaster's death")
ok(len(before) < ROWS // 1000, "the drain was cut short (%d of %d requests sent)" % (len(before), ROWS // 1000))

standin("POST", "/_control/faults", {"clear": True})
# the other server processes end by themselves; then the directory goes
wait_until(lambda: subprocess.run(["pgrep", "-f", "postgres.*pmdeath|pmdeath"], capture_output=True).returncode != 0,
           timeout=10)
subprocess.run(["rm", "-rf", node.dir])
done()
