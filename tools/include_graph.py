#!/usr/bin/env python3
"""Folder-level include graph of the library code: checks the layering, prints the graph.

Each product folder (a directory holding .h/.cpp/.cu outside tests/, bench/, tools/, build/) is a
node; an edge A -> B means a file in A includes "B/...". The check fails (exit 1) when the graph
has a cycle, when an include points up the layer order LAYERS below (a folder may include its
own layer or lower ones), when a folder is not in LAYERS, or when one folder holds more than
MAX_SHARE of the non-test lines. docs/ARCHITECTURE.md draws this graph; tests run this check.
Usage: tools/include_graph.py [--root DIR] [--markdown]
"""
import argparse
import os
import re
import sys

# Layers, lowest first; folders of one layer may include each other only if no cycle results.
LAYERS = [
    ["autograd", "autograd/cpu", "autograd/cuda"],
    ["quant", "quant/cpu", "quant/cuda", "data"],
    ["nn"],
    ["optim", "optim/cpu", "optim/cuda"],
    ["trainers/config"],
    ["trainers/formats"],
    ["trainers/infer", "trainers/train"],
    ["trainers/cli"],
]
MAX_SHARE = 0.25
SKIP = {"tests", "bench", "tools", "build", "docs", "configs", "scripts", ".git", ".ci", "data_cache", "runs"}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def scan(root):
    lines, edges = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        top = rel.split(os.sep)[0]
        if rel == "." or top in SKIP:
            if rel == ".":
                dirnames[:] = [d for d in dirnames if d not in SKIP]
            continue
        folder = rel.replace(os.sep, "/")
        for f in filenames:
            if not f.endswith((".h", ".cpp", ".cu", ".cuh")):
                continue
            text = open(os.path.join(dirpath, f), encoding="utf-8", errors="replace").read().splitlines()
            lines[folder] = lines.get(folder, 0) + len(text)
            for line in text:
                m = INCLUDE.match(line)
                if m and "/" in m.group(1):
                    target = os.path.dirname(m.group(1))
                    if target != folder and os.path.isfile(os.path.join(root, m.group(1))):
                        edges.setdefault(folder, set()).add(target)
    return lines, edges


def find_cycle(nodes, edges):
    state = {}

    def visit(n, path):
        state[n] = 1
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m):] + [m] if m in path else [n, m]
            if not state.get(m):
                c = visit(m, path + [m])
                if c:
                    return c
        state[n] = 2
        return None

    for n in sorted(nodes):
        if not state.get(n):
            c = visit(n, [n])
            if c:
                return c
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=os.path.join(os.path.dirname(__file__), ".."))
    ap.add_argument("--markdown", action="store_true", help="print the table and edge list as Markdown")
    a = ap.parse_args()
    lines, edges = scan(os.path.abspath(a.root))
    total = sum(lines.values())
    rank = {f: i for i, layer in enumerate(LAYERS) for f in layer}
    problems = []
    for f in sorted(lines):
        if f not in rank:
            problems.append(f"folder {f} is not in LAYERS (tools/include_graph.py)")
        if lines[f] > MAX_SHARE * total:
            problems.append(f"folder {f} holds {lines[f]} of {total} lines ({100 * lines[f] / total:.0f}% > {100 * MAX_SHARE:.0f}%)")
    for f, ts in sorted(edges.items()):
        for t in sorted(ts):
            if f in rank and t in rank and rank[t] > rank[f]:
                problems.append(f"{f} includes {t}, a higher layer")
    cycle = find_cycle(lines.keys(), edges)
    if cycle:
        problems.append("cycle: " + " -> ".join(cycle))
    if a.markdown:
        print("| layer | folder | lines | share | includes |\n|---|---|---|---|---|")
        for i, layer in enumerate(LAYERS):
            for f in layer:
                if f in lines:
                    deps = ", ".join(sorted(edges.get(f, ()))) or "—"
                    print(f"| {i} | `{f}/` | {lines[f]} | {100 * lines[f] / total:.1f}% | {deps} |")
        print(f"\n{total} lines of library code in {len(lines)} folders.")
    else:
        for f in sorted(lines):
            print(f"{f:18} {lines[f]:6} lines {100 * lines[f] / total:5.1f}%  -> {', '.join(sorted(edges.get(f, ()))) or '-'}")
    for p in problems:
        print("include_graph: " + p, file=sys.stderr)
    print("include_graph: " + ("FAILED" if problems else "ok: no cycle, no upward include, no folder above 25%"),
          file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
