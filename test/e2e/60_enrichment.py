"""What m3ter really ingested: checks before sending, post-acceptance failures
written back from m3ter's Events API, and corrections with m3ter_adjust()."""
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

MY_SETTINGS = ("catalog_checks", "unknown_accounts", "catalog_max_age", "catalog_refresh_interval",
               "events_poll_interval")
ACCOUNTS = ["acct-%d" % i for i in range(13)]
POLL_S = 3


def clean():
    """Default settings, an empty outbox, catalog and event history, a fresh stand-in."""
    for k in MY_SETTINGS:
        psql("ALTER SYSTEM RESET m3ter.%s" % k)
    reset()
    psql("DELETE FROM m3ter.ingest_events; "
         "UPDATE m3ter.event_cursor SET next_token = NULL, events_handled = 0, last_error = NULL; "
         "DELETE FROM m3ter.catalog_meters; DELETE FROM m3ter.catalog_accounts; "
         "UPDATE m3ter.catalog_state SET version = version + 1, meters_synced_at = NULL, "
         "accounts_synced_at = NULL, last_error = NULL")
    psql("SELECT m3ter_create_meter('API requests', 'api_requests', "
         "'[{\"category\": \"MEASURE\", \"code\": \"requests\", \"name\": \"Requests\"},"
         "  {\"category\": \"WHERE\", \"code\": \"region\", \"name\": \"Region\"}]')")
    standin("POST", "/_control/accounts", {"accounts": ACCOUNTS})


def insert_mix():
    """10,000 rows: 37 with an unknown meter, 12 without a data field, 5 with an unknown account."""
    psql("""
        INSERT INTO m3ter.outbox (uid, meter, account, measure, "where")
        SELECT 'ok-' || i, 'api_requests', 'acct-' || (i % 13), jsonb_build_object('requests', i),
               '{"region": "eu-west-1"}' FROM generate_series(1, 9946) i;
        INSERT INTO m3ter.outbox (uid, meter, account, measure, "where")
        SELECT 'meter-' || i, 'api_requestz', 'acct-' || (i % 13), jsonb_build_object('requests', i),
               '{"region": "eu-west-1"}' FROM generate_series(1, 37) i;
        INSERT INTO m3ter.outbox (uid, meter, account, measure)
        SELECT 'field-' || i, 'api_requests', 'acct-' || (i % 13), jsonb_build_object('requests', i)
          FROM generate_series(1, 12) i;
        INSERT INTO m3ter.outbox (uid, meter, account, measure, "where")
        SELECT 'acct-' || i, 'api_requests', 'acct-typo-' || i, jsonb_build_object('requests', i),
               '{"region": "eu-west-1"}' FROM generate_series(1, 5) i;
    """)


def uids(where):
    return set(psql("SELECT uid FROM m3ter.outbox WHERE %s" % where).split())


def expected(prefix, n):
    return {"%s%d" % (prefix, i) for i in range(1, n + 1)}


def sent_measurements():
    return sum(r["measurements"] for r in ingest_requests() if r["status"] == 200)


# ---- checks before sending, against the synced catalog ----
clean()
set_and_reload(worker_enabled="off", catalog_checks="on", unknown_accounts="hold", events_poll_interval="0")
insert_mix()
sync = json.loads(psql("SELECT m3ter_sync_catalog()"))
ok(sync["meters"] == 1 and sync["accounts_looked_up"] == 18 and sync["accounts_found"] == 13,
   "m3ter_sync_catalog() copies the meter and looks up the accounts of pending rows", sync)
set_and_reload(worker_enabled=None)
ok(wait_until(lambda: outbox_counts() == {"pending": 5, "accepted": 9946, "failed": 49}, timeout=90),
   "with checks on: 9946 accepted, 49 failed, 5 held", outbox_counts())
is_(uids("status = 'failed'"), expected("meter-", 37) | expected("field-", 12),
    "the failed rows are exactly the 37 with an unknown meter and the 12 missing a field")
