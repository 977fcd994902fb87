"""Waiting out a back-off costs no CPU: while m3ter answers 503 and the next try is
seconds away, neither a session in m3ter_submit() nor the worker spins."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_over(pid, seconds):
    """CPU used over the quieter of two windows of the given length: a process that
    spins uses it in both; one busy with a moment's upkeep (a retention pass after an
    earlier test's rows were deleted) in one only"""
    used = []
    for _ in range(2):
        before = cpu_seconds(pid)
        time.sleep(seconds)
        used.append(cpu_seconds(pid) - before)
    return min(used)


reset()
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "status": 503, "count": 1000}]})

# a session waiting between retries of m3ter_submit()
call = psql_async("SET m3ter.max_retries = 2; SELECT m3ter_submit('{\"meter\": \"api_requests\", "
                  "\"account\": \"acme\", \"ts\": \"2024-01-02T03:04:05Z\", \"measure\": {\"requests\": 1}}')")
pid = None
for _ in range(50):
    pid = psql("SELECT pid FROM pg_stat_activity WHERE query LIKE '%m3ter_submit(%' AND pid <> pg_backend_pid()")
    if pid:
        break
    time.sleep(0.1)
ok(bool(pid), "m3ter_submit() is retrying")
used = cpu_over(int(pid), 1.2) if pid else 99
ok(used < 0.15, "a session waiting out the back-off uses no CPU (%.2f s in 1.2 s)" % used)
call.wait(timeout=60)

# the worker waiting between retries of its requests
insert_usage(100, "backoff-")
ok(wait_until(lambda: len(ingest_requests()) >= 2, timeout=20), "the worker is retrying")
used = cpu_over(int(worker_pid()), 2.5)
ok(used < 0.3, "the worker waiting out the back-off uses no CPU (%.2f s in 2.5 s, the quieter of two)" % used)

standin("POST", "/_control/faults", {"clear": True})
ok(wait_until(lambda: len(stored_uids("backoff-")) == 100, timeout=60), "the rows go once m3ter answers again")

# a token endpoint that cannot be reached: m3ter_submit() gives up after m3ter.max_retries
closed = "http://127.0.0.1:%d" % free_port()
for retries in (0, 1):
    t0 = time.time()
    r = psql("\\set VERBOSITY verbose\nSET m3ter.max_retries = %d; SET m3ter.api_url = '%s'; "
             "SET m3ter.ingest_url = '%s'; SELECT m3ter_submit('{\"meter\": \"api_requests\", "
             "\"account\": \"acme\", \"ts\": \"2024-01-02T03:04:05Z\"}')" % (retries, closed, closed),
             check=False, timeout=60)
    ok(r.returncode != 0 and "M3000" in r.stderr and time.time() - t0 < 10,
       "with the token endpoint down and m3ter.max_retries = %d, m3ter_submit() raises M3000 (%.1f s)"
       % (retries, time.time() - t0), r.stderr)
reset()
done()
