#!/usr/bin/env bash
# Runs the unit tests of the modules that hold `unsafe` under
# AddressSanitizer (with LeakSanitizer), on the stable toolchain.
#
#   scripts/sanitize.sh            # coremesh-proxy's unit tests, monoio on io_uring and on epoll
#   scripts/sanitize.sh --all      # and the glommio backend's, and coremesh-control's
#   scripts/sanitize.sh --miri     # the pure-memory tests (IoVecs) under Miri, on nightly
#   scripts/sanitize.sh -- FILTER  # only tests whose name contains FILTER
#
# How: rustc's `-Zsanitizer=address` is an unstable flag, and nightly is not
# assumed here; the stable toolchain ships the AddressSanitizer runtime
# (lib/rustlib/x86_64-unknown-linux-gnu/lib/librustc-stable_rt.asan.a), and
# RUSTC_BOOTSTRAP=1 lets stable rustc take the flag, for this test build
# only. `--target` keeps the flag off build scripts and proc macros (they
# run in the compiler, uninstrumented). std itself is not rebuilt (that needs
# nightly's -Zbuild-std): our code and every dependency are instrumented,
# std's own accesses are not, and its allocations still go through ASan's
# malloc. Builds go to target/asan ($COREMESH_ASAN_TARGET_DIR if set), apart
# from the normal debug build.
# docs/unsafe.md says what this covers and what it does not.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ALL=0
MIRI=0
FILTER=()
while [ $# -gt 0 ]; do
    case "$1" in
        --all) ALL=1 ;;
        --miri) MIRI=1 ;;
        --) shift; FILTER=("$@"); break ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "sanitize.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done

# Miri interprets the code and checks aliasing and provenance too, which
# AddressSanitizer cannot, but it cannot make the socket and io_uring calls
# most of these tests make: it runs the tests of runtime/iovecs.rs (pointer
# arithmetic over owned buffers, no syscalls). It needs nightly with the
# miri and rust-src components, and builds every dependency interpreted
# (about 9 minutes on 2 CPUs): not part of scripts/test.sh.
if [ "$MIRI" = 1 ]; then
    if ! cargo +nightly miri --version >/dev/null 2>&1; then
        echo "sanitize.sh: --miri needs nightly's miri: rustup component add --toolchain nightly miri rust-src" >&2
        exit 1
    fi
    CARGO_TARGET_DIR="${COREMESH_MIRI_TARGET_DIR:-$ROOT/target/miri}" \
        cargo +nightly miri test -p coremesh-proxy --lib -- "${FILTER[@]:-runtime::iovecs}"
    exit 0
fi

TARGET=x86_64-unknown-linux-gnu
if [ "$(uname -m)" != x86_64 ]; then
    echo "sanitize.sh: AddressSanitizer builds are set up for $TARGET only; this machine is $(uname -m)" >&2
    exit 1
fi
SYSROOT="$(rustc --print sysroot)"
RTLIB="$SYSROOT/lib/rustlib/$TARGET/lib"
if ! ls "$RTLIB" 2>/dev/null | grep -q 'rt\.asan\.a$'; then
    if command -v rustup >/dev/null; then
        rustup target add "$TARGET"
    fi
    if ! ls "$RTLIB" 2>/dev/null | grep -q 'rt\.asan\.a$'; then
        echo "sanitize.sh: the toolchain at $SYSROOT ships no AddressSanitizer runtime" \
            "(no $RTLIB/librustc-*_rt.asan.a); install the rustup toolchain for $TARGET" >&2
        exit 1
    fi
fi

export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Zsanitizer=address"
export RUSTDOCFLAGS="$RUSTFLAGS"
ASAN_DIR="${COREMESH_ASAN_TARGET_DIR:-$ROOT/target/asan}"
export CARGO_TARGET_DIR="$ASAN_DIR"
# halt_on_error: the first report fails the run. detect_leaks: LeakSanitizer
# too, with the deliberate leaks of dependencies listed in lsan.supp.
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:detect_stack_use_after_return=1"
export LSAN_OPTIONS="suppressions=$ROOT/scripts/lsan.supp:print_suppressions=0"

START=$(date +%s)
step() {
    printf -- '--- sanitize: %s (%ss)\n' "$1" "$(( $(date +%s) - START ))"
}

asan_test() {
    cargo test --target "$TARGET" "$@" -- "${FILTER[@]}"
}

step "build coremesh-proxy's unit tests with AddressSanitizer"
cargo test --target "$TARGET" -p coremesh-proxy --lib --no-run

step "coremesh-proxy unit tests, monoio on io_uring"
asan_test -p coremesh-proxy --lib

step "coremesh-proxy unit tests, monoio on epoll (MONOIO_FORCE_LEGACY_DRIVER=1)"
MONOIO_FORCE_LEGACY_DRIVER=1 asan_test -p coremesh-proxy --lib

if [ "$ALL" = 1 ]; then
    step "coremesh-proxy unit tests, glommio backend"
    CARGO_TARGET_DIR="$ASAN_DIR/glommio" asan_test -p coremesh-proxy --features runtime-glommio --lib
    step "coremesh-control unit tests"
    asan_test -p coremesh-control --lib
fi

step "done: no AddressSanitizer or LeakSanitizer report"
