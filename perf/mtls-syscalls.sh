#!/usr/bin/env bash
# Kernel work per request of a coremesh mesh hop (outbound proxy -> mutual
# TLS 1.3 -> inbound proxy), as `compare --scenarios mtls,mtls-rate` runs it:
# syscalls, io_uring tracepoints, context switches of both processes (perf
# stat), and voluntary context switches per thread (/proc), per request.
#
# Needs the certificates `compare` writes (`<out dir>/configs/mtls/`).
# Usage: perf/mtls-syscalls.sh coremesh|haproxy CERT_DIR [--proxy-bin PATH]
#          [--rate REQ_PER_S] [--window SECS] [--connections N] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
kind=$1 certs=$(realpath "$2"); shift 2
window=4 conns=32 rate=0 out=perf/out/mtls-syscalls-$kind
target=${CARGO_TARGET_DIR:-target}
proxy_bin=$target/release/coremesh-proxy
while [ $# -gt 0 ]; do
    case "$1" in
        --proxy-bin) proxy_bin=$2; shift 2 ;;
        --window) window=$2; shift 2 ;;
        --connections) conns=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "mtls-syscalls.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"
bench=$target/release/coremesh-bench
. perf/lib.sh
start_origin

case "$kind" in
coremesh)
cat >"$out/inbound.toml" <<TOML
[proxy]
service = "api"
cores = 1
admin = "127.0.0.1:0"
[inbound]
listen = "127.0.0.1:0"
app = "$origin"
[tls]
cert = "$certs/api.crt"
key = "$certs/api.key"
ca = "$certs/ca.pem"
TOML
run_coremesh "$out/inbound.toml" "$out/inbound.log" inbound
in_pid=$run_pid in_addr=$run_addr
cat >"$out/outbound.toml" <<TOML
[proxy]
service = "web"
cores = 1
admin = "127.0.0.1:0"
[outbound]
listen = "127.0.0.1:0"
[tls]
cert = "$certs/web.crt"
key = "$certs/web.key"
ca = "$certs/ca.pem"
[[services]]
name = "api"
endpoints = ["$in_addr"]
TOML
run_coremesh "$out/outbound.toml" "$out/outbound.log" outbound
out_pid=$run_pid addr=$run_addr

    ;;
haproxy)
in_port=$(free_port) out_port=$(free_port)
cat "$certs/api.crt" "$certs/api.key" >"$out/api.pem"
cat "$certs/web.crt" "$certs/web.key" >"$out/web.pem"
head='global
    nbthread 1
    maxconn 9900
    ssl-server-verify required
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    option http-keep-alive
    maxconn 9900'
cat >"$out/inbound.cfg" <<CFG
$head
frontend api
    bind 127.0.0.1:$in_port ssl crt $out/api.pem ca-file $certs/ca.pem verify required ssl-min-ver TLSv1.3
    default_backend origin
backend origin
    http-reuse always
    server origin $origin maxconn 9900
CFG
cat >"$out/outbound.cfg" <<CFG
$head
frontend web
    bind 127.0.0.1:$out_port
    default_backend api_mesh
backend api_mesh
    http-reuse always
    server api 127.0.0.1:$in_port ssl crt $out/web.pem ca-file $certs/ca.pem verify required verifyhost api sni str(api) ssl-min-ver TLSv1.3 maxconn 9900
CFG
taskset -c "$last" haproxy -db -f "$out/inbound.cfg" >"$out/inbound.log" 2>&1 &
in_pid=$!; pids+=("$in_pid")
taskset -c "$last" haproxy -db -f "$out/outbound.cfg" >"$out/outbound.log" 2>&1 &
out_pid=$!; pids+=("$out_pid")
addr=127.0.0.1:$out_port
sleep 0.5
    ;;
*) echo "mtls-syscalls.sh: unknown proxy $kind" >&2; exit 2 ;;
esac

taskset -c "$others" "$bench" load --url "http://$addr/size/128" --header 'Host: api' \
    --rate "$rate" --duration "$(( window + 2 ))s" --connections "$conns" --json >"$out/load.json" &
load_pid=$!; pids+=("$load_pid")
sleep 1
ctxt() { for p in "$in_pid" "$out_pid"; do for t in /proc/"$p"/task/*; do
    printf '%s %s:%s %s\n' "${t##*/}" "$([ "$p" = "$in_pid" ] && echo in || echo out)" \
        "$(tr ' ' _ <"$t/comm")" "$(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status")"; done; done; }
ctxt >"$out/ctxt.before"
perf stat -x, -o "$out/stat.csv" \
    -e 'syscalls:sys_enter_*' -e 'io_uring:*' -e context-switches -e cpu-clock \
    -p "$in_pid,$out_pid" -- sleep "$window" 2>/dev/null
ctxt >"$out/ctxt.after"
wait "$load_pid" || true
rps=$(python3 -c 'import json,sys;d=json.load(open(sys.argv[1]));print(d["achieved_rate"])' "$out/load.json" 2>/dev/null || echo 0)
python3 - "$out" "$rps" "$window" "$kind" <<'PY'
import sys
out, rps, window, kind = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
reqs = rps * window
print(f"{kind} pair: {rps:.0f} req/s, ~{reqs:.0f} requests in the {window:.0f} s window (both processes)")
rows = []
for line in open(f"{out}/stat.csv"):
    f = line.strip().split(",")
    if len(f) < 3 or not f[0].replace(".", "").isdigit():
        continue
    v, ev = float(f[0]), f[2]
    if v:
        rows.append((ev, v))
for ev, v in sorted(rows, key=lambda r: -r[1]):
    if ev == "cpu-clock":
        print(f"  {'cpu us/req':40s} {v*1000/reqs:8.2f}")
    elif v / reqs >= 0.005:
        print(f"  {ev:40s} {v / reqs:8.3f} /req")
def ctxt(name):
    return {l.split()[0]: (l.split()[1], int(l.split()[2])) for l in open(f"{out}/{name}") if len(l.split()) == 3}
before, after = ctxt("ctxt.before"), ctxt("ctxt.after")
for tid, (comm, n) in sorted(after.items(), key=lambda kv: kv[1][0]):
    d = n - before.get(tid, (comm, n))[1]
    if d:
        print(f"  voluntary ctxt switches, {comm:26s} {d / reqs:8.3f} /req ({d / window:.0f}/s)")
PY