is_(psql("SELECT DISTINCT error FROM m3ter.outbox WHERE uid LIKE 'meter-%'"),
    'meter "api_requestz" is not a meter in m3ter (the catalog synced from m3ter has no such code)',
    "an unknown meter is named")
is_(psql("SELECT DISTINCT error FROM m3ter.outbox WHERE uid LIKE 'field-%'"),
    'where.region is missing: meter "api_requests" defines region as a WHERE data field',
    "a missing data field is named")
is_(psql("SELECT count(*) FROM m3ter.outbox WHERE status = 'failed' AND (attempts > 0 OR sent_at IS NOT NULL)"),
    "0", "the failed rows were never sent")
is_(uids("status = 'pending' AND error LIKE 'held: account \"acct-typo-%'"), expected("acct-", 5),
    "the 5 rows with an unknown account are held pending, with the reason")
is_(sent_measurements(), 9946, "the stand-in received only the 9946 good measurements")
ok(not any(a["name"].endswith("-autocreated") for a in standin("GET", "/_control/accounts")),
   "no account was auto-created")
st = psql("SELECT rows_failed_by_checks >= 49 AND rows_held >= 5 FROM m3ter_catalog_status()")
is_(st, "t", "m3ter_catalog_status() counts the failed and held rows")
is_(psql("SELECT held FROM m3ter.outbox_stats"), "5", "m3ter.outbox_stats shows them held")

# a held row goes once its account exists in m3ter, or an operator releases it
standin("POST", "/_control/accounts", {"accounts": ["acct-typo-1", "acct-typo-2"]})
sync = json.loads(psql("SELECT m3ter_sync_catalog()"))
is_(sync["rows_released"], 2, "a sync that finds two of the accounts releases their rows")
is_(psql("SELECT m3ter_release_held()"), "3", "m3ter_release_held() releases the other three")
ok(wait_until(lambda: outbox_counts()["accepted"] == 9951, timeout=30), "and all five are delivered",
   outbox_counts())
# an account created in m3ter just before its first usage: the worker looks the held row's account
# up within half a minute, not at the next catalog refresh (an hour)
standin("POST", "/_control/accounts", {"accounts": ["acct-new-1"]})
psql("INSERT INTO m3ter.outbox (uid, meter, account, measure, \"where\") VALUES "
     "('new-1', 'api_requests', 'acct-new-1', '{\"requests\": 1}', '{\"region\": \"eu-west-1\"}')")
ok(wait_until(lambda: psql("SELECT status FROM m3ter.outbox WHERE uid = 'new-1'") == "accepted", timeout=60),
   "a row for an account new in m3ter is looked up and delivered",
   psql("SELECT status || ' ' || coalesce(error, '') FROM m3ter.outbox WHERE uid = 'new-1'"))

# a stale catalog never stalls delivery: the check is skipped and counted
before = int(psql("SELECT rows_unchecked FROM m3ter_catalog_status()"))
set_and_reload(catalog_max_age="1")
time.sleep(1.2)
psql("INSERT INTO m3ter.outbox (uid, meter, account) SELECT 'stale-' || i, 'unknown_meter', 'acme' "
     "FROM generate_series(1, 3) i")
ok(wait_until(lambda: len(uids("uid LIKE 'stale-%' AND status = 'accepted'")) == 3, timeout=20),
   "with a stale catalog rows are sent unchecked")
ok(int(psql("SELECT rows_unchecked FROM m3ter_catalog_status()")) >= before + 3, "and counted as unchecked")
is_(psql("SELECT stale FROM m3ter_catalog_status()"), "t", "m3ter_catalog_status() says the catalog is stale")

# an unreachable m3ter during the worker's catalog refresh does not stop delivery
standin("POST", "/_control/faults", {"faults": [{"match": "/meters", "status": 503, "count": 10000}]})
offset = log_offset()
set_and_reload(catalog_max_age=None, catalog_refresh_interval="1")
psql("INSERT INTO m3ter.outbox (uid, meter, account, measure, \"where\") SELECT 'unreach-' || i, 'api_requests', "
     "'acct-1', '{\"requests\": 1}', '{\"region\": \"eu\"}' FROM generate_series(1, 3) i")
