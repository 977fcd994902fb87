"""The README's Errors table lists exactly the SQLSTATEs the extension raises.

Raised: every ERRCODE_* the C code names (PostgreSQL's, from errcodes.h, and the
extension's own M3 class from src/), every ERRCODE = '...' of the SQL scripts, and
the few PostgreSQL raises on the extension's behalf (a used uid, a missing grant).
"""
import glob
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
# raised by PostgreSQL for the extension's objects, not by its code
BY_POSTGRES = {"23505": "the outbox's unique uid", "42501": "EXECUTE revoked from PUBLIC"}

includedir = subprocess.run([BINDIR + "/pg_config", "--includedir-server"], capture_output=True,
                            text=True, check=True).stdout.strip()
codes = {}          # ERRCODE_NAME -> SQLSTATE
for header in [os.path.join(includedir, "utils", "errcodes.h")] + glob.glob(os.path.join(ROOT, "src", "**", "*.h"),
                                                                             recursive=True):
    for name, chars in re.findall(r"#define\s+(ERRCODE_\w+)\s+MAKE_SQLSTATE\(([^)]*)\)", open(header).read()):
        codes[name] = "".join(re.findall(r"'(.)'", chars))

raised = {}         # SQLSTATE -> where
for path in glob.glob(os.path.join(ROOT, "src", "**", "*.[ch]"), recursive=True):
    text = re.sub(r"^#define.*$", "", open(path).read(), flags=re.M)     # definitions raise nothing
    for name in re.findall(r"\b(ERRCODE_\w+)\b", text):
        if name in codes:
            raised.setdefault(codes[name], os.path.basename(path))
for path in glob.glob(os.path.join(ROOT, "m3ter--*.sql")):
    if re.match(r".*m3ter--\d+\.\d+\.sql$", path) and not path.endswith("m3ter--1.2.sql"):
        continue        # a generated install script, or an old one no install uses
    for cond in re.findall(r"ERRCODE\s*=\s*'(\w+)'", open(path).read()):
        name = "ERRCODE_" + cond.upper()
        if cond in codes.values():      # a SQLSTATE itself (the M3 class has no condition names)
            name = next(n for n, c in codes.items() if c == cond)
        ok(name in codes, "SQL condition %s is a known SQLSTATE" % cond)
        raised.setdefault(codes.get(name, cond), os.path.basename(path))
# GUC check hooks refuse with PostgreSQL's 22023
raised.setdefault("22023", "settings")
for code, why in BY_POSTGRES.items():
    raised.setdefault(code, why)

readme = open(os.path.join(ROOT, "README.md")).read()
section = readme[readme.index("### Errors"):]
section = section[:section.index("\n## ")] if "\n## " in section else section
listed = set(re.findall(r"^\| `([0-9A-Z]{5})` \|", section, re.M))

ok(len(listed) > 10, "the README's Errors table lists %d SQLSTATEs" % len(listed))
missing = sorted(set(raised) - listed)
ok(not missing, "every SQLSTATE the code raises is in the README's Errors table",
   ", ".join("%s (%s)" % (c, raised[c]) for c in missing))
extra = sorted(listed - set(raised))
ok(not extra, "the table lists no SQLSTATE the code does not raise", ", ".join(extra))
done()
