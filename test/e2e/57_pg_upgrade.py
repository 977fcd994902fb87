"""pg_upgrade from PostgreSQL 15 to the major under test, as a user upgrades in place
(on PostgreSQL 15 itself, from 15 to 15, as PostgreSQL's own pg_upgrade test does).

A PostgreSQL 15 cluster (the private installation test/run.sh keeps in .pgroot,
m3ter installed there by the PostgreSQL 15 run) delivers some rows and keeps others
pending, then stops.  pg_upgrade moves it to a new cluster of this major, both
preloading m3ter.  While pg_upgrade runs its servers (binary-upgrade mode) no m3ter
launcher or worker starts: one would connect to databases that pg_upgrade is still
restoring and write to tables whose files are replaced after.  On the new cluster
the extension is there at the same version, the delivered rows keep their statuses,
the pending ones and new ones are delivered, each uid reaching m3ter once.  Runs on
clusters of its own; skipped when .pgroot has no m3ter (another major run alone)."""
import glob
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OLD_MAJOR = "15"
OLD_BINDIR = os.path.join(ROOT, ".pgroot/usr/lib/postgresql", OLD_MAJOR, "bin")
OLD_LIBRARY = os.path.join(ROOT, ".pgroot/usr/lib/postgresql", OLD_MAJOR, "lib/m3ter.so")
SETTINGS = "shared_preload_libraries = 'm3ter'\nm3ter.worker_idle_naptime = '1s'\n"

if not os.path.exists(OLD_LIBRARY):
    print("1..0 # SKIP needs PostgreSQL %s with m3ter in .pgroot (test/run.sh installs it there first)" % OLD_MAJOR)
    sys.exit(0)


def counts(cluster, prefix):
    rows = cluster.psql("SELECT status, count(*) FROM m3ter.outbox WHERE uid LIKE '%s%%' GROUP BY 1" % prefix)
    out = {"pending": 0, "accepted": 0, "failed": 0}
    out.update({s: int(n) for s, n in (line.split("|") for line in rows.splitlines())})
    return out


standin("POST", "/_control/reset")
old = Cluster("upgrade_old", SETTINGS, bindir=OLD_BINDIR)
old.pg_ctl("start")
old.psql("CREATE EXTENSION m3ter")
version = old.psql("SELECT extversion FROM pg_extension WHERE extname = 'm3ter'")
insert_usage(100, "upg-sent-", db=old.conninfo())
ok(wait_until(lambda: counts(old, "upg-sent-")["accepted"] == 100, timeout=60),
   "PostgreSQL %s delivers 100 rows" % OLD_MAJOR, counts(old, "upg-sent-"))
old.psql("ALTER SYSTEM SET m3ter.worker_enabled = off")
old.psql("SELECT pg_reload_conf()")
wait_until(lambda: old.psql("SELECT count(*) FROM m3ter_worker_status() WHERE running") == "0", timeout=20)
insert_usage(200, "upg-waiting-", db=old.conninfo())
is_(counts(old, "upg-waiting-")["pending"], 200, "200 rows wait, the worker off")
SENT = ("SELECT md5(string_agg(uid || ':' || status || ':' || accepted_at, ',' ORDER BY id)) FROM m3ter.outbox "
        "WHERE uid LIKE 'upg-sent-%'")
sent_before = old.psql(SENT)
# Debian 12's PostgreSQL 15 (15.20-0+deb12u1) keeps an attribute option pg_attver on every
# column of every table, which PostgreSQL 18 does not know: pg_upgrade's restore of any table
# fails on it ("unrecognized parameter"), with or without m3ter.  Cleared here, so that the
# upgrade of the extension itself is what this file tests.
old.psql("SET allow_system_table_mods = on; "
         "UPDATE pg_attribute SET attoptions = (SELECT array_agg(o) FROM unnest(attoptions) o "
         "                                       WHERE o NOT LIKE 'pg\\_attver=%') "
         " WHERE attrelid >= 16384 AND attoptions::text LIKE '%pg\\_attver=%'")
old.pg_ctl("-m", "fast", "stop")

# the new major's initdb as pg_upgrade wants it: the old cluster's checksum setting (off)
help_text = subprocess.run([BINDIR + "/initdb", "--help"], capture_output=True, text=True).stdout
new = Cluster("upgrade_new", SETTINGS,
              initdb_args=["--no-data-checksums"] if "--no-data-checksums" in help_text else [])
work = os.path.join(os.environ["M3TER_TMP"], "upgrade_work")
os.makedirs(work, exist_ok=True)
subprocess.run(["chown", "postgres:", work], capture_output=True)
r = subprocess.run(as_pg([BINDIR + "/pg_upgrade", "--retain", "-b", OLD_BINDIR, "-B", BINDIR,
                          "-d", old.dir, "-D", new.dir, "-p", str(old.port), "-P", str(new.port), "-s", work]),
                   cwd=work, capture_output=True, text=True, timeout=600)
ok(r.returncode == 0, "pg_upgrade from %s succeeds" % OLD_MAJOR, r.stdout[-3000:] + r.stderr[-2000:])

# what pg_upgrade's servers logged: the old one and the new one, started in binary-upgrade mode
server_logs = ""
for path in glob.glob(os.path.join(new.dir, "pg_upgrade_output.d", "*", "log", "pg_upgrade_server.log")):
    with open(path, errors="replace") as f:
        server_logs += f.read()
ok("database system is ready" in server_logs or "database system is shut down" in server_logs,
   "pg_upgrade kept its servers' log")
ok("m3ter launcher started" not in server_logs and "m3ter outbox worker started" not in server_logs,
   "no m3ter launcher or worker ran while pg_upgrade ran its servers",
   "\n".join(line for line in server_logs.splitlines() if "m3ter" in line)[:2000])

new.pg_ctl("start")
is_(new.psql("SELECT extversion FROM pg_extension WHERE extname = 'm3ter'"), version,
    "the extension is there at the same version")
is_(new.psql(SENT), sent_before, "the delivered rows keep their statuses and times")
ok(wait_until(lambda: counts(new, "upg-waiting-")["accepted"] == 200, timeout=60),
   "the new cluster's worker delivers the 200 waiting rows", counts(new, "upg-waiting-"))
insert_usage(50, "upg-after-", db=new.conninfo())
ok(wait_until(lambda: counts(new, "upg-after-")["accepted"] == 50, timeout=60),
   "and 50 rows inserted after the upgrade", counts(new, "upg-after-"))
is_(new.psql("SELECT count(DISTINCT id) = count(*) AND count(*) = 350 FROM m3ter.outbox"), "t",
    "350 rows with 350 ids: the id sequence went on where it was")
is_(len(stored_uids("upg-")), 350, "m3ter stored the 350 uids")
is_(standin("GET", "/_control/summary")["duplicates"], 0, "and received none of them twice")

new.remove()
old.remove()
done()
