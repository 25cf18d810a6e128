# Shell functions shared by scripts/redis-cluster.sh and scripts/redis-sentinel.sh (sourced,
# not run): loopback ports, waiting for a server, stopping what a script started.

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Prints a free loopback port in 10000-21999: below the kernel's ephemeral range (32768 and
# up), so the local end of some running client's connection cannot hold it, and so is its
# cluster bus port (+10000). $1: a file of ports this script already took (appended to).
pick_port() {
    local taken=$1 port
    for _ in $(seq 1 100); do
        port=$((10000 + RANDOM % 12000))
        port_in_use "$port" && continue
        port_in_use "$((port + 10000))" && continue
        grep -qx "$port" "$taken" 2>/dev/null && continue
        echo "$port" >>"$taken"
        echo "$port"
        return 0
    done
    echo "no free loopback port in 10000-21999" >&2
    return 1
}

# Starts `redis-server ARGS --port P` on a free port P and prints P: $1 the directory (P.log,
# P.pid and the ports taken), $2 a name for messages, the rest the server's arguments, in
# which the text {port} is replaced by P. A server that does not answer PING is killed and the
# next port tried, 5 times; each failure prints the end of its log to stderr.
start_on_free_port() {
    local dir=$1 what=$2 port pid attempt arg
    shift 2
    for attempt in 1 2 3 4 5; do
        port=$(pick_port "$dir/ports") || return 1
        local args=()
        for arg in "$@"; do args+=("${arg//\{port\}/$port}"); done
        redis-server "${args[@]}" --port "$port" --bind 127.0.0.1 --protected-mode no \
            --dir "$dir" </dev/null >"$dir/$port.log" 2>&1 &
        pid=$!
        echo "$pid" >"$dir/$port.pid"
        if wait_for_ping "$port" "$pid"; then
            echo "$port"
            return 0
        fi
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$dir/$port.pid"
        echo "$what on $port did not start (try $attempt of 5); its log ends:" >&2
        tail -n 5 "$dir/$port.log" >&2 || true
    done
    return 1
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
