#!/usr/bin/env python3
"""Fails when a crate's modules import each other in a cycle.

For every crate of the workspace (a directory with a Cargo.toml and src/),
builds the graph of its modules from `crate::` and `super::` paths in the
code (test files and `#[cfg(test)]` modules left out), at two levels: a
top-level module (`src/shard.rs`, `src/agent/`) and, inside a folder, each
of its files (`forward::exchange`). A folder's own `mod.rs` and its files
may use each other (that is how a module and its parts talk); any other
cycle is reported with the files that make it, and the exit status is 1.

    scripts/check-cycles.py [ROOT]
"""
import os
import re
import sys

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
SKIP_DIRS = {"target", ".git", "fuzz", "node_modules"}
PATH_RE = re.compile(r"\b(crate|super)((?:::\w+)+)")
USE_GROUP_RE = re.compile(r"\buse\s+(crate|super)::\{([^;]*)\};", re.S)


def crates(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        if "Cargo.toml" in filenames and os.path.isdir(os.path.join(dirpath, "src")):
            yield dirpath


def strip_tests(text):
    """Removes `#[cfg(test)] mod x { ... }` blocks and comments."""
    text = re.sub(r"//[^\n]*", "", text)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\(crate\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def module_of(src, path):
    """(top, sub) of a source file: ("forward", "exchange"), ("shard", None)."""
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel in (["lib"], ["main"]) or not rel:
        return None
    if rel[0] == "bin":
        return None
    return (rel[0], rel[1] if len(rel) > 1 else None)


def is_test_file(src, path):
    rel = os.path.relpath(path, src).split(os.sep)
    return any(p == "tests" or p == "tests.rs" or p.endswith("_tests.rs") for p in rel)


def node(top, sub, folders):
    if sub is not None and sub in folders.get(top, set()):
        return f"{top}::{sub}"
    return top


def graph(crate):
    src = os.path.join(crate, "src")
    files = []
    folders = {}
    for dirpath, _, filenames in os.walk(src):
        for f in filenames:
            if f.endswith(".rs"):
                p = os.path.join(dirpath, f)
                files.append(p)
                m = module_of(src, p)
                if m and m[1] and not is_test_file(src, p):
                    folders.setdefault(m[0], set()).add(m[1])
    edges = {}
    for p in files:
        m = module_of(src, p)
        if m is None or is_test_file(src, p):
            continue
        here = node(m[0], m[1], folders)
        text = strip_tests(open(p, encoding="utf-8").read())
        targets = []
        for kind, rest in PATH_RE.findall(text):
            targets.append((kind, rest.split("::")[1:]))
        for kind, group in USE_GROUP_RE.findall(text):
            for item in re.split(r",(?![^{]*\})", group):
                parts = [x for x in re.split(r"::", item.strip()) if x]
                if parts:
                    targets.append((kind, [re.sub(r"\W.*", "", parts[0])] + parts[1:]))
        for kind, parts in targets:
            if not parts:
                continue
            if kind == "crate":
                top, sub = parts[0], parts[1] if len(parts) > 1 else None
            else:
                # super:: from a file inside a folder is the folder's module;
                # from a top-level file (its own tests aside) it is the crate.
                if m[1] is None:
                    continue
                top, sub = m[0], parts[0]
            there = node(top, sub, folders)
            if there == here or there.split("::")[0] == here and "::" in there:
                continue
            if here.split("::")[0] == there and "::" in here:
                continue
            edges.setdefault(here, {}).setdefault(there, set()).add(os.path.relpath(p, ROOT))
    return edges


def cycles(edges):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    nodes = set(edges) | {t for e in edges.values() for t in e}

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main():
    failed = False
    for crate in sorted(crates(ROOT)):
        edges = graph(crate)
        for comp in cycles(edges):
            failed = True
            print(f"{os.path.relpath(crate, ROOT)}: import cycle between {', '.join(comp)}")
            members = set(comp)
            for a in comp:
                for b, files in sorted(edges.get(a, {}).items()):
                    if b in members:
                        print(f"    {a} -> {b}: {', '.join(sorted(files))}")
    if failed:
        print("import cycles found: move what both sides need into a module below them")
        return 1
    print("no import cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
