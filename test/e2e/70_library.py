"""The library keeps to itself: it installs no process-wide cJSON allocator, and the
cJSON trees it builds (with malloc) are freed on error paths too."""
import glob
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

so = os.path.join(subprocess.run([BINDIR + "/pg_config", "--pkglibdir"], capture_output=True, text=True)
                  .stdout.strip(), "m3ter.so")
syms = subprocess.run(["nm", "-D", "--undefined-only", so], capture_output=True, text=True).stdout
ok("cJSON_Parse" in syms and "cJSON_InitHooks" not in syms,
   "m3ter.so does not call cJSON_InitHooks (other cJSON users in the process keep malloc)")

# packaging: the shipped Makefile leaves warnings as warnings (test/lib.sh adds -Werror), and
# code that depends on the PostgreSQL major sits in src/ground/compat.h only
root = os.path.join(os.path.dirname(__file__), "..", "..")
flags = [line for line in open(os.path.join(root, "Makefile")) if line.startswith("PG_CPPFLAGS")]
ok(flags and "-Werror" not in flags[0], "the Makefile does not force -Werror", flags)
src = os.path.join(root, "src")
users = sorted(os.path.relpath(f, src) for f in glob.glob(os.path.join(src, "**", "*.[ch]"), recursive=True)
               if not f.endswith("compat.h") and "PG_VERSION_NUM" in open(f).read())
is_(users, [], "PG_VERSION_NUM appears only in src/ground/compat.h")

# 100 calls that fail validation while 1.5 MB of cJSON trees are alive: none of it stays
RSS = "SELECT (regexp_match(pg_read_file('/proc/self/status'), 'VmRSS:\\s+(\\d+)'))[1]::bigint"
out = psql("""
CREATE TEMP TABLE rss (at text, kb bigint);
DO $$
DECLARE
    fields jsonb := (SELECT jsonb_agg(jsonb_build_object('category', 'MEASURE', 'code', 'c' || i, 'name', 'N',
                                                         'unit', repeat('u', 100000)))
                       FROM generate_series(1, 15) i);
BEGIN
    FOR i IN 1..105 LOOP
        IF i = 6 THEN INSERT INTO rss SELECT 'before', (%s); END IF;
        BEGIN
            PERFORM m3ter_create_meter('Leak test', 'leak_test', fields, '[{"category":"SIZE","code":"d","name":"D"}]');
        EXCEPTION WHEN invalid_parameter_value THEN NULL;
        END;
    END LOOP;
    INSERT INTO rss SELECT 'after', (%s);
END $$;
SELECT string_agg(at || '=' || kb, ' ' ORDER BY at DESC) FROM rss;
""" % (RSS, RSS))
kb = dict(p.split("=") for p in out.split())
grown = int(kb["after"]) - int(kb["before"])
note("backend RSS before %s kB, after %s kB" % (kb["before"], kb["after"]))
ok(grown < 30000, "100 failed calls with 1.5 MB trees each grew the backend by %d kB (< 30 MB)" % grown)
done()
