"""Point-in-time recovery: rows come back pending and are re-sent once; rows
older than m3ter's uid window are failed, never sent.

A base backup and archived WAL are restored to a point between "inserted" and
"accepted": the delivered rows are pending again and go out again with their
uids (m3ter stores each once). A row created longer ago than
m3ter.resend_window (m3ter keeps a uid for 35 days) may have been accepted
once: sending it again would bill it twice, so it is failed with a reason that
says how to release it. Runs on clusters of its own."""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

ROWS = 1000
OLD = 10
TMP = os.environ["M3TER_TMP"]
archive = os.path.join(TMP, "pitr_archive")
backup = os.path.join(TMP, "pitr_backup")
os.makedirs(archive)
subprocess.run(["chown", "postgres:", archive], check=False)


def counts(cluster, prefix):
    rows = cluster.psql("SELECT status, count(*) FROM m3ter.outbox WHERE uid LIKE '%s%%' GROUP BY 1" % prefix)
    return {s: int(n) for s, n in (line.split("|") for line in rows.splitlines())}


primary = Cluster("pitr_primary", "m3ter.database = ''\nm3ter.worker_idle_naptime = '1s'\n"
                  "archive_mode = on\narchive_command = 'cp %%p %s/%%f'\nm3ter.worker_enabled = off" % archive)
primary.pg_ctl("start")
primary.psql("CREATE EXTENSION m3ter")
standin("POST", "/_control/reset")
subprocess.run(as_pg([BINDIR + "/pg_basebackup", "-h", primary.host, "-p", str(primary.port), "-U", "postgres",
                      "-D", backup, "-X", "none", "-c", "fast"]), check=True, capture_output=True)

insert_usage(ROWS, "pitr-", db=primary.conninfo())
primary.psql("INSERT INTO m3ter.outbox (uid, meter, account, measure, created_at) "
             "SELECT 'pitr-old-' || i, 'api_requests', 'acme', '{\"requests\": 1}', now() - interval '40 days' "
             "FROM generate_series(1, %d) i" % OLD)
primary.psql("SELECT pg_create_restore_point('inserted')")
primary.psql("ALTER SYSTEM SET m3ter.worker_enabled = on; SELECT pg_reload_conf()")
ok(wait_until(lambda: counts(primary, "pitr-").get("accepted", 0) == ROWS, timeout=60),
   "the primary delivers the rows", counts(primary, "pitr-"))
ok(wait_until(lambda: counts(primary, "pitr-old-").get("failed", 0) == OLD, timeout=30),
   "rows created 40 days ago are failed, not sent", counts(primary, "pitr-old-"))
reason = primary.psql("SELECT error FROM m3ter.outbox WHERE uid = 'pitr-old-1'")
ok("m3ter.resend_window" in reason and "35 days" in reason and "UPDATE m3ter.outbox SET status = 'pending'" in reason,
   "the reason says why and how to release a row that was never sent", reason)
is_(len(stored_uids("pitr-old-")), 0, "the stand-in received none of them")
primary.psql("SELECT pg_switch_wal()")
time.sleep(1)
primary.pg_ctl("-m", "fast", "stop")
before = standin("GET", "/_control/summary")["duplicates"]

# restore the base backup to the restore point, between "inserted" and "accepted"
restored = Cluster.__new__(Cluster)
restored.dir, restored.host, restored.port = backup, TMP, free_port()
restored.log = backup + ".log"
open(restored.log, "w").close()
os.chmod(restored.log, 0o666)
conf = ("\nport = %d\nrestore_command = 'cp %s/%%f %%p'\nrecovery_target_name = 'inserted'\n"
        "recovery_target_action = 'promote'\narchive_mode = off\nm3ter.worker_enabled = on\n" % (restored.port, archive))
subprocess.run(as_pg(["tee", "-a", os.path.join(backup, "postgresql.conf")]), input=conf, text=True,
               check=True, capture_output=True)
subprocess.run(as_pg(["touch", os.path.join(backup, "recovery.signal")]), check=True)
restored.pg_ctl("start")
ok(wait_until(lambda: restored.psql("SELECT pg_is_in_recovery()") == "f", timeout=60),
   "the backup is restored to the point and promoted")
ok(wait_until(lambda: counts(restored, "pitr-").get("accepted", 0) == ROWS, timeout=60),
   "the rows came back pending and are delivered again", counts(restored, "pitr-"))
is_(len(stored_uids("pitr-")), ROWS, "the stand-in holds each uid once")
is_(standin("GET", "/_control/summary")["duplicates"] - before, ROWS, "each row was re-sent once, with its uid")
ok(wait_until(lambda: counts(restored, "pitr-old-").get("failed", 0) == OLD, timeout=30),
   "the old rows are failed again after the restore", counts(restored, "pitr-old-"))
is_(len(stored_uids("pitr-old-")), 0, "and never sent")

# a row that was truly never sent is released as the reason says
restored.psql("UPDATE m3ter.outbox SET status = 'pending', created_at = now() WHERE uid = 'pitr-old-1'")
ok(wait_until(lambda: counts(restored, "pitr-old-").get("accepted", 0) == 1, timeout=30),
   "a released old row is sent", counts(restored, "pitr-old-"))
is_(stored_uids("pitr-old-"), {"pitr-old-1"}, "that one only")

restored.remove()
primary.remove()
done()
