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
import glob
import os
import subprocess
import sys

LAYERS = ["m3ter", "entry", "outbox", "client", "ground"]
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def layer(name):
    return LAYERS.index(name.split("/")[0])


def calls():
    """{file: {file it calls}} over the objects of src/"""
    defined, needed = {}, {}
    objects = sorted(glob.glob(os.path.join(ROOT, "src", "**", "*.o"), recursive=True))
    if not objects:
        sys.exit("no objects under src/: run make first")
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
