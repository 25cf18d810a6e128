#!/usr/bin/env python3
"""Checks that the workspace's `rust-version` is true: no dependency that a user's build of
our crates can compile (normal and build dependencies, every feature on, every target)
declares a newer `rust-version` in Cargo.lock's resolution. Dev-dependencies (tests, benches,
examples) are left out: they are not built for users.

Prints the dependencies that need the most, and exits 1 when one needs more than ours.
"""
import json
import subprocess
import sys


def version(text):
    parts = [int(part) for part in text.split(".")[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def main():
    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked", "--all-features"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    packages = {package["id"]: package for package in metadata["packages"]}
    members = set(metadata["workspace_members"])
    ours = {packages[member].get("rust_version") for member in members}
    if len(ours) != 1 or None in ours:
        print(f"the workspace members disagree on rust-version: {ours}")
        return 1
    ours = ours.pop()
    nodes = {node["id"]: node for node in metadata["resolve"]["nodes"]}

    # Everything reachable from our crates through normal and build dependencies.
    seen, stack = set(), list(members)
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        for dep in nodes[current]["deps"]:
            kinds = {kind["kind"] for kind in dep["dep_kinds"]}
            if kinds - {"dev"}:
                stack.append(dep["pkg"])

    needs = sorted(
        (
            (version(packages[pkg]["rust_version"]), packages[pkg]["name"], packages[pkg]["version"])
            for pkg in seen - members
            if packages[pkg].get("rust_version")
        ),
        reverse=True,
    )
    print(f"rust-version = {ours}; {len(seen - members)} dependencies a user may build")
    for need, name, pkg_version in needs[:5]:
        print(f"  {name} {pkg_version} needs {'.'.join(map(str, need))}")
    too_new = [(need, name, v) for need, name, v in needs if need > version(ours)]
    if too_new:
        for need, name, pkg_version in too_new:
            print(f"FAIL: {name} {pkg_version} needs Rust {'.'.join(map(str, need))} > {ours}")
        print("raise rust-version in Cargo.toml ([workspace.package]) or pin the dependency")
        return 1
    print("ok: no dependency needs a newer Rust")
    return 0


if __name__ == "__main__":
    sys.exit(main())
