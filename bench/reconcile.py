#!/usr/bin/env python3
"""Reconciling a month: m3ter_reconcile() over BENCH_RC_ROWS rows (default 1,000,000)
spread over BENCH_RC_DAYS days (30) x BENCH_RC_METERS meters (10) x BENCH_RC_ACCOUNTS
accounts (1,000).  Runs on the cluster and stand-in that bench/run.sh starts; the rows
(every meter, account and day mixed: some 300,000 cells) are delivered by the worker to
the stand-in, which stores them (not its fast mode: the
usage query answers from what it stored).  Reports the queries sent (the Data
Explorer's one a second bounds the run), the seconds the run took, the database's
share (the local side: summing the accepted rows by cell, timed on its own) and the
cells compared.  Figures only: nothing here asserts.  JSON goes to
bench/results/reconcile.json.
"""
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench import log, psql, settings  # noqa: E402
from m3ter_tap import standin  # noqa: E402

ROWS = int(os.environ.get("BENCH_RC_ROWS", 1000000))
DAYS = int(os.environ.get("BENCH_RC_DAYS", 30))
METERS = int(os.environ.get("BENCH_RC_METERS", 10))
ACCOUNTS = int(os.environ.get("BENCH_RC_ACCOUNTS", 1000))
START = "2026-10-01Z"

LOCAL_SQL = """
SELECT count(*) FROM (
  SELECT o.meter, o.account, (o.ts AT TIME ZONE 'UTC')::date, kv.key, sum(kv.value::numeric)
    FROM m3ter.outbox o, LATERAL jsonb_each_text(o.measure) kv
   WHERE o.status = 'accepted' AND o.ts >= '{start}' AND o.ts < '{start}'::timestamptz + interval '{days} days'
   GROUP BY 1, 2, 3, 4) c"""


def main():
    standin("POST", "/_control/reset")
    standin("POST", "/_control/config", {"fast": False})
    settings(worker_enabled="off", max_requests_per_second="0", max_requests_per_5min="0")
    time.sleep(0.3)
    psql("TRUNCATE m3ter.outbox; DELETE FROM m3ter.retention_state; DELETE FROM m3ter.reconciliations; DELETE FROM m3ter.catalog_meters; "
         "DELETE FROM m3ter.catalog_accounts")
    for k in range(METERS):
        psql("SELECT m3ter_create_meter('rc%d', 'rc%d', "
             "'[{\"category\": \"MEASURE\", \"code\": \"n\", \"name\": \"N\"}]')" % (k, k))
    standin("POST", "/_control/accounts", {"accounts": ["a%d" % i for i in range(ACCOUNTS)]})
    log("inserting %d rows over %d days x %d meters x %d accounts" % (ROWS, DAYS, METERS, ACCOUNTS))
    psql("""INSERT INTO m3ter.outbox (uid, meter, account, ts, measure)
            SELECT 'rc-' || i, 'rc' || (i %% %d), 'a' || (i / %d %% %d),
                   '%s'::timestamptz + (i / 7 %% %d) * interval '1 day' + (i %% 86400) * interval '1 second',
                   jsonb_build_object('n', (i %% 97) + 0.5)
              FROM generate_series(1, %d) i""" % (METERS, METERS, ACCOUNTS, START, DAYS, ROWS), timeout=900)
    t0 = time.time()
    settings(worker_enabled=None, max_requests_per_second=None)
    while psql("SELECT count(*) FROM m3ter.outbox WHERE status = 'pending'") != "0":
        time.sleep(2)
    log("delivered in %.0f s" % (time.time() - t0))
    psql("VACUUM ANALYZE m3ter.outbox", timeout=900)

    before = len(standin("GET", "/_control/usage")["queries"])
    t0 = time.time()
    out = psql("SELECT count(*) FROM m3ter_reconcile('%s', '%s'::timestamptz + interval '%d days')"
               % (START, START, DAYS), timeout=3600)
    seconds = time.time() - t0
    queries = standin("GET", "/_control/usage")["queries"][before:]
    run = json.loads(psql("SELECT row_to_json(r) FROM m3ter.reconciliations r ORDER BY id DESC LIMIT 1"))
    t1 = time.time()
    cells = psql(LOCAL_SQL.format(start=START, days=DAYS), timeout=900)
    local_s = time.time() - t1
    result = {"rows": ROWS, "days": DAYS, "meters": METERS, "accounts": ACCOUNTS,
              "queries": len(queries), "queries_429": sum(1 for q in queries if q["status"] == 429),
              "seconds": round(seconds, 1), "local_side_seconds": round(local_s, 2),
              "cells_compared": run["cells_compared"], "cells_drifting": run["cells_drifting"],
              "drift_rows": int(out), "local_cells": int(cells)}
    print("\nReconciling %(rows)d rows, %(days)d days x %(meters)d meters x %(accounts)d accounts:" % result)
    print("  %(queries)d usage queries (%(queries_429)d answered 429), %(seconds).1f s in all; "
          "the local side %(local_side_seconds).2f s; %(cells_compared)d cells compared, "
          "%(cells_drifting)d drifting" % result)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "reconcile.json"), "w") as f:
        json.dump(result, f, indent=2)
    settings(worker_enabled=None, max_requests_per_second=None, max_requests_per_5min=None)


if __name__ == "__main__":
    main()
