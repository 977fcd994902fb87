"""Helpers for the end-to-end tests in test/e2e/: TAP output, psql, the stand-in.

The tests run against the cluster and stand-in that test/run.sh starts; they find
them through PGHOST, PGPORT, STANDIN_URL and M3TER_TMP.  Python standard library only.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

BINDIR = "%s/usr/lib/postgresql/%s/bin" % (os.environ.get("M3TER_PG_ROOT", ""), os.environ.get("M3TER_PG_VERSION", "15"))
STANDIN_URL = os.environ["STANDIN_URL"]
DATA_DIR = os.environ.get("M3TER_DATA_DIR") or os.path.join(os.environ["M3TER_TMP"], "data")
LOG_FILE = os.environ.get("M3TER_LOG_FILE") or os.path.join(os.environ["M3TER_TMP"], "postgres.log")

_count = 0
_failed = 0


def ok(cond, name, diag=None, todo=None):
    """One TAP line; with todo (a reason), a failure is reported as TODO and not counted."""
    global _count, _failed
    _count += 1
    if not cond and not todo:
        _failed += 1
    print("%sok %d - %s%s" % ("" if cond else "not ", _count, name, " # TODO " + todo if todo else ""), flush=True)
    if not cond and diag is not None:
        for line in str(diag).splitlines():
            print("#   " + line, flush=True)
    return cond


def is_(got, want, name):
    return ok(got == want, name, "got:  %r\nwant: %r" % (got, want))


def note(msg):
    print("# " + msg, flush=True)


def done():
    print("1..%d" % _count, flush=True)
    sys.exit(1 if _failed else 0)


def psql(sql, db="postgres", check=True, timeout=300):
    """Run SQL; returns stdout of the last statement, unaligned, without headers."""
    # on stdin: one argument may not exceed 128 kB, and hostile inputs do
    r = subprocess.run([BINDIR + "/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", "-"],
                       input=sql, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError("psql failed: %s\n%s" % (sql[:200], r.stderr))
    return r.stdout.strip() if check else r


def psql_async(sql, db="postgres"):
    return subprocess.Popen([BINDIR + "/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def scalar(sql, db="postgres"):
    return psql(sql, db)


def standin(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(STANDIN_URL + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


def wait_until(fn, timeout=60.0, interval=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if fn():
                return True
        except Exception:
            pass
        time.sleep(interval)
    return False


def as_pg(cmd):
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"] + cmd
    return cmd


def pg_ctl(*args):
    subprocess.run(as_pg([BINDIR + "/pg_ctl", "-D", DATA_DIR, "-l", LOG_FILE, "-w"] + list(args)),
                   check=True, capture_output=True)


def restart_immediate():
    """Immediate-mode restart of the postmaster; under test/valgrind.sh, back under valgrind."""
    if not os.environ.get("M3TER_VALGRIND"):
        pg_ctl("-m", "immediate", "restart")
        return
    pg_ctl("-m", "immediate", "stop")
    log = open(LOG_FILE, "a")
    subprocess.Popen(as_pg(["valgrind", "--quiet", "--trace-children=yes", "--leak-check=no", "--num-callers=20",
                            "--log-file=%s/valgrind.%%p" % os.environ["M3TER_TMP"], BINDIR + "/postgres",
                            "-D", DATA_DIR]), stdout=log, stderr=log, start_new_session=True)
    wait_until(lambda: subprocess.run([BINDIR + "/pg_isready", "-q"]).returncode == 0, timeout=60, interval=0.5)


def standin_stop():
    """Stop the stand-in (it saves what it accepted); connections are then refused."""
    subprocess.run(["pkill", "-TERM", "-f", "m3ter_standin.py --port-file " + os.environ["M3TER_TMP"] + "/"])
    wait_until(lambda: subprocess.run(["pgrep", "-f", "m3ter_standin.py --port-file " + os.environ["M3TER_TMP"] + "/"],
                                      capture_output=True).returncode != 0, timeout=10, interval=0.05)


def standin_start():
    """Start the stand-in again on its port, with what it had accepted."""
    port = STANDIN_URL.rsplit(":", 1)[1]
    log = open(os.path.join(os.environ["M3TER_TMP"], "standin.log"), "a")
    subprocess.Popen(["python3"] + os.environ["M3TER_STANDIN_ARGS"].split() + ["--port", port],
                     stdout=log, stderr=log, start_new_session=True)
    wait_until(lambda: standin("GET", "/_control/summary") is not None, timeout=10, interval=0.05)


def server_up():
    return subprocess.run([BINDIR + "/pg_isready", "-q"]).returncode == 0 and \
        psql("SELECT 1", check=False).returncode == 0


def worker_pid(db="postgres"):
    """The pid of the outbox worker of database db (one runs per database), or None."""
    out = psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'm3ter outbox worker' "
               "AND datname = current_database()", db)
    return int(out) if out else None


def terminate_worker(db="postgres"):
    """Stop the database's worker (pg_terminate_backend) and wait for the launcher to start another."""
    pid = worker_pid(db)
    psql("SELECT pg_terminate_backend(%d)" % pid, db)
    wait_until(lambda: worker_pid(db) not in (None, pid), timeout=15)


