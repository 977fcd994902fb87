"""m3ter.credentials_file: the credentials come from a file only the server's OS user can
read, re-read when it changes; a file others can read is refused with a clear error.
With it, the server log at debug5 with every statement logged holds no credential, and
a pg_monitor member reads none by any way of reading settings."""
import base64
import os
import pwd
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

SECRET = os.environ["M3TER_API_SECRET"]
KEY_ID = os.environ["M3TER_ACCESS_KEY_ID"]
BASIC = base64.b64encode(("%s:%s" % (KEY_ID, SECRET)).encode()).decode()
WRONG = "not-the-api-secret"
pg = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
d = tempfile.mkdtemp(dir=os.environ["M3TER_TMP"])
if pg:
    os.chown(d, pg.pw_uid, pg.pw_gid)


def write(path, secret, mode=0o600, text=None):
    with open(path + ".new", "w") as f:
        f.write(text or "# m3ter Service User\naccess_key_id = %s\napi_secret = '%s'\n" % (KEY_ID, secret))
    if pg:
        os.chown(path + ".new", pg.pw_uid, pg.pw_gid)
    os.chmod(path + ".new", mode)
    os.rename(path + ".new", path)


def log_since(offset):
    with open(LOG_FILE) as f:
        f.seek(offset)
        return f.read()


reset()
path = os.path.join(d, "m3ter.credentials")
write(path, SECRET, 0o644)
# the settings now hold a wrong secret: calls work only with the file's
psql("ALTER SYSTEM SET m3ter.api_secret = '%s'" % WRONG)
psql("ALTER SYSTEM SET m3ter.credentials_file = '%s'" % path)
psql("SELECT pg_reload_conf()")
time.sleep(0.5)

r = psql("SELECT m3ter_organization_config()", check=False)
ok(r.returncode != 0 and "m3ter credentials file \"%s\" has group or world access" % path in r.stderr,
   "a credentials file readable by others is refused, with a clear error", r.stderr)
start = log_offset()
insert_usage(1, "credfile-")
ok(wait_until(lambda: "has group or world access" in log_since(start), timeout=20),
   "the worker logs the same error")

os.chmod(path, 0o600)
r = psql("SELECT m3ter_organization_config()", check=False)
ok(r.returncode == 0, "once it is 0600 the file's credentials are used (no reload needed)", r.stderr)
ok(wait_until(lambda: outbox_counts()["accepted"] == 1, timeout=30),
   "and the worker delivers with them", outbox_counts())

# a changed file is read again in a running session (modification time, size)
r = psql("SELECT m3ter_organization_config() IS NOT NULL; "
         "COPY (SELECT 'access_key_id = %s' UNION ALL SELECT 'api_secret = %s') TO '%s'; "
         "SELECT m3ter_organization_config()" % (KEY_ID, WRONG, path), check=False)
ok(r.returncode != 0 and "M3401" not in r.stdout and ("401" in r.stderr or "credentials" in r.stderr),
   "rewritten with a wrong secret, the next call in the same session fails", r.stderr[-300:])
ok("in the file named by m3ter.credentials_file" in r.stderr and "Check m3ter.access_key_id" not in r.stderr,
   "and its hint points at the file, not at the settings it replaces", r.stderr[-300:])
write(path, SECRET)
# another file, taken on reload
path2 = os.path.join(d, "m3ter2.credentials")
write(path2, SECRET)
set_and_reload(credentials_file=path2)
os.unlink(path)
r = psql("SELECT m3ter_organization_config()", check=False)
ok(r.returncode == 0, "a reload switches to another file", r.stderr)
# comments after the values, as postgresql.conf takes them
write(path2, SECRET, text="access_key_id = %s   # the service user\napi_secret = '%s'\t# rotated in May\n"
      % (KEY_ID, SECRET))
r = psql("SELECT m3ter_organization_config()", check=False)
ok(r.returncode == 0, "a # comment after a value is not part of it", r.stderr)
write(path2, "", 0o600)
r = psql("SELECT m3ter_organization_config()", check=False)
ok(r.returncode != 0 and "is incomplete" in r.stderr, "a file without api_secret is refused", r.stderr)
# a file that is not there, or that the server cannot open: F0000, as the Errors table says
os.unlink(path2)
r = psql("\\set VERBOSITY verbose\nSELECT m3ter_organization_config()", check=False)
ok(r.returncode != 0 and "F0000" in r.stderr and "could not access m3ter credentials file" in r.stderr,
   "a missing credentials file: F0000", r.stderr)
write(path2, SECRET, 0o000)
r = psql("\\set VERBOSITY verbose\nSELECT m3ter_organization_config()", check=False)
ok(r.returncode != 0 and "F0000" in r.stderr and "could not open m3ter credentials file" in r.stderr,
   "a credentials file the server cannot open (mode 0000): F0000", r.stderr)

