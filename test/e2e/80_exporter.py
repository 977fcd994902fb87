"""What an operator sees: Debian's postgres_exporter with monitoring/postgres_exporter.yml.

The exporter runs on loopback against the suite's cluster as a role with pg_monitor
and no superuser; its /metrics are checked against the outbox: rows pending before
and after a drain, a failed row, a rejected row, the worker's state as a label.
monitoring/alerts.yml passes promtool's check."""
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
EXPORTER = "/usr/bin/prometheus-postgres-exporter"

r = subprocess.run(["promtool", "check", "rules", os.path.join(ROOT, "monitoring", "alerts.yml")],
                   capture_output=True, text=True)
ok(r.returncode == 0, "promtool check rules monitoring/alerts.yml", r.stdout + r.stderr)
r = subprocess.run(["promtool", "test", "rules", os.path.join(ROOT, "monitoring", "alerts_test.yml")],
                   capture_output=True, text=True)
ok(r.returncode == 0, "promtool test rules monitoring/alerts_test.yml: delivery stopped where no worker runs, "
   "a stopped worker named, a database waiting for its update, a slow backlog", r.stdout + r.stderr)

psql("DROP ROLE IF EXISTS m3ter_exporter; CREATE ROLE m3ter_exporter LOGIN IN ROLE pg_monitor")
port = free_port()
env = dict(os.environ, DATA_SOURCE_NAME="host=%s port=%s user=m3ter_exporter dbname=postgres sslmode=disable"
           % (os.environ["PGHOST"], os.environ["PGPORT"]))
