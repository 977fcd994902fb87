"""ALTER EXTENSION m3ter UPDATE from 1.0 with rows in the outbox and the worker running:
the rows stay, keep their ids and uids, and are delivered once; the library refuses
the SQL functions while 1.0 is installed, with a hint to update."""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

# Everything the extension defines, as text: its member objects with their
# definitions, privileges and comments, and the columns, indexes, constraints
# and triggers of its tables (columns by name: an update adds them at the end)
DESCRIBE_EXTENSION = """
WITH m AS (SELECT d.classid, d.objid FROM pg_depend d JOIN pg_extension e ON d.refobjid = e.oid
            WHERE d.refclassid = 'pg_extension'::regclass AND e.extname = 'm3ter' AND d.deptype = 'e'),
rels AS (SELECT objid AS oid FROM m WHERE classid = 'pg_class'::regclass)
SELECT string_agg(line, E'\n' ORDER BY line) FROM (
  SELECT pg_describe_object(m.classid, m.objid, 0) || coalesce(': ' || CASE m.classid
           WHEN 'pg_proc'::regclass THEN
             (SELECT pg_get_functiondef(p.oid) || ' acl ' || coalesce(p.proacl::text, '-') || ' comment '
                     || coalesce(obj_description(p.oid, 'pg_proc'), '-') FROM pg_proc p WHERE p.oid = m.objid)
           WHEN 'pg_class'::regclass THEN
             (SELECT c.relkind::text || ' options ' || coalesce(c.reloptions::text, '-') || ' acl '
                     || coalesce(c.relacl::text, '-') || ' comment ' || coalesce(obj_description(c.oid, 'pg_class'), '-')
                     || coalesce(' view ' || CASE WHEN c.relkind = 'v' THEN pg_get_viewdef(c.oid) END, '')
                FROM pg_class c WHERE c.oid = m.objid)
         END, '') AS line
    FROM m
  UNION ALL
  SELECT a.attrelid::regclass || '.' || a.attname || ': ' || format_type(a.atttypid, a.atttypmod)
         || ' not null ' || a.attnotnull || ' identity ' || a.attidentity::text || ' storage ' || a.attstorage::text
         || ' collation ' || coalesce(nullif(a.attcollation, 0)::regcollation::text, '-')
         || ' default ' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '-')
         || ' acl ' || coalesce(a.attacl::text, '-') || ' comment ' || coalesce(col_description(a.attrelid, a.attnum), '-')
    FROM pg_attribute a JOIN rels r ON a.attrelid = r.oid
    LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
   WHERE a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN rels r ON i.indrelid = r.oid
  UNION ALL
  SELECT 'constraint ' || c.conrelid::regclass || '.' || c.conname || ': ' || pg_get_constraintdef(c.oid)
    FROM pg_constraint c JOIN rels r ON c.conrelid = r.oid
  UNION ALL
  SELECT 'trigger ' || pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN rels r ON t.tgrelid = r.oid
   WHERE NOT t.tgisinternal
) x
"""


def describe_extension(db):
    return psql(DESCRIBE_EXTENSION, db=db)


def same_as_fresh(upgraded_db, name):
    """The updated extension in upgraded_db defines exactly what a fresh CREATE EXTENSION does"""
    psql("DROP DATABASE IF EXISTS m3ter_fresh")
    psql("CREATE DATABASE m3ter_fresh")
    psql("CREATE EXTENSION m3ter", db="m3ter_fresh")
    fresh = describe_extension("m3ter_fresh").splitlines()
    updated = describe_extension(upgraded_db).splitlines()
    psql("DROP DATABASE m3ter_fresh")
    diff = "\n".join(["only after the update: " + line for line in sorted(set(updated) - set(fresh))]
                     + ["only when fresh: " + line for line in sorted(set(fresh) - set(updated))])
    ok(len(fresh) > 50 and not diff, name, diff[:4000])


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
# seen from a database with 1.3, the worker's state names the fix
psql("DROP DATABASE IF EXISTS m3ter_fresh")
psql("CREATE DATABASE m3ter_fresh")
psql("CREATE EXTENSION m3ter", db="m3ter_fresh")
state_sql = "SELECT state FROM m3ter.databases WHERE datname = current_database()"
ok(wait_until(lambda: psql(state_sql.replace("current_database()", "'postgres'"), db="m3ter_fresh")
              == "waiting for ALTER EXTENSION m3ter UPDATE", timeout=10),
   "while 1.0 is installed the worker's state is 'waiting for ALTER EXTENSION m3ter UPDATE'",
   psql(state_sql.replace("current_database()", "'postgres'"), db="m3ter_fresh"))