ok(wait_until(lambda: len(uids("uid LIKE 'unreach-%' AND status = 'accepted'")) == 3, timeout=20),
   "while the catalog refresh fails, rows are delivered")
ok(wait_until(lambda: "503" in psql("SELECT coalesce(last_error, '') FROM m3ter_catalog_status()"), timeout=10),
   "and the failed refresh is noted", psql("SELECT last_error FROM m3ter_catalog_status()"))
with open(LOG_FILE) as f:
    f.seek(offset)
    failed_passes = [line for line in f.read().splitlines() if "m3ter outbox worker: " in line]
ok(not failed_passes, "no worker pass failed: the refresh failure stayed in its subtransaction", failed_passes[:3])
standin("POST", "/_control/faults", {"faults": [], "clear": True})

# a meters listing that never ends (its last page names its own token again) fails the refresh
# after two pages instead of listing forever: rows are still delivered
standin("POST", "/_control/faults", {"faults": [{"match": "/meters", "status": 200, "count": 10000,
                                                 "body": {"data": [], "nextToken": "again"}}]})
psql("UPDATE m3ter.catalog_state SET last_error = NULL")
psql("INSERT INTO m3ter.outbox (uid, meter, account, measure, \"where\") SELECT 'loop-' || i, 'api_requests', "
     "'acct-1', '{\"requests\": 1}', '{\"region\": \"eu\"}' FROM generate_series(1, 3) i")
ok(wait_until(lambda: len(uids("uid LIKE 'loop-%' AND status = 'accepted'")) == 3, timeout=20),
   "while the meters listing loops, rows are delivered")
ok(wait_until(lambda: "does not end" in psql("SELECT coalesce(last_error, '') FROM m3ter_catalog_status()"),
              timeout=10), "and the refresh failure names the listing that does not end",
   psql("SELECT last_error FROM m3ter_catalog_status()"))


def meters_listed():
    return len([r for r in standin("GET", "/_control/requests") if "/meters" in r["path"]])


before = meters_listed()
time.sleep(3)
ok(meters_listed() - before <= 2 * 5, "two pages a refresh at most (refreshed each second): %d requests in 3 s"
   % (meters_listed() - before))
r = psql("SET statement_timeout = '20s'; SELECT count(*) FROM m3ter_list_meters()", check=False)
ok(r.returncode != 0 and "listing that does not end" in r.stderr, "m3ter_list_meters() fails the same way", r.stderr)
# tokens that come round again (x, y, x): the third page names one already listed (the worker
# off: its refresh, each second, would take pages of this listing and add requests of its own)
set_and_reload(_settle=1.5, worker_enabled="off")
standin("POST", "/_control/faults", {"clear": True, "faults": [
    {"match": "/meters", "status": 200, "body": {"data": [], "nextToken": t}} for t in ("x", "y", "x", "y", "x", "y")]})
before = meters_listed()
r = psql("SET statement_timeout = '20s'; SELECT count(*) FROM m3ter_list_meters()", check=False)
ok(r.returncode != 0 and "names a page already listed" in r.stderr and meters_listed() - before == 3,
   "a listing whose tokens come round again ends at the third page", "%s %d requests" % (r.stderr,
                                                                                          meters_listed() - before))
standin("POST", "/_control/faults", {"faults": [], "clear": True})
set_and_reload(worker_enabled=None)

# ---- checks off: m3ter accepts all, its enrichment drops 49, the events mark them ----
clean()
standin("POST", "/_control/enrichment", {"enabled": True, "delay": 0.3})
set_and_reload(events_poll_interval=str(POLL_S), max_requests_per_second="50")
insert_mix()
ok(wait_until(lambda: sent_measurements() == 10000, timeout=90), "with checks off all 10,000 are sent")
ok(wait_until(lambda: standin("GET", "/_control/enrichment")["events"] == 49 and
              standin("GET", "/_control/enrichment")["pending"] == 0, timeout=30),
   "the stand-in's enrichment drops 49 and raises 49 events")