exporter = subprocess.Popen([EXPORTER, "--web.listen-address=127.0.0.1:%d" % port, "--disable-default-metrics",
                             "--disable-settings-metrics",
                             "--extend.query-path=" + os.path.join(ROOT, "monitoring", "postgres_exporter.yml")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def scrape():
    """{(metric, datname): value} of the m3ter metrics, and the state labels seen"""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as f:
        text = f.read().decode()
    values, states = {}, {}
    for name, labels, value in re.findall(r"^(m3ter\w*)\{([^}]*)\} (\S+)$", text, re.M):
        lab = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        values[(name, lab.get("datname"))] = float(value)
        if "state" in lab:
            states[lab.get("datname")] = lab["state"]
    return values, states, text


def metric(name):
    return scrape()[0].get((name, "postgres"))


ok(wait_until(lambda: metric("m3ter_outbox_pending") is not None, timeout=20),
   "the exporter serves the m3ter metrics as a pg_monitor role", scrape()[2][-1500:] if exporter.poll() is None
   else exporter.stderr.read()[-1500:])

# pending rows, then drained
reset()
set_and_reload(worker_enabled="off", events_poll_interval="1s")
psql("SELECT m3ter_create_meter('API requests', 'api_requests', "
     "'[{\"category\": \"MEASURE\", \"code\": \"requests\", \"name\": \"Requests\"},"
     "  {\"category\": \"WHERE\", \"code\": \"region\", \"name\": \"Region\"}]')")
insert_usage(300, "exp-")
ok(wait_until(lambda: metric("m3ter_outbox_pending") == 300, timeout=20), "m3ter_outbox_pending is 300 before the drain",
   metric("m3ter_outbox_pending"))
ok(metric("m3ter_outbox_oldest_pending_age_seconds") > 0, "m3ter_outbox_oldest_pending_age_seconds is set")
values, states, _ = scrape()
ok(("m3ter_worker_state_info", "postgres") in values and "postgres" in states,
   "m3ter_worker_state_info carries the worker's state as a label (%s)" % states.get("postgres"))
ok(not re.search(r"^m3ter_(rows|requests)\w*\{[^}]*state=", scrape()[2], re.M),
   "the counters carry no state label (a state change starts no new series)")
ok(metric("m3ter_outbox_catalog_age_seconds") is not None, "m3ter_outbox_catalog_age_seconds is served")

# a failed row (m3ter refuses its meter) and a rejected row (enrichment drops it)
standin("POST", "/_control/config", {"reject_meters": ["retired_meter"]})
standin("POST", "/_control/enrichment", {"enabled": True, "delay": 0.1})
insert_usage(1, "exp-failed-", meter="retired_meter")
insert_usage(1, "exp-rejected-", meter="api_requestz")
set_and_reload(worker_enabled=None)
ok(wait_until(lambda: outbox_counts()["accepted"] == 300 and outbox_counts()["failed"] == 1
              and outbox_counts().get("rejected") == 1, timeout=60), "the outbox drains", outbox_counts())
ok(wait_until(lambda: metric("m3ter_outbox_pending") == 0 and metric("m3ter_outbox_accepted") == 300, timeout=20),
   "after the drain: m3ter_outbox_pending 0, m3ter_outbox_accepted 300",
   (metric("m3ter_outbox_pending"), metric("m3ter_outbox_accepted")))
ok(metric("m3ter_outbox_delivery_rate_rows_per_second") > 0 and metric("m3ter_outbox_eta_seconds") == -1,
   "the delivery rate of the last minute is shown, and no ETA with nothing pending",
   (metric("m3ter_outbox_delivery_rate_rows_per_second"), metric("m3ter_outbox_eta_seconds")))
is_(metric("m3ter_outbox_failed"), 1.0, "m3ter_outbox_failed counts the failed row")
is_(metric("m3ter_outbox_rejected"), 1.0, "m3ter_outbox_rejected counts the rejected row")
ok(metric("m3ter_rows_failed_total") >= 1 and metric("m3ter_requests_total") >= 1,
   "the cluster-wide counters (m3ter_rows_failed_total, m3ter_requests_total) count the delivery",
   (metric("m3ter_rows_failed_total"), metric("m3ter_requests_total")))
ok(metric("m3ter_last_error_age_seconds") >= 0, "m3ter_last_error_age_seconds says an error happened")

# while a slow delivery runs: the rate and the time the rest takes
reset()
set_and_reload(max_requests_per_second="1")
insert_usage(12000, "eta-")
ok(wait_until(lambda: 1000 <= outbox_counts()["accepted"] and outbox_counts()["pending"] >= 1000, timeout=30),
   "a delivery paced to a request a second is under way", outbox_counts())
row = psql("SELECT delivery_rate || '|' || coalesce(extract(epoch FROM eta)::text, '') || '|' || pending "
           "FROM m3ter.outbox_stats")
rate, eta, pending = row.split("|")
ok(float(rate) > 0 and eta != "" and abs(float(eta) - int(pending) / float(rate)) <= 2,
   "m3ter.outbox_stats shows the rate and the time the backlog takes at it (pending / rate)", row)
# the worker's own figures: from its slot, with the backlog it last counted
ok(wait_until(lambda: float(psql("SELECT delivery_rate FROM m3ter_worker_status()")) > 0
              and psql("SELECT eta IS NOT NULL FROM m3ter_worker_status()") == "t", timeout=15),
   "m3ter_worker_status() shows a delivery rate and an eta while the backlog drains",
   psql("SELECT delivery_rate, eta FROM m3ter_worker_status()"))
row = psql("SELECT delivery_rate || '|' || coalesce(extract(epoch FROM eta)::text, '') || '|' || pending "
           "FROM m3ter.databases WHERE datname = current_database()")
rate, eta, pending = row.split("|")
ok(0 < float(rate) < 2000 and eta != "" and abs(float(eta) - int(pending) / float(rate)) <= 2,
   "m3ter.databases: the rate (rows a second) and eta = pending / rate", row)
ok(wait_until(lambda: metric("m3ter_delivery_rate_rows_per_second") > 0 and metric("m3ter_eta_seconds") > 0,
              timeout=20), "the exporter shows both (m3ter_delivery_rate_rows_per_second, m3ter_eta_seconds)")
is_(metric("m3ter_pace_requests_per_second"), 0.96, "m3ter_pace_requests_per_second: the pace in force")
set_and_reload(max_requests_per_second=None)
ok(wait_until(lambda: metric("m3ter_pace_requests_per_second") == 48.0, timeout=20),
   "back to 48 a second (50 with the headroom) once the limit is reset")
ok(wait_until(lambda: outbox_counts()["pending"] == 0, timeout=60), "the backlog drains")
ok(wait_until(lambda: psql("SELECT eta IS NULL FROM m3ter_worker_status()") == "t", timeout=20),
   "an idle worker has no eta")

THROTTLED_SQL = "SELECT throttled FROM m3ter.databases WHERE datname = current_database()"


def refused(prefix, retry_after, count):
    """10 rows whose first count requests m3ter refuses with a 429 and that Retry-After:
    they get in, and the throttled count before it"""
    before = int(psql(THROTTLED_SQL))
    standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "status": 429,
                                                     "retry_after": retry_after, "count": count}]})
    insert_usage(10, prefix)
    ok(wait_until(lambda: len(stored_uids(prefix)) == 10, timeout=30),
       "rows refused %d times with a %d s 429 get in" % (count, retry_after))
    return before