is_(psql("SELECT severity || ': ' || detail FROM m3ter_health() WHERE finding = 'extension not updated'",
         db="m3ter_fresh"),
    "warning: Database postgres has an older SQL version of m3ter than the library: its rows wait.",
    "m3ter_health() names the database that waits for the update")
last_error = psql("SELECT last_error FROM m3ter.databases WHERE datname = 'postgres'", db="m3ter_fresh")
ok(re.search(r"older than its library .*run ALTER EXTENSION m3ter UPDATE", last_error),
   "last_error says why its rows wait", last_error)
pending_sql = "SELECT pending FROM m3ter.databases WHERE datname = 'postgres'"
ok(wait_until(lambda: psql(pending_sql, db="m3ter_fresh") == "3000", timeout=20),
   "and m3ter.databases counts the 3,000 rows that wait", psql(pending_sql, db="m3ter_fresh"))
psql("ALTER EXTENSION m3ter UPDATE")
is_(scalar("SELECT extversion FROM pg_extension WHERE extname = 'm3ter'"), "1.3", "ALTER EXTENSION m3ter UPDATE to 1.3")
is_(psql("SELECT count(*) || ':' || min(id) || ':' || max(id) FROM m3ter.outbox"), before,
    "the outbox rows are all there with their ids")
ok(wait_until(lambda: outbox_counts()["accepted"] == 3000, timeout=120), "the worker delivers all 3,000 rows",
   outbox_counts())
is_(len(stored_uids("upgrade-")), 3000, "the stand-in stored every uid")
is_(standin("GET", "/_control/summary")["duplicates"], 0, "none twice")
is_(scalar("SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_extension e, unnest(e.extconfig) t(oid) "
           "JOIN pg_class c ON c.oid = t.oid WHERE e.extname = 'm3ter'"),
    "outbox,outbox_id_seq,reconciliation_drift,reconciliations,reconciliations_id_seq,retention_state",
    "after the update pg_dump keeps the outbox, the reconciliations and their sequences")
r = psql("SELECT m3ter_organization_config()", check=False)
ok(r.returncode == 0, "the functions work after the update", r.stderr)
same_as_fresh("postgres", "updated from 1.0, the extension defines what CREATE EXTENSION m3ter does")

# an SQL version newer than the library loaded (installed, the server not restarted),
# seen from a database with 1.3
psql("CREATE DATABASE m3ter_fresh")
psql("CREATE EXTENSION m3ter", db="m3ter_fresh")
psql("UPDATE pg_extension SET extversion = '9.9' WHERE extname = 'm3ter'")
ok(wait_until(lambda: psql(state_sql.replace("current_database()", "'postgres'"), db="m3ter_fresh")
              == "waiting for a restart with the newer library", timeout=10),
   "with 9.9 installed the worker's state asks for a restart, not an update",
   psql(state_sql.replace("current_database()", "'postgres'"), db="m3ter_fresh"))
is_(psql("SELECT severity || ': ' || finding FROM m3ter_health() WHERE finding LIKE 'library%'", db="m3ter_fresh"),
    "warning: library older than extension", "m3ter_health() names it")
r = psql("SELECT m3ter_organization_config()", check=False)
ok("HINT:  Install the m3ter library of version 9.9 and restart PostgreSQL" in r.stderr,
   "a function's hint asks for the library, not for ALTER EXTENSION UPDATE", r.stderr)
psql("UPDATE pg_extension SET extversion = '1.3' WHERE extname = 'm3ter'")
ok(wait_until(lambda: psql(state_sql.replace("current_database()", "'postgres'"), db="m3ter_fresh") == "idle",
              timeout=10),
   "back on 1.3 the worker is idle (m3ter refused nothing)",
   psql(state_sql.replace("current_database()", "'postgres'"), db="m3ter_fresh"))
psql("DROP DATABASE m3ter_fresh")

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
is_(scalar("SELECT extversion FROM pg_extension WHERE extname = 'm3ter'"), "1.3", "ALTER EXTENSION m3ter UPDATE from 1.1")
same_as_fresh("postgres", "updated from 1.1, the extension defines what CREATE EXTENSION m3ter does")
ok(wait_until(lambda: outbox_counts()["accepted"] == 300, timeout=60),
   "the rows waiting for a retry and the fresh ones are delivered", outbox_counts())
is_(len(stored_uids("v11-")), 200, "exactly those 200 were sent")
is_(standin("GET", "/_control/summary")["duplicates"], 0, "none twice")
is_(outbox_counts()["failed"], 100, "the failed rows stay failed")
is_(scalar("SELECT count(*) FROM m3ter.outbox WHERE next_attempt_at > created_at"), "0",
    "no done row is left in the deferred index")

