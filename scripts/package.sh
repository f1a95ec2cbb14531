#!/usr/bin/env bash
# Builds the Debian packages with cargo-deb (metadata: [package.metadata.deb]
# in proxy/Cargo.toml and control/Cargo.toml):
#   coremesh-proxy    /usr/bin/coremesh-proxy, coremesh-proxy@.service, /etc/coremesh/example.toml
#   coremesh-control  /usr/bin/coremesh-control, /usr/bin/meshctl, coremesh-control.service,
#                     /etc/coremesh/control.env
# into $CARGO_TARGET_DIR/debian (default target/debian) and prints their paths.
# Installs cargo-deb (cargo install --locked) and dpkg-dev (dpkg-shlibdeps,
# for the Depends line) when missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
export CARGO_TARGET_DIR="$TARGET_DIR"
OUT="$TARGET_DIR/debian"

if ! command -v dpkg-shlibdeps >/dev/null 2>&1; then
    echo "package: installing dpkg-dev (dpkg-shlibdeps)"
    SUDO=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
    $SUDO apt-get update -q </dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends dpkg-dev </dev/null
fi
if ! cargo deb --version >/dev/null 2>&1; then
    echo "package: installing cargo-deb"
    cargo install --locked cargo-deb </dev/null
fi

# One release build for both packages (the workspace's release profile).
cargo build --release -p coremesh-proxy -p coremesh-control --bins
mkdir -p "$OUT"
# --strip: the release profile keeps line tables for profiling (debug = 1),
# which would make the installed binaries several times larger.
for pkg in coremesh-proxy coremesh-control; do
    cargo deb --no-build --strip -p "$pkg" --output "$OUT/" </dev/null
done
