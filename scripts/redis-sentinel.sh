#!/usr/bin/env bash
# A throwaway Redis Sentinel group on free loopback ports, for tests and CI: a master, one
# replica and 3 sentinels watching them as `mymaster` (quorum 2, master down after 1 s).
#
#   scripts/redis-sentinel.sh start DIR   start it; prints the sentinel URLs, comma-separated
#                                         (also written to DIR/urls); DIR/<port>.pid holds
#                                         each server's pid, DIR/master the master's port
#   scripts/redis-sentinel.sh stop DIR    stop it and delete DIR
#
# DIR must not exist before `start`. The servers keep nothing on disk (`--save ""
# --appendonly no`); the sentinels rewrite their own config files in DIR. Every wait is
# bounded; `start` stops whatever it started if it fails. Needs redis-server and redis-cli.
#
# Example:
#   urls=$(scripts/redis-sentinel.sh start /tmp/idem-sentinel)
#   REDIS_SENTINEL_URLS=$urls cargo test -p idempotency --all-features --test redis_sentinel
#   scripts/redis-sentinel.sh stop /tmp/idem-sentinel
set -euo pipefail

# shellcheck source=redis-lib.sh
source "$(dirname "$0")/redis-lib.sh"

SENTINELS=3
MASTER_NAME=mymaster
DOWN_AFTER_MS=1000
MARKER=".idempotency-redis-sentinel"

usage() {
    echo "usage: $0 start|stop DIR" >&2
    exit 2
}

# Waits (up to ~$2 tenths of a second) until command "$1" succeeds.
wait_until() {
    local check=$1 tenths=$2
    for _ in $(seq 1 "$tenths"); do
        if eval "$check"; then return 0; fi
        sleep 0.1
    done
    echo "timed out waiting for: $check" >&2
    return 1
}

stop() {
    local dir=$1
    [ -f "$dir/$MARKER" ] || { echo "$dir is not a sentinel directory of this script" >&2; return 1; }
    stop_pids "$dir"
    rm -f "$dir"/*.pid "$dir"/*.log "$dir"/*.rdb "$dir"/sentinel-*.conf "$dir/urls" "$dir/master" \
        "$dir/ports" "$dir/$MARKER"
    rmdir "$dir" 2>/dev/null || true
}

start() {
    DIR=$1
    command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 3; }
    command -v redis-cli >/dev/null || { echo "redis-cli is not installed" >&2; exit 3; }
    if [ -e "$DIR" ]; then
        echo "$DIR already exists" >&2
        exit 2
    fi
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    touch "$DIR/$MARKER"
    trap 'stop "$DIR" >/dev/null 2>&1 || true' ERR

    local plain=(--save "" --appendonly no)
    local master replica
    master=$(start_on_free_port "$DIR" "the master" "${plain[@]}")
    replica=$(start_on_free_port "$DIR" "the replica" "${plain[@]}" --replicaof 127.0.0.1 "$master")
    wait_until "redis-cli -h 127.0.0.1 -p $replica info replication 2>/dev/null | grep -q '^master_link_status:up'" 100

    local urls="" port conf i
    for i in $(seq 1 "$SENTINELS"); do
        conf="$DIR/sentinel-$i.conf"
        cat >"$conf" <<CONF
sentinel monitor $MASTER_NAME 127.0.0.1 $master 2
sentinel down-after-milliseconds $MASTER_NAME $DOWN_AFTER_MS
sentinel failover-timeout $MASTER_NAME 10000
sentinel parallel-syncs $MASTER_NAME 1
CONF
        port=$(start_on_free_port "$DIR" "sentinel $i" "$conf" --sentinel)
        urls+="${urls:+,}redis://127.0.0.1:$port"
    done

    # Every sentinel must know the replica and the other sentinels before a failover can
    # happen (they find each other through the master's hello channel, every 2 s).
    local others=$((SENTINELS - 1))
    for port in $(echo "$urls" | tr ',' '\n' | sed 's/.*://'); do
        wait_until "redis-cli -h 127.0.0.1 -p $port sentinel master $MASTER_NAME 2>/dev/null | tr -d '\r' | paste - - | grep -qx \$'num-other-sentinels\t$others' && redis-cli -h 127.0.0.1 -p $port sentinel master $MASTER_NAME | tr -d '\r' | paste - - | grep -qx \$'num-slaves\t1'" 300
    done

    echo "$master" >"$DIR/master"
    echo "$urls" >"$DIR/urls"
    echo "$urls"
}

[ $# -eq 2 ] || usage
case "$1" in
    start) start "$2" ;;
    stop) stop "$2" ;;
    *) usage ;;
esac
