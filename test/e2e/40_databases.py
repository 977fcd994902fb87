"""Every database: a worker wherever the extension is installed (databases created
after start-up included), each database with its own figures; m3ter.database as a
filter; DROP EXTENSION, DROP DATABASE and CREATE DATABASE ... TEMPLATE with a
worker connected; no background worker slot left."""
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

TWO, THREE, FOUR = "m3ter_db_two", "m3ter_db_three", "m3ter_db_four"
# "within seconds"; under test/valgrind.sh every process starts many times slower
SECONDS = 20 if os.environ.get("M3TER_VALGRIND") else 3
ALL = ("postgres", TWO, THREE)


def counts(db):
    rows = psql("SELECT status, count(*) FROM m3ter.outbox GROUP BY 1", db)
    out = {"pending": 0, "accepted": 0, "failed": 0}
    for line in rows.splitlines():
        s, n = line.split("|")
        out[s] = int(n)
    return out


def status(db):
    """This database's m3ter_worker_status(): running, pid, requests, measurements, accepted"""
    r = psql("SELECT running, pid, requests, measurements, accepted FROM m3ter_worker_status()", db).split("|")
    return {"running": r[0] == "t", "pid": int(r[1]) if r[1] else None,
            "requests": int(r[2]), "measurements": int(r[3]), "accepted": int(r[4])}


def cluster_view(db="postgres"):
    rows = psql("SELECT datname, running, accepted, coalesce(pid, 0) FROM m3ter.databases ORDER BY datname", db)
    return {r.split("|")[0]: r.split("|")[1:] for r in rows.splitlines()}


for d in (TWO, THREE, FOUR):
    psql("DROP DATABASE IF EXISTS %s" % d)
reset()
# the default, every database (test/lib.sh names 'postgres' for the other suites)
set_and_reload(database="")

# two databases created after start-up: a worker within seconds of CREATE EXTENSION
for d in (TWO, THREE):
    psql("CREATE DATABASE %s" % d)
    t0 = time.time()
    psql("CREATE EXTENSION m3ter", d)
    ok(wait_until(lambda: worker_pid(d) is not None, timeout=SECONDS + 10, interval=0.05),
       "%s: CREATE EXTENSION m3ter starts a worker there" % d)
    note("%s: CREATE EXTENSION to worker running: %.0f ms" % (d, (time.time() - t0) * 1000))
    ok(time.time() - t0 < SECONDS, "%s: within seconds" % d)
pids = {d: worker_pid(d) for d in ALL}
is_(len(set(pids.values())), 3, "three databases, three workers")

# every database delivered, each reporting its own figures
before = {d: status(d) for d in ALL}
sizes = {"postgres": 300, TWO: 200, THREE: 100}
for d, n in sizes.items():
    insert_usage(n, "%s-" % d, db=d)
for d, n in sizes.items():
    ok(wait_until(lambda: counts(d)["accepted"] == n, timeout=30), "%s: all %d rows are accepted" % (d, n), counts(d))
    is_(len(stored_uids("%s-" % d)), n, "%s: the stand-in stored them" % d)
is_(standin("GET", "/_control/summary")["duplicates"], 0, "no measurement was sent twice")
for d, n in sizes.items():
    after = status(d)
    ok(after["running"] and after["pid"] == pids[d], "%s: m3ter_worker_status() shows this database's worker" % d,
       (after, pids[d]))
    is_(after["measurements"] - before[d]["measurements"], n,
        "%s: and counts this database's %d measurements only" % (d, n))
    is_(after["accepted"] - before[d]["accepted"], n, "%s: accepted %d" % (d, n))
    ok(after["requests"] > before[d]["requests"], "%s: and its own requests" % d)
    stats = psql("SELECT accepted, measurements_sent - %d, worker_running FROM m3ter.outbox_stats"
                 % before[d]["measurements"], d)
    is_(stats, "%d|%d|t" % (n, n), "%s: m3ter.outbox_stats agrees" % d)
view = cluster_view(TWO)
ok(all(d in view and view[d][0] == "t" and int(view[d][2]) == pids[d] for d in ALL),
   "m3ter.databases shows every database's running worker, from any of them", view)
is_(psql("SELECT pending IS NOT NULL AND pending_counted_at IS NOT NULL FROM m3ter.databases "
         "WHERE datname = '%s'" % THREE, TWO), "t", "with a backlog figure (as last counted by the worker)")

