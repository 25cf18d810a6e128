#!/usr/bin/env bash
# Instructions per call of each case in benches/instructions.rs, under callgrind: a measure
# that does not move when the machine is busy. Every case runs with N and 2N calls and the
# difference is divided by N, which cancels start-up.
#
# Valgrind hides SHA-NI from the program, so SHA-256 runs in software there (~3,400
# instructions a block, several times its real cost); the last column leaves the compression
# function out, to compare everything else.
#
# Usage: scripts/instructions.sh [calls] [cases…]   (default 20000, every case)
# The redis_get and redis_replay cases (64 in flight, per call of 64) need
# FEATURES="--features redis,macros" and a Redis at REDIS_URL.
# FEATURES="--features metrics" counts a build with those features.
set -euo pipefail
cd "$(dirname "$0")/.."
calls=${1:-20000}
shift || true
cases=${*:-plain cached raw hash replay breaker}
# shellcheck disable=SC2086
cargo bench --bench instructions --no-run ${FEATURES:-} 2>/dev/null
binary=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/instructions-* | grep -v '\.d$' | head -1)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# Prints "<total> <sha-compression>" instructions for one run.
count() {
    valgrind --tool=callgrind --callgrind-out-file="$out" "$binary" "$1" "$2" >/dev/null 2>&1
    local total sha
    total=$(callgrind_annotate "$out" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
    sha=$(callgrind_annotate "$out" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*compress256.*/\1/p' | head -1 | tr -d ,)
    echo "$total ${sha:-0}"
}
printf '%-8s %14s %22s\n' case 'instr/call' 'instr/call without SHA'
for case in $cases; do
    read -r total1 sha1 < <(count "$case" "$calls")
    read -r total2 sha2 < <(count "$case" $((calls * 2)))
    printf '%-8s %14d %22d\n' "$case" $(((total2 - total1) / calls)) $(((total2 - sha2 - total1 + sha1) / calls))
done
