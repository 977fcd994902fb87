"""High availability under Patroni, the HA engine users run: one etcd member and two
PostgreSQL nodes under Patroni on loopback (Debian's patroni and etcd-server), m3ter
preloaded on both.  While the leader's worker delivers a backlog, a `patronictl
switchover`, then a failover (the leader's Patroni and postmaster killed with -9):
every row is accepted once at the stand-in, re-sends are no more than the requests
in flight, the new leader's worker takes over by itself, and the old leader rejoins
as a replica (pg_rewind) that runs no m3ter process.  Runs on its own nodes, not on
the suite's cluster."""
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

ROWS = 20000
IN_FLIGHT = 2
TMP = os.path.join(os.environ["M3TER_TMP"], "patroni")
os.makedirs(TMP, exist_ok=True)


def start(cmd, log, user=None):
    f = open(log, "ab")
    return subprocess.Popen(as_pg(cmd) if user == "postgres" else cmd, stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True)


# one etcd member
etcd_port, etcd_peer = free_port(), free_port()
etcd = start(["etcd", "--name", "m3ter", "--data-dir", os.path.join(TMP, "etcd"),
              "--listen-client-urls", "http://127.0.0.1:%d" % etcd_port,
              "--advertise-client-urls", "http://127.0.0.1:%d" % etcd_port,
              "--listen-peer-urls", "http://127.0.0.1:%d" % etcd_peer,
              "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % etcd_peer,
              "--initial-cluster", "m3ter=http://127.0.0.1:%d" % etcd_peer],
             os.path.join(TMP, "etcd.log"))


class Node:
    """A PostgreSQL node under Patroni: its config, its Patroni process, psql on it"""

    def __init__(self, name):
        self.name = name
        self.port = free_port()
        self.api = free_port()
        self.dir = os.path.join(TMP, name)
        self.config = os.path.join(TMP, name + ".yml")
        self.log = os.path.join(TMP, name + ".log")
        self.proc = None
        params = {
            "shared_preload_libraries": "m3ter",
            "unix_socket_directories": TMP,
            "fsync": "off",
            "wal_log_hints": "on",
            "max_worker_processes": 16,
            "m3ter.org_id": os.environ["M3TER_ORG_ID"],
            "m3ter.access_key_id": os.environ["M3TER_ACCESS_KEY_ID"],
            "m3ter.api_secret": os.environ["M3TER_API_SECRET"],
            "m3ter.api_url": STANDIN_URL,
            "m3ter.ingest_url": STANDIN_URL,
            "m3ter.max_requests_per_5min": 0,
            "m3ter.max_in_flight": IN_FLIGHT,
            "m3ter.worker_idle_naptime": "1s",
        }
        hba = ["local all all trust", "local replication all trust",
               "host all all 127.0.0.1/32 trust", "host replication all 127.0.0.1/32 trust"]
        config = {
            "scope": "m3ter", "name": name,
            "restapi": {"listen": "127.0.0.1:%d" % self.api, "connect_address": "127.0.0.1:%d" % self.api},
            "etcd3": {"hosts": ["127.0.0.1:%d" % etcd_port]},
            "bootstrap": {
                "dcs": {"ttl": 10, "loop_wait": 1, "retry_timeout": 5,
                        "postgresql": {"use_pg_rewind": True, "parameters": {"wal_log_hints": "on"}}},
                "initdb": [{"encoding": "UTF8"}, "no-sync"],
                "pg_hba": hba,
            },
            "postgresql": {
                "listen": "127.0.0.1:%d" % self.port, "connect_address": "127.0.0.1:%d" % self.port,
                "data_dir": self.dir, "bin_dir": BINDIR, "pgpass": os.path.join(TMP, name + ".pgpass"),
                "authentication": {"superuser": {"username": "postgres", "password": "postgres"},
                                   "replication": {"username": "postgres", "password": "postgres"},
                                   "rewind": {"username": "postgres", "password": "postgres"}},
                "parameters": params, "pg_hba": hba,
            },
        }
        with open(self.config, "w") as f:
            json.dump(config, f)           # JSON is YAML
        subprocess.run(["chown", "-R", "postgres:", TMP], check=True)

    def start(self):
        self.proc = start(["patroni", self.config], self.log, user="postgres")

    def psql(self, sql, check=True):
        return psql(sql, "host=%s port=%d dbname=postgres user=postgres" % (TMP, self.port), check=check)

    def postmaster_pid(self):
        with open(os.path.join(self.dir, "postmaster.pid")) as f:
            return int(f.readline())

    def kill(self):
        """The node dies: its Patroni and its postmaster, both with -9"""
        pid = self.postmaster_pid()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        os.kill(pid, signal.SIGKILL)


def members():
    r = subprocess.run(["patronictl", "-c", nodes[0].config, "list", "-f", "json"], capture_output=True, text=True)
    return {m["Member"]: m for m in json.loads(r.stdout or "[]")}


def leader():
    for name, m in members().items():
        if m["Role"] == "Leader" and m["State"] == "running":
            return by_name[name]
    return None


def counts(node, prefix):
    out = {"pending": 0, "accepted": 0, "failed": 0}
    for line in node.psql("SELECT status, count(*) FROM m3ter.outbox WHERE uid LIKE '%s%%' GROUP BY 1"
                          % prefix).splitlines():
        s, n = line.split("|")
        out[s] = int(n)
    return out


def m3ter_processes(node):
    return node.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'm3ter%'")


