#!/usr/bin/env bash
# The soak under chaos (issue 20, item 2): builds release binaries and runs
# `coremesh-bench soak` for DURATION (default 1h): the quickstart's mesh
# under open-loop HTTP/1.1, h2, gRPC and TCP load while apps, endpoints and
# control are killed and restarted, proxies reloaded, routes changed and
# certificates renewed, beside a slowloris and an h2 rapid-reset client.
# Exits non-zero, saying why, when a failure is unexplained, an idempotent
# request failed, or a process's RSS or fds grew after the warm-up.
#
#   scripts/soak.sh            # an hour
#   scripts/soak.sh 10m        # any duration (30s or more)
#   scripts/soak.sh 3m --out /tmp/soak   # more coremesh-bench soak options
#
# The report (report.md, report.json) and the chart (resources.svg) go to
# bench-results/soak/ unless --out says otherwise; every process's log is
# there too.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DURATION="${1:-1h}"
shift || true

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
# Two builds, as scripts/test.sh does: built together, feature unification
# would give the bench (or the proxy) other features, and a rebuild.
cargo build --release -p coremesh-proxy -p coremesh-control
cargo build --release -p coremesh-bench
exec "$TARGET_DIR/release/coremesh-bench" soak --duration "$DURATION" "$@"
