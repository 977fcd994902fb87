#!/usr/bin/env python3
"""The benchmark suite: every case in one run, side by side, on the cluster and
stand-in that bench/run.sh starts.  Prints a table and a JSON summary (also
written to bench/results/latest.json).  Figures only: nothing here asserts.

Sizes (environment):  BENCH_ROWS (1,000,000) rows for the drain cases,
BENCH_LIMIT_ROWS (BENCH_ROWS) for the rate-limited drain, BENCH_LARGE_ROWS (20,000)
rows with large metadata, BENCH_PER_ROW (3,000) rows sent one per request,
BENCH_LATENCY_ROWS (300) rows trickled at 10 a second, BENCH_PGBENCH_SECONDS (10).
"""
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "test"))
from m3ter_tap import BINDIR, ingest_requests, psql, set_and_reload, standin, worker_pid  # noqa: E402

ROWS = int(os.environ.get("BENCH_ROWS", 1000000))
LIMIT_ROWS = int(os.environ.get("BENCH_LIMIT_ROWS", ROWS))
LARGE_ROWS = int(os.environ.get("BENCH_LARGE_ROWS", 20000))
PER_ROW = int(os.environ.get("BENCH_PER_ROW", 3000))
LATENCY_ROWS = int(os.environ.get("BENCH_LATENCY_ROWS", 300))
PGBENCH_SECONDS = int(os.environ.get("BENCH_PGBENCH_SECONDS", 10))

# one realistic usage row: meter, account, ts, two measures, three dimensions
ROW_SQL = """
INSERT INTO {table} (meter, account, ts, measure, who, "where", what)
SELECT 'api_requests', 'acct-' || (i % 1000), now() - (i % 3600) * interval '1 s',
       jsonb_build_object('requests', i % 100 + 1, 'bytes', (i % 5000) * 17),
       jsonb_build_object('user', 'user-' || (i % 5000)),
       jsonb_build_object('region', (ARRAY['eu-west-1', 'us-east-1', 'ap-south-1'])[i % 3 + 1]),
       jsonb_build_object('endpoint', '/v1/messages')
  FROM generate_series({lo}, {hi}) i
"""

results = {}

# The database floor: the worker's own work on the database, server-side in one
# PL/pgSQL loop with no client round trip and no HTTP.  As the worker does: claim
# m3ter.batch_rows rows (the same columns, in id order after the last row claimed),
# mark them 'accepted' with its UPDATE ... WHERE id = ANY(...) once per request of
# 1000 rows, commit once per claim.
FLOOR_SQL = """
DO $$
DECLARE
    batch int := coalesce(current_setting('m3ter.batch_rows', true)::int, 5000);
    ids bigint[];
    after bigint := 0;
    n int;
    k int;
BEGIN
    LOOP
        SELECT array_agg(id ORDER BY id) INTO ids
          FROM (SELECT id, uid, meter, account, ts, ets, measure, cost, income, who, "where", what, other, metadata
                  FROM m3ter.outbox WHERE id > after ORDER BY id LIMIT batch) c;
        n := coalesce(cardinality(ids), 0);
        EXIT WHEN n = 0;
        k := 1;
        WHILE k <= n LOOP
            UPDATE m3ter.outbox SET status = 'accepted', attempts = attempts + 1, http_status = 200,
                   error = NULL, sent_at = clock_timestamp(), accepted_at = clock_timestamp(),
                   next_attempt_at = LEAST(next_attempt_at, created_at)
             WHERE id = ANY (ids[k:k + 999]) AND status = 'pending';
            k := k + 1000;
        END LOOP;
        COMMIT;
        after := ids[n];
    END LOOP;
END $$"""

