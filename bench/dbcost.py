#!/usr/bin/env python3
"""The database side of a drain, at several table sizes in one run: where the time
per row goes.  Runs on the cluster and stand-in that bench/run.sh starts (pacing
off, no latency, the stand-in in fast mode).  Figures only: nothing here asserts.

For each size (BENCH_DB_SIZES, default "200000,1000000") it fills the outbox, then
  - EXPLAIN (ANALYZE, BUFFERS) of the worker's claim and its 'accepted' update for
    1000 rows, at the start and at the middle of the table (rolled back);
  - the update's cost a row as is and without each of the things it maintains
    (the CHECK, the uid index) and the share of HOT updates;
  - drains it with the worker, sampling the rate every BENCH_DB_SAMPLE seconds;
  - drains it again with the database floor (bench.py's FLOOR_SQL), and with
    BENCH_DB_FORMER_FLOOR=1 with the floor as it was (FORMER_FLOOR_SQL);
and for each drain reports rows/s, the CPU time a row of the draining process (the
worker, or the floor's session) and of the whole cluster (autovacuum included),
WAL bytes and full-page images, buffers written
by backends and checkpoints, heap and index blocks read from outside shared_buffers,
and the table's and indexes' sizes before and after.  JSON goes to
bench/results/dbcost.json.
"""
import json
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402
from bench import accepted_counter, fresh_outbox, log, psql, settings, standin_fresh  # noqa: E402

SIZES = [int(x) for x in os.environ.get("BENCH_DB_SIZES", "200000,1000000").split(",")]
SAMPLE = float(os.environ.get("BENCH_DB_SAMPLE", 1.0))
FORMER_FLOOR = os.environ.get("BENCH_DB_FORMER_FLOOR") == "1"

CLAIM = ("SELECT id, uid, meter, account, ts, ets, measure, cost, income, who, \"where\", what, other, metadata "
         "FROM m3ter.outbox WHERE id > {after} ORDER BY id LIMIT 1000")
ACCEPTED = ("UPDATE m3ter.outbox SET status = 'accepted', attempts = attempts + 1, "
            "http_status = 200, error = NULL, sent_at = clock_timestamp(), accepted_at = clock_timestamp(), "
            "next_attempt_at = LEAST(next_attempt_at, created_at) "
            "WHERE id = ANY(ARRAY(SELECT generate_series({lo}, {lo} + 999)::bigint)) AND status = 'pending'")


def stats():
    """Cumulative counters that a drain moves."""
    row = psql("""
SELECT json_build_object(
  'wal_bytes', (SELECT wal_bytes FROM pg_stat_wal),
  'wal_fpi', (SELECT wal_fpi FROM pg_stat_wal),
  'wal_records', (SELECT wal_records FROM pg_stat_wal),
  'wal_buffers_full', (SELECT wal_buffers_full FROM pg_stat_wal),
  'checkpoints', (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter),
  'buffers_checkpoint', (SELECT buffers_checkpoint FROM pg_stat_bgwriter),
  'buffers_clean', (SELECT buffers_clean FROM pg_stat_bgwriter),
  'buffers_backend', (SELECT buffers_backend FROM pg_stat_bgwriter),
  'buffers_alloc', (SELECT buffers_alloc FROM pg_stat_bgwriter),
  'heap_blks_read', (SELECT heap_blks_read FROM pg_statio_user_tables WHERE relid = 'm3ter.outbox'::regclass),
  'heap_blks_hit', (SELECT heap_blks_hit FROM pg_statio_user_tables WHERE relid = 'm3ter.outbox'::regclass),
  'idx_blks_read', (SELECT idx_blks_read FROM pg_statio_user_tables WHERE relid = 'm3ter.outbox'::regclass),
  'idx_blks_hit', (SELECT idx_blks_hit FROM pg_statio_user_tables WHERE relid = 'm3ter.outbox'::regclass),
  'n_tup_hot_upd', (SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = 'm3ter.outbox'::regclass),
  'n_tup_upd', (SELECT n_tup_upd FROM pg_stat_user_tables WHERE relid = 'm3ter.outbox'::regclass))""")
    return json.loads(row)