t0 = time.time()
ok(wait_until(lambda: outbox_counts().get("rejected") == 49, timeout=POLL_S + 20, interval=0.1),
   "the worker marks 49 rows rejected", outbox_counts())
took = time.time() - t0
note("events raised to rows rejected: %.1f s (poll interval %d s)" % (took, POLL_S))
ok(took <= POLL_S + 4, "within one polling interval (plus the time to fetch 49 logs)", took)
is_(uids("status = 'rejected' AND rejection_type = 'UndefinedMeter'"), expected("meter-", 37),
    "the 37 rows with an unknown meter are rejected as UndefinedMeter")
is_(uids("status = 'rejected' AND rejection_type = 'MissingField'"), expected("field-", 12),
    "the 12 rows missing a field are rejected as MissingField")
is_(psql("SELECT count(*) FROM m3ter.outbox WHERE status = 'rejected' AND (error IS NULL OR rejected_at IS NULL)"),
    "0", "each with m3ter's message and a time")
is_(outbox_counts()["accepted"], 9951, "every other row stays accepted")
autocreated = sorted(a["name"] for a in standin("GET", "/_control/accounts") if a["name"].endswith("-autocreated"))
is_(autocreated, ["acct-typo-%d-autocreated" % i for i in range(1, 6)],
    "the 5 unknown accounts were auto-created, as m3ter does")
is_(psql("SELECT count(*) || '/' || count(*) FILTER (WHERE matched) FROM m3ter.ingest_events"), "49/49",
    "each event is recorded once, matched to its row")
is_(psql("SELECT rejected FROM m3ter.outbox_stats"), "49", "m3ter.outbox_stats counts them")

# re-sent uids raise DuplicateUid: counted, no row changes
psql("SELECT m3ter_submit(jsonb_agg(jsonb_build_object('uid', uid, 'meter', meter, 'account', account, "
     "'ts', to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), 'measure', measure, "
     "'where', \"where\"))) FROM m3ter.outbox WHERE uid IN (SELECT 'ok-' || i FROM generate_series(1, 10) i)")
# one measurement that no row of this database has, dropped by enrichment
psql("""SELECT m3ter_submit('{"uid": "elsewhere-1", "meter": "nope", "account": "acct-1",
        "ts": "2024-01-02T03:04:05Z", "measure": {"requests": 1}}')""")
ok(wait_until(lambda: psql("SELECT count(*) FROM m3ter.ingest_events") == "60", timeout=POLL_S + 20),
   "the 10 DuplicateUid events and the foreign one are read", psql("SELECT count(*) FROM m3ter.ingest_events"))
is_(psql("SELECT sum(duplicates) FROM m3ter.ingest_events WHERE error_type = 'DuplicateUid'"), "10",
    "the re-sends are counted")
is_(psql("SELECT count(*) FROM m3ter.outbox WHERE uid IN (SELECT 'ok-' || i FROM generate_series(1, 10) i) "
         "AND status = 'accepted' AND rejection_type IS NULL"), "10", "and the re-sent rows stay accepted")
is_(outbox_counts().get("rejected"), 49, "no other row changed")
is_(psql("SELECT array_to_string(uids, ',') || ':' || error_type FROM m3ter.unmatched_events"),
    "elsewhere-1:UndefinedMeter", "an event naming no uid of this database is kept for the operator")
res = json.loads(psql("SELECT m3ter_poll_events()"))
is_((res["events"], res["rejected"]), (0, 0), "m3ter_poll_events() finds nothing new to handle")
is_(psql("SELECT events_handled FROM m3ter.event_cursor"), "60", "the cursor counted each event once")

