#!/usr/bin/env bash
# Instructions per request-head parse of the proxy's HTTP/1 codec
# (coremesh_proxy::http1::parse_request), counted by callgrind. Instruction
# counts do not drift with the neighbours' load the way CPU time does, so
# this number is comparable across runs and machines of the same ISA.
#
# Method: run the bench binary `http1-parse-count` under callgrind with N1
# and N2 iterations; (Ir(N2) - Ir(N1)) / (N2 - N1) is the cost of one parse
# with process start-up cancelled out.
#
# Usage: perf/callgrind.sh [N1] [N2]      (defaults 1000 and 11000)
# Needs valgrind (scripts/install-bench-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

n1=${1:-1000}
n2=${2:-11000}
target=${CARGO_TARGET_DIR:-target}
out=perf/out
mkdir -p "$out"

command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind missing; run scripts/install-bench-deps.sh" >&2; exit 1; }

cargo build --release -q -p coremesh-bench --bin http1-parse-count
bin="$target/release/http1-parse-count"

total_ir() {
    local n=$1 file="$out/callgrind.http1.$1.out"
    valgrind --tool=callgrind --callgrind-out-file="$file" "$bin" "$n" >"$out/callgrind.http1.$n.log" 2>&1
    # "summary: <Ir>" (or "totals:") is the whole program's instruction count.
    awk '/^(summary|totals):/ {print $2; exit}' "$file"
}

ir1=$(total_ir "$n1")
ir2=$(total_ir "$n2")
per=$(( (ir2 - ir1) / (n2 - n1) ))
"$bin" 1 | tail -1
echo "callgrind: $ir1 Ir for $n1 parses, $ir2 Ir for $n2 parses"
echo "http1::parse_request: $per instructions per request head"
echo "(annotate: callgrind_annotate $out/callgrind.http1.$n2.out | head -40)"
