"""ALTER EXTENSION m3ter UPDATE from 1.0 with rows in the outbox and the worker running:
the rows stay, keep their ids and uids, and are delivered once; the library refuses
the SQL functions while 1.0 is installed, with a hint to update."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

reset()
set_and_reload(worker_enabled="off")
psql("DROP EXTENSION m3ter")
psql("CREATE EXTENSION m3ter VERSION '1.0'")
is_(scalar("SELECT extversion FROM pg_extension WHERE extname = 'm3ter'"), "1.0", "version 1.0 installed")
insert_usage(3000, "upgrade-")
r = psql("SELECT m3ter_organization_config()", check=False)
ok(r.returncode != 0 and "version 1.0 installed" in r.stderr and "ALTER EXTENSION m3ter UPDATE" in r.stderr,
   "the library refuses a function while 1.0 is installed, with the hint", r.stderr)
before = psql("SELECT count(*) || ':' || min(id) || ':' || max(id) FROM m3ter.outbox")

# the worker runs while the update happens
set_and_reload(worker_enabled=None)
ok(wait_until(lambda: worker_pid() is not None, timeout=10), "the worker is running")
psql("ALTER EXTENSION m3ter UPDATE")
is_(scalar("SELECT extversion FROM pg_extension WHERE extname = 'm3ter'"), "1.2", "ALTER EXTENSION m3ter UPDATE to 1.2")
is_(psql("SELECT count(*) || ':' || min(id) || ':' || max(id) FROM m3ter.outbox"), before,
    "the outbox rows are all there with their ids")
ok(wait_until(lambda: outbox_counts()["accepted"] == 3000, timeout=120), "the worker delivers all 3,000 rows",
   outbox_counts())
is_(len(stored_uids("upgrade-")), 3000, "the stand-in stored every uid")
is_(standin("GET", "/_control/summary")["duplicates"], 0, "none twice")
is_(scalar("SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_extension e, unnest(e.extconfig) t(oid) "
           "JOIN pg_class c ON c.oid = t.oid WHERE e.extname = 'm3ter'"), "outbox,outbox_id_seq",
    "after the update pg_dump keeps the outbox and its sequence")
r = psql("SELECT m3ter_organization_config()", check=False)
ok(r.returncode == 0, "the functions work after the update", r.stderr)

# from 1.1, with rows in each state: accepted, waiting for a retry, failed, fresh
reset()
set_and_reload(worker_enabled="off")
psql("DROP EXTENSION m3ter")
psql("CREATE EXTENSION m3ter VERSION '1.1'")
insert_usage(400, "v11-")
psql("UPDATE m3ter.outbox SET status = 'accepted', attempts = 1, accepted_at = now() WHERE id % 4 = 0")
psql("UPDATE m3ter.outbox SET attempts = 2, error = 'HTTP 503', next_attempt_at = now() + interval '1 second' "
     "WHERE id % 4 = 1")
psql("UPDATE m3ter.outbox SET status = 'failed', error = 'rejected', next_attempt_at = now() + interval '1 hour' "
     "WHERE id % 4 = 2")
set_and_reload(worker_enabled=None)
psql("ALTER EXTENSION m3ter UPDATE")
is_(scalar("SELECT extversion FROM pg_extension WHERE extname = 'm3ter'"), "1.2", "ALTER EXTENSION m3ter UPDATE from 1.1")
ok(wait_until(lambda: outbox_counts()["accepted"] == 300, timeout=60),
   "the rows waiting for a retry and the fresh ones are delivered", outbox_counts())
is_(len(stored_uids("v11-")), 200, "exactly those 200 were sent")
is_(standin("GET", "/_control/summary")["duplicates"], 0, "none twice")
is_(outbox_counts()["failed"], 100, "the failed rows stay failed")
is_(scalar("SELECT count(*) FROM m3ter.outbox WHERE next_attempt_at > created_at"), "0",
    "no done row is left in the deferred index")
done()