# the cluster-wide view is for pg_monitor, not for every role
psql("DROP ROLE IF EXISTS m3ter_monitor; DROP ROLE IF EXISTS m3ter_nobody; "
     "CREATE ROLE m3ter_monitor IN ROLE pg_monitor; CREATE ROLE m3ter_nobody")
is_(psql("SET ROLE m3ter_monitor; SELECT count(*) FROM m3ter.databases WHERE running AND datname IN (%s)"
         % ", ".join("'%s'" % d for d in ALL), TWO), "3",
    "a member of pg_monitor reads m3ter.databases")
r = psql("SET ROLE m3ter_nobody; SELECT count(*) FROM m3ter.databases", TWO, check=False)
ok(r.returncode != 0 and "permission denied" in r.stderr, "another role may not", r.stderr)
psql("DROP ROLE m3ter_monitor; DROP ROLE m3ter_nobody")

# CREATE DATABASE ... TEMPLATE a database whose worker is connected: the worker
# steps aside, the copy gets a worker without CREATE EXTENSION (found by a scan)
t0 = time.time()
r = psql("CREATE DATABASE %s TEMPLATE %s" % (FOUR, THREE), check=False)
ok(r.returncode == 0, "CREATE DATABASE ... TEMPLATE a database with a worker succeeds", r.stderr)
ok(wait_until(lambda: worker_pid(FOUR) is not None, timeout=20), "the copy gets a worker of its own")
note("CREATE DATABASE to the copy's worker: %.1f s" % (time.time() - t0))
ok(wait_until(lambda: worker_pid(THREE) is not None, timeout=SECONDS + 10), "and the template's worker comes back")

# m3ter.database filters: a database not named gets no worker, its rows wait
set_and_reload(database="postgres, %s" % TWO)
ok(wait_until(lambda: worker_pid(THREE) is None and worker_pid(FOUR) is None, timeout=15),
   "m3ter.database = 'postgres, %s' stops the other databases' workers" % TWO)
insert_usage(50, "filtered-", db=THREE)
time.sleep(2)
is_(counts(THREE)["pending"], 50, "their rows wait")
is_(psql("SELECT state FROM m3ter_worker_status()", THREE), "not in m3ter.database",
    "m3ter_worker_status() there says why no worker runs")
ok(THREE in psql("SELECT string_agg(detail, ' ') FROM m3ter_health() WHERE finding = 'no worker delivers'"),
   "m3ter_health() lists it: no worker delivers")
ok(worker_pid(TWO) is not None and worker_pid("postgres") is not None, "the named databases keep theirs")
set_and_reload(database="")
ok(wait_until(lambda: counts(THREE)["accepted"] == 150, timeout=20), "unset again, the rows are delivered")

# DROP EXTENSION ends the worker cleanly (exit code 0, not restarted); CREATE EXTENSION brings it back
offset = log_offset()
psql("DROP EXTENSION m3ter", TWO)
ok(wait_until(lambda: worker_pid(TWO) is None, timeout=15), "DROP EXTENSION m3ter ends the database's worker")
time.sleep(3)
ok(worker_pid(TWO) is None, "it is not restarted")
with open(LOG_FILE) as f:
    f.seek(offset)
    text = f.read()
ok('worker for database "%s" stopped: the extension was dropped' % TWO in text, "it says why in the log")
ok(not re.search(r"exited with exit code 1|terminated by signal", text), "and exits cleanly", text[-2000:])
t0 = time.time()
psql("CREATE EXTENSION m3ter", TWO)
ok(wait_until(lambda: worker_pid(TWO) is not None, timeout=SECONDS + 10, interval=0.05) and time.time() - t0 < SECONDS,
   "CREATE EXTENSION again: a worker within seconds")

# DROP DATABASE with a worker connected works (no FORCE needed), and the database leaves the view
for d in (THREE, FOUR):
    t0 = time.time()
    r = psql("DROP DATABASE %s" % d, check=False)
    ok(r.returncode == 0 and time.time() - t0 < SECONDS + 10, "DROP DATABASE %s with its worker connected" % d, r.stderr)
ok(wait_until(lambda: not {THREE, FOUR} & set(cluster_view()), timeout=20),
   "the dropped databases leave m3ter.databases", cluster_view())