def kill9(pid):
    # the worker runs as the postgres OS user; root may signal it
    os.kill(pid, signal.SIGKILL)


def set_and_reload(_settle=0.3, **settings):
    """ALTER SYSTEM the given m3ter settings (None resets them), reload, and give
    the processes _settle seconds to read the new values."""
    for k, v in settings.items():
        if v is None:
            psql("ALTER SYSTEM RESET m3ter.%s" % k)
        else:
            psql("ALTER SYSTEM SET m3ter.%s = '%s'" % (k, v))
    psql("SELECT pg_reload_conf()")
    time.sleep(_settle)


def outbox_counts():
    rows = psql("SELECT status, count(*) FROM m3ter.outbox GROUP BY 1")
    out = {"pending": 0, "accepted": 0, "failed": 0}
    for line in rows.splitlines():
        s, n = line.split("|")
        out[s] = int(n)
    return out


def insert_usage(n, prefix, db="postgres", meter="api_requests", extra="", measure="jsonb_build_object('requests', i)"):
    psql("INSERT INTO m3ter.outbox (uid, meter, account, measure, \"where\"%s) "
         "SELECT '%s' || i, '%s', 'acct-' || (i %% 13), %s, "
         "'{\"region\": \"eu-west-1\"}'%s FROM generate_series(1, %d) i"
         % (", metadata" if extra else "", prefix, meter, measure, (", " + extra) if extra else "", n), db)


def stored_uids(prefix):
    return {m["uid"] for m in standin("GET", "/_control/measurements") if m["uid"].startswith(prefix)}


def ingest_requests():
    return [r for r in standin("GET", "/_control/requests") if r["path"].endswith("/measurements")]


def reset(db="postgres"):
    """A clean outbox and stand-in, the worker on, default settings."""
    standin("POST", "/_control/reset")
    # (the delete marks the days of its accepted rows as not to reconcile: a clean start clears that)
    psql("DELETE FROM m3ter.outbox; DELETE FROM m3ter.retention_state", db)
    for k in ("worker_enabled", "max_requests_per_second", "org_id", "retention", "batch_rows",
              "worker_naptime", "worker_idle_naptime", "retry_max_delay", "request_timeout", "max_attempts",
              "max_in_flight", "give_up_after", "claim_bytes", "test_fault_uid", "max_requests_per_5min", "requests_window",
              "ingest_url"):
        psql("ALTER SYSTEM RESET m3ter.%s" % k)
    psql("ALTER SYSTEM SET m3ter.worker_idle_naptime = '1s'")
    psql("SELECT pg_reload_conf()")
    time.sleep(0.3)


