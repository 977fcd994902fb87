"""High availability: a streaming replica (pg_basebackup over the unix socket) runs
no m3ter process, sends nothing and refuses writes with a clear error; a worker
killed mid-drain and a primary stopped mid-drain (immediate mode, then the
replica promoted) leave every row accepted, re-sending at most what was in
flight.  Runs on its own primary and replica, not on the suite's cluster."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

ROWS = 6000
# The bound: re-sends at most 1,000 (a full request) x the requests in flight
# when the process died; the clusters here keep at most IN_FLIGHT in flight.
IN_FLIGHT = 2


def counts(cluster):
    rows = cluster.psql("SELECT status, count(*) FROM m3ter.outbox GROUP BY 1")
    out = {"pending": 0, "accepted": 0, "failed": 0}
    for line in rows.splitlines():
        s, n = line.split("|")
        out[s] = int(n)
    return out


def m3ter_processes(cluster):
    return cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'm3ter%'")


def sqlerror(cluster, sql):
    """SQLSTATE, message and hint of the error sql raises ('' when none)"""
    r = cluster.psql("\\set VERBOSITY verbose\n" + sql, check=False)
    return r.stderr


def slow_drain(cluster, prefix, replica=None):
    """A backlog drained one request every ~0.3 s, so a kill lands mid-drain"""
    standin("POST", "/_control/reset")
    standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "delay": 0.3, "count": 100000}]})
    cluster.psql("ALTER SYSTEM SET m3ter.worker_enabled = off; SELECT pg_reload_conf()")
    time.sleep(0.5)
    insert_usage(ROWS, prefix, db=cluster.conninfo())
    if replica is not None:
        ok(wait_until(lambda: replica.psql("SELECT count(*) FROM m3ter.outbox WHERE uid LIKE '%s%%' AND status = 'pending'"
                                           % prefix) == str(ROWS), timeout=30),
           "%s: the replica has the %d pending rows" % (prefix, ROWS))
    cluster.psql("ALTER SYSTEM RESET m3ter.worker_enabled; SELECT pg_reload_conf()")
    ok(wait_until(lambda: len(ingest_requests()) >= 2, timeout=30, interval=0.05), "%s: the drain is under way" % prefix)


def check_resends(cluster, prefix, what):
    standin("POST", "/_control/faults", {"clear": True})
    ok(wait_until(lambda: counts(cluster)["accepted"] == ROWS, timeout=90),
       "%s: every row is accepted" % what, counts(cluster))
    is_(len(stored_uids(prefix)), ROWS, "%s: the stand-in stored every uid" % what)
    dups = standin("GET", "/_control/summary")["duplicates"]
    resent = cluster.psql("SELECT resent FROM m3ter_worker_status()")
    note("%s: %d measurements re-sent (DuplicateUid at m3ter); the worker counted %s" % (what, dups, resent))
    ok(dups <= 1000 * IN_FLIGHT, "%s: re-sends at most 1000 x the %d request(s) in flight" % (what, IN_FLIGHT),
       "duplicates: %d" % dups)
    # every DuplicateUid event m3ter raises is a re-send the worker counted
    ok(int(resent) >= dups, "%s: m3ter_worker_status().resent covers the %d re-sends m3ter saw" % (what, dups),
       "resent: %s" % resent)


primary = Cluster("ha_primary", "m3ter.database = ''\nm3ter.worker_idle_naptime = '1s'\n"
                  "m3ter.max_in_flight = %d" % IN_FLIGHT)
primary.pg_ctl("start")
primary.psql("CREATE EXTENSION m3ter")
replica = Cluster("ha_replica", "wal_retrieve_retry_interval = '100ms'", replica_of=primary)
replica.pg_ctl("start")
ok(wait_until(lambda: replica.psql("SELECT pg_is_in_recovery()") == "t", timeout=30),
   "a streaming replica made with pg_basebackup is in recovery")

# the standby: rows replicated there stay put, nothing is sent, nothing runs
standin("POST", "/_control/reset")
primary.psql("ALTER SYSTEM SET m3ter.worker_enabled = off; SELECT pg_reload_conf()")
time.sleep(0.5)
insert_usage(500, "standby-", db=primary.conninfo())
ok(wait_until(lambda: counts(replica)["pending"] == 500, timeout=30), "500 pending rows reach the standby")
time.sleep(3)
is_(len(ingest_requests()), 0, "in 3 s the standby sends nothing")
is_(m3ter_processes(replica), "0", "it runs no m3ter launcher or worker")
text = replica.log_text()
ok("m3ter launcher started" not in text and "m3ter outbox worker" not in text, "and logs no m3ter delivery")
ok("standby" in replica.psql("SELECT state FROM m3ter_worker_status()"), "m3ter_worker_status() says it is a standby")
is_(replica.psql("SELECT pending || '|' || worker_running FROM m3ter.outbox_stats"), "500|false",
    "m3ter.outbox_stats works there")

err = sqlerror(replica, "SELECT m3ter_flush()")
ok("M3R01" in err and "m3ter_flush() cannot run on a standby server" in err and "Run m3ter_flush() on the primary" in err,
   "m3ter_flush() on the standby: SQLSTATE M3R01, names the standby, points at the primary", err)
err = sqlerror(replica, "SELECT m3ter_retry_failed()")
ok("M3R01" in err and "m3ter_retry_failed() cannot run on a standby server" in err and "on the primary" in err,
   "m3ter_retry_failed() on the standby: the same", err)
r = replica.psql("SELECT m3ter_submit('{\"meter\":\"m\",\"account\":\"a\",\"ts\":\"2024-01-02T03:04:05Z\"}')->>'status'",
                 check=False)
ok(r.returncode == 0, "m3ter_submit() (HTTP only) works on the standby", r.stderr)
is_(counts(replica)["pending"], 500, "nothing was written on the standby")

# a worker killed mid-drain: the postmaster restarts everything, every row arrives
primary.psql("DELETE FROM m3ter.outbox")
slow_drain(primary, "wkill-")
pid = int(primary.psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'm3ter outbox worker'"))
kill9(pid)
check_resends(primary, "wkill-", "worker killed mid-drain")

# the primary stopped mid-drain (immediate mode), the replica promoted
primary.psql("DELETE FROM m3ter.outbox")
slow_drain(primary, "failover-", replica)
primary.pg_ctl("-m", "immediate", "stop")
replica.pg_ctl("promote")
t0 = time.time()
ok(wait_until(lambda: m3ter_processes(replica) == "2", timeout=10, interval=0.02),
   "promoted, it runs the launcher and a worker")
elapsed = time.time() - t0
note("promotion to worker running: %.0f ms" % (elapsed * 1000))
ok(elapsed < 1.0, "within a second of the promotion")
check_resends(replica, "failover-", "failover mid-drain")
ok("m3ter outbox worker started" in replica.log_text(), "the new primary's log shows its worker")

replica.remove()
primary.remove()
done()
