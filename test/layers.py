#!/usr/bin/env python3
"""The layers of src/, read from the built objects: which file calls which.

Each object's undefined symbols are matched with the symbols other objects
define (nm), giving the calls between files.  The layers, top to bottom, are
m3ter.c, entry/, outbox/, client/ and ground/; a file may call files of its own
layer and those below, and no files may call each other in a circle.  Prints
the layer map and TAP lines; exits non-zero when a rule is broken.

    test/layers.py            after make
"""
import collections
import os
import subprocess
import sys

LAYERS = ["m3ter", "entry", "outbox", "client", "ground"]
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def layer(name):
    top = name.split("/")[0]
    if top not in LAYERS:
        sys.exit("src/%s is in no layer: put it in one of %s (and name the layer in test/layers.py)"
                 % (name, ", ".join(LAYERS)))
    return LAYERS.index(top)


def built_objects():
    """The objects the Makefile builds (OBJS), not whatever .o lies under src/:
    an object left behind by a file that moved must not stand in for it"""
    with open(os.path.join(ROOT, "Makefile")) as f:
        text = f.read().replace("\\\n", " ")
    for line in text.splitlines():
        if line.startswith("OBJS"):
            return [os.path.join(ROOT, o) for o in line.split("=", 1)[1].split() if o.startswith("src/")]
    sys.exit("no OBJS in the Makefile")


def calls():
    """{file: {file it calls}} over the objects of src/"""
    defined, needed = {}, {}
    objects = built_objects()
    missing = [o for o in objects if not os.path.exists(o)]
    if missing:
        sys.exit("not built: %s: run make first" % " ".join(os.path.relpath(o, ROOT) for o in missing))
    for obj in objects:
        name = os.path.splitext(os.path.relpath(obj, os.path.join(ROOT, "src")))[0]
        needed[name] = set()
        out = subprocess.run(["nm", obj], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in "TDBRC":
                defined[parts[2]] = name
            elif len(parts) == 2 and parts[0] == "U":
                needed[name].add(parts[1])
    return {f: {defined[s] for s in syms if s in defined and defined[s] != f}
            for f, syms in needed.items()}


def circles(graph):
    """The strongly connected components of more than one file (Tarjan)"""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main():
    graph = calls()
    upward = sorted((f, g) for f in graph for g in graph[f] if layer(g) < layer(f))
    loops = circles(graph)

    by_layer = collections.defaultdict(list)
    for f in graph:
        by_layer[layer(f)].append(f)
    print("# the layers of src/, top to bottom (a file -> the files it calls)")
    for i, name in enumerate(LAYERS):
        print("# %s" % (name + ".c" if name == "m3ter" else name + "/"))
        for f in sorted(by_layer[i]):
            print("#   %-22s -> %s" % (f, " ".join(sorted(graph[f])) or "-"))

    print("1..2")
    print("%s 1 - every call points to its own layer or one below" % ("not ok" if upward else "ok"))
    for f, g in upward:
        print("#   %s calls %s, a layer above it" % (f, g))
    print("%s 2 - no circle between files" % ("not ok" if loops else "ok"))
    for comp in loops:
        print("#   circle: %s" % " ".join(comp))
    return 1 if upward or loops else 0


if __name__ == "__main__":
    sys.exit(main())