# ---- a kill -9 of the worker while it handles events loses and repeats none ----
standin("POST", "/_control/faults", {"faults": [{"match": "/_files/", "delay": 0.4, "count": 15}]})
psql("INSERT INTO m3ter.outbox (uid, meter, account, measure) "
     "SELECT 'kill-' || i, 'gone_meter', 'acct-1', '{\"requests\": 1}' FROM generate_series(1, 20) i")
ok(wait_until(lambda: standin("GET", "/_control/enrichment")["events"] == 80, timeout=30),
   "20 more rows are dropped by the enrichment")
downloads = lambda: sum(1 for r in standin("GET", "/_control/requests") if r["path"].startswith("/_files/"))
before = downloads()
ok(wait_until(lambda: downloads() >= before + 4, timeout=30, interval=0.05), "the worker is fetching their logs")
pid = worker_pid()
kill9(pid)
note("killed the worker after %d of 20 downloads" % (downloads() - before))
ok(wait_until(lambda: server_up() and worker_pid() not in (None, pid), timeout=30), "the worker comes back")
ok(wait_until(lambda: len(uids("uid LIKE 'kill-%' AND status = 'rejected'")) == 20, timeout=60),
   "after the restart all 20 rows are rejected")
is_(psql("SELECT count(*) || '/' || count(DISTINCT event_id) FROM m3ter.ingest_events"), "80/80",
    "every event is recorded exactly once")
is_(psql("SELECT events_handled FROM m3ter.event_cursor"), "80", "and counted once")
ok(downloads() - before > 20, "some logs were fetched again after the kill (the kill hit mid-poll)",
   downloads() - before)
standin("POST", "/_control/faults", {"faults": [], "clear": True})

# an event's log that cannot be fetched for now (getDownloadUrl answers 404) ends that poll:
# the server stays up, and the next poll handles the event
set_and_reload(events_poll_interval="0")
started = scalar("SELECT pg_postmaster_start_time()")
psql("INSERT INTO m3ter.outbox (uid, meter, account, measure) "
     "SELECT 'nolog-' || i, 'gone_meter', 'acct-1', '{\"requests\": 1}' FROM generate_series(1, 2) i")
ok(wait_until(lambda: standin("GET", "/_control/enrichment")["events"] == 82, timeout=30),
   "2 more rows are dropped by the enrichment")
standin("POST", "/_control/faults", {"faults": [{"match": "getDownloadUrl", "status": 404, "count": 1}]})
r = psql("SELECT m3ter_poll_events()", check=False)
ok(r.returncode == 0 and "getDownloadUrl" in r.stdout, "a poll that cannot fetch a log returns and says why",
   r.stdout + r.stderr)
is_(scalar("SELECT pg_postmaster_start_time()"), started, "and no server process crashed")
is_(json.loads(psql("SELECT m3ter_poll_events()"))["rejected"], 2, "the next poll handles the events")

# a log that can never be read does not hold up the events after it: one larger than the
# response cap is recorded unread at once; one whose presigned URL answers 403 on every poll
# (the URL is asked for afresh each time: not one that expired) after 3 polls in a row; a 403
# once (an expired URL) only ends that poll
psql("INSERT INTO m3ter.outbox (uid, meter, account, measure, \"where\") SELECT 'stuck-' || i, 'api_requests', "
     "'acct-1', '{\"requests\": 1}', '{\"region\": \"eu\"}' FROM generate_series(1, 4) i")
ok(wait_until(lambda: len(uids("uid LIKE 'stuck-%' AND status = 'accepted'")) == 4, timeout=30), "4 rows accepted")


def failed_ingest(uid):
    return standin("POST", "/_control/events", {
        "event_data": {"errorType": "UndefinedMeter", "message": "No meter for %s" % uid},
        "log": json.dumps({"errorType": "UndefinedMeter", "measurement": {"uid": uid}})})["id"]


def cursor():
    return psql("SELECT coalesce(blocked_event, '') || '|' || blocked_polls FROM m3ter.event_cursor")


def health_says():
    return psql("SELECT count(*) FROM m3ter_health() WHERE finding = 'enrichment events not read'") == "1"


