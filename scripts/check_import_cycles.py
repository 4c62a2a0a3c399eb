#!/usr/bin/env python3
"""Fails when two or more source files of a crate import each other in a cycle.

Why: docs/architecture.md asks for an import graph without cycles between
files, so that each module can be read (and moved) on its own. Cargo enforces
this between crates, but not between the files of one crate, so CI runs this.

The graph is read from `crate::` and `super::` paths in code (comments and the
trailing `#[cfg(test)]` block are ignored). A path names the deepest file
module it reaches: `crate::decode::packed::PackedMatrix` is an edge to
`decode/packed.rs`, while `crate::decode::PackedMatrix` (a re-export) is an
edge to `decode/mod.rs`. A `mod.rs` that re-exports a child (`pub use x::…`)
depends on that child.

Usage: scripts/check_import_cycles.py [crates/NAME/src ...]   (default: every crate)
"""
import glob
import os
import re
import sys


def file_modules(src):
    """Module path (tuple of names) -> file, for every .rs file under src."""
    files = {}
    for root, _, names in os.walk(src):
        for f in names:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            mod = os.path.relpath(path, src)[:-3].split(os.sep)
            if mod[-1] == "mod":
                mod = mod[:-1]
            if mod in (["lib"], ["main"]):
                mod = []
            files[tuple(mod)] = path
    return files


def code_of(path):
    text = re.sub(r"//[^\n]*", "", open(path, encoding="utf-8").read())
    cut = text.find("#[cfg(test)]")
    return text[:cut] if cut >= 0 else text


def edges_of(files):
    def deepest(segs):
        for n in range(len(segs), -1, -1):
            if tuple(segs[:n]) in files:
                return tuple(segs[:n])
        return None

    edges = {}
    for mod, path in files.items():
        text = code_of(path)
        deps = set()
        for m in re.finditer(r"\b(crate|super)((?:::\w+)+)(::\{([^}]*)\})?", text):
            base = [] if m.group(1) == "crate" else list(mod[:-1])
            segs = base + m.group(2).strip(":").split("::")
            for item in (m.group(4) or "").split(","):
                item = item.strip().split(" as ")[0]
                if item and item != "self":
                    found = deepest(segs + item.split("::"))
                    if found is not None:
                        deps.add(found)
            found = deepest(segs)
            if found is not None:
                deps.add(found)
        for m in re.finditer(r"pub(?:\([^)]*\))? use (?:self::)?(\w+)::", text):
            found = deepest(list(mod) + [m.group(1)])
            if found is not None:
                deps.add(found)
        deps.discard(mod)
        deps.discard(())
        edges[mod] = deps
    return edges


def cycles(edges):
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return found


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    srcs = sys.argv[1:] or sorted(glob.glob(os.path.join(root, "crates", "*", "src")))
    name = lambda m: "/".join(m) or "lib"
    bad = 0
    for src in srcs:
        files = file_modules(src)
        edges = edges_of(files)
        for comp in cycles(edges):
            bad += 1
            print(f"import cycle in {os.path.relpath(src, root)}: " + ", ".join(sorted(name(m) for m in comp)))
            for m in comp:
                inside = sorted(name(d) for d in edges[m] if d in comp)
                print(f"    {name(m)} -> {', '.join(inside)}")
    print(f"{len(srcs)} crates checked, {bad} import cycle(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
