#!/usr/bin/env python3
"""Scan valgrind memcheck logs (one per server process) and print the reports
raised in, or within four frames of, the extension's own code; print their count
on stdout (details go to stderr).  PostgreSQL's own known reports (for example
uninitialised padding written to the relcache init file) are counted apart."""
import re
import sys

OURS = re.compile(r"\((?:m3ter|json|http|oauth|client|measurement|submit|meter|outbox|outbox_check|shmem|worker)\.c:\d+\)")
ours, others = [], 0
for path in sys.argv[1:]:
    try:
        text = open(path, errors="replace").read()
    except OSError:
        continue
    for block in re.split(r"\n==\d+== \n", text):
        frames = [l for l in block.splitlines() if re.search(r"==\d+==\s+(at|by) ", l)]
        if not frames:
            continue
        if any(OURS.search(f) for f in frames[:4]):
            ours.append((path, block))
        else:
            others += 1
for path, block in ours:
    print("%s:\n%s\n" % (path, block), file=sys.stderr)
print("valgrind: %d reports in the extension's code, %d elsewhere in the server" % (len(ours), others), file=sys.stderr)
print(len(ours))