def replica_ok(node):
    """A replica in Patroni's list that streams from the leader (Patroni 3.0 says 'running' for a
    replica whose WAL receiver has not connected yet)"""
    m = members().get(node.name, {})
    if m.get("Role") not in ("Replica", "Sync Standby") or m.get("State") not in ("streaming", "running"):
        return False
    r = node.psql("SELECT status FROM pg_stat_wal_receiver", check=False)
    return r.returncode == 0 and r.stdout.strip() == "streaming"


def switch_over(old, new):
    """patronictl switchover old -> new, asked again (up to three times in 60 s) while it has not
    happened: patronictl exits 0 when Patroni refuses it, as it does while the candidate is still
    behind on the backlog's WAL (maximum_lag_on_failover).  Returns the last run and all it said."""
    said = ""
    for _ in range(3):
        r = subprocess.run(["patronictl", "-c", old.config, "switchover", "--leader", old.name,
                            "--candidate", new.name, "--force"], capture_output=True, text=True)
        said += r.stdout + r.stderr
        if wait_until(lambda: leader() is new, timeout=20):
            break
        if leader() is not old:  # under way: no second request, only more time
            wait_until(lambda: leader() is new, timeout=40)
            break
    return r, said


def drain_under_way(node, prefix):
    """A backlog of ROWS rows on the leader, delivered one request every 0.5 s per slot"""
    standin("POST", "/_control/reset")
    standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "delay": 0.5, "count": 100000}]})
    node.psql("INSERT INTO m3ter.outbox (uid, meter, account, measure) "
              "SELECT '%s' || i, 'api_requests', 'acct-' || (i %% 13), jsonb_build_object('requests', i) "
              "FROM generate_series(1, %d) i" % (prefix, ROWS))
    ok(wait_until(lambda: len(ingest_requests()) >= 2, timeout=30, interval=0.05),
       "%s: the leader's worker is delivering" % prefix)


def delivered_once(node, prefix, what):
    standin("POST", "/_control/faults", {"clear": True})
    ok(wait_until(lambda: counts(node, prefix)["accepted"] == ROWS, timeout=120),
       "%s: every row is accepted on the new leader" % what, counts(node, prefix))
    is_(len(stored_uids(prefix)), ROWS, "%s: the stand-in stored every uid" % what)
    dups = standin("GET", "/_control/summary")["duplicates"]
    note("%s: %d measurements re-sent (DuplicateUid at m3ter)" % (what, dups))
    ok(dups <= 1000 * IN_FLIGHT, "%s: re-sends at most 1000 x the %d requests in flight" % (what, IN_FLIGHT),
       "duplicates: %d" % dups)


nodes = [Node("node1"), Node("node2")]
by_name = {n.name: n for n in nodes}
try:
    nodes[0].start()
    ok(wait_until(lambda: leader() is nodes[0], timeout=60), "Patroni bootstraps node1 as the leader")
    nodes[1].start()
    ok(wait_until(lambda: replica_ok(nodes[1]), timeout=90), "node2 joins as a streaming replica")
    first = nodes[0]
    first.psql("CREATE EXTENSION m3ter")
    ok(wait_until(lambda: m3ter_processes(first) != "0", timeout=30), "the leader runs m3ter's worker")
    is_(m3ter_processes(nodes[1]), "0", "the replica runs no m3ter process")

    # a switchover while the worker delivers
    drain_under_way(first, "sw-")
    r, said = switch_over(first, nodes[1])
    ok(r.returncode == 0, "patronictl switchover node1 -> node2", said)
    ok(leader() is nodes[1], "node2 is the leader", said)
    delivered_once(nodes[1], "sw-", "switchover")
    ok(wait_until(lambda: replica_ok(nodes[0]), timeout=90), "switchover: node1 rejoins as a replica")
    ok(wait_until(lambda: m3ter_processes(nodes[0]) == "0", timeout=30),
       "switchover: node1, a replica now, runs no m3ter process")

    # a failover: the leader's Patroni and postmaster killed mid-drain
    drain_under_way(nodes[1], "fo-")
    # with asynchronous replication, rows committed but not yet streamed are lost with their
    # leader, like any table's (synchronous_mode keeps them): the test is of m3ter's part, so the
    # replica has the backlog before the kill (once it had none of it and was not promoted)
    ok(wait_until(lambda: sum(counts(nodes[0], "fo-").values()) == ROWS, timeout=60),
       "failover: node1 has replayed the backlog", counts(nodes[0], "fo-"))
    nodes[1].kill()
    ok(wait_until(lambda: leader() is nodes[0], timeout=90), "failover: node1 takes over once node2's leader key expires")
    delivered_once(nodes[0], "fo-", "failover")
    nodes[1].start()
    ok(wait_until(lambda: replica_ok(nodes[1]), timeout=120), "failover: node2 rejoins as a replica (pg_rewind)")
    ok(wait_until(lambda: m3ter_processes(nodes[1]) == "0", timeout=30),
       "failover: node2, a replica now, runs no m3ter process")
    is_(nodes[0].psql("SELECT count(*) FROM m3ter.outbox WHERE status <> 'accepted'"), "0",
        "nothing is left pending or failed")
finally:
    for n in nodes:
        if n.proc is not None and n.proc.poll() is None:
            os.killpg(n.proc.pid, signal.SIGTERM)
            try:
                n.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(n.proc.pid, signal.SIGKILL)
        try:
            subprocess.run(as_pg([BINDIR + "/pg_ctl", "-D", n.dir, "-m", "immediate", "stop"]), capture_output=True)
        except Exception:
            pass
    os.killpg(etcd.pid, signal.SIGKILL)
done()
