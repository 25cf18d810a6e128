#!/usr/bin/env bash
# A throwaway 3-master Redis Cluster on free loopback ports, for tests and CI.
#
#   scripts/redis-cluster.sh start DIR   start it; prints the node URLs, comma-separated
#                                        (also written to DIR/urls)
#   scripts/redis-cluster.sh stop DIR    stop it and delete DIR
#
# DIR must not exist before `start` (it holds the pid files, logs and cluster configs). The
# nodes keep nothing on disk (`--save "" --appendonly no`). Every wait is bounded; `start`
# stops whatever it started if it fails. Needs redis-server and redis-cli (Redis >= 5).
#
# Example:
#   urls=$(scripts/redis-cluster.sh start /tmp/idem-cluster)
#   REDIS_CLUSTER_URLS=$urls cargo test -p idempotency --features redis,conformance --test redis_cluster
#   scripts/redis-cluster.sh stop /tmp/idem-cluster
set -euo pipefail

# shellcheck source=redis-lib.sh
source "$(dirname "$0")/redis-lib.sh"

NODES=3
MARKER=".idempotency-redis-cluster"

usage() {
    echo "usage: $0 start|stop DIR" >&2
    exit 2
}

stop() {
    local dir=$1
    [ -f "$dir/$MARKER" ] || { echo "$dir is not a cluster directory of this script" >&2; return 1; }
    stop_pids "$dir"
    rm -f "$dir"/*.pid "$dir"/*.log "$dir"/nodes-*.conf "$dir/urls" "$dir/ports" "$dir/$MARKER"
    rmdir "$dir" 2>/dev/null || true
}

start() {
    local dir=$1
    command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 3; }
    command -v redis-cli >/dev/null || { echo "redis-cli is not installed" >&2; exit 3; }
    if [ -e "$dir" ]; then
        echo "$dir already exists" >&2
        exit 2
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    touch "$dir/$MARKER"
    trap 'stop "$dir" >/dev/null 2>&1 || true' ERR

    local ports=() port i
    for i in $(seq 1 "$NODES"); do
        port=$(start_on_free_port "$dir" "cluster node $i" --save "" --appendonly no \
            --cluster-enabled yes --cluster-config-file "$dir/nodes-{port}.conf" \
            --cluster-node-timeout 2000) || { stop "$dir"; exit 1; }
        ports+=("$port")
    done

    local nodes=()
    for port in "${ports[@]}"; do nodes+=("127.0.0.1:$port"); done
    if ! redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes \
        </dev/null >"$dir/create.log" 2>&1; then
        cat "$dir/create.log" >&2
        stop "$dir"
        exit 1
    fi
    rm -f "$dir/create.log"

    # Every node must see all slots served before clients use it.
    for port in "${ports[@]}"; do
        local ok=""
        for _ in $(seq 1 200); do
            if redis-cli -h 127.0.0.1 -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; then
                ok=1
                break
            fi
            sleep 0.1
        done
        if [ -z "$ok" ]; then
            echo "node $port did not reach cluster_state:ok" >&2
            stop "$dir"
            exit 1
        fi
    done

    local urls=""
    for port in "${ports[@]}"; do urls+="${urls:+,}redis://127.0.0.1:$port"; done
    echo "$urls" >"$dir/urls"
    echo "$urls"
}

[ $# -eq 2 ] || usage
case "$1" in
    start) start "$2" ;;
    stop) stop "$2" ;;
    *) usage ;;
esac
