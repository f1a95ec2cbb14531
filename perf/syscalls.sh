#!/usr/bin/env bash
# Kernel work per request of one proxy under closed-loop load: syscalls,
# io_uring tracepoints, context switches (perf stat on the proxy's pid).
#
# Starts the bench origin and the proxy pinned apart (proxy on the last CPU),
# drives 128-byte keep-alive requests at saturation, counts events for
# --window seconds, and divides by the requests answered in that window
# (read from the proxy-independent load report: req/s x window).
#
# Usage: perf/syscalls.sh coremesh|haproxy [--proxy-bin PATH]
#                         [--window SECS] [--connections N] [--out DIR]
#                         [--rate REQ_PER_S]   (default 0: closed loop;
#                         a fixed open-loop rate shows the wake-ups per request)
set -euo pipefail
cd "$(dirname "$0")/.."
kind=$1; shift
window=4 conns=32 rate=0 out=perf/out/syscalls-$kind
target=${CARGO_TARGET_DIR:-target}
proxy_bin=$target/release/coremesh-proxy
while [ $# -gt 0 ]; do
    case "$1" in
        --proxy-bin) proxy_bin=$2; shift 2 ;;
        --window) window=$2; shift 2 ;;
        --connections) conns=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        *) echo "syscalls.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"
bench=$target/release/coremesh-bench
. perf/lib.sh
start_origin

case "$kind" in
coremesh)
    start_coremesh proxy.toml
    ;;
haproxy)
    port=$(free_port)
    cat >"$out/haproxy.cfg" <<CFG
global
    nbthread 1
    maxconn 9900
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    option http-keep-alive
    maxconn 9900
frontend bench
    bind 127.0.0.1:$port
    default_backend origin
backend origin
    http-reuse always
    server origin $origin maxconn 9900
CFG
    taskset -c "$last" haproxy -db -f "$out/haproxy.cfg" >"$out/proxy.log" 2>&1 &
    proxy_pid=$!; pids+=("$proxy_pid")
    addr=127.0.0.1:$port
    sleep 0.5
    ;;
*) echo "syscalls.sh: unknown proxy $kind" >&2; exit 2 ;;
esac

taskset -c "$others" "$bench" load --url "http://$addr/size/128" --header 'Host: origin' \
    --rate "$rate" --duration "$(( window + 2 ))s" --connections "$conns" --json >"$out/load.json" &
load_pid=$!; pids+=("$load_pid")
sleep 1
# Voluntary context switches per thread (each is one sleep and one wake-up).
ctxt() { for t in /proc/"$proxy_pid"/task/*; do
    printf '%s %s %s\n' "${t##*/}" "$(tr ' ' _ <"$t/comm")" \
        "$(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status")"; done; }
ctxt >"$out/ctxt.before"
perf stat -x, -o "$out/stat.csv" \
    -e 'syscalls:sys_enter_*' -e 'io_uring:*' -e context-switches -e page-faults -e cpu-clock \
    -p "$proxy_pid" -- sleep "$window" 2>/dev/null
ctxt >"$out/ctxt.after"
wait "$load_pid" || true
rps=$(python3 -c 'import json,sys;d=json.load(open(sys.argv[1]));print(d["achieved_rate"])' "$out/load.json" 2>/dev/null || echo 0)
python3 - "$out/stat.csv" "$rps" "$window" "$kind" "$out" <<'PY'
import sys
path, rps, window, kind, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
reqs = rps * window
print(f"{kind}: {rps:.0f} req/s, ~{reqs:.0f} requests in the {window:.0f} s window")
rows = []
for line in open(path):
    f = line.strip().split(",")
    if len(f) < 3 or not f[0].replace(".", "").isdigit():
        continue
    v, ev = float(f[0]), f[2]
    if v == 0:
        continue
    rows.append((ev, v))
for ev, v in sorted(rows, key=lambda r: -r[1]):
    per = v / reqs if reqs else 0
    unit = "ms" if ev == "cpu-clock" else ""
    if ev == "cpu-clock":
        print(f"  {'cpu us/req':40s} {v*1000/reqs:8.2f}" if reqs else "")
    elif per >= 0.005:
        print(f"  {ev:40s} {per:8.3f} /req")
def ctxt(name):
    return {l.split()[0]: (l.split()[1], int(l.split()[2])) for l in open(f"{out}/{name}") if len(l.split()) == 3}
before, after = ctxt("ctxt.before"), ctxt("ctxt.after")
for tid, (comm, n) in sorted(after.items()):
    d = n - before.get(tid, (comm, n))[1]
    if d and reqs:
        print(f"  voluntary ctxt switches, thread {comm:22s} {d / reqs:8.3f} /req ({d / window:.0f}/s)")
PY