# owner and mode by PostgreSQL's rule for ssl_key_file: the database user's with 0600 or
# less, or root's with 0640 or less (a group the server is in may read it); each file
# below is readable by the server, so only the rule refuses it
if pg:
    nobody = pwd.getpwnam("nobody")
    for uid, gid, mode, refused, what in [
            (0, pg.pw_gid, 0o640, None, "owned by root, mode 0640, the server's group reading it, is accepted"),
            (0, pg.pw_gid, 0o660, "has group write or world access", "owned by root, mode 0660, is refused"),
            (0, 0, 0o644, "has group write or world access", "owned by root and world-readable (0644) is refused"),
            (pg.pw_uid, pg.pw_gid, 0o640, "has group or world access",
             "owned by the database user, mode 0640, is refused"),
            (nobody.pw_uid, pg.pw_gid, 0o640, "must be owned by the database user or root",
             "owned by another user that is not root is refused, though the server's group reads it")]:
        write(path2, SECRET)
        os.chown(path2, uid, gid)
        os.chmod(path2, mode)
        r = psql("SELECT m3ter_organization_config()", check=False)
        if refused is None:
            ok(r.returncode == 0, "a credentials file " + what, r.stderr)
        else:
            ok(r.returncode != 0 and ('credentials file "%s" %s' % (path2, refused)) in r.stderr
               and "0600" in r.stderr and "0640" in r.stderr and "owned by root" in r.stderr,
               "a credentials file " + what + ", with an error that names the rule", r.stderr)
write(path2, SECRET)

# with the file, the log at debug5 with every statement logged holds no credential
psql("ALTER SYSTEM SET log_min_messages = debug5")
psql("ALTER SYSTEM SET log_statement = 'all'")
psql("ALTER SYSTEM SET log_min_error_statement = debug5")
psql("SELECT pg_reload_conf()")
time.sleep(0.5)
start = log_offset()
psql("SELECT m3ter_submit('[{\"meter\":\"m\",\"account\":\"a\",\"ts\":\"2024-01-02T03:04:05Z\"}]')")
psql("SELECT m3ter_create_meter('File test', 'file_test', '[{\"category\":\"MEASURE\",\"code\":\"n\",\"name\":\"N\"}]')")
psql("SELECT count(*) FROM m3ter_list_meters()")
standin("POST", "/_control/config", {"expire_tokens": True})
insert_usage(1000, "credfile-log-")
ok(wait_until(lambda: outbox_counts()["accepted"] == 1001, timeout=30), "the worker delivered rows meanwhile")
psql("SELECT m3ter_organization_config()")
psql("SELECT pg_reload_conf()")     # a reload while logging: the file is read again
time.sleep(0.5)
psql("SELECT m3ter_organization_config()")
psql("ALTER SYSTEM RESET log_min_messages; ALTER SYSTEM RESET log_statement; ALTER SYSTEM RESET log_min_error_statement")
psql("SELECT pg_reload_conf()")
logged = log_since(start)
tokens = standin("GET", "/_control/tokens")
ok(len(logged) > 10000 and "m3ter_submit" in logged, "the log recorded the work (%d bytes)" % len(logged))
ok(SECRET not in logged and BASIC not in logged, "the server log holds no api secret and no Basic credentials")
ok(not [t for t in tokens if t in logged], "the server log holds no bearer token")

# a pg_monitor member (so pg_read_all_settings) reads no credential by any way of reading settings
psql("DROP ROLE IF EXISTS m3ter_monitor; CREATE ROLE m3ter_monitor LOGIN IN ROLE pg_monitor")
ways = ["SHOW m3ter.api_secret", "SHOW m3ter.access_key_id", "SHOW ALL",
        "SELECT current_setting('m3ter.api_secret'), current_setting('m3ter.access_key_id')",
        "SELECT * FROM pg_settings", "SELECT * FROM pg_show_all_settings()",
        "SELECT * FROM pg_file_settings", "SELECT * FROM pg_show_all_file_settings()",
        "SELECT * FROM pg_db_role_setting", "SELECT rolconfig FROM pg_roles",
        "SELECT pg_read_file('%s')" % path2, "SELECT pg_read_file('postgresql.auto.conf')"]
for sql in ways:
    r = psql("SET ROLE m3ter_monitor; " + sql, check=False)
    seen = r.stdout + r.stderr
    ok(SECRET not in seen and KEY_ID not in seen and WRONG not in seen, "pg_monitor: %s shows no credential" % sql)
psql("DROP ROLE m3ter_monitor")

set_and_reload(credentials_file=None, api_secret=None)
shutil.rmtree(d)
done()
