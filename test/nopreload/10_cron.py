"""Without shared_preload_libraries: the library loads late in a session without
killing it, the worker status says why there is no worker, and pg_cron delivers
the outbox with m3ter_flush()."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

is_(scalar("SHOW shared_preload_libraries"), "pg_cron", "this cluster does not preload m3ter")
r = psql("LOAD 'm3ter'; SELECT 'alive'", check=False)
ok(r.returncode == 0 and r.stdout.strip() == "alive", "loading the library in a session leaves it alive",
   r.stderr)
r = psql("SHOW m3ter.max_databases", check=False)
ok(r.returncode != 0 and "unrecognized configuration parameter" in r.stderr,
   "m3ter.max_databases (a postmaster setting) is only defined when preloaded", r.stderr)
is_(scalar("SELECT extversion FROM pg_extension WHERE extname = 'm3ter'"), "1.3", "CREATE EXTENSION m3ter worked")
is_(scalar("SELECT running::text || '|' || state FROM m3ter_worker_status()"),
    "false|m3ter is not in shared_preload_libraries", "m3ter_worker_status() says why no worker runs")

# until a session loads the library, postgresql.conf's m3ter.* lines are placeholders
# any role can read; session_preload_libraries (a reload, no restart) closes that
psql("DROP ROLE IF EXISTS m3ter_nopreload_app; CREATE ROLE m3ter_nopreload_app LOGIN")
app = lambda sql: psql("SET ROLE m3ter_nopreload_app; " + sql, check=False)  # noqa: E731
secret = os.environ["M3TER_API_SECRET"]
r = app("SHOW m3ter.api_secret")
note("a fresh session without the library: SHOW m3ter.api_secret %s" %
     ("shows the value" if secret in r.stdout else "shows nothing"))
psql("DROP DATABASE IF EXISTS m3ter_warn; CREATE DATABASE m3ter_warn")
r = psql("CREATE EXTENSION m3ter", db="m3ter_warn", check=False)
ok(r.returncode == 0 and "WARNING:  m3ter credentials set in postgresql.conf are readable by every role" in r.stderr
   and "m3ter.credentials_file" in r.stderr, "CREATE EXTENSION warns that the credentials are readable", r.stderr)
psql("DROP DATABASE m3ter_warn")
health = psql("SELECT finding FROM m3ter_health()")
ok("credentials readable by every role" in health and "no background worker" in health,
   "m3ter_health() says the credentials are readable and no worker runs", health)
# a session that has not loaded the library cannot refuse ALTER DATABASE ... SET of a
# credential (its check hook is not there yet): m3ter_health() finds it in pg_db_role_setting
psql("DROP DATABASE IF EXISTS m3ter_stored; CREATE DATABASE m3ter_stored")
psql("ALTER DATABASE m3ter_stored SET m3ter.api_secret = 'stored-secret'")
health = psql("SELECT finding FROM m3ter_health()")
ok("credentials stored per role or database" in health, "m3ter_health() finds a credential stored per database",
   health)
psql("DROP DATABASE m3ter_stored")
ok("credentials stored per role or database" not in psql("SELECT finding FROM m3ter_health()"),
   "and the finding goes with it")
psql("ALTER SYSTEM SET session_preload_libraries = 'm3ter'; SELECT pg_reload_conf()")
time.sleep(0.5)
health = psql("SELECT finding FROM m3ter_health()")
ok("credentials readable" not in health, "with session_preload_libraries the finding goes", health)
r = app("SHOW m3ter.api_secret")
ok(r.returncode != 0 and secret not in r.stdout + r.stderr
   and ("must be superuser" in r.stderr or "permission denied" in r.stderr),  # 15-16, 17 on
   "with session_preload_libraries = 'm3ter' another role reads no secret", r.stdout + r.stderr)
r = app("SELECT current_setting('m3ter.access_key_id')")
ok(r.returncode != 0 and os.environ["M3TER_ACCESS_KEY_ID"] not in r.stdout + r.stderr,
   "nor the access key id")
psql("ALTER SYSTEM RESET session_preload_libraries; SELECT pg_reload_conf()")
psql("DROP ROLE m3ter_nopreload_app")

standin("POST", "/_control/reset")
psql("DELETE FROM m3ter.outbox")
psql("SELECT cron.schedule('m3ter-flush', '* * * * *', 'SELECT m3ter_flush()')")
insert_usage(500, "nopreload-cron-")
is_(scalar("SELECT worker_running::text || '|' || pending FROM m3ter.outbox_stats"), "false|500",
    "m3ter.outbox_stats shows the pending rows and no worker")
ok(wait_until(lambda: outbox_counts()["accepted"] == 500, timeout=75, interval=1),
   "a pg_cron job delivers the outbox within a minute", outbox_counts())
is_(len(stored_uids("nopreload-cron-")), 500, "the stand-in stored every uid")
is_(standin("GET", "/_control/summary")["duplicates"], 0, "none twice")
run = scalar("SELECT status || '|' || return_message FROM cron.job_run_details ORDER BY runid DESC LIMIT 1")
ok(run.startswith("succeeded|"), "cron.job_run_details records a successful run", run)
psql("SELECT cron.unschedule('m3ter-flush')")
done()
