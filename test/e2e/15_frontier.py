"""Fresh rows are claimed in id order after a frontier, with no index on status:
ids passed before their rows were visible (a transaction still inserting, one that
rolled back) are read again until they settle, rows made pending again by an UPDATE
are found, and writing 'accepted' is a HOT update."""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403


class Session:
    """A psql session kept open, fed one statement at a time."""

    def __init__(self, name):
        env = dict(os.environ, PGAPPNAME=name)
        self.name = name
        self.p = subprocess.Popen([BINDIR + "/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", "postgres"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env)

    def send(self, sql):
        self.p.stdin.write(sql + "\n")
        self.p.stdin.flush()

    def idle_in_transaction(self):
        return wait_until(lambda: scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' "
                                         "AND state = 'idle in transaction'" % self.name) == "1", timeout=10,
                          interval=0.05)

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=30)
        return self.p.returncode


def gaps():
    return int(scalar("SELECT cardinality(gap_lo) FROM m3ter.claim_state"))


def status_of(uid):
    return scalar("SELECT status FROM m3ter.outbox WHERE uid = '%s'" % uid)


# A row whose transaction commits after the claims went past its id
reset()
late = Session("m3ter_late")
late.send("BEGIN; INSERT INTO m3ter.outbox (uid, meter, account, measure) "
          "VALUES ('late-1', 'api_requests', 'acme', '{\"requests\": 1}');")
ok(late.idle_in_transaction(), "a session holds an uncommitted row")
insert_usage(100, "after-")
ok(wait_until(lambda: outbox_counts()["accepted"] == 100, timeout=20), "the 100 rows inserted after it are delivered")
ok(int(scalar("SELECT frontier FROM m3ter.claim_state")) >= int(scalar("SELECT max(id) FROM m3ter.outbox")),
   "the frontier has passed the uncommitted row's id")
ok(gaps() >= 1, "which is kept as a gap", scalar("SELECT gap_lo, gap_hi FROM m3ter.claim_state"))
late.send("COMMIT;")
is_(late.close(), 0, "the session commits")
ok(wait_until(lambda: status_of("late-1") == "accepted", timeout=15), "the late row is found in the gap and delivered")
is_(stored_uids("late-"), {"late-1"}, "the stand-in received it")
ok(wait_until(lambda: gaps() == 0, timeout=15), "and the gap is gone")

# Ids of a rolled-back insert settle only once every transaction that might hold one has ended
reset()
holder = Session("m3ter_holder")
holder.send("BEGIN; SELECT count(*) FROM m3ter.outbox;")
ok(holder.idle_in_transaction(), "a transaction is open in the database")
psql("BEGIN; INSERT INTO m3ter.outbox (uid, meter, account, measure) SELECT 'rb-' || i, 'api_requests', 'acme', "
     "'{\"requests\": 1}' FROM generate_series(1, 50) i; ROLLBACK;")
insert_usage(10, "post-")
ok(wait_until(lambda: outbox_counts()["accepted"] == 10, timeout=20), "rows after a rolled-back insert are delivered")
ok(wait_until(lambda: gaps() >= 1, timeout=5), "the rolled-back ids are a gap")
time.sleep(5)
ok(gaps() >= 1, "which stays while the older transaction is open")
holder.send("COMMIT;")
is_(holder.close(), 0, "the older transaction ends")
ok(wait_until(lambda: gaps() == 0, timeout=20), "then the gap settles",
   scalar("SELECT gap_lo, gap_hi, sample_id FROM m3ter.claim_state"))
is_(stored_uids("rb-"), set(), "no rolled-back row was sent")

# Rows made pending again by an UPDATE, behind the frontier, are found
reset()
standin("POST", "/_control/config", {"reject_meters": ["no_such_meter"]})
insert_usage(3, "fix-", meter="no_such_meter")
ok(wait_until(lambda: outbox_counts()["failed"] == 3, timeout=15), "rows for an unknown meter fail")
standin("POST", "/_control/config", {"reject_meters": []})
psql("UPDATE m3ter.outbox SET status = 'pending', meter = 'api_requests' WHERE uid LIKE 'fix-%'")
ok(wait_until(lambda: outbox_counts()["accepted"] == 3, timeout=15),
   "an operator's UPDATE ... SET status = 'pending' sends them again")
psql("BEGIN; INSERT INTO m3ter.outbox (uid, meter, account) VALUES ('again-1', 'api_requests', 'acme'); "
     "UPDATE m3ter.outbox SET status = 'failed' WHERE uid = 'again-1'; "
     "UPDATE m3ter.outbox SET status = 'pending', next_attempt_at = now() WHERE uid = 'again-1'; COMMIT;")