# upgrade from 1.0: ALTER EXTENSION m3ter UPDATE brings the per-database figures and a worker
OLD = "m3ter_db_old"
psql("DROP DATABASE IF EXISTS %s" % OLD)
psql("CREATE DATABASE %s" % OLD)
psql("CREATE EXTENSION m3ter VERSION '1.0'", OLD)
t0 = time.time()
psql("ALTER EXTENSION m3ter UPDATE", OLD)
ok(wait_until(lambda: worker_pid(OLD) is not None, timeout=SECONDS + 10, interval=0.05) and time.time() - t0 < SECONDS,
   "CREATE EXTENSION m3ter VERSION '1.0'; ALTER EXTENSION m3ter UPDATE: a worker within seconds")
is_(psql("SELECT extversion FROM pg_extension WHERE extname = 'm3ter'", OLD), "1.3", "the extension is at 1.3")
is_(psql("SELECT pending || '|' || measurements_resent || '|' || worker_running FROM m3ter.outbox_stats", OLD),
    "0|0|true", "m3ter.outbox_stats: one row on an empty outbox, with measurements_resent")
psql("DROP DATABASE %s" % OLD)

# back to test/lib.sh's filter: the workers of other databases stop
psql("DROP DATABASE %s" % TWO)
set_and_reload(database=None)
ok(wait_until(lambda: psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'm3ter outbox worker'") == "1",
              timeout=20), "with m3ter.database = 'postgres' one worker is left")

# no background worker slot left: logged once, with the hint; retried until one is free
small = Cluster("small", "max_worker_processes = 4\nm3ter.database = ''")
small.pg_ctl("start")
small.psql("CREATE EXTENSION m3ter")  # pg_cron, logical replication, m3ter launcher, this worker: 4
for d in ("busy_a", "busy_b"):
    small.psql("CREATE DATABASE %s" % d)
    small.psql("CREATE EXTENSION m3ter", d)
time.sleep(8)
text = small.log_text()
n = text.count("no background worker slot is free")
is_(n, 2, "with max_worker_processes exhausted, each waiting database is logged once")
ok("Raise max_worker_processes" in text, "with the hint to raise max_worker_processes")
is_(small.psql("SELECT count(*) FROM m3ter.databases WHERE state LIKE 'waiting for a background worker slot%'"),
    "2", "m3ter.databases shows them waiting")
small.psql("DROP DATABASE busy_b")
small.psql("DROP EXTENSION m3ter")
ok(wait_until(lambda: small.psql("SELECT running FROM m3ter_worker_status()", "busy_a") == "t", timeout=15),
   "a worker slot freed (an extension dropped), the waiting database gets its worker at once")

# a database its worker cannot connect to (here: its directory moved away) is
# logged once and retried with back-off, not in a loop; it is delivered once back
small.psql("DROP DATABASE busy_a")
small.psql("CREATE DATABASE lost")
small.psql("CREATE EXTENSION m3ter", "lost")
ok(wait_until(lambda: small.psql("SELECT running FROM m3ter_worker_status()", "lost") == "t", timeout=15),
   "database lost has a worker")
small.psql("ALTER SYSTEM SET m3ter.database = 'elsewhere'; SELECT pg_reload_conf()")
ok(wait_until(lambda: small.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = 'lost'") == "0", timeout=15),
   "filtered out, it stops")
small.psql("CREATE EXTENSION m3ter")  # for the view; no worker there (m3ter.database below)
small.psql("CHECKPOINT")
base = os.path.join(small.dir, "base", small.psql("SELECT oid FROM pg_database WHERE datname = 'lost'"))
os.rename(base, base + ".away")
offset = os.path.getsize(small.log)
small.psql("ALTER SYSTEM SET m3ter.database = 'lost'; SELECT pg_reload_conf()")
time.sleep(8)
with open(small.log) as f:
    f.seek(offset)
    text = f.read()
is_(text.count('m3ter cannot reach database "lost"'), 1, "an unreachable database is logged once")
attempts = text.count("The database subdirectory")
ok(2 <= attempts <= 6, "and retried with back-off (1 s, 2 s, 4 s, ...), not in a loop", "attempts in 8 s: %d" % attempts)
is_(small.psql("SELECT state FROM m3ter.databases WHERE datname = 'lost'"), "database unreachable; retrying",
    "m3ter.databases says so")
os.rename(base + ".away", base)
ok(wait_until(lambda: small.psql("SELECT running FROM m3ter_worker_status()", "lost") == "t", timeout=20),
   "back, it gets its worker")
ok(wait_until(lambda: 'm3ter outbox worker of database "lost" is running' in small.log_text(), timeout=5),
   "and the log says so")
small.remove()
done()