big, denied, later = failed_ingest("stuck-1"), failed_ingest("stuck-2"), failed_ingest("stuck-3")
standin("POST", "/_control/faults", {"clear": True, "faults": [
    {"match": big, "body_bytes": 64 * 1024 * 1024 + 4096},
    {"match": denied, "status": 403, "count": 100, "body": "<Error><Code>AccessDenied</Code></Error>"}]})
res = json.loads(psql("SELECT m3ter_poll_events()"))
ok(res["events"] == 1 and "HTTP 403" in (res["error"] or ""),
   "a log larger than the response cap is recorded at once; a 403 ends the poll before its event", res)
is_(psql("SELECT note FROM m3ter.unmatched_events WHERE event_id = '%s'" % big),
    "the failed-ingest download could not be read: the response was larger than 67108864 bytes",
    "the oversized log's event is kept for the operator with a note that says why")
is_(cursor(), denied + "|1", "m3ter.event_cursor counts the polls the 403 held the event")
ok(health_says(), "m3ter_health() says the events are not read",
   psql("SELECT detail FROM m3ter_health() WHERE finding = 'enrichment events not read'"))
json.loads(psql("SELECT m3ter_poll_events()"))
is_((cursor(), uids("uid LIKE 'stuck-%' AND status = 'rejected'")), (denied + "|2", set()),
    "a second poll stops at it again")
res = json.loads(psql("SELECT m3ter_poll_events()"))
is_((res["events"], res["rejected"], res["error"]), (2, 1, None),
    "the third poll in a row records it and handles the event after it")
is_(psql("SELECT note FROM m3ter.unmatched_events WHERE event_id = '%s'" % denied),
    "the failed-ingest download answered HTTP 403 on 3 polls in a row", "with a note that says why")
is_(psql("SELECT string_agg(uid || ':' || status || ':' || coalesce(rejection_type, ''), ' ' ORDER BY uid) "
         "FROM m3ter.outbox WHERE uid IN ('stuck-1', 'stuck-2', 'stuck-3')"),
    "stuck-1:accepted: stuck-2:accepted: stuck-3:rejected:UndefinedMeter",
    "the later event's row is rejected; the rows of the unread logs stay as they are")
ok(cursor() == "|0" and not health_says(), "the count is cleared and m3ter_health() says nothing more", cursor())
once = failed_ingest("stuck-4")
standin("POST", "/_control/faults", {"clear": True, "faults": [{"match": once, "status": 403, "count": 1}]})
res = json.loads(psql("SELECT m3ter_poll_events()"))
ok(res["events"] == 0 and "HTTP 403" in (res["error"] or ""), "a 403 once (an expired URL) ends the poll", res)
res = json.loads(psql("SELECT m3ter_poll_events()"))
is_((res["events"], res["rejected"], cursor()), (1, 1, "|0"), "and the next poll handles the event")
standin("POST", "/_control/faults", {"faults": [], "clear": True})

# a message with an escaped NUL (\u0000, which no text can hold) is kept whole, the NUL as U+FFFD:
# cJSON ended the string there
psql("INSERT INTO m3ter.outbox (uid, meter, account, measure, \"where\") "
     "VALUES ('nul-1', 'api_requests', 'acct-1', '{\"requests\": 1}', '{\"region\": \"eu\"}')")
ok(wait_until(lambda: len(uids("uid = 'nul-1' AND status = 'accepted'")) == 1, timeout=30), "a row accepted")
NUL_MESSAGE = "No meter\x00 here for nul-1"
standin("POST", "/_control/events", {
    "event_data": {"errorType": "UndefinedMeter", "message": NUL_MESSAGE},
    "log": json.dumps({"errorType": "UndefinedMeter", "message": NUL_MESSAGE, "measurement": {"uid": "nul-1"}})})
