#!/usr/bin/env bash
# Runs examples/http_orders.rs (or http_orders_actix.rs: same routes) on a free loopback port
# and sends it the README's curl lines, checking every answer. The store is the example's
# choice: memory by default, REDIS_URL or POSTGRES_URL (set in the environment) switch it.
#
# Usage: scripts/http-orders-smoke.sh <path to the built http_orders example>
set -euo pipefail
binary=${1:?usage: scripts/http-orders-smoke.sh target/debug/examples/http_orders}

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
PORT=$port "$binary" >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -f "$log"' EXIT

# Up to 20 s for the server to listen.
for _ in $(seq 200); do
    if curl -s -o /dev/null "http://127.0.0.1:$port/orders/none"; then break; fi
    if ! kill -0 "$server" 2>/dev/null; then cat "$log"; echo "http_orders exited"; exit 1; fi
    sleep 0.1
done
head -1 "$log"

base="http://127.0.0.1:$port"
key="smoke-$(date +%s%N)"
alice='Authorization: Bearer alice'
bob='Authorization: Bearer bob'
fail() { echo "FAILED: $*"; exit 1; }
# `status header-file body-file` of one request.
request() {
    local out=$1; shift
    curl -s -m 10 -D "$out.headers" -o "$out.body" -w '%{http_code}' "$@"
}

tmp=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$log" "$tmp"' EXIT

status=$(request "$tmp/first" -X POST "$base/orders" -H "$alice" -H "Idempotency-Key: \"$key\"" \
    -H 'Content-Type: application/json' -d '{"item":"book","quantity":2}')
[ "$status" = 201 ] || fail "first POST answered $status: $(cat "$tmp/first.body")"
id=$(sed -n 's/.*"id":"\([^"]*\)".*/\1/p' "$tmp/first.body")
[ -n "$id" ] || fail "no order id in $(cat "$tmp/first.body")"

status=$(request "$tmp/retry" -X POST "$base/orders" -H "$alice" -H "Idempotency-Key: $key" \
    -H 'Content-Type: application/json' -d '{"item":"book","quantity":2}')
[ "$status" = 201 ] || fail "retry answered $status"
grep -qi '^idempotent-replayed: true' "$tmp/retry.headers" || fail "the retry was not a replay"
cmp -s "$tmp/first.body" "$tmp/retry.body" || fail "the replay's body differs from the first"

# The replay shows in the metrics, where the example serves them (built with `metrics`);
# EXPECT_METRICS=1 makes them mandatory.
metrics=$(curl -s -m 10 -w '\n%{http_code}' "$base/metrics")
if [ "$(tail -1 <<<"$metrics")" = 200 ]; then
    grep -Eq '^idempotency_replays_total\{namespace="http"\} [1-9]' <<<"$metrics" \
        || fail "no replay in /metrics: $(grep idempotency_ <<<"$metrics")"
    echo "metrics: $(grep -E '^idempotency_(replays|executions)_total' <<<"$metrics" | tr '\n' ' ')"
elif [ "${EXPECT_METRICS:-0}" = 1 ]; then
    fail "GET /metrics answered $(tail -1 <<<"$metrics")"
fi

status=$(request "$tmp/reused" -X POST "$base/orders" -H "$alice" -H "Idempotency-Key: $key" \
    -H 'Content-Type: application/json' -d '{"item":"lamp","quantity":1}')
[ "$status" = 422 ] || fail "a reused key answered $status"
grep -qi '^content-type: application/problem+json' "$tmp/reused.headers" || fail "422 is not problem+json"

status=$(request "$tmp/nokey" -X POST "$base/orders" -H "$alice" \
    -H 'Content-Type: application/json' -d '{"item":"book","quantity":2}')
[ "$status" = 400 ] || fail "a POST without a key answered $status"
grep -q 'missing-key' "$tmp/nokey.body" || fail "no key is not missing-key: $(cat "$tmp/nokey.body")"

# Another client with Alice's key and request: an order of its own, never Alice's.
status=$(request "$tmp/bob" -X POST "$base/orders" -H "$bob" -H "Idempotency-Key: $key" \
    -H 'Content-Type: application/json' -d '{"item":"book","quantity":2}')
[ "$status" = 201 ] || fail "another client's POST answered $status"
grep -qi '^idempotent-replayed' "$tmp/bob.headers" && fail "another client got Alice's order replayed"
grep -q "\"$id\"" "$tmp/bob.body" && fail "another client got Alice's order: $(cat "$tmp/bob.body")"

# No credentials: the client is not identified, so nothing runs.
status=$(request "$tmp/anonymous" -X POST "$base/orders" -H "Idempotency-Key: $key" \
    -H 'Content-Type: application/json' -d '{"item":"book","quantity":2}')
[ "$status" = 400 ] || fail "a POST without credentials answered $status"
grep -q 'unidentified-client' "$tmp/anonymous.body" || fail "no credentials is not unidentified-client: $(cat "$tmp/anonymous.body")"

status=$(request "$tmp/read" "$base/orders/$id")
[ "$status" = 200 ] || fail "GET /orders/$id answered $status"
grep -q "\"$id\"" "$tmp/read.body" || fail "GET returned another order: $(cat "$tmp/read.body")"

echo "$(basename "$binary"): 201, replay, 422, 400, another client's own 201, 400 unidentified, GET $id: ok"
