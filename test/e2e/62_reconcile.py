"""Billed = metered: m3ter_reconcile() compares m3ter's usage totals (the usage query,
in the stand-in: what it stored) with the accepted rows, cell by cell (meter,
account, UTC day, field).  10,000 rows over 3 meters x 20 accounts x 5 days; m3ter's
enrichment drops 30 (events, rows rejected: no drift), then m3ter silently loses 7
and changes 3 more: drift on exactly those 10 cells, by the right amounts.
m3ter_settle_drift() queues the rows that settle it, and a second run finds none.
With answers cut at 50 items the queries split (no answer cut) at one a second."""
import json
import os
import sys
import time
from datetime import date, timedelta

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

METERS = ["rc_calls", "rc_jobs", "rc_bytes"]
ACCOUNTS = ["rc-acct-%d" % i for i in range(20)]
DAY0 = date(2026, 11, 1)
ROWS = 10000
REJECTED = range(2050, 2080)    # i mod 300 (the cell) 250..279: no data field, dropped
LOST = range(100, 107)          # cells 100..106
CHANGED = range(107, 110)       # cells 107..109: +100 at m3ter
WINDOW = "'2026-11-01Z', '2026-11-06Z'"


def cell(i):
    """meter, account, day of row i (300 cells, i mod 300)"""
    return METERS[i % 3], ACCOUNTS[i // 3 % 20], DAY0 + timedelta(days=i // 60 % 5)


def value(i):
    return (i % 7) + 0.25


def reconcile(extra=""):
    out = psql("SELECT meter, account, day, field, local_value, m3ter_value, drift "
               "FROM m3ter_reconcile(%s%s)" % (WINDOW, extra))
    return [line.split("|") for line in out.splitlines() if line]


def usage_queries():
    return [q for q in standin("GET", "/_control/usage")["queries"]]


reset()
psql("DELETE FROM m3ter.catalog_meters; DELETE FROM m3ter.catalog_accounts; "
     "UPDATE m3ter.catalog_state SET version = version + 1, meters_synced_at = NULL; "
     "DELETE FROM m3ter.reconciliations")
for code in METERS:
    psql("SELECT m3ter_create_meter('%s', '%s', "
         "'[{\"category\": \"MEASURE\", \"code\": \"n\", \"name\": \"N\"}]')" % (code, code))
standin("POST", "/_control/accounts", {"accounts": ACCOUNTS})
standin("POST", "/_control/enrichment", {"enabled": True, "delay": 0.2})
set_and_reload(events_poll_interval="1s")

psql("""INSERT INTO m3ter.outbox (uid, meter, account, ts, measure)
        SELECT 'rc-' || i, (ARRAY%s)[i %% 3 + 1], 'rc-acct-' || (i / 3 %% 20),
               '2026-11-01Z'::timestamptz + (i / 60 %% 5) * interval '1 day' + (i / 300) * interval '1 second',
               CASE WHEN i BETWEEN %d AND %d THEN jsonb_build_object('x', 1)
                    ELSE jsonb_build_object('n', (i %% 7) + 0.25) END
          FROM generate_series(0, %d) i""" % (json.dumps(METERS).replace('"', "'"), REJECTED[0], REJECTED[-1],
                                              ROWS - 1))
ok(wait_until(lambda: psql("SELECT count(*) FROM m3ter.outbox WHERE status = 'accepted'") == str(ROWS - 30)
              and psql("SELECT count(*) FROM m3ter.outbox WHERE status = 'rejected'") == "30", timeout=120),
   "10,000 rows delivered; the 30 without a data field rejected after m3ter's events",
   psql("SELECT status, count(*) FROM m3ter.outbox GROUP BY 1"))
ok(wait_until(lambda: standin("GET", "/_control/enrichment")["pending"] == 0, timeout=30), "enrichment done")

is_(reconcile(), [], "m3ter's totals equal the accepted rows: no drift (the rejected rows are no drift)")
run = psql("SELECT id || '|' || cells_compared || '|' || cells_drifting FROM m3ter.reconciliations "
           "ORDER BY id DESC LIMIT 1").split("|")
is_(run[1:], ["300", "0"], "the run is kept: 300 cells compared, none drifting")

# m3ter loses 7 measurements silently and changes 3
r = standin("POST", "/_control/usage", {"lose": ["rc-%d" % i for i in LOST],
                                        "change": {"rc-%d" % i: {"measure": {"n": value(i) + 100}}
                                                   for i in CHANGED}})
is_((r["lost"], r["changed"]), (7, 3), "the stand-in lost 7 measurements and changed 3")
got = reconcile()
want = []
for i in list(LOST) + list(CHANGED):
    meter, account, day = cell(i)
    want.append([meter, account, day.isoformat(), "n", None, None, -value(i) if i in LOST else 100.0])
got_keyed = {tuple(g[:4]): (float(g[4]), float(g[5]), float(g[6])) for g in got}
is_(sorted(got_keyed), sorted(tuple(w[:4]) for w in want), "drift on exactly the cells of the 10 rows")
ok(all(abs(got_keyed.get(tuple(w[:4]), (0, 0, 0))[2] - w[6]) < 1e-9 for w in want),
   "with the right amounts: minus the lost value, plus the change", got)
ok(all(abs(lv + d - mv) < 1e-9 for lv, mv, d in got_keyed.values()), "drift = m3ter_value - local_value")
is_(psql("SELECT cells_drifting || '|' || (drift_by_field->>'n')::numeric FROM m3ter.reconciliations "
         "ORDER BY id DESC LIMIT 1"),
    "10|%s" % str(round(300 - sum(value(i) for i in LOST), 2)).rstrip("0").rstrip("."),
    "the run keeps the cells drifting and the total drift by field")
is_(len(reconcile(", only_drift => false")), 300, "only_drift => false returns every cell")

# settle: one row a drifting cell, left out of the local side
is_(psql("SELECT m3ter_settle_drift()"), "10", "m3ter_settle_drift() queues one row for each drifting cell")
ok(wait_until(lambda: psql("SELECT count(*) FROM m3ter.outbox WHERE metadata ? 'm3ter_settles' "
                           "AND status = 'accepted'") == "10", timeout=30), "and they are accepted")
is_(reconcile(), [], "a second run reports no drift")
r = psql("SELECT m3ter_settle_drift(%s)" % run[0], check=False)
ok(r.returncode != 0 and "out of date" in r.stderr, "an earlier run of the same days is not settled", r.stderr)
drift_run = psql("SELECT max(id) FROM m3ter.reconciliations WHERE cells_drifting = 10")
r = psql("SELECT m3ter_settle_drift(%s)" % drift_run, check=False)
ok(r.returncode != 0 and "already settled" in r.stderr, "a run is settled once", r.stderr)

# an account deleted and created again in m3ter (the same code, a new id): each run looks the codes
# up again, so its usage is found under the new id
standin("POST", "/_control/accounts", {"recreate": ["rc-acct-3"]})
standin("POST", "/_control/usage", {})
is_(reconcile(), [], "an account created again under a new id: still no drift")

# a meter m3ter does not know: its usage is drift, m3ter_value 0, with a notice
standin("POST", "/_control/enrichment", {"enabled": False})
psql("INSERT INTO m3ter.outbox (uid, meter, account, ts, measure) "
     "VALUES ('rc-ghost', 'rc_ghost', 'rc-acct-1', '2026-11-02Z', '{\"n\": 5}')")
ok(wait_until(lambda: psql("SELECT status FROM m3ter.outbox WHERE uid = 'rc-ghost'") == "accepted", timeout=30),
   "a row of a meter m3ter does not know is accepted (its enrichment is off here)")
psql("INSERT INTO m3ter.outbox (uid, meter, account, ts, measure) "
     "SELECT 'rc-gone-' || i, 'rc_gone', 'rc-acct-1', '2026-11-01Z', '{\"n\": 1}' FROM generate_series(1, 2) i")
ok(wait_until(lambda: psql("SELECT count(*) FROM m3ter.outbox WHERE uid LIKE 'rc-gone-%' AND status = 'accepted'")
              == "2", timeout=30), "two more such rows accepted")
r = psql("SELECT meter, m3ter_value, drift FROM m3ter_reconcile(%s, ARRAY['rc_ghost'])" % WINDOW, check=False)
ok(r.returncode == 0 and r.stdout.strip() == "rc_ghost|0|-5" and "unknown to m3ter" in r.stderr,
   "a meter m3ter does not know: drift, m3ter_value 0, a notice", r.stdout + r.stderr)
is_(psql("SELECT note FROM m3ter.reconciliation_drift WHERE meter = 'rc_ghost'"),
    "m3ter has no meter with this code", "the drift row notes why")

# an accepted row deleted by the user marks its day as the retention's deletes do: m3ter's usage of
# it would show as drift, and settling would bill it back; a delete that fails (rolled back to a
# savepoint) marks nothing, nor does a delete of rows that are not accepted
r = psql("\\set ON_ERROR_STOP 0\nBEGIN; SAVEPOINT s; "
         "WITH d AS (DELETE FROM m3ter.outbox WHERE status = 'accepted' RETURNING 1) "
         "SELECT 1 / (n - n) FROM (SELECT count(*) AS n FROM d) c; "
         "ROLLBACK TO s; DELETE FROM m3ter.outbox WHERE status = 'failed'; COMMIT", check=False)
ok("division by zero" in r.stderr, "a delete of every accepted row that fails after its rows", r.stderr)
is_(psql("SELECT count(*) FROM m3ter.retention_state"), "0", "marks nothing")
# a transaction of the user's that deleted an accepted row and stays open holds up no other delete
# (the worker's retention among them)
held = psql_async("BEGIN; DELETE FROM m3ter.outbox WHERE uid = 'rc-gone-1'; SELECT pg_sleep(6); COMMIT")
time.sleep(1.5)
r = psql("SET statement_timeout = '3s'; DELETE FROM m3ter.outbox WHERE uid = 'rc-gone-2'", check=False)
ok(r.returncode == 0, "a delete beside an open transaction that deleted an accepted row does not wait", r.stderr)
held.communicate(timeout=30)
is_(psql("SELECT m3ter.deleted_through()"), "2026-11-01 00:00:00+00", "both marked their ts")
# (a function of the statement that catches an error of its own rolls back a subtransaction of its
# own; a DELETE in there writes what it noted, not what the statement around it noted)
psql("CREATE FUNCTION pg_temp.caught() RETURNS int LANGUAGE plpgsql AS "
     "$$BEGIN DELETE FROM m3ter.outbox WHERE false; PERFORM 1 / 0; RETURN 0; "
     "EXCEPTION WHEN division_by_zero THEN RETURN 1; END$$; "
     "DELETE FROM m3ter.outbox WHERE uid = 'rc-ghost' RETURNING pg_temp.caught()")
is_(psql("SELECT m3ter.deleted_through()"), "2026-11-02 00:00:00+00",
    "a DELETE of an accepted row keeps its ts, though a function in it deleted and caught an error")
r = psql("\\set VERBOSITY verbose\nSELECT * FROM m3ter_reconcile(%s)" % WINDOW, check=False)
ok(r.returncode != 0 and "22023" in r.stderr and "deleted from the outbox" in r.stderr
   and "Start the window at 2026-11-03 00:00:00+00 or later" in r.stderr,
   "and a window over it is refused", r.stderr)
# (m3ter is asked from the window's start in milliseconds: a start less than one after the mark is
# the mark's millisecond)
r = psql("SELECT * FROM m3ter_reconcile('2026-11-02 00:00:00.0005+00', '2026-11-06Z')", check=False)
ok(r.returncode != 0 and "deleted from the outbox" in r.stderr, "so is one that starts within its millisecond",
   r.stderr)
psql("DELETE FROM m3ter.retention_state")   # (as docs/accepted.md says: m3ter never had these meters)

# answers cut at 50 items: the queries split, nothing is cut, one a second
standin("POST", "/_control/usage", {"limit": 50})
before = len(usage_queries())
is_(reconcile(), [], "with answers of at most 50 items: still no drift (no answer cut)")
qs = usage_queries()[before:]
ok(len(qs) > 6, "the queries split (%d queries)" % len(qs))
ok(all(not q["hasMoreData"] for q in qs if q["status"] == 200 and q["items"] < 50) and
   any(q["hasMoreData"] for q in qs), "answers that were cut were asked again in parts")
times = [q["t"] for q in qs]
gaps = [b - a for a, b in zip(times, times[1:])]
ok(min(gaps) >= 0.95, "no more than one query a second (smallest gap %.3f s)" % min(gaps))
is_([q["status"] for q in qs if q["status"] != 200], [], "no 429 from the Data Explorer's limit")

# a failure ends the run with an M3 SQLSTATE and writes nothing
standin("POST", "/_control/usage", {"limit": 20000})
runs = psql("SELECT count(*) FROM m3ter.reconciliations")
standin("POST", "/_control/faults", {"faults": [{"match": "/usage/query", "status": 403, "count": 5}]})
r = psql("\\set VERBOSITY verbose\nSELECT * FROM m3ter_reconcile(%s)" % WINDOW, check=False)
ok(r.returncode != 0 and "M3403" in r.stderr, "a refused usage query raises M3403", r.stderr)
is_(psql("SELECT count(*) FROM m3ter.reconciliations"), runs, "and keeps no half-done run")
standin("POST", "/_control/faults", {"clear": True})

# m3ter does not publish a usage row's shape: groups and aggregation as objects are read too; rows
# of a shape not understood end the run (read as 0, every cell would drift and be settled again)
standin("POST", "/_control/usage", {"shape": "grouped"})
is_(reconcile(), [], "rows as {groups: {ACCOUNT, TIME}, aggregation: {fieldCode}, result}: no drift")
out = psql("SET TimeZone = 'Asia/Tokyo'; SELECT count(*) FROM m3ter_reconcile(%s)" % WINDOW)
is_(out.splitlines()[-1], "0", "and none in a session east of UTC (a day without a zone is m3ter's UTC day)")
standin("POST", "/_control/usage", {"shape": "fieldkey"})
runs = psql("SELECT count(*) FROM m3ter.reconciliations")
r = psql("\\set VERBOSITY verbose\nSELECT * FROM m3ter_reconcile(%s)" % WINDOW, check=False)
ok(r.returncode != 0 and "M3300" in r.stderr and "shape m3ter_reconcile() does not read" in r.stderr
   and "n_sum" in r.stderr, "rows of a shape not read raise M3300 with a row in the detail", r.stderr)
is_(psql("SELECT count(*) FROM m3ter.reconciliations"), runs, "and keep no run")
standin("POST", "/_control/usage", {"shape": "flat"})
# answers it cannot read end the run with M3300 too, not with a cast's error
# (a number beyond a double's range would have read as null: no usage)
for body in ({"data": None}, {"data": [{"accountId": "a", "meterId": "m", "timestamp": "the 10th",
                                        "fieldCode": "n", "value": 1}]},
             '{"data": [{"accountId": "a", "meterId": "m", "timestamp": "2026-11-02", "fieldCode": "n", '
             '"value": 1e400}]}'):
    standin("POST", "/_control/faults", {"faults": [{"match": "/usage/query", "status": 200, "body": body,
                                                     "count": 1}]})
    r = psql("\\set VERBOSITY verbose\nSELECT * FROM m3ter_reconcile(%s)" % WINDOW, check=False)
    ok(r.returncode != 0 and "M3300" in r.stderr, "an answer %s raises M3300" % json.dumps(body)[:60], r.stderr)
    standin("POST", "/_control/faults", {"clear": True})
r = psql("\\set VERBOSITY verbose\nSELECT * FROM m3ter.usage_rows('{\"data\": [{\"accountId\": \"a\", "
         "\"timestamp\": \"2026-11-10\", \"fieldCode\": \"n\", \"value\": \"abc\"}]}')", check=False)
ok(r.returncode != 0 and "M3300" in r.stderr and "does not read: abc" in r.stderr,
   "a value that is not a number raises M3300", r.stderr)
r = psql("\\set VERBOSITY verbose\nSELECT * FROM m3ter.usage_rows('{\"data\": [{\"accountId\": \"a\", "
         "\"timestamp\": \"2026-11-10\", \"fieldCode\": \"n\", \"value\": \"Infinity\"}]}')", check=False)
ok(r.returncode != 0 and "M3300" in r.stderr and "does not read: Infinity" in r.stderr,
   "an infinite value raises M3300 (its drift would not count as drift)", r.stderr)
# a time in milliseconds as text is read; a row of another aggregation than SUM is not usage
is_(psql("SELECT string_agg(day || ':' || value, ',') FROM m3ter.usage_rows('{\"data\": ["
         "{\"accountId\": \"a\", \"timestamp\": \"1794268800000\", \"fieldCode\": \"n\", \"value\": 1}, "
         "{\"accountId\": \"a\", \"timestamp\": 1794268800000, \"fieldCode\": \"n\", \"function\": \"COUNT\", "
         "\"value\": 7}]}') WHERE aggregate = 'SUM'"),
    "2026-11-10:1", "usage rows: milliseconds as text read, a COUNT row set apart")
r = psql("SELECT * FROM m3ter_reconcile('2026-11-06Z', '2026-11-01Z')", check=False)
ok(r.returncode != 0 and "invalid window" in r.stderr, "a window that ends before it starts is refused")
queries = len(standin("GET", "/_control/usage")["queries"])
for window in ("'0044-03-15 BC', '2026-11-01Z'", "'2026-11-01Z', '200000-01-01Z'"):
    r = psql("\\set VERBOSITY verbose\nSELECT * FROM m3ter_reconcile(%s)" % window, check=False)
    ok(r.returncode != 0 and "22008" in r.stderr and "out of range for m3ter" in r.stderr,
       "a window beyond m3ter's years (%s) is refused with 22008" % window, r.stderr)
is_(len(standin("GET", "/_control/usage")["queries"]), queries, "and nothing was asked of m3ter")

# the worker's schedule (m3ter.reconcile_interval): a run kept, and a failed one with its error
count_runs = "SELECT count(*) FROM m3ter.reconciliations"
runs = int(psql(count_runs))
set_and_reload(reconcile_interval="2s", reconcile_lag="0", reconcile_days="40")
ok(wait_until(lambda: int(psql(count_runs)) > runs, timeout=30), "the worker reconciles on its schedule")
is_(psql("SELECT (error IS NULL) || '|' || cells_drifting || '|' || (to_ts = date_trunc('day', now(), 'UTC')) "
         "|| '|' || (from_ts = to_ts - interval '40 days') FROM m3ter.reconciliations ORDER BY id DESC LIMIT 1"),
    "true|0|true|true", "over the days m3ter.reconcile_days back, up to m3ter.reconcile_lag ago: no drift")
standin("POST", "/_control/faults", {"faults": [{"match": "/usage/query", "status": 403, "count": 1000}]})
ok(wait_until(lambda: psql("SELECT error FROM m3ter.reconciliations ORDER BY id DESC LIMIT 1").startswith("M3403"),
              timeout=30), "a scheduled run that fails is kept with its error")
standin("POST", "/_control/faults", {"clear": True})
set_and_reload(reconcile_interval=None, reconcile_lag=None, reconcile_days=None)

# a TRUNCATE marks the latest ts of the accepted rows it empties
psql("INSERT INTO m3ter.outbox (meter, account, ts, measure) VALUES ('rc_calls', 'rc-acct-1', '2026-11-20Z', '{\"n\": 1}')")
ok(wait_until(lambda: psql("SELECT count(*) FROM m3ter.outbox WHERE status = 'pending'") == "0", timeout=30),
   "a row dated 2026-11-20 is delivered")
psql("BEGIN; CREATE TEMP TABLE keep AS SELECT * FROM m3ter.outbox; TRUNCATE m3ter.outbox; "
     "INSERT INTO m3ter.outbox OVERRIDING SYSTEM VALUE SELECT * FROM keep; COMMIT")
is_(psql("SELECT m3ter.deleted_through()"), "2026-11-20 00:00:00+00",
    "a TRUNCATE keeps the latest ts of its accepted rows")
psql("DELETE FROM m3ter.outbox WHERE ts = '2026-11-20Z'; DELETE FROM m3ter.retention_state")

# rows m3ter.retention deleted are not reconciled: their usage at m3ter would show as drift,
# and settling it would bill it back
latest = psql("SELECT max(ts) FROM m3ter.outbox WHERE status = 'accepted'")
psql("INSERT INTO m3ter.retention_state VALUES ('2026-10-01Z')")   # (an earlier mark, to be dropped)
set_and_reload(retention="1s")
ok(wait_until(lambda: psql("SELECT count(*) FROM m3ter.outbox WHERE status = 'accepted'") == "0", timeout=30),
   "m3ter.retention 1s: the accepted rows are deleted")
deleted = psql("SELECT m3ter.deleted_through()")
is_(deleted, latest, "the latest ts deleted is kept")
ok(wait_until(lambda: psql("SELECT count(*) FROM m3ter.retention_state") == "1", timeout=90),
   "in one row once the worker drops those under it (each delete statement added one)",
   psql("SELECT count(*) FROM m3ter.retention_state"))
queries = len(standin("GET", "/_control/usage")["queries"])
r = psql("\\set VERBOSITY verbose\nSELECT * FROM m3ter_reconcile(%s)" % WINDOW, check=False)
ok(r.returncode != 0 and "22023" in r.stderr and "deleted from the outbox" in r.stderr
   and "Start the window at 2026-11-06 00:00:00+00 or later" in r.stderr,
   "a window over deleted rows is refused, with the first day to start at", r.stderr)
is_(len(standin("GET", "/_control/usage")["queries"]), queries, "and nothing was asked of m3ter")
# the first day is a UTC midnight whatever the session's time zone (a day added there may be 23 or
# 25 hours), and the window it names is taken
r = psql("SET TimeZone = 'America/New_York';\n\\set VERBOSITY verbose\nSELECT * FROM m3ter_reconcile(%s)"
         % WINDOW, check=False)
ok(r.returncode != 0 and "Start the window at 2026-11-06 00:00:00+00 or later" in r.stderr,
   "west of UTC the hint names the same UTC midnight", r.stderr)
r = psql("SET TimeZone = 'America/New_York'; SELECT count(*) FROM m3ter_reconcile('2026-11-06 00:00:00+00', "
         "'2026-11-07 00:00:00+00')", check=False)
ok(r.returncode == 0, "and a window from it is taken", r.stderr)
runs = int(psql(count_runs))
set_and_reload(reconcile_interval="2s", reconcile_lag="0", reconcile_days="40")
ok(wait_until(lambda: int(psql(count_runs)) > runs, timeout=30), "the worker's runs go on")
is_(psql("SELECT (error IS NULL) || '|' || from_ts FROM m3ter.reconciliations ORDER BY id DESC LIMIT 1"),
    "true|2026-11-06 00:00:00+00", "over the days after the deleted rows only")
set_and_reload(reconcile_interval=None, reconcile_lag=None, reconcile_days=None, retention=None)

psql("ALTER SYSTEM RESET m3ter.events_poll_interval")
reset()
done()