# 429s waited out are counted
before = refused("throttled-", 1, 2)
ok(wait_until(lambda: int(psql(THROTTLED_SQL)) >= before + 2 and metric("m3ter_requests_throttled_total")
              >= before + 2, timeout=20),
   "m3ter.databases.throttled and m3ter_requests_throttled_total count the 429s")
# and a 429 whose Retry-After puts the rows back pending for later
before = refused("throttled-long-", 3, 1)
ok(wait_until(lambda: int(psql(THROTTLED_SQL)) >= before + 1, timeout=20),
   "m3ter.databases.throttled counts a 429 with a long Retry-After too",
   psql("SELECT throttled, retried FROM m3ter.databases WHERE datname = current_database()"))

exporter.terminate()
exporter.wait(timeout=10)

# --auto-discover-databases with two databases that have the extension: the
# cluster-wide queries run once, the outbox's in each database
psql("DROP DATABASE IF EXISTS m3ter_exp2")
psql("CREATE DATABASE m3ter_exp2")
psql("CREATE EXTENSION m3ter", db="m3ter_exp2")
insert_usage(7, "exp2-", db="m3ter_exp2")
port = free_port()
exporter = subprocess.Popen([EXPORTER, "--web.listen-address=127.0.0.1:%d" % port, "--disable-default-metrics",
                             "--disable-settings-metrics", "--auto-discover-databases",
                             "--exclude-databases=template0,template1",
                             "--extend.query-path=" + os.path.join(ROOT, "monitoring", "postgres_exporter.yml")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def scrape_status():
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as f:
            return f.status, f.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


ok(wait_until(lambda: scrape_status()[0] is not None and "m3ter_exp2" in scrape_status()[1], timeout=20),
   "an exporter that discovers the databases serves both", scrape_status()[1][-800:])
status, text = scrape_status()
is_(status, 200, "and answers 200 (no metric twice)")
ok(re.search(r'^m3ter_outbox_pending\{[^}]*datname="m3ter_exp2"[^}]*\} 7$', text, re.M) is not None,
   "the second database's outbox is counted in it (7 pending)")
is_(len(re.findall(r'^m3ter_worker_running\{[^}]*datname="postgres"', text, re.M)), 1,
    "the cluster-wide m3ter_worker_running appears once per database")
exporter.terminate()
exporter.wait(timeout=10)
psql("DROP DATABASE m3ter_exp2")
standin("POST", "/_control/enrichment", {"enabled": False})
set_and_reload(events_poll_interval=None)
psql("DROP ROLE m3ter_exporter")
done()