# from 1.2, with a user's objects made from the extension's: a view over its figures names
# itself before anything changes; a copy of the outbox with its constraints, and a table that
# inherits it, do not stop the update
psql("DROP DATABASE IF EXISTS m3ter_users")
psql("CREATE DATABASE m3ter_users")
psql("CREATE EXTENSION m3ter VERSION '1.2'", db="m3ter_users")
# (a row deleted under 1.2: the update cannot know its ts)
psql("INSERT INTO m3ter.outbox (uid, meter, account, measure) VALUES ('gone-1', 'm', 'acct', '{\"n\": 1}'); "
     "DELETE FROM m3ter.outbox", db="m3ter_users")
# (a row too large for any request, taken by 1.2's CHECK, whose worker was off)
psql("INSERT INTO m3ter.outbox (uid, meter, account, measure, \"where\") "
     "SELECT 'huge-12', 'm', 'acct', '{\"n\": 1}', jsonb_build_object('note', repeat('x', 600000))",
     db="m3ter_users")
psql("CREATE TABLE public.outbox_archive (LIKE m3ter.outbox INCLUDING ALL); "
     "CREATE TABLE public.outbox_old () INHERITS (m3ter.outbox); "
     "CREATE VIEW public.dashboard AS SELECT pending, worker_state FROM m3ter.outbox_stats; "
     "CREATE FUNCTION public.stats() RETURNS SETOF m3ter.outbox_stats LANGUAGE sql "
     "AS 'SELECT * FROM m3ter.outbox_stats'", db="m3ter_users")
r = psql("\\set VERBOSITY verbose\nALTER EXTENSION m3ter UPDATE", db="m3ter_users", check=False)
ok(r.returncode != 0 and "2BP01" in r.stderr and "view public.dashboard" in r.stderr
   and "function stats()" in r.stderr
   and "Drop those objects, run ALTER EXTENSION m3ter UPDATE again" in r.stderr,
   "a view over m3ter.outbox_stats: the update names it and says what to do", r.stderr)
psql("DROP VIEW public.dashboard; DROP FUNCTION public.stats()", db="m3ter_users")
# grants of the user's own on what 1.3 makes again are named, to be given again
psql("DROP ROLE IF EXISTS \"Dash board\"; CREATE ROLE \"Dash board\"; "
     "GRANT SELECT ON m3ter.outbox_stats TO \"Dash board\"; "
     "GRANT EXECUTE ON FUNCTION m3ter_worker_status() TO \"Dash board\"; "
     "GRANT SELECT (pending) ON m3ter.databases TO \"Dash board\"", db="m3ter_users")
r = psql("ALTER EXTENSION m3ter UPDATE", db="m3ter_users", check=False)
ok(r.returncode == 0, "then the update runs, with a copy of the outbox and a table inheriting it, "
   "and a row too large for a request", r.stderr)
psql("SELECT m3ter_flush()", db="m3ter_users")
huge = psql("SELECT status || ': ' || coalesce(error, '') FROM m3ter.outbox WHERE uid = 'huge-12'", db="m3ter_users")
ok(huge.startswith("failed: a request with this measurement alone"),
   "a delivery then marks that row failed with the reason, as 1.2's did", huge)
ok("WARNING" in r.stderr and 'GRANT SELECT ON TABLE m3ter.outbox_stats TO "Dash board";' in r.stderr
   and 'GRANT EXECUTE ON FUNCTION public.m3ter_worker_status() TO "Dash board";' in r.stderr
   and "PUBLIC" not in r.stderr
   and 'GRANT SELECT (pending) ON TABLE m3ter.databases TO "Dash board";' in r.stderr
   and "pg_monitor" not in r.stderr,
   "and warns of the grants it drops, with the statements that give them again", r.stderr)
mark = psql("SELECT (now() - m3ter.deleted_through() BETWEEN interval '7 days' "
            "AND interval '7 days' + interval '5 minutes') || ' ' || coalesce(m3ter.deleted_through()::text, 'none')", db="m3ter_users")
ok(mark.startswith("true "), "rows deleted before 1.3: reconciliation starts where m3ter.retention (7 days) "
   "reached", mark)
r = psql("INSERT INTO public.outbox_archive (uid, meter, account, measure) VALUES ('a-1', 'm', 'acct', '{\"n\": 1}'); "
         "INSERT INTO public.outbox_old (id, uid, meter, account, measure) VALUES (1, 'o-1', 'm', 'acct', '{\"n\": 1}')",
         db="m3ter_users", check=False)
ok(r.returncode == 0, "and both tables take rows after it", r.stderr)
psql("DROP DATABASE m3ter_users")
psql("DROP ROLE \"Dash board\"")
done()
