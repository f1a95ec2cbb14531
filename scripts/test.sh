#!/usr/bin/env bash
# Runs every check CI runs: fmt, clippy (monoio and glommio), the SAFETY-comment
# check, unit tests (and the proxy's again under AddressSanitizer), the
# end-to-end suite on monoio/io_uring (with the dashboard's browser test) and
# again on monoio's epoll driver, the
# smoke subset against the glommio backend, and coremesh-bench's end-to-end
# tests (a short compare against nginx) on a release build, a 3-minute soak
# under faults (scripts/soak.sh), and the Debian
# packages built and installed into a scratch root. Installs what it needs
# first.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

START=$(date +%s)
section() {
    printf '\n==== %s (%ss elapsed) ====\n' "$1" "$(( $(date +%s) - START ))"
}

# Absolute target dir, so the binary paths below hold wherever cargo puts it.
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
export CARGO_TARGET_DIR="$TARGET_DIR"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

section "dependencies"
bash "$ROOT/scripts/install-deps.sh"
cargo --version
rustc --version

section "cargo fmt --check"
cargo fmt --all -- --check

section "import cycles (scripts/check-cycles.py)"
python3 "$ROOT/scripts/check-cycles.py"

section "unsafe code: every site has a SAFETY: comment (scripts/check-safety.py)"
python3 "$ROOT/scripts/check-safety.py"

section "docs anchors (scripts/check-anchors.py)"
python3 "$ROOT/scripts/check-anchors.py"

section "clippy (default backend: monoio)"
cargo clippy --all-targets -- -D warnings

section "clippy (runtime-glommio)"
cargo clippy -p coremesh-proxy --features runtime-glommio --all-targets -- -D warnings

section "unit tests"
# coremesh-bench's e2e tests need release binaries and nginx: last section.
cargo test --workspace --exclude coremesh-e2e --exclude coremesh-bench
cargo test -p coremesh-bench --lib --bins
cargo test -p coremesh-e2e --lib

section "AddressSanitizer: coremesh-proxy's unit tests on io_uring and epoll (scripts/sanitize.sh; docs/unsafe.md)"
# Its own target dir (target/asan): the instrumented build does not
# invalidate the normal one.
COREMESH_ASAN_TARGET_DIR="$TARGET_DIR/asan" bash "$ROOT/scripts/sanitize.sh"

section "build coremesh-proxy and coremesh-control (debug)"
cargo build -p coremesh-proxy -p coremesh-control
export COREMESH_PROXY_BIN="$TARGET_DIR/debug/coremesh-proxy"
export COREMESH_CONTROL_BIN="$TARGET_DIR/debug/coremesh-control"
export COREMESH_MESHCTL_BIN="$TARGET_DIR/debug/meshctl"
# Build the e2e test binaries once, outside the timed runs.
cargo test -p coremesh-e2e --tests --no-run

# tests/traffic.rs measures rates and shares of requests (a rate limit's
# admitted rps, split percentages, concurrency bounds): it runs one test at a
# time, after the rest, so another test's load on these 2 CPUs cannot bunch
# its arrivals (a token bucket then rightly admits less than its rate).
# tests/upgrade.rs runs 2,000 req/s through debug builds while whole fleets
# of TLS handshakes move to a new process, and tests/hosts.rs times failover
# to the second on a mesh of six processes: alone too.
# tests/h2.rs (HTTP/2, gRPC and WebSocket with curl, h2load, grpcio and
# websockets, installed by install-deps.sh) runs with the rest, as do
# tests/unix.rs (Unix socket apps and listeners; its one upgrade is light),
# tests/tracing.rs (spans of a three-service mesh at a Python OTLP/HTTP
# receiver, tests/py/otlp_receiver.py with PyPI opentelemetry-proto),
# tests/revocation.rs (meshctl node evict: revoked certificates refused and
# their connections shut), tests/etcd.rs (two controls on a three-member
# etcd cluster from Debian's etcd-server: shared history, racing applies,
# one-time tokens, etcd members killed, registrations shared, a replica cut
# off from etcd; about 35 s), tests/etcd_ca.rs (the CA sealed in etcd, a
# root rotation through it; about 35 s), tests/mux.rs (the
# multiplexed mesh hop) and
# tests/exhaustion.rs (RLIMIT_NOFILE lowered on a running proxy, a tiny
# buffer budget; it asserts the proxy's own CPU share, which other tests'
# load does not inflate; about 25 s), tests/tap.rs (meshctl tap through
# control to the proxies; its --max-rps bound counts one-second windows
# from the burst's measured length, so other tests' load cannot flake it;
# about 10 s) and tests/fleet.rs (edge summaries reach control, `meshctl
# top -o json` counts what was sent; the Grafana dashboard's metric names
# in a live /metrics; about 15 s), on both monoio drivers. The etcd tests
# are about control (tokio, not monoio): the epoll pass skips them
# (COREMESH_E2E_SKIP_ETCD). tests/etcd_replicas.rs (three controls, one
# killed with SIGKILL under 500 req/s, during an apply; about 35 s) counts
# every request at a fixed rate: it runs with the run-alone group.
e2e() {
    cargo test --no-fail-fast -p coremesh-e2e --tests -- --skip on_1_core:: --skip on_2_cores:: \
        --skip ten_upgrades_under_load --skip an_upgraded_sidecar --skip sigusr2_makes_the_proxy \
        --skip on_hosts:: --skip the_dashboard_shows --skip kill_9_of_a_replica --skip kill_9_of_the_proxies_replica \
        --skip two_etcd_members_killed
    cargo test --no-fail-fast -p coremesh-e2e --test traffic --test upgrade "$@" \
        -- --test-threads=1
}

