#!/usr/bin/env python3
"""Checks the file-level dependency rules of idempotent-core (see ARCHITECTURE.md).

Reads every `use crate::…`, `use super::…` and inline `crate::…` path in
idempotent-core/src, maps it to the file that defines the module, and reports:
  * import cycles between files (a file that re-exports from a module it is used by counts);
  * the layer rules in RULES below (stores never import the executor, the protocol or an
    entry point; output/ imports nothing above it; the protocol imports no store and no
    entry point);
  * files over 600 lines (idempotent-core/src, idempotent-macros/src).
Exits 1 on any finding. Doc comments and string literals are ignored.
"""
import os, re, sys

ROOT = os.path.join(os.path.dirname(__file__), "..")
SRC = os.path.join(ROOT, "idempotent-core", "src")
MAX_LINES = 600

ENTRY_POINTS = ("executor/", "transaction.rs", "private.rs", "http/", "consumer/", "global.rs", "outbox/", "broker/", "steps/")


def under(rel, *prefixes):
    return any(rel == p or rel.startswith(p) for p in prefixes)


# Each rule: (importing file, imported file) -> a finding or None. Paths relative to src/.
RULES = [
    # Stores are below the protocol and every entry point: they may read the table of
    # defaults, nothing else of the protocol, and nothing that calls them.
    lambda rel, trel: f"{rel} (a store) imports {trel}"
    if under(rel, "store/")
    and (under(trel, *ENTRY_POINTS) or (under(trel, "protocol/") and trel != "protocol/defaults.rs"))
    else None,
    # The bytes a store receives: output/ imports nothing above it.
    lambda rel, trel: f"{rel} imports {trel}, above output/"
    if under(rel, "output/") and not under(trel, "output/", "encoding.rs", "error.rs", "key.rs")
    else None,
    # The protocol is pure decisions: no store, no executor, no entry point.
    lambda rel, trel: f"{rel} (the protocol) imports {trel}"
    if under(rel, "protocol/") and under(trel, "store/", *ENTRY_POINTS)
    else None,
]


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib"):
        rel = rel[:-1]
    if rel and rel[-1] == "private":  # mounted as __private
        rel[-1] = "__private"
    return tuple(rel)


def files():
    for dirpath, _, names in os.walk(SRC):
        for name in names:
            if name.endswith(".rs"):
                yield os.path.join(dirpath, name)


def code_lines(text):
    out = []
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith("//"):
            continue
        out.append(re.sub(r'"([^"\\]|\\.)*"', '""', line))
    return "\n".join(out)


def main():
    by_module = {}
    for path in files():
        by_module[module_of(path)] = path
    # `#[path]`-mounted and inline modules resolve to the nearest file.
    def resolve(parts):
        parts = tuple(parts)
        while parts:
            if parts in by_module:
                return by_module[parts]
            parts = parts[:-1]
        return None

    edges = {}
    findings = []
    for path in files():
        me = module_of(path)
        is_mod_file = os.path.basename(path) in ("mod.rs", "lib.rs")
        text = code_lines(open(path).read())
        targets = set()
        for m in re.finditer(r"\b(crate|super)((?:::\w+)+)", text):
            head, tail = m.group(1), [p for p in m.group(2).split("::") if p]
            if head == "crate":
                base = []
            else:
                base = list(me if is_mod_file else me[:-1])
                base = base[:-1] if base else base
                # `super` from a file `a/b.rs` (module a::b) is `a`
                base = list(me[:-1]) if not is_mod_file else list(me[:-1])
                while tail and tail[0] == "super":
                    base = base[:-1]
                    tail = tail[1:]
            target = resolve(base + tail)
            if target and target != path:
                targets.add(target)
        # use super::{a, b} / use crate::{a, b}
        for m in re.finditer(r"\b(crate|super)::\{([^}]*)\}", text):
            head = m.group(1)
            base = [] if head == "crate" else list(me[:-1])
            for item in m.group(2).split(","):
                name = item.strip().split("::")[0].split(" ")[0]
                if name and name != "self":
                    target = resolve(base + [name])
                    if target and target != path:
                        targets.add(target)
        edges[path] = targets
        rel = os.path.relpath(path, SRC)
        for target in targets:
            trel = os.path.relpath(target, SRC)
            for rule in RULES:
                message = rule(rel, trel)
                if message:
                    findings.append(message)

    # cycles between files: ignore a parent mod.rs declaring its children (not an import)
    def parent_of(child, parent):
        return os.path.basename(parent) in ("mod.rs", "lib.rs") and os.path.dirname(child).startswith(os.path.dirname(parent))

    seen_cycles = set()
    for a, targets in edges.items():
        for b in targets:
            if a in edges.get(b, set()) and not parent_of(a, b) and not parent_of(b, a):
                pair = tuple(sorted((os.path.relpath(a, SRC), os.path.relpath(b, SRC))))
                if pair not in seen_cycles:
                    seen_cycles.add(pair)
                    findings.append(f"import cycle: {pair[0]} <-> {pair[1]}")

    # longer cycles: strongly connected components of the graph (Tarjan)
    index, low, stack, on, counter = {}, {}, [], set(), [0]
    sys.setrecursionlimit(10000)

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 2:
                names = sorted(os.path.relpath(c, SRC) for c in component)
                findings.append("import cycle: " + " -> ".join(names))

    for v in list(edges):
        if v not in index:
            connect(v)

    for base in (SRC, os.path.join(ROOT, "idempotent-macros", "src")):
        for dirpath, _, names in os.walk(base):
            for name in names:
                if name.endswith(".rs"):
                    p = os.path.join(dirpath, name)
                    n = sum(1 for _ in open(p))
                    if n > MAX_LINES:
                        findings.append(f"{os.path.relpath(p, ROOT)}: {n} lines (limit {MAX_LINES})")

    for f in sorted(findings):
        print(f)
    print(f"{len(findings)} findings, {len(edges)} files")
    sys.exit(1 if findings else 0)


main()