json.loads(psql("SELECT m3ter_poll_events()"))
err = psql("SELECT status || ': ' || coalesce(error, '') FROM m3ter.outbox WHERE uid = 'nul-1'")
ok(err.startswith("rejected: ") and "No meter\ufffd here for nul-1" in err,
   "a message with \\u0000 in it is kept whole", err)
set_and_reload(events_poll_interval=str(POLL_S))

# m3ter does not say in which order it lists events: both orders are read in full
psql("INSERT INTO m3ter.outbox (uid, meter, account, measure) "
     "SELECT 'more-' || i, 'gone_meter', 'acct-1', '{\"requests\": 1}' FROM generate_series(1, 25) i")
ok(wait_until(lambda: len(uids("uid LIKE 'more-%' AND status = 'rejected'")) == 25, timeout=60),
   "oldest first: 25 more events fill a second page and are read")
ok(psql("SELECT next_token IS NOT NULL FROM m3ter.event_cursor") == "t", "the poll resumes at that page")
standin("POST", "/_control/enrichment", {"newest_first": True})
psql("INSERT INTO m3ter.outbox (uid, meter, account, measure) "
     "SELECT 'newest-' || i, 'gone_meter', 'acct-1', '{\"requests\": 1}' FROM generate_series(1, 3) i")
ok(wait_until(lambda: len(uids("uid LIKE 'newest-%' AND status = 'rejected'")) == 3, timeout=60),
   "newest first: the new events on the first page are read too")
is_(psql("SELECT count(*) || '/' || count(DISTINCT event_id) FROM m3ter.ingest_events") + "/" +
    psql("SELECT events_handled FROM m3ter.event_cursor"), "115/115/115", "each of the 115 events once")
standin("POST", "/_control/enrichment", {"event_as_string": True})
psql("INSERT INTO m3ter.outbox (uid, meter, account, measure) "
     "SELECT 'str-' || i, 'gone_meter', 'acct-1', '{\"requests\": 1}' FROM generate_series(1, 2) i")
ok(wait_until(lambda: len(uids("uid LIKE 'str-%' AND status = 'rejected' AND rejection_type = 'UndefinedMeter'")) == 2,
              timeout=60), "an m3terEvent serialized into a string is read as well")
standin("POST", "/_control/enrichment", {"event_as_string": False})

# Other layouts m3ter might use (it publishes none): a log in JSON lines, or objects run together;
# the failure type only in the log, under another name or spelling; no documented type at all, where
# the rows are left as they are (a DuplicateUid's original is billed: re-inserting a "rejected" row
# would bill it twice)
set_and_reload(events_poll_interval="0")
psql("INSERT INTO m3ter.outbox (uid, meter, account, measure, \"where\") "
     "SELECT 'lay-' || i, 'api_requests', 'acct-1', '{\"requests\": 1}', '{\"region\": \"eu\"}' "
     "FROM generate_series(1, 10) i")
ok(wait_until(lambda: len(uids("uid LIKE 'lay-%' AND status = 'accepted'")) == 10, timeout=30),
   "10 rows accepted")
lines = "\n".join(json.dumps({"errorType": "MissingField", "errorMessage": "region is required",
                              "measurement": {"uid": "lay-%d" % i}}) for i in (1, 2, 3))
standin("POST", "/_control/events", {"log": lines + "\n"})
standin("POST", "/_control/events", {"log": json.dumps({"error": {"type": "DuplicateUid", "detail": "uid used"},
                                                        "payload": {"uid": "lay-4"}})})
no_type = standin("POST", "/_control/events", {"log": json.dumps({"payload": {"uid": "lay-5"}})})["id"]
standin("POST", "/_control/events", {"log": json.dumps({"errorType": "DUPLICATE_UID", "measurement": {"uid": "lay-6"}})})
standin("POST", "/_control/events", {"log": json.dumps({"errorCode": "409", "error": {"type": "DuplicateUid"},
                                                        "payload": {"uid": "lay-7"}})})
other = standin("POST", "/_control/events",
                {"log": json.dumps({"errorType": "VALIDATION", "measurement": {"uid": "lay-8"}})})["id"]
