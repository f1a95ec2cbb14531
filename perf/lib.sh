# Shared by the perf/ scripts (sourced, not run): CPU placement, child
# cleanup, waiting for a log line, free ports, the bench origin.
# Needs $bench (the coremesh-bench binary) and $out (the scratch directory)
# before start_origin, and $proxy_bin before start_coremesh.

# The proxy on the last CPU, origin and load on the others (all CPUs if
# there is only one).
last=$(( $(nproc) - 1 ))
if [ "$last" -gt 0 ]; then others="0-$(( last - 1 ))"; else others=0; fi

# Every background process started is added to pids and killed on exit.
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# wait_for FILE PATTERN: up to 10 s for PATTERN to appear in FILE.
wait_for() {
    for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "$(basename "$0"): no \"$2\" in $1" >&2; exit 1
}

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# start_origin [ARGS...]: the bench origin on the load CPUs; sets $origin.
start_origin() {
    taskset -c "$others" "$bench" origin --listen 127.0.0.1:0 "$@" >"$out/origin.out" 2>&1 &
    pids+=($!)
    wait_for "$out/origin.out" "listening on"
    origin=$(awk '/listening on/ {print $3}' "$out/origin.out")
}

# start_coremesh CONFIG_NAME: a one-shard coremesh proxy on the last CPU
# forwarding service "origin" to $origin, its config written to
# $out/CONFIG_NAME; sets $proxy_pid and $addr (its outbound listener).
start_coremesh() {
    cat >"$out/$1" <<TOML
[proxy]
service = "bench"
cores = 1
admin = "127.0.0.1:0"

[outbound]
listen = "127.0.0.1:0"

[[services]]
name = "origin"
endpoints = ["$origin"]
TOML
    run_coremesh "$out/$1" "$out/proxy.log" outbound
    proxy_pid=$run_pid addr=$run_addr
}

# run_coremesh CONFIG LOG LISTENER: coremesh-proxy with CONFIG on the last
# CPU, stderr in LOG, until it reports LISTENER's bound address (`inbound`
# or `outbound`); sets $run_pid and $run_addr.
run_coremesh() {
    taskset -c "$last" "$proxy_bin" --config "$1" 2>"$2" &
    run_pid=$!; pids+=("$run_pid")
    wait_for "$2" "$3="
    run_addr=$(grep -o "$3=[0-9.:]*" "$2" | head -1 | cut -d= -f2)
}