section "e2e: monoio on io_uring"
e2e --test hosts --test etcd_replicas

# tests/dashboard.rs: scripts/quickstart.sh's mesh under load, and the
# dashboard in Debian's headless Chromium (playwright-core); it reads the
# live 90/10 split, so it runs alone, once (the page does not depend on the
# proxies' io driver). Screenshots: $TARGET_DIR/dashboard-screenshots/.
section "e2e: the dashboard in headless Chromium"
cargo test --no-fail-fast -p coremesh-e2e --test dashboard

section "e2e: monoio on epoll (MONOIO_FORCE_LEGACY_DRIVER=1)"
# tests/hosts.rs (six processes in network namespaces, failover timed to
# the second; about 75 s) runs on io_uring only, to keep CI near 45
# minutes: what it checks (health checks, outlier ejection, failover
# between hosts) is the same code on either driver, which the other tests
# of this pass exercise.
MONOIO_FORCE_LEGACY_DRIVER=1 COREMESH_E2E_SKIP_ETCD=1 e2e

section "fuzz: every cargo-fuzz target, 15 s each (scripts/fuzz.sh SECONDS for longer runs)"
bash "$ROOT/scripts/fuzz.sh" "${COREMESH_FUZZ_SECONDS:-15}"

section "build coremesh-proxy with runtime-glommio"
CARGO_TARGET_DIR="$TARGET_DIR/glommio" cargo build -p coremesh-proxy --features runtime-glommio

section "e2e subset on glommio: smoke, mutual TLS, TCP services, authorization, Unix sockets, exhaustion"
COREMESH_PROXY_BIN="$TARGET_DIR/glommio/debug/coremesh-proxy" cargo test -p coremesh-e2e \
    --test smoke --test mtls --test tcp --test authz --test unix --test exhaustion

section "e2e h2 smoke subset on glommio: h2c and ALPN h2 with curl, gRPC call shapes, WebSocket"
COREMESH_PROXY_BIN="$TARGET_DIR/glommio/debug/coremesh-proxy" cargo test -p coremesh-e2e \
    --test h2 -- curl_http2 grpc_all_four_call_shapes websocket_echo

section "coremesh-bench e2e: nginx and haproxy, release build, short compares"
bash "$ROOT/scripts/install-bench-deps.sh"
cargo build --release -p coremesh-proxy -p coremesh-control
BENCH_LOG="$TARGET_DIR/bench-e2e.log"
COREMESH_BIN="$TARGET_DIR/release/coremesh-proxy" \
COREMESH_CONTROL_BIN="$TARGET_DIR/release/coremesh-control" \
    cargo test -p coremesh-bench --test e2e -- --nocapture 2>&1 | tee "$BENCH_LOG"
# The tests skip (and pass) when a binary or nginx is missing; here both were
# just installed, so a skip means the check did not run.
if grep -q '^SKIPPED' "$BENCH_LOG"; then
    echo "coremesh-bench e2e: a test was skipped here, where it must run:" >&2
    grep '^SKIPPED' "$BENCH_LOG" >&2
    exit 1
fi

section "coremesh-bench soak: 3 minutes of load under faults (release proxies)"
# scripts/soak.sh builds a release coremesh-bench for the long run; here the
# debug one the bench e2e tests just built drives the light load (250
# req/s) and the origins, in front of the release proxies and control.
"$TARGET_DIR/debug/coremesh-bench" soak --duration 3m \
    --proxy-bin "$TARGET_DIR/release/coremesh-proxy" \
    --control-bin "$TARGET_DIR/release/coremesh-control" \
    --out "$TARGET_DIR/soak"

section "Debian packages: cargo-deb, installed into a scratch root (scripts/test-package.sh)"
bash "$ROOT/scripts/test-package.sh"

section "all checks passed"
