#!/usr/bin/env python3
"""The application's INSERT path: pgbench, a real client, inserting one row a
statement into m3ter.outbox, against the same into a plain table with the same
columns and defaults (CREATE TABLE ... LIKE m3ter.outbox, a primary key on id,
no uid index, no CHECK), on the cluster and stand-in that bench/run.sh starts.
The worker is on and delivers to the stand-in (fast mode) with its default
pacing and 5-minute budget, as an application would run it.  Rounds alternate
plain and outbox; the figure is the median of the rounds' ratios.  Figures
only: nothing here asserts.

Each set of rounds runs twice (BENCH_INSERT_FSYNC, default "on,off"): with fsync on,
as a server runs, where every commit waits for its WAL flush; and with fsync off (as
the test clusters run), where the machine's CPU alone bounds both tables and every
microsecond a row costs shows.

For each run it also prints what the rows cost: WAL bytes and records a row
(pg_stat_wal), full-page images a row, and the CPU a row of the worker and of
the stand-in (from /proc), the parts the plain table does not pay.

Sizes (environment): BENCH_INSERT_ROUNDS (3) rounds of BENCH_INSERT_SECONDS (20)
seconds a table, BENCH_INSERT_CLIENTS (8) pgbench clients on 2 threads;
BENCH_INSERT_BUDGET (5000, the default) m3ter.max_requests_per_5min while it
runs (the test clusters turn it off: 0 sends up to 48 requests a second of
fewer rows each).
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "test"))
from m3ter_tap import BINDIR, psql, set_and_reload, standin, worker_pid  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_INSERT_ROUNDS", 3))
SECONDS = int(os.environ.get("BENCH_INSERT_SECONDS", 20))
CLIENTS = int(os.environ.get("BENCH_INSERT_CLIENTS", 8))
BUDGET = os.environ.get("BENCH_INSERT_BUDGET", "5000")
FSYNC = [x.strip() for x in os.environ.get("BENCH_INSERT_FSYNC", "on,off").split(",") if x.strip()]

# one usage row a statement, as an application writes it (uid, ts and the rest defaulted)
SCRIPT = """\\set aid random(1, 1000)
INSERT INTO {table} (meter, account, measure, who, "where", what) VALUES ('api_requests', 'acct-' || :aid,
  '{{"requests": 1, "bytes": 17}}', '{{"user": "user-1"}}', '{{"region": "eu-west-1"}}', '{{"endpoint": "/v1/messages"}}');
"""


def log(msg):
    print("==> " + msg, file=sys.stderr, flush=True)


def cpu_s(pid):
    """User and system CPU seconds of a process so far (0 when it is gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, TypeError):
        return 0.0


def standin_pid():
    r = subprocess.run(["pgrep", "-f", "m3ter_standin.py --port-file " + os.environ["M3TER_TMP"] + "/"],
                       capture_output=True, text=True)
    pids = [int(p) for p in r.stdout.split()]
    return pids[0] if pids else None


def wal():
    return [int(x) for x in psql("SELECT wal_bytes::bigint, wal_records, wal_fpi FROM pg_stat_wal").split("|")]


