"""Pacing under a per-second limit that something else shares: the stand-in admits
only 5 requests a second for the organization while the extension paces for m3ter's
50.  A 429 drops the pace once to what m3ter admitted (not a fifth per overloaded
second), the rows spend no attempt, and none is lost."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

REQUESTS = 40

reset()
set_and_reload(worker_enabled="off")
standin("POST", "/_control/config", {"rate_limit": {"per_second": 5}})
insert_usage(REQUESTS * 1000, "shared-")
set_and_reload(worker_enabled=None)
ok(wait_until(lambda: outbox_counts()["accepted"] == REQUESTS * 1000, timeout=90),
   "every row is accepted under a limit a tenth of the pace", outbox_counts())
reqs = ingest_requests()
throttled = sum(1 for r in reqs if r["status"] == 429)
admitted = [r for r in reqs if r["status"] == 200]
is_(len(admitted), REQUESTS, "in %d full requests" % REQUESTS)
note("429s: %d" % throttled)
# a fifth per overload would take about ten overloads (and 429s) to get from 48 to 5 a second
ok(1 <= throttled <= 4, "the first 429 brought the pace down to what m3ter admitted: few 429s in all",
   "%d 429s" % throttled)
is_(scalar("SELECT max(attempts) FROM m3ter.outbox"), "1", "the 429s spent no attempt")
is_(standin("GET", "/_control/summary")["duplicates"], 0, "and nothing was stored twice")
standin("POST", "/_control/config", {"rate_limit": None})
done()
