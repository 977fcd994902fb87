"""Blue/green over logical replication: the subscriber does not deliver what its
publisher delivers, and takes over at the cutover.

m3ter.outbox is published by one cluster (blue) and subscribed by another
(green). While the subscription is enabled the green worker delivers nothing and
says why, m3ter_flush() there refuses; the rows blue delivers reach m3ter once and
their statuses reach green. At the cutover (the subscription disabled, the id
sequence moved past the replicated ids) green delivers the rows still pending by
itself, then its own new rows, each once. Runs on clusters of its own."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

SETTINGS = "m3ter.database = ''\nm3ter.worker_idle_naptime = '1s'\nwal_level = logical\n"


def counts(cluster, prefix):
    rows = cluster.psql("SELECT status, count(*) FROM m3ter.outbox WHERE uid LIKE '%s%%' GROUP BY 1" % prefix)
    out = {"pending": 0, "accepted": 0, "failed": 0}
    out.update({s: int(n) for s, n in (line.split("|") for line in rows.splitlines())})
    return out


blue = Cluster("bg_blue", SETTINGS)
green = Cluster("bg_green", SETTINGS)
blue.pg_ctl("start")
green.pg_ctl("start")
blue.psql("CREATE EXTENSION m3ter")
green.psql("CREATE EXTENSION m3ter")
standin("POST", "/_control/reset")
blue.psql("CREATE PUBLICATION m3ter_outbox_pub FOR TABLE m3ter.outbox")
green.psql("CREATE SUBSCRIPTION m3ter_outbox_sub CONNECTION 'host=%s port=%d dbname=postgres' "
           "PUBLICATION m3ter_outbox_pub" % (blue.host, blue.port))

# blue delivers; green receives the rows and their statuses and sends nothing
insert_usage(2000, "blue-", db=blue.conninfo())
ok(wait_until(lambda: counts(blue, "blue-")["accepted"] == 2000, timeout=60), "blue delivers its rows",
   counts(blue, "blue-"))
ok(wait_until(lambda: counts(green, "blue-")["accepted"] == 2000, timeout=60),
   "green receives them with the status blue wrote", counts(green, "blue-"))
time.sleep(2)
is_(len(stored_uids("blue-")), 2000, "m3ter has every row")
is_(standin("GET", "/_control/summary")["duplicates"], 0, "none sent twice: green did not deliver them")
state = green.psql("SELECT state FROM m3ter_worker_status()")
ok("subscription" in state, "green's worker says why it does not deliver", state)
ok("subscription" in green.psql("SELECT string_agg(state, ',') FROM m3ter.databases"),
   "m3ter.databases says it too")
r = green.psql("\\set VERBOSITY verbose\nSELECT m3ter_flush()", check=False)
ok(r.returncode != 0 and "55000" in r.stderr and "m3ter_outbox_sub" in r.stderr,
   "m3ter_flush() on green refuses, naming the subscription", r.stderr)
ok("m3ter delivery paused" in green.log_text(), "green's log says delivery is paused")
# accepted rows blue deletes are marked on green too: reconciling green after the cutover would
# see m3ter's usage of them as drift
blue.psql("DELETE FROM m3ter.outbox WHERE uid = 'blue-1'")
latest = blue.psql("SELECT m3ter.deleted_through()")
ok(latest != "" and wait_until(lambda: green.psql("SELECT m3ter.deleted_through()") == latest, timeout=30),
   "an accepted row blue deletes marks its ts on green as well (%s)" % latest,
   green.psql("SELECT m3ter.deleted_through()"))

# rows blue has not delivered yet at the cutover: green sends them
blue.psql("ALTER SYSTEM SET m3ter.worker_enabled = off; SELECT pg_reload_conf()")
time.sleep(1)
insert_usage(500, "cutover-", db=blue.conninfo())
ok(wait_until(lambda: counts(green, "cutover-")["pending"] == 500, timeout=30), "green has 500 pending rows")
time.sleep(2)
is_(len(stored_uids("cutover-")), 0, "nobody sent them yet")
green.psql("ALTER SUBSCRIPTION m3ter_outbox_sub DISABLE")
green.psql("SELECT setval('m3ter.outbox_id_seq', (SELECT max(id) FROM m3ter.outbox))")
ok(wait_until(lambda: counts(green, "cutover-")["accepted"] == 500, timeout=60),
   "after the cutover green delivers the pending rows by itself", counts(green, "cutover-"))
insert_usage(300, "green-", db=green.conninfo())
ok(wait_until(lambda: counts(green, "green-")["accepted"] == 300, timeout=60), "and its own new rows",
   counts(green, "green-"))
is_(len(stored_uids("cutover-")) + len(stored_uids("green-")), 800, "m3ter has each of them")
is_(standin("GET", "/_control/summary")["duplicates"], 0, "none sent twice")
ok("resumed" in green.log_text(), "green's log says delivery resumed")

# a subscription enabled while green is delivering its own rows: green stops claiming at
# once (not at its next upkeep), so the rows that arrive from blue are not sent by green
blue.psql("SELECT setval('m3ter.outbox_id_seq', 1000000)")
insert_usage(500, "blue2-", db=blue.conninfo())
green.psql("ALTER SYSTEM SET m3ter.batch_rows = 10; ALTER SYSTEM SET m3ter.max_requests_per_second = 4; "
           "SELECT pg_reload_conf()")
time.sleep(1)
insert_usage(400, "green2-", db=green.conninfo())
ok(wait_until(lambda: counts(green, "green2-")["accepted"] > 0, timeout=30), "green delivers its own rows slowly")
green.psql("ALTER SUBSCRIPTION m3ter_outbox_sub ENABLE")
ok(wait_until(lambda: counts(green, "blue2-")["pending"] == 500, timeout=30),
   "blue's rows arrive while green is delivering", counts(green, "blue2-"))
# (a delivery that went on would finish green's rows in about 10 s, then take blue's)
wait_until(lambda: counts(green, "green2-")["accepted"] == 400, timeout=15)
time.sleep(4)
is_(len(stored_uids("blue2-")), 0, "green sent none of them: its delivery stopped claiming")
ok(counts(green, "green2-")["pending"] > 0, "and it paused with its own rows still pending", counts(green, "green2-"))
green.psql("ALTER SUBSCRIPTION m3ter_outbox_sub DISABLE")
green.psql("ALTER SYSTEM RESET m3ter.batch_rows; ALTER SYSTEM RESET m3ter.max_requests_per_second; "
           "SELECT pg_reload_conf()")
ok(wait_until(lambda: counts(green, "blue2-")["accepted"] == 500 and counts(green, "green2-")["accepted"] == 400,
              timeout=60), "after the second cutover green delivers both", counts(green, "green2-"))
is_(standin("GET", "/_control/summary")["duplicates"], 0, "none sent twice")

green.psql("DROP SUBSCRIPTION m3ter_outbox_sub")
green.remove()
blue.remove()
done()