ok(wait_until(lambda: status_of("again-1") == "accepted", timeout=15),
   "also when it happens in the inserting transaction (next_attempt_at = now() = created_at)")

# A row scheduled for later waits for its time
reset()
psql("INSERT INTO m3ter.outbox (uid, meter, account, next_attempt_at) "
     "VALUES ('later-1', 'api_requests', 'acme', now() + interval '3 seconds')")
insert_usage(5, "now-")
ok(wait_until(lambda: outbox_counts()["accepted"] == 5, timeout=15), "rows due now go")
is_(status_of("later-1"), "pending", "a row with next_attempt_at 3 s ahead waits")
ok(wait_until(lambda: status_of("later-1") == "accepted", timeout=15), "and goes when it is due")

# The id sequence set back (TRUNCATE ... RESTART IDENTITY): claims start over from the first id
reset()
insert_usage(300, "before-")
ok(wait_until(lambda: outbox_counts()["accepted"] == 300, timeout=20), "300 rows delivered")
psql("TRUNCATE m3ter.outbox RESTART IDENTITY")
insert_usage(20, "restart-")
ok(wait_until(lambda: outbox_counts()["accepted"] == 20, timeout=15),
   "after TRUNCATE ... RESTART IDENTITY the new rows (ids 1..20, behind the frontier) are delivered")
psql("DELETE FROM m3ter.outbox")
psql("ALTER TABLE m3ter.outbox ALTER COLUMN id RESTART WITH 1")
insert_usage(10, "setback-")
ok(wait_until(lambda: outbox_counts()["accepted"] == 10, timeout=15),
   "after DELETE and ALTER ... RESTART (the sequence behind the last it gave out) the new rows are delivered")

# A row given an explicit id behind the frontier is found by the worker's sweep
reset()
insert_usage(50, "ids-")
ok(wait_until(lambda: outbox_counts()["accepted"] == 50, timeout=15), "50 rows delivered")
low = int(scalar("SELECT min(id) FROM m3ter.outbox")) - 1
psql("INSERT INTO m3ter.outbox (id, uid, meter, account) OVERRIDING SYSTEM VALUE "
     "VALUES (%d, 'explicit-1', 'api_requests', 'acme')" % low)
ok(wait_until(lambda: status_of("explicit-1") == "accepted", timeout=40),
   "a row inserted with an explicit id below the frontier is swept up and delivered")

# Without the worker (pg_cron), flushes sweep: at most every 10 s, 1,000 rows for each second since
reset()
set_and_reload(worker_enabled="off")
insert_usage(50, "flushed-")
is_(json.loads(scalar("SELECT m3ter_flush()"))["accepted"], 50, "a flush delivers 50 rows")
low = int(scalar("SELECT min(id) FROM m3ter.outbox")) - 1
psql("INSERT INTO m3ter.outbox (id, uid, meter, account) OVERRIDING SYSTEM VALUE "
     "VALUES (%d, 'explicit-2', 'api_requests', 'acme')" % low)
scalar("SELECT m3ter_flush()")
is_(status_of("explicit-2"), "pending", "a flush right after the last sweep does not sweep again")
psql("UPDATE m3ter.claim_state SET swept_at = swept_at - interval '10 seconds'")
r = psql("SELECT m3ter_flush()", check=False)
ok(r.returncode == 0 and "behind the claims' frontier" in r.stderr, "ten seconds later a flush sweeps, and warns",
   r.stderr)
is_(status_of("explicit-2"), "accepted", "the row with an explicit id below the frontier is delivered by the flush")

# m3ter_flush() in a REPEATABLE READ transaction passes rows it cannot see; the worker reads them
reset()
set_and_reload(worker_enabled="off")
rr = Session("m3ter_rr")
rr.send("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM m3ter.outbox;")
ok(rr.idle_in_transaction(), "a REPEATABLE READ transaction has its snapshot")
insert_usage(100, "unseen-")
rr.send("INSERT INTO m3ter.outbox (uid, meter, account) VALUES ('rr-1', 'api_requests', 'acme'); "
        "SELECT m3ter_flush(); COMMIT;")
is_(rr.close(), 0, "it flushes and commits")
ok(gaps() >= 1, "the 100 rows it could not see are gaps")
set_and_reload(worker_enabled=None)
ok(wait_until(lambda: outbox_counts()["accepted"] == 101, timeout=20),
   "the worker reads the gaps another process left and delivers them, with no new insert", outbox_counts())

# A prepared transaction's row, committed after a restart, is still found
reset()
psql("ALTER SYSTEM SET max_prepared_transactions = 5")
pg_ctl("-m", "fast", "restart")
psql("BEGIN; INSERT INTO m3ter.outbox (uid, meter, account) VALUES ('prepared-1', 'api_requests', 'acme'); "
     "PREPARE TRANSACTION 'm3ter_p1';")