standin("POST", "/_control/events", {"log": "".join(json.dumps({"errorType": "UndefinedMeter",
                                                                "measurement": {"uid": "lay-%d" % i}})
                                                    for i in (9, 10))})
res = json.loads(psql("SELECT m3ter_poll_events()"))
is_((res["events"], res["rejected"], res["duplicates"]), (7, 5, 3),
    "seven events: 5 rows rejected, 3 re-sends counted")
is_(psql("SELECT string_agg(uid || ':' || status || ':' || coalesce(rejection_type, ''), ' ' "
         "ORDER BY length(uid), uid) FROM m3ter.outbox WHERE uid LIKE 'lay-%'"),
    "lay-1:rejected:MissingField lay-2:rejected:MissingField lay-3:rejected:MissingField "
    "lay-4:accepted: lay-5:accepted: lay-6:accepted: lay-7:accepted: lay-8:accepted: "
    "lay-9:rejected:UndefinedMeter lay-10:rejected:UndefinedMeter",
    "every object of a log is read (JSON lines, run together); a documented type is found under any "
    "name or spelling and wins over another code; a failure of no documented type changes no row")
is_(psql("SELECT string_agg(event_id || ':' || (note LIKE '%names a failure type m3ter documents%'), ' ' "
         "ORDER BY event_id) FROM m3ter.unmatched_events WHERE uids && ARRAY['lay-5', 'lay-8']"),
    " ".join(sorted([no_type + ":true", other + ":true"])),
    "the events of no documented type are kept for the operator")
set_and_reload(events_poll_interval=str(POLL_S))

# ---- corrections ----
targets = ["ok-%d" % i for i in range(101, 201)]
psql("SELECT m3ter_adjust(u) FROM unnest(ARRAY[%s]) u" % ",".join("'%s'" % u for u in targets))
is_(psql("SELECT count(*) FROM m3ter.outbox WHERE corrects IS NOT NULL"), "100", "m3ter_adjust() queued 100 corrections")
ok(wait_until(lambda: psql("SELECT count(*) FROM m3ter.outbox WHERE corrects IS NOT NULL AND status = 'accepted'")
              == "100", timeout=30), "all 100 are accepted")
corr = set(psql("SELECT uid FROM m3ter.outbox WHERE corrects IS NOT NULL").split())
stored = {m["uid"]: m for m in standin("GET", "/_control/measurements")}
sums = {}
for u in set(targets) | corr:
    m = stored[u]
    sums[m["account"]] = sums.get(m["account"], 0) + m["measure"]["requests"]
ok(len(sums) == 13 and all(v == 0 for v in sums.values()),
   "at the stand-in the 100 rows and their corrections sum to zero per account", sums)
pairs = psql("SELECT count(*) FROM m3ter.outbox c JOIN m3ter.outbox o ON o.uid = c.corrects "
             "WHERE c.meter = o.meter AND c.account = o.account AND c.ts = o.ts AND c.\"where\" = o.\"where\" "
             "AND c.uid <> o.uid AND c.correction_factor = -1")
is_(pairs, "100", "each has its row's meter, account, ts and string maps, a new uid and a link to the row")
err = psql("SELECT m3ter_adjust('ok-101')", check=False).stderr
ok("already fully reversed" in err, "a second full reversal is refused", err)
err = psql("SELECT m3ter_adjust('meter-1')", check=False).stderr
ok("only an accepted row can be corrected" in err and "rejected" in err, "a rejected row is refused", err)
psql("SELECT m3ter_adjust('ok-300', -0.5); SELECT m3ter_adjust('ok-300', -0.5)")
err = psql("SELECT m3ter_adjust('ok-300', -0.5)", check=False).stderr
ok("already fully reversed" in err, "two half reversals make a full one", err)

for k in MY_SETTINGS:
    psql("ALTER SYSTEM RESET m3ter.%s" % k)
set_and_reload(max_requests_per_second=None)
standin("POST", "/_control/enrichment", {"enabled": False})
done()
