#!/usr/bin/python3
"""The relay a team writes today with the official SDK's submit_all shape, for
comparison: select 1000 pending rows, post them, mark them, one after another.
Like the SDK's generated client it retries 429 and 5xx, honouring Retry-After.
psycopg2 (Debian's python3-psycopg2) and the stdlib.

Usage: python_relay.py  (PG* environment for the database; STANDIN_URL, M3TER_ORG_ID,
M3TER_ACCESS_KEY_ID, M3TER_API_SECRET for m3ter).  Prints JSON: {"sent": rows,
"requests": n, "retried": n}.
"""
import base64
import http.client
import json
import os
import time
import urllib.parse

import psycopg2

url = urllib.parse.urlsplit(os.environ["STANDIN_URL"])
org = os.environ["M3TER_ORG_ID"]
conn_http = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
requests = 0
retried = 0


def post(path, body, headers):
    """POST until m3ter answers 2xx; 429 and 5xx wait Retry-After (or 0.5 s doubling)."""
    global requests, retried
    delay = 0.5
    while True:
        conn_http.request("POST", path, body=body, headers=headers)
        resp = conn_http.getresponse()
        data = resp.read()
        requests += 1
        if resp.status == 200:
            return json.loads(data)
        if resp.status != 429 and resp.status < 500:
            raise RuntimeError("HTTP %d: %s" % (resp.status, data[:200]))
        retried += 1
        time.sleep(float(resp.getheader("Retry-After") or delay))
        delay = min(delay * 2, 8)


basic = base64.b64encode(("%s:%s" % (os.environ["M3TER_ACCESS_KEY_ID"], os.environ["M3TER_API_SECRET"])).encode()).decode()
token = post("/oauth/token", json.dumps({"grant_type": "client_credentials"}),
             {"Authorization": "Basic " + basic, "Content-Type": "application/json"})["access_token"]
headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}

db = psycopg2.connect("")
sent = 0
after = 0  # continue after the last id taken, as the worker does, so both scan the index alike
while True:
    with db, db.cursor() as cur:
        cur.execute("""SELECT id, uid, meter, account, ts, measure, who, "where", what
                         FROM m3ter.outbox WHERE status = 'pending' AND id > %s
                        ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED""", (after,))
        rows = cur.fetchall()
        if not rows:
            if after == 0:
                break
            after = 0
            continue
        after = rows[-1][0] if len(rows) == 1000 else 0
        measurements = []
        for _id, uid, meter, account, ts, measure, who, where, what in rows:
            m = {"uid": uid, "meter": meter, "account": account,
                 "ts": ts.astimezone().isoformat(timespec="milliseconds")}
            for k, v in (("measure", measure), ("who", who), ("where", where), ("what", what)):
                if v:
                    m[k] = v
            measurements.append(m)
        post("/organizations/%s/measurements" % org, json.dumps({"measurements": measurements}), headers)
        cur.execute("UPDATE m3ter.outbox SET status = 'accepted', accepted_at = now() WHERE id = ANY(%s)",
                    ([r[0] for r in rows],))
        sent += len(rows)
print(json.dumps({"sent": sent, "requests": requests, "retried": retried}))