insert_usage(5, "beside-")
ok(wait_until(lambda: outbox_counts()["accepted"] == 5, timeout=20), "rows beside a prepared transaction are delivered")
ok(wait_until(lambda: scalar("SELECT sample_id IS NOT NULL FROM m3ter.claim_state") == "t", timeout=15),
   "its id is a gap, sampled for settling")
pg_ctl("-m", "fast", "restart")
insert_usage(5, "after-restart-")
ok(wait_until(lambda: outbox_counts()["accepted"] == 10, timeout=20), "after a restart new rows are delivered")
time.sleep(3)
ok(gaps() >= 1, "the prepared transaction's id is still a gap")
psql("COMMIT PREPARED 'm3ter_p1'")
ok(wait_until(lambda: status_of("prepared-1") == "accepted", timeout=20), "COMMIT PREPARED: its row is delivered")
psql("ALTER SYSTEM RESET max_prepared_transactions")
pg_ctl("-m", "fast", "restart")

# Writing each row's outcome is a HOT update: no index entry, no new page
reset()
set_and_reload(worker_enabled="off")
insert_usage(5000, "hot-")
psql("VACUUM m3ter.outbox")
time.sleep(1)
before = psql("SELECT n_tup_upd || '|' || n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = 'm3ter.outbox'::regclass")
upd0, hot0 = (int(x) for x in before.split("|"))
set_and_reload(worker_enabled=None)
ok(wait_until(lambda: outbox_counts()["accepted"] == 5000, timeout=60), "5000 rows delivered")


def updates():
    u, h = (int(x) for x in psql("SELECT n_tup_upd || '|' || n_tup_hot_upd FROM pg_stat_user_tables "
                                 "WHERE relid = 'm3ter.outbox'::regclass").split("|"))
    return u - upd0, h - hot0


ok(wait_until(lambda: updates()[0] >= 5000, timeout=20), "the statistics show their updates", updates())
upd, hot = updates()
ok(hot >= 0.95 * upd, "at least 95% of them were HOT updates", "%d of %d" % (hot, upd))

# Each outcome write reads its rows by the key, also with a plan made while the table was nearly
# empty (after a TRUNCATE): that plan was a sequential scan testing every row against every id,
# kept as the table grew (no ANALYZE comes here: autovacuum is off for the table)
reset()
psql("ALTER TABLE m3ter.outbox SET (autovacuum_enabled = false)")
psql("TRUNCATE m3ter.outbox")
insert_usage(1, "tiny-")
ok(wait_until(lambda: outbox_counts()["accepted"] == 1, timeout=20), "one row is delivered into an emptied table")
set_and_reload(worker_enabled="off", batch_rows="100")
insert_usage(5000, "keyed-")


def scanned():
    return [int(x) for x in psql("SELECT seq_tup_read || '|' || n_tup_upd FROM pg_stat_user_tables "
                                  "WHERE relid = 'm3ter.outbox'::regclass").split("|")]


read0, upd0 = scanned()
set_and_reload(worker_enabled=None)
# (waiting on the statistics: counting the outbox's rows would scan it)
ok(wait_until(lambda: scanned()[1] - upd0 >= 5000, timeout=60), "the statistics show 5,000 rows' outcomes written")
read = scanned()[0] - read0
ok(read < 5000, "their 50 outcome writes read the table by the key, not row by row",
   "%d rows read by sequential scans" % read)
is_(outbox_counts()["accepted"], 5001, "the rows are accepted")
psql("ALTER TABLE m3ter.outbox RESET (autovacuum_enabled)")

# An explicit id far above the sequence opens a huge gap behind it; the pending view reads gaps
# by range (never id by id), new rows from the sequence are found in the gap, and a row with an
# explicit id below the frontier is still found (by the sweep)
reset()
psql("INSERT INTO m3ter.outbox (id, uid, meter, account, measure) OVERRIDING SYSTEM VALUE "
     "VALUES (1000000000000, 'far-1', 'api_requests', 'acme', '{\"requests\": 1}')")
ok(wait_until(lambda: status_of("far-1") == "accepted", timeout=20), "a row with an id of 10^12 is delivered")
psql("INSERT INTO m3ter.outbox (id, uid, meter, account, measure) OVERRIDING SYSTEM VALUE "
     "VALUES (0, 'zero-1', 'api_requests', 'acme', '{\"requests\": 1}')")
insert_usage(3, "after-far-")
ok(wait_until(lambda: status_of("zero-1") == "accepted" and outbox_counts()["accepted"] == 5, timeout=40),
   "then one with id 0 and three from the sequence", outbox_counts())