def record_scenario(name, rows_in, prefix, crashes=0, expect_failed=0):
    """Check a scenario's outcome row by row and add it to the reliability summary.

    Every row must be accepted and stored at the stand-in, or failed (only
    expect_failed of them); lost = rows neither stored-and-accepted nor failed."""
    rows = psql("SELECT uid, status FROM m3ter.outbox WHERE uid LIKE '%s%%'" % prefix).splitlines()
    status = dict(line.split("|") for line in rows)
    stored = stored_uids(prefix)
    accepted = sum(1 for u, s in status.items() if s == "accepted" and u in stored)
    failed = sum(1 for s in status.values() if s == "failed")
    lost = rows_in - accepted - failed
    dups = standin("GET", "/_control/summary")["duplicates"]
    row = {"scenario": name, "rows_in": rows_in, "accepted": accepted, "failed": failed,
           "duplicates": dups, "lost": lost, "crashes": crashes}
    with open(os.path.join(os.environ["M3TER_TMP"], "reliability.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
    ok(lost == 0 and failed == expect_failed,
       "%s: %d rows in, %d accepted, %d failed, %d lost" % (name, rows_in, accepted, failed, lost), row)
    return row


def server_crashed_since(offset):
    """Did a server process die of a signal (other than our own kills) since log offset?"""
    with open(LOG_FILE) as f:
        f.seek(offset)
        text = f.read()
    return [line for line in text.splitlines() if "terminated by signal" in line and "signal 9" not in line]


def log_offset():
    return os.path.getsize(LOG_FILE)


# rows per reliability scenario
ROWS = int(os.environ.get("RELIABILITY_ROWS", 3000))


def scenario(name, prefix, faults=(), config=None, settings=None, rows=ROWS, during=None,
             expect_failed=0, timeout=90, extra="", extra_rows=0, measure=None):
    """Insert rows (and extra_rows that during() inserts), drain them under the faults, check them."""
    reset()
    set_and_reload(**dict({"max_requests_per_second": "0", "retry_max_delay": "1s", "worker_enabled": "off"},
                          **(settings or {})))
    if config:
        standin("POST", "/_control/config", config)
    if faults:
        standin("POST", "/_control/faults", {"faults": list(faults)})
    insert_usage(rows, prefix, extra=extra, **({"measure": measure} if measure else {}))
    set_and_reload(worker_enabled=None)
    if during:
        during()
    drained = wait_until(lambda: scalar("SELECT count(*) FROM m3ter.outbox WHERE status = 'pending'") == "0",
                         timeout=timeout, interval=0.2)
    ok(drained, "%s: nothing is left pending" % name, outbox_counts())
    row = record_scenario(name, rows + extra_rows, prefix, expect_failed=expect_failed)
    set_and_reload(retry_max_delay=None, max_requests_per_second=None)
    return row


def fault(**kw):
    return dict({"match": "/measurements"}, **kw)



def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Cluster:
    """A further cluster in $M3TER_TMP/<name> on its own port and the same socket
    directory, with the main cluster's settings (m3ter in shared_preload_libraries,
    the stand-in's URLs) and extra lines; or a streaming replica of another one,
    made with pg_basebackup over the unix socket.  bindir: another installation's
    binaries (an older major's, for pg_upgrade)."""

    bindir = BINDIR  # (also for one made without __init__, around a restored backup)

    def __init__(self, name, extra="", replica_of=None, bindir=BINDIR, initdb_args=()):
        self.bindir = bindir
        self.dir = os.path.join(os.environ["M3TER_TMP"], name)
        self.log = self.dir + ".log"
        self.port = free_port()
        self.host = os.environ["M3TER_TMP"]
        open(self.log, "w").close()
        os.chmod(self.log, 0o666)
        if replica_of is None:
            subprocess.run(as_pg([bindir + "/initdb", "-D", self.dir, "-U", "postgres", "-A", "trust", "--no-sync"]
                                 + list(initdb_args)), check=True, capture_output=True)
            with open(os.path.join(DATA_DIR, "postgresql.conf")) as f:
                main = f.read().splitlines()
            start = max(i for i, line in enumerate(main) if line.startswith("port = "))
            conf = "\n".join(main[start:])
        else:
            subprocess.run(as_pg([BINDIR + "/pg_basebackup", "-h", self.host, "-p", str(replica_of.port),
                                  "-U", "postgres", "-D", self.dir, "-R", "-X", "stream", "-c", "fast"]),
                           check=True, capture_output=True)
            conf = ""
        conf += "\nport = %d\n%s\n" % (self.port, extra)
        subprocess.run(as_pg(["tee", "-a", os.path.join(self.dir, "postgresql.conf")]), input=conf, text=True,
                       check=True, capture_output=True)

    def pg_ctl(self, *args, check=True):
        return subprocess.run(as_pg([self.bindir + "/pg_ctl", "-D", self.dir, "-l", self.log, "-w"] + list(args)),
                              check=check, capture_output=True, text=True)

    def conninfo(self, dbname="postgres"):
        return "host=%s port=%d dbname=%s" % (self.host, self.port, dbname)

    def psql(self, sql, dbname="postgres", check=True):
        return psql(sql, self.conninfo(dbname), check=check)

    def log_text(self):
        with open(self.log) as f:
            return f.read()

    def postmaster_pid(self):
        with open(os.path.join(self.dir, "postmaster.pid")) as f:
            return int(f.readline())

    def remove(self):
        self.pg_ctl("-m", "immediate", "stop", check=False)
        subprocess.run(["rm", "-rf", self.dir])