# The floor as it was measured before: one UPDATE ... FROM a join with the claim
# of 5000 rows (kept to compare with, bench/dbcost.py BENCH_DB_FORMER_FLOOR=1)
FORMER_FLOOR_SQL = """
DO $$
DECLARE
    n int;
    after bigint := 0;
    last bigint;
BEGIN
    LOOP
        WITH c AS (SELECT id, uid, meter, account, ts, ets, measure, cost, income, who, "where", what, other, metadata
                     FROM m3ter.outbox WHERE status = 'pending' AND next_attempt_at <= now() AND id > after
                    ORDER BY id LIMIT 5000 FOR UPDATE SKIP LOCKED),
             u AS (UPDATE m3ter.outbox o SET status = 'accepted', attempts = o.attempts + 1, http_status = 200,
                          error = NULL, sent_at = clock_timestamp(), accepted_at = clock_timestamp()
                     FROM c WHERE o.id = c.id RETURNING o.id)
        SELECT count(*), max(id) INTO n, last FROM u;
        COMMIT;
        EXIT WHEN n = 0 AND after = 0;
        after := CASE WHEN n = 5000 THEN last ELSE 0 END;
    END LOOP;
END $$"""


def log(msg):
    print("==> " + msg, file=sys.stderr, flush=True)


def settings(**kw):
    """set_and_reload() without the pause: the cases time from the reload on."""
    set_and_reload(_settle=0, **kw)


def fresh_outbox(n, large=False):
    """An outbox holding n pending rows, vacuumed and analysed, the worker off."""
    settings(worker_enabled="off")
    time.sleep(0.3)
    psql("TRUNCATE m3ter.outbox")
    step = 200000
    for lo in range(1, n + 1, step):
        sql = ROW_SQL.format(table="m3ter.outbox", lo=lo, hi=min(n, lo + step - 1))
        if large:
            # ten 1,000-character metadata values: about 10 kB a row
            sql = sql.replace('"where", what)', '"where", what, metadata)') \
                     .replace("'/v1/messages')\n", "'/v1/messages'),\n       (SELECT jsonb_object_agg('k' || k, repeat(chr(97 + k), 1000)) FROM generate_series(0, 9) k)\n")
        psql(sql, timeout=900)
    psql("VACUUM ANALYZE m3ter.outbox", timeout=900)


def standin_fresh(**config):
    standin("POST", "/_control/reset")
    standin("POST", "/_control/config", dict({"fast": True}, **config))


def accepted_counter():
    return int(psql("SELECT accepted FROM m3ter_worker_status()"))


