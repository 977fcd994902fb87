#!/usr/bin/env python3
"""Print the reliability suite's summary table from the JSON lines its scripts wrote."""
import json
import os
import sys

# a run of single files may have recorded no scenario
rows = [json.loads(line) for line in open(sys.argv[1])] if len(sys.argv) > 1 and os.path.exists(sys.argv[1]) else []
cols = ("scenario", "rows_in", "accepted", "failed", "duplicates", "lost", "crashes")
print()
print("| " + " | ".join(cols) + " |")
print("|" + "---|" * len(cols))
for r in rows:
    print("| " + " | ".join(str(r[c]) for c in cols) + " |")
tot = {c: sum(r[c] for r in rows) for c in cols[1:]}
print("| **%d scenarios** | %s |" % (len(rows), " | ".join(str(tot[c]) for c in cols[1:])))
print()
