"""Credentials reach no one but a superuser: not other roles (SHOW, current_setting,
pg_settings, SHOW ALL, the worker's pg_stat_activity row), not the server log at
debug5 with every statement logged, not anything the extension stores.  And TLS
verification is on unless a superuser turns it off."""
import base64
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

SECRET = os.environ["M3TER_API_SECRET"]
KEY_ID = os.environ["M3TER_ACCESS_KEY_ID"]
BASIC = base64.b64encode(("%s:%s" % (KEY_ID, SECRET)).encode()).decode()
reset()

# another role sees nothing
psql("DROP ROLE IF EXISTS m3ter_snoop; CREATE ROLE m3ter_snoop LOGIN")
snoop = lambda sql: psql("SET ROLE m3ter_snoop; " + sql, check=False)  # noqa: E731
for sql in ("SHOW m3ter.api_secret", "SHOW m3ter.access_key_id", "SELECT current_setting('m3ter.api_secret')",
            "SELECT current_setting('m3ter.access_key_id')"):
    r = snoop(sql)
    ok(r.returncode != 0 and SECRET not in r.stdout + r.stderr
       and ("must be superuser" in r.stderr or "permission denied to examine" in r.stderr),  # 15-16, 17 on
       "refused to another role: " + sql, r.stderr)
r = snoop("SELECT string_agg(name || '=' || setting, ',') FROM pg_settings")
ok(r.returncode == 0 and SECRET not in r.stdout and KEY_ID not in r.stdout, "pg_settings shows neither")
r = snoop("SHOW ALL")
ok(r.returncode == 0 and SECRET not in r.stdout and KEY_ID not in r.stdout, "SHOW ALL shows neither")
r = snoop("SELECT coalesce(query, '') FROM pg_stat_activity WHERE backend_type = 'm3ter outbox worker'")
ok(r.returncode == 0 and SECRET not in r.stdout, "the worker's pg_stat_activity row shows nothing to another role")
is_(scalar("SELECT query FROM pg_stat_activity WHERE backend_type = 'm3ter outbox worker'") in
    ("", "m3ter: delivering the outbox", "m3ter: outbox upkeep"), True, "and to a superuser only the worker's activity, no credentials")
r = snoop("SELECT m3ter_submit('{\"meter\":\"m\",\"account\":\"a\",\"ts\":\"2024-01-02T03:04:05Z\"}')")
ok("permission denied for function m3ter_submit" in r.stderr, "calling m3ter needs a grant")

# the extension's own work, logged at debug5 with every statement, leaks neither secret nor token
psql("ALTER SYSTEM SET log_min_messages = debug5")
psql("ALTER SYSTEM SET log_statement = 'all'")
psql("ALTER SYSTEM SET log_min_error_statement = debug5")
psql("SELECT pg_reload_conf()")
time.sleep(0.5)
start = log_offset()
psql("SELECT m3ter_submit('[{\"meter\":\"m\",\"account\":\"a\",\"ts\":\"2024-01-02T03:04:05Z\"}]')")
psql("SELECT m3ter_create_meter('Secret test', 'secret_test', '[{\"category\":\"MEASURE\",\"code\":\"n\",\"name\":\"N\"}]')")
psql("SELECT count(*) FROM m3ter_list_meters()")
standin("POST", "/_control/config", {"expire_tokens": True})   # a 403 and a token refresh
insert_usage(2000, "secret-")
ok(wait_until(lambda: outbox_counts()["accepted"] == 2000, timeout=30), "the worker delivered rows meanwhile")
psql("SELECT m3ter_organization_config()")
standin("POST", "/_control/faults", {"faults": [{"match": "/measurements", "status": 500, "count": 2}]})
psql("SELECT m3ter_submit('{\"meter\":\"m\",\"account\":\"a\",\"ts\":\"2024-01-02T03:04:05Z\"}')")
r = psql("SET m3ter.org_id = '00000000-0000-4000-8000-00000000dead'; SELECT m3ter_organization_config()", check=False)
ok(r.returncode != 0, "a refused call was logged too")
psql("ALTER SYSTEM RESET log_min_messages; ALTER SYSTEM RESET log_statement; ALTER SYSTEM RESET log_min_error_statement")
psql("SELECT pg_reload_conf()")
with open(LOG_FILE) as f:
    f.seek(start)
    logged = f.read()
tokens = standin("GET", "/_control/tokens")
ok(len(logged) > 10000 and "m3ter_submit" in logged, "the log recorded the work (%d bytes)" % len(logged))
ok(len(tokens) >= 2, "the stand-in issued %d bearer tokens during it" % len(tokens))
ok(SECRET not in logged and BASIC not in logged, "the server log holds no api secret and no Basic credentials")
ok(not [t for t in tokens if t in logged], "the server log holds no bearer token")

# nothing the extension stores holds them: its tables, its status, the data directory
stored = psql("SELECT string_agg(o::text, ' ') FROM m3ter.outbox o") + \
    psql("SELECT m::text FROM m3ter_worker_status() m") + psql("SELECT s::text FROM m3ter.outbox_stats s")
ok(SECRET not in stored and not [t for t in tokens if t in stored], "m3ter.outbox and the status views hold neither")
psql("CHECKPOINT")
found = []
for root, _, files in os.walk(DATA_DIR):
    for name in files:
        if name in ("postgresql.conf", "postgresql.auto.conf"):
            continue  # where the superuser put the credentials
        try:
            with open(os.path.join(root, name), "rb") as f:
                data = f.read()
        except OSError:
            continue
        for needle in [SECRET, BASIC] + tokens:
            if needle.encode() in data:
                found.append((name, needle[:6]))
ok(not found, "no file of the data directory (heap, WAL, stats) holds the secret or a token", found[:5])

# TLS: verification is on by default; only a superuser may turn it off
with tempfile.TemporaryDirectory() as d:
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    port_file = os.path.join(d, "port")
    tls = subprocess.Popen(["python3"] + os.environ["M3TER_STANDIN_ARGS"].split()[:1] +
                           ["--port-file", port_file, "--org-id", os.environ["M3TER_ORG_ID"],
                            "--access-key-id", KEY_ID, "--api-secret", SECRET, "--tls-cert", cert, "--tls-key", key],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: os.path.exists(port_file) and open(port_file).read(), timeout=10, interval=0.05)
    url = "https://127.0.0.1:" + open(port_file).read()
    call = "SET m3ter.api_url = '%s'; SET m3ter.ingest_url = '%s'; SET m3ter.max_retries = 0; %%s SELECT m3ter_organization_config()" % (url, url)
    r = psql(call % "", check=False)
    ok(r.returncode != 0 and "M3000" not in r.stdout and "certificate" in r.stderr,
       "a server with a self-signed certificate is refused: TLS verification is on", r.stderr[-300:])
    r = psql(call % "SET m3ter.tls_verify = off;", check=False)
    ok(r.returncode == 0, "a superuser may turn verification off for it", r.stderr[-300:])
    r = psql("SET ROLE m3ter_snoop; SET m3ter.tls_verify = off", check=False)
    ok("permission denied to set parameter" in r.stderr, "another role may not")
    tls.terminate()
psql("DROP ROLE m3ter_snoop")
done()
