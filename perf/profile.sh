#!/usr/bin/env bash
# CPU profile of coremesh-proxy under load, rendered as a flamegraph.
#
# Starts the bench origin and the proxy (one shard) pinned apart, drives
# load through the proxy with coremesh-bench, records the proxy with
# `perf record -e cpu-clock` (a software clock: these VMs expose no hardware
# counters) with DWARF call graphs (the release profile keeps debug=1), and
# renders perf/out/flamegraph.svg with inferno (installed with
# `cargo install inferno` if missing).
#
# Usage: perf/profile.sh [--duration SECS] [--rate RPS|0] [--body BYTES]
#                        [--connections N] [--proxy-bin PATH] [--out DIR]
# Defaults: 15 s, closed loop (0), 128-byte responses, 32 connections,
# target/release/coremesh-proxy, perf/out.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=15 rate=0 body=128 conns=32 out=perf/out
target=${CARGO_TARGET_DIR:-target}
proxy_bin=$target/release/coremesh-proxy
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --body) body=$2; shift 2 ;;
        --connections) conns=$2; shift 2 ;;
        --proxy-bin) proxy_bin=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "profile.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"

command -v perf >/dev/null || { echo "profile.sh: perf missing; run scripts/install-bench-deps.sh" >&2; exit 1; }
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v inferno-flamegraph >/dev/null || ! command -v inferno-collapse-perf >/dev/null; then
    echo "profile.sh: installing inferno (cargo install inferno)"
    cargo install --locked inferno
fi

[ -x "$proxy_bin" ] || cargo build --release -p coremesh-proxy
cargo build --release -q -p coremesh-bench
bench=$target/release/coremesh-bench

. perf/lib.sh
start_origin

start_coremesh profile-proxy.toml

echo "profile.sh: origin $origin, proxy $addr (pid $proxy_pid, CPU $last), load on CPU $others"
taskset -c "$others" "$bench" load --url "http://$addr/size/$body" --header 'Host: origin' \
    --rate "$rate" --duration "$(( duration + 2 ))s" --connections "$conns" >"$out/load.txt" &
load_pid=$!
pids+=("$load_pid")
sleep 1
perf record -e cpu-clock -F 499 --call-graph dwarf,8192 -p "$proxy_pid" -o "$out/perf.data" \
    -- sleep "$duration" 2>"$out/perf-record.log"
wait "$load_pid" || true
cat "$out/load.txt"

perf script -i "$out/perf.data" 2>/dev/null | inferno-collapse-perf >"$out/stacks.folded"
inferno-flamegraph --title "coremesh-proxy, ${body} B responses, rate ${rate} (0 = max), ${conns} connections" \
    <"$out/stacks.folded" >"$out/flamegraph.svg"
perf report -i "$out/perf.data" --no-children --percent-limit 1 --stdio 2>/dev/null \
    | grep -E '^ +[0-9]' >"$out/top.txt" || true
echo "profile.sh: $out/flamegraph.svg ($(wc -l <"$out/stacks.folded") distinct stacks); top symbols:"
head -25 "$out/top.txt"