def sizes():
    """Sizes in MB of the table and each index, and the dead tuples."""
    rows = psql("""SELECT c.relname, pg_relation_size(c.oid) / 1048576.0 FROM pg_class c
                    WHERE c.oid = 'm3ter.outbox'::regclass
                       OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'm3ter.outbox'::regclass)""")
    out = {name: round(float(mb), 1) for name, mb in (line.split("|") for line in rows.splitlines())}
    out["n_dead_tup"] = int(psql("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'm3ter.outbox'::regclass"))
    return out


def delta(before, after, rows):
    d = {k: after[k] - before[k] for k in before}
    d["wal_bytes_per_row"] = round(d["wal_bytes"] / rows)
    d["fpi_per_1000_rows"] = round(d["wal_fpi"] * 1000 / rows, 1)
    d["hot_share"] = round(d["n_tup_hot_upd"] / max(d["n_tup_upd"], 1), 3)
    return d


def explain(sql):
    """EXPLAIN (ANALYZE, BUFFERS) in a transaction that is rolled back; the plan's text."""
    out = psql("BEGIN;\nEXPLAIN (ANALYZE, BUFFERS, TIMING OFF, SUMMARY ON) " + sql + ";\nROLLBACK;")
    return out.splitlines()


def explains(n):
    lo = int(psql("SELECT min(id) FROM m3ter.outbox"))
    out = {}
    for where, first in (("start", lo), ("middle", lo + n // 2)):
        out["claim_" + where] = explain(CLAIM.format(after=first - 1))
        out["update_" + where] = explain(ACCEPTED.format(lo=first))
    psql("VACUUM m3ter.outbox")  # the rolled-back updates leave dead tuples
    return out


# What one 'accepted' update costs, part by part: each variant runs in a transaction
# that is rolled back, on up to BATCHES requests of 1000 rows
BATCHES = 4
ROUNDS = 3
DELETE = "DELETE FROM m3ter.outbox WHERE id = ANY(ARRAY(SELECT generate_series({lo}, {lo} + 999)::bigint))"
VARIANTS = [
    ("as the worker does it", "", ACCEPTED),
    ("without the CHECK (m3ter.check_outbox_row)", "ALTER TABLE m3ter.outbox DROP CONSTRAINT outbox_row_check;",
     ACCEPTED),
    ("without the CHECK and the uid index",
     "ALTER TABLE m3ter.outbox DROP CONSTRAINT outbox_row_check, DROP CONSTRAINT outbox_uid_key;", ACCEPTED),
    ("DELETE the rows instead (for comparison)", "", DELETE),
]


def update_costs(n):
    """Microseconds a row for the 'accepted' update, as is and without each of its extra costs.

    Every variant of every round updates rows of its own (a rolled-back update leaves
    dead versions and index entries that would make the next one on the same rows
    dearer)."""
    first = int(psql("SELECT min(id) FROM m3ter.outbox")) + n // 10
    runs = ROUNDS * (len(VARIANTS) + 2)
    batches = min(BATCHES, max(1, (n - n // 10) // (1000 * runs)))
    starts = iter(range(first, first + runs * batches * 1000, batches * 1000))
    rounds = [_update_costs(starts, batches) for _ in range(ROUNDS)]
    # the least of the rounds: the cost with the least interference from other work
    out = {}
    for name in rounds[0]:
        best = min(rounds, key=lambda r: r[name]["us_per_row"])[name]
        out[name] = dict(best, rounds_us=[r[name]["us_per_row"] for r in rounds])
    psql("VACUUM m3ter.outbox")
    return out


def _update_costs(starts, batches):
    """One round of update_costs(); each variant takes the next start from starts."""
    out = {}
    for name, ddl, sql in VARIANTS:
        lo = next(starts)
        script = "BEGIN;\n" + ddl + "\n" + "".join(
            "EXPLAIN (ANALYZE, TIMING OFF, BUFFERS, FORMAT JSON) " + sql.format(lo=lo + k * 1000) + ";\n"
            for k in range(batches)) + "ROLLBACK;"
        plans = [json.loads(line)[0] for line in _json_docs(psql(script))]
        ms = sum(p["Execution Time"] for p in plans)
        hits = sum(p["Plan"]["Shared Hit Blocks"] for p in plans)
        out[name] = {"us_per_row": round(ms * 1000 / (batches * 1000), 1),
                     "buffers_per_row": round(hits / (batches * 1000), 1)}
    return out


def _json_docs(text):
    """The JSON documents in psql's unaligned output, one per EXPLAIN."""
    docs, cur = [], []
    for line in text.splitlines():
        if line.startswith("[") and cur:
            docs.append("".join(cur))
            cur = []
        if line.startswith("[") or cur:
            cur.append(line)
    if cur:
        docs.append("".join(cur))
    return docs


TICK = os.sysconf("SC_CLK_TCK")


def proc_stat(pid):
    """(name, own CPU seconds, waited-for children's CPU seconds) of a process, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            name = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    # after the ")": state is field 3 of stat(5), so utime (14) is index 11
    return name, (int(fields[11]) + int(fields[12])) / TICK, (int(fields[13]) + int(fields[14])) / TICK


def kind(name):
    for k in ("m3ter outbox worker", "autovacuum", "walwriter", "checkpointer", "background writer"):
        if k in name:
            return k
    return "sessions and others"


class CpuMeter:
    """CPU seconds the cluster's processes spend between start() and stop(): all of
    them exactly (live ones plus what exited, through the postmaster's children
    times), and by kind of process as sampled twice a second."""

    def __init__(self):
        with open(os.path.join(os.environ["M3TER_TMP"], "data", "postmaster.pid")) as f:
            self.postmaster = int(f.readline())

    def children(self):
        out = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open("/proc/%s/status" % d) as f:
                        ppid = next(int(line.split()[1]) for line in f if line.startswith("PPid:"))
                except (OSError, StopIteration):
                    continue
                if ppid == self.postmaster:
                    st = proc_stat(int(d))
                    if st:
                        out[int(d)] = st
        return out

    def start(self):
        self.first = {pid: st for pid, st in self.children().items()}
        self.last = dict(self.first)
        self.reaped0 = proc_stat(self.postmaster)[2]
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self):
        while self.running:
            self.last.update(self.children())
            time.sleep(0.5)

    def stop(self):
        self.running = False
        self.thread.join()
        live = self.children()
        self.last.update(live)
        reaped = proc_stat(self.postmaster)[2] - self.reaped0
        total = reaped + sum(st[1] - (self.first[pid][1] if pid in self.first else 0) for pid, st in live.items())
        by_kind = {}
        for pid, st in self.last.items():
            used = st[1] - (self.first[pid][1] if pid in self.first else 0)
            by_kind[kind(st[0])] = round(by_kind.get(kind(st[0]), 0) + used, 2)
        return {"cluster_cpu_s": round(total, 2), "by_kind_cpu_s": by_kind}


def backend_cpu(stat_line):
    fields = stat_line.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def drain(n, how):
    """Drain n pending rows with the worker or the floor; figures and counters."""
    psql("CHECKPOINT")
    before, size_before = stats(), sizes()
    samples = []
    cpu = CpuMeter()
    cpu.start()
    t0 = time.time()
    if how == "worker":
        base = accepted_counter()
        pid = bench.worker_pid()
        own0 = proc_stat(pid)[1]
        settings(worker_enabled=None)
        while True:
            done = accepted_counter() - base
            samples.append((round(time.time() - t0, 2), done))
            if done >= n:
                break
            time.sleep(SAMPLE)
        own = proc_stat(pid)[1] - own0
    else:
        # the floor's session reads its own CPU time before and after
        out = psql("SELECT pg_read_file('/proc/self/stat');\n" +
                   (bench.FORMER_FLOOR_SQL if how == "former floor" else bench.FLOOR_SQL) +
                   ";\nSELECT pg_read_file('/proc/self/stat');", timeout=3600).splitlines()
        own = backend_cpu(out[-1]) - backend_cpu(out[0])
    dt = time.time() - t0
    used = cpu.stop()
    # the worker sends its statistics when it goes idle, at most once a second
    time.sleep(2.5)
    after = stats()
    settings(worker_enabled="off")
    out = {"rows": n, "seconds": round(dt, 2), "rows_per_s": round(n / dt),
           "cpu_us_per_row": round(own * 1e6 / n, 1),
           "cluster_cpu_us_per_row": round(used["cluster_cpu_s"] * 1e6 / n, 1),
           "cpu_by_kind_s": used["by_kind_cpu_s"],
           "counters": delta(before, after, n), "sizes_before": size_before, "sizes_after": sizes()}
    if samples:
        # rows/s in each tenth of the drain, to show whether the rate falls as it goes
        tenth = []
        for k in range(1, 11):
            target = n * k // 10
            t_k = next(t for t, d in samples if d >= target)
            tenth.append(t_k)
        out["rows_per_s_by_tenth"] = [round(n / 10 / max(b - a, 1e-3)) for a, b in zip([0] + tenth, tenth)]
    return out


def main():
    settings(max_requests_per_second="0")
    standin_fresh()
    results = {"shared_buffers": psql("SHOW shared_buffers"), "max_wal_size": psql("SHOW max_wal_size"),
               "batch_rows": psql("SHOW m3ter.batch_rows"), "sizes": {}}
    for n in SIZES:
        r = results["sizes"][str(n)] = {}
        log("database side: %d rows, EXPLAIN of claim and update" % n)
        fresh_outbox(n)
        r["explain"] = explains(n)
        r["update_costs"] = update_costs(n)
        log("database side: %d rows, the worker" % n)
        standin_fresh()
        r["worker"] = drain(n, "worker")
        log("database side: %d rows, the database floor" % n)
        fresh_outbox(n)
        r["floor"] = drain(n, "floor")
        if FORMER_FLOOR:
            log("database side: %d rows, the former floor" % n)
            fresh_outbox(n)
            r["former floor"] = drain(n, "former floor")
    settings(worker_enabled=None, max_requests_per_second=None)

    print()
    print("%-10s %-12s %9s %8s %8s %8s %9s %6s %9s %9s %9s %5s  %s" % (
        "rows", "drain", "rows/s", "CPU us/r", "all us/r", "WAL B/r", "FPI/1000", "ckpts", "bk writes", "heap rd",
        "idx rd", "HOT", "rows/s by tenth"))
    for n, r in results["sizes"].items():
        for how in ("worker", "floor", "former floor"):
            if how not in r:
                continue
            d = r[how]
            c = d["counters"]
            print("%-10s %-12s %9d %8.1f %8.1f %8d %9.1f %6d %9d %9d %9d %5.2f  %s" % (
                n, how, d["rows_per_s"], d["cpu_us_per_row"], d["cluster_cpu_us_per_row"], c["wal_bytes_per_row"],
                c["fpi_per_1000_rows"], c["checkpoints"], c["buffers_backend"], c["heap_blks_read"],
                c["idx_blks_read"], c["hot_share"], d.get("rows_per_s_by_tenth", "")))
            print("%-10s   CPU seconds by process: %s" % ("", d["cpu_by_kind_s"]))
        print("%-10s sizes before %s, after %s" % ("", r["worker"]["sizes_before"], r["worker"]["sizes_after"]))
    print()
    print("the 'accepted' update, microseconds and shared buffers a row (up to %d x 1000 rows, rolled back, "
          "least of %d rounds)" % (BATCHES, ROUNDS))
    for n, r in results["sizes"].items():
        for name, v in r["update_costs"].items():
            print("%-10s %-56s %7.1f us %6.1f buffers" % (n, name, v["us_per_row"], v["buffers_per_row"]))
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "dbcost.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
