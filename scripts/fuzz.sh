#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60), after
# replaying its committed regression inputs. Fails on the first crash,
# assertion or leak; the input that failed is under fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 3600       # an hour per target
#   scripts/fuzz.sh 30 wire    # only the named targets
#
# Corpora grow in fuzz/corpus/<target> (not committed); the seeds in
# fuzz/seeds/<target> are read every run. A crash found and fixed is copied
# to fuzz/regressions/<target>/ so every later run replays it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_PER_TARGET="${1:-60}"
shift || true

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked
fi

# libFuzzer's instrumentation and AddressSanitizer need nightly rustc flags.
# Use the nightly toolchain where rustup has one; otherwise the stable
# compiler with RUSTC_BOOTSTRAP=1 and no sanitizer (coverage-guided fuzzing
# with Rust's own checks: overflow, bounds, the targets' assertions).
FUZZ_ARGS=(-O)
if rustup run nightly rustc --version >/dev/null 2>&1; then
    TOOLCHAIN=(+nightly)
else
    TOOLCHAIN=()
    export RUSTC_BOOTSTRAP=1
    FUZZ_ARGS+=(--sanitizer none)
fi

cd "$ROOT/fuzz"
TARGETS=("$@")
if [ "${#TARGETS[@]}" -eq 0 ]; then
    mapfile -t TARGETS < <(cargo "${TOOLCHAIN[@]}" fuzz list)
fi
cargo "${TOOLCHAIN[@]}" fuzz build "${FUZZ_ARGS[@]}"

for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t"
    if [ -d "regressions/$t" ] && [ -n "$(ls -A "regressions/$t")" ]; then
        echo "== $t: replaying fuzz/regressions/$t"
        cargo "${TOOLCHAIN[@]}" fuzz run "${FUZZ_ARGS[@]}" "$t" "regressions/$t"/* -- -runs=0
    fi
    echo "== $t: fuzzing for ${SECONDS_PER_TARGET}s"
    cargo "${TOOLCHAIN[@]}" fuzz run "${FUZZ_ARGS[@]}" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        2>&1 | grep -Ev '^#[0-9]+\s+(NEW|REDUCE|pulse)' || { echo "fuzz target $t failed" >&2; exit 1; }
done
echo "all fuzz targets ran ${SECONDS_PER_TARGET}s without a failure: ${TARGETS[*]}"