def run(table, script_dir):
    """One pgbench run into table from empty; returns its figures."""
    # the worker delivers what the previous outbox run left before this one starts
    deadline = time.time() + 120
    while psql("SELECT count(*) FROM m3ter.outbox_pending") != "0" and time.time() < deadline:
        time.sleep(0.5)
    psql("TRUNCATE bench_plain, m3ter.outbox")
    psql("CHECKPOINT")
    script = os.path.join(script_dir, "insert.sql")
    with open(script, "w") as f:
        f.write(SCRIPT.format(table=table))
    wpid, spid = worker_pid(), standin_pid()
    w0, s0, wal0 = cpu_s(wpid), cpu_s(spid), wal()
    acc0 = int(psql("SELECT accepted FROM m3ter_worker_status()"))
    hot0 = psql("SELECT n_tup_upd || '|' || n_tup_hot_upd FROM pg_stat_user_tables "
                "WHERE relid = 'm3ter.outbox'::regclass").split("|")
    r = subprocess.run([BINDIR + "/pgbench", "-n", "-c", str(CLIENTS), "-j", "2", "-T", str(SECONDS),
                        "-f", script, os.environ.get("PGDATABASE", "postgres")],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("pgbench failed: " + r.stderr)
    w1, s1, wal1 = cpu_s(wpid), cpu_s(spid), wal()
    acc1 = int(psql("SELECT accepted FROM m3ter_worker_status()"))
    rows = int(re.search(r"number of transactions actually processed: (\d+)", r.stdout).group(1))
    tps = float(re.search(r"^tps = ([\d.]+)", r.stdout, re.M).group(1))
    out = {"rows_per_s": round(tps), "rows": rows,
           "wal_bytes_per_row": round((wal1[0] - wal0[0]) / rows),
           "wal_records_per_row": round((wal1[1] - wal0[1]) / rows, 2),
           "fpi_per_row": round((wal1[2] - wal0[2]) / rows, 4),
           "worker_cpu_us_per_row": round((w1 - w0) * 1e6 / rows, 1),
           "standin_cpu_us_per_row": round((s1 - s0) * 1e6 / rows, 1),
           # the share of the rows the worker delivered while pgbench ran
           "accepted_during_run": round((acc1 - acc0) / rows, 3)}
    if table == "m3ter.outbox":
        # the run's outcome writes, once delivered and the worker's statistics
        # sent (at most a second apart): HOT updates stay on their page
        deadline = time.time() + 120
        while psql("SELECT count(*) FROM m3ter.outbox_pending") != "0" and time.time() < deadline:
            time.sleep(0.5)
        time.sleep(3)
        hot1 = psql("SELECT n_tup_upd || '|' || n_tup_hot_upd FROM pg_stat_user_tables "
                    "WHERE relid = 'm3ter.outbox'::regclass").split("|")
        upd = int(hot1[0]) - int(hot0[0])
        out["hot_share"] = round((int(hot1[1]) - int(hot0[1])) / upd, 3) if upd else None
        out["accepted"] = int(psql("SELECT count(*) FROM m3ter.outbox WHERE status = 'accepted'"))
    return out


def rounds_with(fsync, script_dir):
    """ROUNDS rounds of plain then outbox with fsync as given (a reload)"""
    psql("ALTER SYSTEM SET fsync = %s" % fsync)
    psql("SELECT pg_reload_conf()")
    time.sleep(0.5)
    rounds = []
    for i in range(ROUNDS):
        log("fsync %s, round %d of %d: %d s a table, %d clients" % (fsync, i + 1, ROUNDS, SECONDS, CLIENTS))
        plain = run("bench_plain", script_dir)
        outbox = run("m3ter.outbox", script_dir)
        rounds.append({"plain": plain, "outbox": outbox,
                       "ratio": round(outbox["rows_per_s"] / plain["rows_per_s"], 3)})
    psql("ALTER SYSTEM RESET fsync")
    psql("SELECT pg_reload_conf()")
    return rounds


def print_rounds(fsync, rounds, median):
    print()
    print("INSERT rows/s, one row a statement, %d clients, %d s a run, worker on, fsync %s (outbox / plain table)"
          % (CLIENTS, SECONDS, fsync))
    print("%-6s %10s %10s %7s   %s" % ("round", "plain", "outbox", "ratio",
                                       "outbox: WAL B/row (plain), records/row, FPI/row, worker / stand-in "
                                       "CPU us/row, delivered during the run, HOT share"))
    for i, r in enumerate(rounds):
        p, o = r["plain"], r["outbox"]
        print("%-6d %10d %10d %7.3f   %d (%d), %.2f, %.4f, %.1f / %.1f, %.2f, %s"
              % (i + 1, p["rows_per_s"], o["rows_per_s"], r["ratio"], o["wal_bytes_per_row"],
                 p["wal_bytes_per_row"], o["wal_records_per_row"], o["fpi_per_row"],
                 o["worker_cpu_us_per_row"], o["standin_cpu_us_per_row"], o["accepted_during_run"],
                 o["hot_share"]))
    print("fsync %s: median ratio %.3f (rounds %s)" % (fsync, median, ", ".join("%.3f" % r["ratio"] for r in rounds)))


def main():
    t0 = time.time()
    set_and_reload(worker_enabled="on", max_requests_per_5min=BUDGET, max_requests_per_second=None)
    standin("POST", "/_control/reset")
    standin("POST", "/_control/config", {"fast": True})
    psql("DROP TABLE IF EXISTS bench_plain; "
         "CREATE TABLE bench_plain (LIKE m3ter.outbox INCLUDING DEFAULTS INCLUDING IDENTITY); "
         "ALTER TABLE bench_plain ADD PRIMARY KEY (id)")
    by_fsync = {}
    with tempfile.TemporaryDirectory() as d:
        for fsync in FSYNC:
            rounds = rounds_with(fsync, d)
            by_fsync[fsync] = {"rounds": rounds, "median_ratio": statistics.median(r["ratio"] for r in rounds)}
    psql("TRUNCATE m3ter.outbox; DROP TABLE bench_plain")
    set_and_reload(max_requests_per_5min=None)

    result = {"clients": CLIENTS, "seconds": SECONDS, "budget": int(BUDGET), "fsync": by_fsync,
              "total_seconds": round(time.time() - t0)}
    for fsync, r in by_fsync.items():
        print_rounds(fsync, r["rounds"], r["median_ratio"])
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "insert.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
