"""The stand-in models the network and m3ter's limits: latency, bandwidth, the
per-organization and per-source limits answered with 429, and 64 clients at once."""
import base64
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

ORG = os.environ["M3TER_ORG_ID"]
PATH = "/organizations/%s/measurements" % ORG
MAIN_PORT = urllib.parse.urlsplit(STANDIN_URL).port
_uid = [0]


def connect(port=MAIN_PORT):
    return http.client.HTTPConnection("127.0.0.1", port, timeout=30)


def call(conn, method, path, body=None, headers=None):
    """One request on a keep-alive connection: (status, headers, JSON body, seconds)."""
    t0 = time.time()
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, resp, json.loads(data) if data else None, time.time() - t0


def token():
    basic = base64.b64encode(("%s:%s" % (os.environ["M3TER_ACCESS_KEY_ID"],
                                         os.environ["M3TER_API_SECRET"])).encode()).decode()
    status, _, doc, _ = call(connect(), "POST", "/oauth/token", '{"grant_type": "client_credentials"}',
                             {"Authorization": "Basic " + basic, "Content-Type": "application/json"})
    assert status == 200, doc
    return doc["access_token"]


def body(n=1, pad=0):
    items = []
    for _ in range(n):
        _uid[0] += 1
        m = {"uid": "standin-%d" % _uid[0], "meter": "api_requests", "account": "acme",
             "ts": "2024-01-02T03:04:05.000Z", "measure": {"requests": 1}}
        if pad:
            m["metadata"] = {"pad": "x" * pad}
        items.append(m)
    return json.dumps({"measurements": items})


def ingest(conn, tok, n=1, pad=0):
    return call(conn, "POST", PATH, body(n, pad), {"Authorization": "Bearer " + tok,
                                                   "Content-Type": "application/json"})


def config(**kw):
    standin("POST", "/_control/reset")
    standin("POST", "/_control/config", kw)


def start_of_second():
    """Wait for a fresh wall-clock second, so a quick series stays within one."""
    time.sleep(1.0 - time.time() % 1.0 + 0.01)


tok = token()

# latency: half before the request is handled (the arrival the log and limits see), half before the answer
config(latency_ms=300)
conn = connect()
t_sent = time.time()
status, _, _, dt = ingest(conn, tok)
entry = ingest_requests()[-1]
is_(status, 200, "with 300 ms latency, an ingest request is accepted")
ok(0.3 <= dt < 0.5, "and takes 300 ms (%.0f ms)" % (dt * 1000))
ok(0.14 <= entry["t"] - t_sent < 0.25 and 0.14 <= entry["answered"] - entry["t"] < 0.25,
   "the stand-in saw it arrive half the latency after it was sent, and answered half the latency later",
   entry)
status, _, _, dt = call(conn, "GET", "/_control/summary")
ok(dt < 0.1, "control requests are not delayed (%.0f ms)" % (dt * 1000))

# bandwidth: a 100 kB body at 200 kB/s takes half a second to read
config(bandwidth_bytes_per_s=200000)
status, _, _, dt = ingest(connect(), tok, n=10, pad=10000)
ok(status == 200 and 0.45 <= dt < 1.0, "at 200 kB/s a 100 kB request takes about 0.5 s (%.2f s)" % dt)

# the per-organization limit: per wall-clock second, 429 for the rest of it
config(rate_limit=True)
rl = standin("GET", "/_control/summary")["rate_limit"]
is_({k: rl[k] for k in ("per_second", "window", "window_max", "model")},
    {"per_second": 50, "window": 300, "window_max": 5000, "model": "fixed"},
    "rate_limit: true means m3ter's published limits, counted per wall-clock second")
for attempt in range(3):
    standin("POST", "/_control/reset")
    standin("POST", "/_control/config", {"rate_limit": {"per_second": 10}})
    conn = connect()
    start_of_second()
    answers = [ingest(conn, tok) for _ in range(14)]
    seconds = {int(r["t"]) for r in ingest_requests()}
    if len(seconds) == 1:
        break
is_([a[0] for a in answers], [200] * 10 + [429] * 4, "10 a second: the 11th to 14th requests in that second get 429")
last = answers[-1]
is_((last[1].getheader("Retry-After"), sorted(last[2])), ("1", ["message"]),
    "a 429 carries Retry-After: 1 and a JSON body with a message")
note("429 message: %s" % (last[2] or {}).get("message"))
start_of_second()
is_(ingest(conn, tok)[0], 200, "the next second, requests pass again")
summary = standin("GET", "/_control/summary")
is_((summary["status_counts"], summary["limited"], summary["ingest_requests"], summary["token_requests"]),
    ({"200": 11, "429": 4}, {"organization": 4}, 15, 0), "the summary counts statuses, limits and requests")

# the per-source budget: rolling, per source; each extra listening port is a source
config(rate_limit={"per_second": 1000, "window": 2, "window_max": 20})
conn = connect()
statuses = [ingest(conn, tok)[0] for _ in range(25)]
is_(statuses, [200] * 20 + [429] * 5, "20 per 2 s from one source: the 21st to 25th get 429")
other = standin("POST", "/_control/listen", {})
conn_b = connect(other["port"])
is_([ingest(conn_b, tok)[0] for _ in range(5)], [200] * 5, "another source (a second port) has its own budget")
time.sleep(2.05)
is_(ingest(conn, tok)[0], 200, "once the window has rolled on, the first source may send again")
is_(standin("GET", "/_control/summary")["limited"], {"source": 5}, "those 429s were the per-source limit")

# the per-organization limit is shared by every source of the organization
for attempt in range(3):
    config(rate_limit={"per_second": 10})
    conn, conn_b = connect(), connect(other["port"])
    start_of_second()
    statuses = [ingest(conn, tok)[0] for _ in range(6)] + [ingest(conn_b, tok)[0] for _ in range(6)]
    if len({int(r["t"]) for r in ingest_requests()}) == 1:
        break
is_(statuses, [200] * 10 + [429] * 2, "two sources share one organization's 10 a second")

# load: 64 clients connect at once and are all served, concurrently
config(latency_ms=500)
barrier = threading.Barrier(64)
results = []


def client():
    try:
        c = connect()
        barrier.wait()
        results.append(ingest(c, tok)[0])
    except Exception as e:  # a dropped or refused connection
        results.append(repr(e))


threads = [threading.Thread(target=client) for _ in range(64)]
t0 = time.time()
for t in threads:
    t.start()
for t in threads:
    t.join()
dt = time.time() - t0
is_(results, [200] * 64, "64 concurrent connections each get their answer (none dropped)")
summary = standin("GET", "/_control/summary")
is_(summary["max_in_flight"], 64, "the stand-in had all 64 requests in flight at once")
ok(dt < 1.5, "so 64 requests of 500 ms took %.2f s, not 64 x 0.5 s" % dt)

standin("POST", "/_control/reset")
done()