t0 = time.time()
is_(psql("SET statement_timeout = '5s'; SELECT count(*) FROM m3ter.outbox_pending").splitlines()[-1], "0",
    "m3ter.outbox_pending counts nothing left, at once")
note("outbox_pending with a gap of 10^12 ids: %.0f ms" % ((time.time() - t0) * 1000))


# ... and the frontier stays there: claims do not start over from the first id while the
# sequence is below it (new rows are found in the gap)
insert_usage(20000, "bulk-far-")
ok(wait_until(lambda: outbox_counts()["accepted"] == 20005, timeout=60), "20,000 rows more are delivered",
   outbox_counts())
for i in range(5):
    psql("INSERT INTO m3ter.outbox (uid, meter, account) VALUES ('one-far-%d', 'api_requests', 'acme')" % i)
    ok(wait_until(lambda: status_of("one-far-%d" % i) == "accepted", timeout=15),
       "a single row %d from the sequence, found in the gap below 10^12, is delivered" % (i + 1))
is_(scalar("SELECT frontier FROM m3ter.claim_state"), "1000000000000", "the frontier stays at the explicit id")

# TRUNCATE (RESTART IDENTITY) resets the claims whatever the sequence does next
set_and_reload(worker_enabled="off")
psql("TRUNCATE m3ter.outbox RESTART IDENTITY")
is_(scalar("SELECT frontier || ':' || cardinality(gap_lo) FROM m3ter.claim_state"), "0:0",
    "TRUNCATE sets the frontier back to the start")
# more rows than the sequence had given out before: it is past where it was, and only the reset tells
insert_usage(20100, "after-truncate-")
is_(json.loads(scalar("SELECT m3ter_flush()"))["accepted"], 20100,
    "rows inserted after it with ids the claims had passed are all delivered by the next flush")

# The same with a flush only: an explicit id above the sequence does not keep m3ter_flush() busy
psql("INSERT INTO m3ter.outbox (id, uid, meter, account, measure) OVERRIDING SYSTEM VALUE "
     "VALUES (1000000000000, 'far-2', 'api_requests', 'acme', '{\"requests\": 1}')")
is_(json.loads(psql("SET statement_timeout = '20s'; SELECT m3ter_flush()").splitlines()[-1])["accepted"], 1,
    "a flush delivers a row with an id of 10^12 and returns")
insert_usage(300, "after-far-2-")
is_(json.loads(psql("SET statement_timeout = '20s'; SELECT m3ter_flush()").splitlines()[-1])["accepted"], 300,
    "the next flush delivers the rows from the sequence below it and returns")

# TRUNCATE ... RESTART IDENTITY while a request is in flight: its answer is not written to the
# new rows that got the same ids
reset()
psql("TRUNCATE m3ter.outbox RESTART IDENTITY")
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "delay": 3, "count": 1}]})
insert_usage(1000, "old-")
ok(wait_until(lambda: standin("GET", "/_control/summary")["in_flight"] >= 1, timeout=10, interval=0.05),
   "a request of 1,000 rows is in flight")
psql("TRUNCATE m3ter.outbox RESTART IDENTITY")
insert_usage(1000, "new-")
ok(wait_until(lambda: len(stored_uids("new-")) == 1000, timeout=30),
   "the 1,000 new rows (ids 1..1000 again) reach m3ter", len(stored_uids("new-")))
ok(wait_until(lambda: outbox_counts()["accepted"] == 1000, timeout=15), "and are accepted", outbox_counts())
is_(standin("GET", "/_control/summary")["duplicates"], 0, "none twice")

# A sender that died with requests in flight leaves its record: its rows are behind the frontier
# and found by nothing else.  The next claim (a flush here) counts them as sent once and sends
# them again, with the same uids
reset()
set_and_reload(worker_enabled="off")
insert_usage(30, "orphan-")
psql("UPDATE m3ter.claim_state SET frontier = (SELECT max(id) FROM m3ter.outbox)")
psql("INSERT INTO m3ter.inflight (owner_pid, owner_start, ids) "
     "SELECT 2147483000, now() - interval '1 hour', array_agg(id) FROM m3ter.outbox")
for _ in range(3):
    if outbox_counts()["accepted"] == 30:
        break
    scalar("SELECT m3ter_flush()")
is_(outbox_counts()["accepted"], 30, "the dead sender's 30 rows are delivered")
is_(scalar("SELECT min(attempts) || '..' || max(attempts) FROM m3ter.outbox"), "2..2",
    "each counted as sent once before, and once now")
is_(len(stored_uids("orphan-")), 30, "m3ter has each uid")
is_(scalar("SELECT count(*) FROM m3ter.inflight"), "0", "and the dead sender's record is gone")

done()
