"""Sustained INSERT load (pgbench, several clients) into the outbox while the worker
drains against the stand-in answering 5% of requests with a 5xx: the backlog
stays bounded, and at the end every row is accepted and stored, none lost."""
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

SECONDS = int(os.environ.get("RELIABILITY_LOAD_SECONDS", 120))
RATE = int(os.environ.get("RELIABILITY_LOAD_RATE", 1500))  # transactions a second, all clients together

reset()
standin("POST", "/_control/config", {"random_5xx": 0.05})
script = tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False)
script.write("""\\set aid random(1, 1000)
INSERT INTO m3ter.outbox (meter, account, measure, who, "where", what)
VALUES ('api_requests', 'acct-' || :aid, '{"requests": 1, "bytes": 17}', '{"user": "u1"}',
        '{"region": "eu-west-1"}', '{"endpoint": "/v1/messages"}');
""")
script.close()

backlog = []
stop = threading.Event()


def sample():
    while not stop.is_set():
        try:
            backlog.append(int(scalar("SELECT pending FROM m3ter.outbox_stats")))
        except Exception:
            pass
        stop.wait(5)


sampler = threading.Thread(target=sample)
sampler.start()
r = subprocess.run([BINDIR + "/pgbench", "-n", "-c", "4", "-j", "2", "-T", str(SECONDS), "-R", str(RATE),
                    "-f", script.name, "postgres"], capture_output=True, text=True)
stop.set()
sampler.join()
os.unlink(script.name)
ok(r.returncode == 0, "pgbench ran %d s of inserts at %d rows/s" % (SECONDS, RATE), r.stderr[-500:])
rows = int(scalar("SELECT count(*) FROM m3ter.outbox"))
note("rows inserted: %d; pending backlog samples (every 5 s): %s" % (rows, backlog))
ok(rows > SECONDS * RATE * 0.8, "the load was sustained (%d rows)" % rows)
ok(backlog and max(backlog) < RATE * 10, "the backlog stayed bounded: at most %d rows, under 10 s of inserts"
   % max(backlog or [0]))
ok(wait_until(lambda: outbox_counts()["pending"] == 0, timeout=120), "afterwards it drains to zero")
summary = standin("GET", "/_control/summary")
ok(summary["status_counts"].get("500", 0) + summary["status_counts"].get("502", 0) +
   summary["status_counts"].get("503", 0) + summary["status_counts"].get("504", 0) > 0,
   "the stand-in answered some requests with a 5xx", summary["status_counts"])
record_scenario("%d s INSERT load with 5%% 5xx" % SECONDS, rows, "")
done()
