"""pg_dump / pg_restore: the outbox rows (pending, failed, accepted) and the id sequence
survive into a new database, and m3ter_flush() there sends the restored pending rows
once, with their uids."""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

SRC, DST = "m3ter_dump_src", "m3ter_dump_dst"
ROWS = "SELECT string_agg(id || ':' || uid || ':' || status || ':' || coalesce(error, ''), ',' ORDER BY id) FROM m3ter.outbox"

reset()
for db in (SRC, DST):
    psql("DROP DATABASE IF EXISTS %s" % db)
psql("CREATE DATABASE %s" % SRC)
psql("CREATE EXTENSION m3ter", SRC)
insert_usage(6, "dump-", db=SRC)
psql("UPDATE m3ter.outbox SET status = 'accepted', accepted_at = now() WHERE uid IN ('dump-1', 'dump-2');"
     "UPDATE m3ter.outbox SET status = 'failed', error = 'rejected by m3ter' WHERE uid = 'dump-3';"
     "DELETE FROM m3ter.outbox WHERE uid = 'dump-6'", SRC)   # the sequence is ahead of max(id)
before = psql(ROWS, SRC)
seq_before = psql("SELECT last_value FROM m3ter.outbox_id_seq", SRC)

with tempfile.TemporaryDirectory() as d:
    os.chmod(d, 0o777)
    dump = os.path.join(d, "m3ter.dump")
    r = subprocess.run([BINDIR + "/pg_dump", "-Fc", "-d", SRC, "-f", dump], capture_output=True, text=True)
    ok(r.returncode == 0, "pg_dump of a database with m3ter", r.stderr)
    psql("CREATE DATABASE %s" % DST)
    r = subprocess.run([BINDIR + "/pg_restore", "-d", DST, dump], capture_output=True, text=True)
    ok(r.returncode == 0, "pg_restore into a new database", r.stderr)

is_(psql(ROWS, DST), before, "every outbox row came back: pending, failed and accepted, same ids and uids")
is_(psql("SELECT last_value FROM m3ter.outbox_id_seq", DST), seq_before, "the id sequence kept its position")
r = psql("INSERT INTO m3ter.outbox (uid, meter, account) VALUES ('dump-7', 'api', 'acme') RETURNING id", DST)
is_(r, str(int(seq_before) + 1), "a new row takes the next id, no collision")
psql("DELETE FROM m3ter.outbox WHERE uid = 'dump-7'", DST)

standin("POST", "/_control/reset")
res = psql("SELECT m3ter_flush()", DST)
is_(sorted(m["uid"] for m in standin("GET", "/_control/measurements")), ["dump-4", "dump-5"],
    "m3ter_flush() in the restored database sends the pending rows, by their uids")
is_(psql("SELECT string_agg(uid || ':' || status, ',' ORDER BY id) FROM m3ter.outbox", DST),
    "dump-1:accepted,dump-2:accepted,dump-3:failed,dump-4:accepted,dump-5:accepted", "and they are accepted")
psql("SELECT m3ter_flush()", DST)
summary = standin("GET", "/_control/summary")
is_((summary["accepted"], summary["duplicates"]), (2, 0), "once: nothing is sent again")
note("flush: %s" % res)

for db in (SRC, DST):
    psql("DROP DATABASE %s" % db)
done()
