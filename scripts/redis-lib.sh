# Shell functions shared by scripts/redis-cluster.sh and scripts/redis-sentinel.sh (sourced,
# not run): loopback ports, waiting for a server, stopping what a script started.

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Waits (up to ~10 s) until the server on port $1 (process $2) answers PING.
wait_for_ping() {
    local port=$1 pid=$2
    for _ in $(seq 1 100); do
        if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null || true)" = "PONG" ]; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# Stops every process whose pid is in DIR/*.pid ($1): TERM, up to 5 s, then KILL. The caller
# checked that DIR is one of its own and removes its files.
stop_pids() {
    local dir=$1 pidfile pid
    for pidfile in "$dir"/*.pid; do
        [ -e "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    done
}