def rss_kb(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("VmRSS:", "RssAnon:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0])
    return out


def fullness(reqs):
    ok = [r for r in reqs if r["status"] == 200]
    if not ok:
        return {}
    return {"requests": len(ok),
            "mean_measurements": round(sum(r["measurements"] for r in ok) / len(ok), 1),
            "mean_bytes": round(sum(r["bytes"] for r in ok) / len(ok)),
            "max_bytes": max(r["bytes"] for r in ok),
            "status_429": sum(1 for r in reqs if r["status"] == 429)}


def worker_drain(n, sample_memory=False):
    """Switch the worker on and time it draining n rows; returns figures."""
    base = accepted_counter()
    t0 = time.time()
    settings(worker_enabled=None)
    pid = None
    rss_at_10k = None
    peak = 0
    while True:
        done = accepted_counter() - base
        if sample_memory:
            pid = pid or worker_pid()
            if pid:
                # private memory: VmRSS also counts the shared buffers the worker touched
                m = rss_kb(pid)
                peak = max(peak, m["RssAnon"])
                if rss_at_10k is None and done >= 10000:
                    rss_at_10k = m["RssAnon"]
        if done >= n:
            break
        time.sleep(0.05)
    dt = time.time() - t0
    out = {"rows": n, "seconds": round(dt, 2), "rows_per_s": round(n / dt)}
    if sample_memory and pid:
        final = rss_kb(pid)
        out.update(rss_after_10k_kb=rss_at_10k, rss_final_kb=final["RssAnon"], rss_peak_kb=max(peak, final["RssAnon"]),
                   rss_shared_final_kb=final["VmRSS"] - final["RssAnon"])
    return out


def timed_psql(sql):
    t0 = time.time()
    psql(sql, timeout=3600)
    return time.time() - t0


def case_standin_speed():
    log("the stand-in alone")
    standin_fresh()
    r = subprocess.run([sys.executable, os.path.join(HERE, "standin_speed.py"), "3"],
                       capture_output=True, text=True, check=True)
    results["standin_alone"] = json.loads(r.stdout)


def case_drain():
    settings(max_requests_per_second="0")

    log("drain: database floor (claim and mark %d rows in plain SQL, no HTTP)" % ROWS)
    fresh_outbox(ROWS)
    dt = timed_psql(FLOOR_SQL)
    results["drain_floor"] = {"rows": ROWS, "seconds": round(dt, 2), "rows_per_s": round(ROWS / dt)}

    log("drain: the m3ter worker (%d rows, pacing off)" % ROWS)
    fresh_outbox(ROWS)
    standin_fresh()
    results["drain_worker"] = worker_drain(ROWS, sample_memory=True)
    results["fullness_small"] = fullness(ingest_requests())

    log("drain: the Python relay (%d rows)" % ROWS)
    fresh_outbox(ROWS)
    standin_fresh()
    env = dict(os.environ, M3TER_ORG_ID=os.environ["M3TER_ORG_ID"])
    t0 = time.time()
    subprocess.run(["/usr/bin/python3", os.path.join(HERE, "python_relay.py")], env=env, check=True,
                   capture_output=True, text=True)
    dt = time.time() - t0
    results["drain_python_relay"] = {"rows": ROWS, "seconds": round(dt, 2), "rows_per_s": round(ROWS / dt)}

    log("drain: one request per row (%d rows, pacing off)" % PER_ROW)
    fresh_outbox(PER_ROW)
    standin_fresh()
    dt = timed_psql(per_row_sql(PER_ROW, paced=False))
    results["drain_per_row"] = {"rows": PER_ROW, "seconds": round(dt, 2), "rows_per_s": round(PER_ROW / dt)}
    settings(max_requests_per_second=None)


def per_row_sql(n, paced):
    return """
SET m3ter.max_requests_per_second = %s;
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT * FROM m3ter.outbox WHERE status = 'pending' ORDER BY id LIMIT %d LOOP
        PERFORM m3ter_submit(jsonb_strip_nulls(jsonb_build_object(
            'uid', r.uid, 'meter', r.meter, 'account', r.account,
            'ts', to_char(r.ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
            'measure', r.measure, 'who', r.who, 'where', r."where", 'what', r.what)));
        UPDATE m3ter.outbox SET status = 'accepted', accepted_at = clock_timestamp() WHERE id = r.id;
    END LOOP;
END $$""" % ("DEFAULT" if paced else "0", n)


def case_large():
    log("fullness: %d rows of about 10 kB (the byte limit binds)" % LARGE_ROWS)
    settings(max_requests_per_second="0")
    fresh_outbox(LARGE_ROWS, large=True)
    standin_fresh()
    results["drain_large"] = worker_drain(LARGE_ROWS)
    results["fullness_large"] = fullness(ingest_requests())
    settings(max_requests_per_second=None)


def case_insert():
    log("INSERT cost: m3ter.outbox against a plain table with the same columns (pgbench, %d s each)" % PGBENCH_SECONDS)
    settings(worker_enabled="off")
    psql("DROP TABLE IF EXISTS bench_plain; "
         "CREATE TABLE bench_plain (LIKE m3ter.outbox INCLUDING DEFAULTS INCLUDING IDENTITY); "
         "ALTER TABLE bench_plain ADD PRIMARY KEY (id)")
    single = """\\set aid random(1, 1000)
INSERT INTO {t} (meter, account, measure, who, "where", what) VALUES ('api_requests', 'acct-' || :aid,
  '{"requests": 1, "bytes": 17}', '{"user": "user-1"}', '{"region": "eu-west-1"}', '{"endpoint": "/v1/messages"}');
"""
    multi = ROW_SQL.replace("{lo}", "1").replace("{hi}", "100") + ";\n"
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for kind, template, rows_per_tx in (("single_row", single, 1), ("multi_row_100", multi, 100)):
            for table in ("bench_plain", "m3ter.outbox"):
                psql("TRUNCATE bench_plain, m3ter.outbox; CHECKPOINT")
                script = os.path.join(d, "s.sql")
                with open(script, "w") as f:
                    f.write(template.replace("{t}", table).replace("{table}", table))
                r = subprocess.run([BINDIR + "/pgbench", "-n", "-c", "4", "-j", "2", "-T", str(PGBENCH_SECONDS),
                                    "-f", script, os.environ.get("PGDATABASE", "postgres")],
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    raise RuntimeError("pgbench failed: " + r.stderr)
                tps = float([line for line in r.stdout.splitlines() if line.startswith("tps")][0].split()[2])
                out.setdefault(kind, {})["plain" if table == "bench_plain" else "outbox"] = round(tps * rows_per_tx)
            out[kind]["ratio"] = round(out[kind]["outbox"] / out[kind]["plain"], 3)
    psql("TRUNCATE m3ter.outbox; DROP TABLE bench_plain")
    results["insert_rows_per_s"] = out


def case_latency():
    log("latency: %d rows inserted at 10 a second, default settings" % LATENCY_ROWS)
    settings(worker_enabled=None, max_requests_per_second=None)
    psql("TRUNCATE m3ter.outbox")
    standin_fresh()
    psql("""
DO $$
BEGIN
    FOR i IN 1..%d LOOP
        PERFORM pg_sleep(0.1);
        COMMIT;
        -- created_at is now(), the start of this one-statement transaction
        INSERT INTO m3ter.outbox (uid, meter, account, measure) VALUES ('lat-' || i, 'api_requests', 'acme', '{"requests": 1}');
        COMMIT;
    END LOOP;
END $$""" % LATENCY_ROWS, timeout=3600)
    deadline = time.time() + 30
    while psql("SELECT count(*) FROM m3ter.outbox_pending") != "0" and time.time() < deadline:
        time.sleep(0.1)
    p = psql("SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP "
             "(ORDER BY extract(epoch FROM accepted_at - created_at) * 1000) FROM m3ter.outbox")
    p50, p95, p99 = (round(float(x), 1) for x in p.strip("{}").split(","))
    results["latency_ms"] = {"rows": LATENCY_ROWS, "p50": p50, "p95": p95, "p99": p99}


def case_limits():
    log("under the real limits: %d rows, default pacing, stand-in enforcing 50/s and 5,000 per 5 min" % LIMIT_ROWS)
    settings(max_requests_per_second=None)
    fresh_outbox(LIMIT_ROWS)
    standin_fresh(rate_limit={"per_second": 50, "window": 300, "window_max": 5000})
    results["limits"] = worker_drain(LIMIT_ROWS)
    results["limits"].update(fullness(ingest_requests()))
    log("one request per row, paced the same way (150 rows)")
    fresh_outbox(150)
    dt = timed_psql(per_row_sql(150, paced=True))
    results["per_row_paced"] = {"rows": 150, "seconds": round(dt, 2), "rows_per_s": round(150 / dt, 1)}


def verdicts():
    r = results
    w = r["drain_worker"]["rows_per_s"]
    rows = [
        ("drain: worker / database floor", w / r["drain_floor"]["rows_per_s"], ">= 0.5", lambda x: x >= 0.5),
        ("drain: worker / Python relay", w / r["drain_python_relay"]["rows_per_s"], ">= 5", lambda x: x >= 5),
        ("drain: worker / one request per row (loopback, unpaced)", w / r["drain_per_row"]["rows_per_s"], ">= 500",
         lambda x: x >= 500),
        ("drain: worker / one request per row (both paced to m3ter's limits)",
         r["limits"]["rows_per_s"] / r["per_row_paced"]["rows_per_s"], ">= 500", lambda x: x >= 500),
        ("fullness, small rows: % of 1000 measurements", r["fullness_small"]["mean_measurements"] / 10, ">= 99",
         lambda x: x >= 99),
        ("fullness, large rows: % of 512,000 bytes", r["fullness_large"]["mean_bytes"] / 5120, ">= 95",
         lambda x: x >= 95),
        ("INSERT single-row: outbox / plain", r["insert_rows_per_s"]["single_row"]["ratio"], ">= 0.8", lambda x: x >= 0.8),
        ("INSERT 100-row: outbox / plain", r["insert_rows_per_s"]["multi_row_100"]["ratio"], ">= 0.8", lambda x: x >= 0.8),
        ("latency p50 ms", r["latency_ms"]["p50"], "<= 100", lambda x: x <= 100),
        ("latency p99 ms", r["latency_ms"]["p99"], "<= 500", lambda x: x <= 500),
        ("worker private RSS growth MB (final - after 10k rows)",
         (r["drain_worker"]["rss_final_kb"] - r["drain_worker"]["rss_after_10k_kb"]) / 1024, "<= 16",
         lambda x: x <= 16),
        ("limits: seconds for %d rows" % LIMIT_ROWS, r["limits"]["seconds"],
         "<= %.0f" % (70 * LIMIT_ROWS / 1000000), lambda x: x <= 70 * LIMIT_ROWS / 1000000),
        ("limits: 429 answers", r["limits"]["status_429"], "0", lambda x: x == 0),
    ]
    return [(name, round(v, 2), target, bool(f(v))) for name, v, target, f in rows]


def main():
    results["machine"] = {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                          "postgres": psql("SHOW server_version")}
    t0 = time.time()
    case_standin_speed()
    case_drain()
    case_large()
    case_insert()
    case_latency()
    case_limits()
    settings(worker_enabled=None, max_requests_per_second=None)
    results["verdicts"] = [{"figure": n, "value": v, "target": t, "met": m} for n, v, t, m in verdicts()]
    results["total_seconds"] = round(time.time() - t0)

    r = results
    print()
    print("m3ter for PostgreSQL benchmark -- %d cores, PostgreSQL %s" % (r["machine"]["cores"], r["machine"]["postgres"]))
    print("stand-in alone (fast mode, one connection): %.0f requests/s = %d measurements/s"
          % (r["standin_alone"]["requests_per_s"], r["standin_alone"]["measurements_per_s"]))
    print()
    print("%-44s %10s %10s" % ("drain", "rows", "rows/s"))
    for key, name in (("drain_floor", "database floor (SQL claim + mark, no HTTP)"),
                      ("drain_worker", "m3ter worker, pacing off"),
                      ("drain_python_relay", "Python relay (psycopg2, 1000 a request)"),
                      ("drain_per_row", "one request per row, pacing off"),
                      ("limits", "m3ter worker, default pacing, real limits"),
                      ("per_row_paced", "one request per row, default pacing")):
        print("%-44s %10d %10s" % (name, r[key]["rows"], r[key]["rows_per_s"]))
    print()
    print("%-70s %10s %8s %5s" % ("figure", "value", "target", "met"))
    for v in r["verdicts"]:
        print("%-70s %10s %8s %5s" % (v["figure"], v["value"], v["target"], "yes" if v["met"] else "NO"))
    print()
    print("details: fullness small %s; fullness large %s; INSERT rows/s %s; latency %s; worker memory kB "
          "after 10k %s, final %s, peak %s; limits %s" % (
              r["fullness_small"], r["fullness_large"], r["insert_rows_per_s"], r["latency_ms"],
              r["drain_worker"]["rss_after_10k_kb"], r["drain_worker"]["rss_final_kb"],
              r["drain_worker"]["rss_peak_kb"], r["limits"]))
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "latest.json"), "w") as f:
        json.dump(results, f, indent=2)
    print()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
