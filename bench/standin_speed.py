#!/usr/bin/env python3
"""How fast the stand-in alone accepts full requests (fast mode), over one
keep-alive connection: prints JSON {"requests_per_s", "measurements_per_s"}."""
import base64
import http.client
import json
import os
import sys
import time
import urllib.parse

url = urllib.parse.urlsplit(os.environ["STANDIN_URL"])
seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)


def post(path, body, headers):
    conn.request("POST", path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    assert resp.status == 200, data
    return json.loads(data)


basic = base64.b64encode(("%s:%s" % (os.environ["M3TER_ACCESS_KEY_ID"], os.environ["M3TER_API_SECRET"])).encode()).decode()
token = post("/oauth/token", '{"grant_type":"client_credentials"}',
             {"Authorization": "Basic " + basic, "Content-Type": "application/json"})["access_token"]
body = json.dumps({"measurements": [
    {"uid": "speed-%d" % i, "meter": "api_requests", "account": "acct-%d" % (i % 1000), "ts": "2024-01-02T03:04:05.000Z",
     "measure": {"requests": i % 100, "bytes": i * 17}, "who": {"user": "user-%d" % i},
     "where": {"region": "eu-west-1"}, "what": {"endpoint": "/v1/messages"}} for i in range(1000)]},
    separators=(",", ":"))
headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
path = "/organizations/%s/measurements" % os.environ["M3TER_ORG_ID"]
n = 0
t0 = time.time()
while time.time() - t0 < seconds:
    post(path, body, headers)
    n += 1
dt = time.time() - t0
print(json.dumps({"requests_per_s": round(n / dt, 1), "measurements_per_s": round(n * 1000 / dt)}))
