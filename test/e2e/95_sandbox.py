"""The sandbox: test/sandbox.sh start leaves a cluster and the stand-in running, the
README's "Getting started" statements work there as written, test/sandbox.sh stop
removes both.

The statements are read from the README itself (its first SQL blocks under
"Getting started"), so the README and the sandbox cannot drift apart. The sandbox
runs in a directory of the suite's instead of /tmp/m3ter-sandbox."""
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SANDBOX = os.path.join(os.environ["M3TER_TMP"], "sandbox")
env = dict(os.environ, M3TER_SANDBOX_DIR=SANDBOX)

r = subprocess.run([os.path.join(ROOT, "test", "sandbox.sh"), "start"], env=env, capture_output=True, text=True,
                   timeout=600)
ok(r.returncode == 0, "test/sandbox.sh start", r.stderr[-2000:])
m = re.search(r'(\S+/psql) "(host=\S+ port=\d+ user=postgres dbname=postgres)"', r.stdout)
ok(m is not None, "it prints the psql line to connect", r.stdout)
ok("test/sandbox.sh stop" in r.stdout, "and the command that stops it")
conninfo = m.group(2) if m else ""
standin_url = re.search(r"(http://127\.0\.0\.1:\d+)/_control/summary", r.stdout).group(1)

readme = open(os.path.join(ROOT, "README.md")).read()
ok(readme.count("\n") < 400, "the README stays under 400 lines (the rest is in docs/): %d" % readme.count("\n"))
section = readme[readme.index("## Getting started"):]
section = section[:section.index("\n## ")]
blocks = re.findall(r"```sql\n(.*?)```", section, re.S)[:3]
blocks = [b.replace("/tmp/m3ter-sandbox", SANDBOX) for b in blocks]
ok(len(blocks) == 3 and "m3ter.credentials_file" in blocks[0] and "m3ter_submit" in blocks[1]
   and "GRANT" in blocks[2], "Getting started sets the credentials file first, then calls m3ter, then grants",
   blocks)
# the blocks pasted into one session: its next statement calls m3ter right after
# pg_reload_conf(), before the session has taken the reload between statements
r = subprocess.run([m.group(1) if m else "psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-f", "-"],
                   input="".join(blocks), capture_output=True, text=True, timeout=120)
ok(r.returncode == 0, "Getting started's blocks run in the sandbox as written, pasted into one session "
   "(the grants to its roles too)",
   r.stderr[-2000:])


def summary():
    with urllib.request.urlopen(standin_url + "/_control/summary") as f:
        return json.load(f)


ok(wait_until(lambda: summary()["accepted"] == 2, timeout=30),
   "the stand-in accepted the submitted measurement and the outbox row",
   "%s\n%s" % (summary(), "".join(open(os.path.join(SANDBOX, "postgres.log")).readlines()[-40:])))
ok(wait_until(lambda: psql("SELECT status FROM m3ter.outbox", conninfo) == "accepted", timeout=10),
   "the outbox row is accepted", psql("SELECT status, error FROM m3ter.outbox", conninfo) + "\n" +
   "".join(open(os.path.join(SANDBOX, "postgres.log")).readlines()[-40:]))

# Installation's "CREATE EXTENSION m3ter in each database that meters usage": a second
# database of the sandbox gets its worker and delivers
psql("CREATE DATABASE second_app", conninfo)
second = conninfo.replace("dbname=postgres", "dbname=second_app")
psql("CREATE EXTENSION m3ter; INSERT INTO m3ter.outbox (meter, account, measure) "
     "VALUES ('api_requests', 'acme', '{\"requests\": 1}')", second)
ok(wait_until(lambda: psql("SELECT status FROM m3ter.outbox", second) == "accepted", timeout=20),
   "a second database's row is accepted too", psql("SELECT status, error FROM m3ter.outbox", second) + " " +
   psql("SELECT datname || ': ' || state FROM m3ter.databases", conninfo))

# A wrong organization id put right in one script: the call right after pg_reload_conf()
# uses the new value (the session takes the reload the file's change announces).  The
# reload and the call share one statement here, so the session has had no moment between
# statements to take the reload: the race's worst case, every time.
right = psql("SHOW m3ter.org_id", conninfo)
submit = ("m3ter_submit('{\"meter\": \"api_requests\", \"account\": \"acme\", "
          "\"ts\": \"2024-01-02T03:04:05Z\", \"measure\": {\"requests\": 1}}')->>'result'")
results = []
for i in range(3):
    psql("ALTER SYSTEM SET m3ter.org_id = '5f3b8c2e-0000-4000-8000-00000000000%d'; SELECT pg_reload_conf()" % i,
         conninfo)
    time.sleep(1.2)
    r = subprocess.run([m.group(1) if m else "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-f", "-"],
                       input="ALTER SYSTEM SET m3ter.org_id = '%s';\nSELECT pg_reload_conf(), %s;" % (right, submit),
                       capture_output=True, text=True, timeout=60)
    results.append(r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip()
                   else r.stderr.strip()[:200])
is_(results, ["t|accepted"] * 3, "a wrong m3ter.org_id replaced and reloaded in one script is used by its next call")

# a configuration file dated ahead of the clock (copied with its time, a clock stepped back) is
# no sign of a reload on its way: calls do not wait for one (they waited a second each)
auto_conf = os.path.join(SANDBOX, "data", "postgresql.auto.conf")
ahead = time.time() + 600
os.utime(auto_conf, (ahead, ahead))
t0 = time.time()
r = subprocess.run([m.group(1) if m else "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-f", "-"],
                   input="SELECT %s;\n" % submit * 5, capture_output=True, text=True, timeout=60)
took = time.time() - t0
os.utime(auto_conf, None)
ok(r.returncode == 0 and took < 3, "five calls with postgresql.auto.conf dated ahead take %.1f s, not five" % took,
   r.stderr)

r = subprocess.run([os.path.join(ROOT, "test", "sandbox.sh"), "stop"], env=env, capture_output=True, text=True,
                   timeout=120)
ok(r.returncode == 0 and not os.path.exists(SANDBOX), "test/sandbox.sh stop removes it", r.stderr)
left = subprocess.run(["pgrep", "-f", SANDBOX], capture_output=True, text=True).stdout.strip()
ok(not left, "no process of it is left", left)
done()
