#!/usr/bin/env bash
# Installs what building and testing coremesh needs, only where it is missing:
# curl, promtool (Debian package `prometheus`), python3, a C compiler,
# redis-server and redis-cli (a real TCP client and server for the TCP
# service test), testssl.sh (the TLS audit test), iproute2 (network
# namespaces as test hosts), nftables (interception in the test hosts),
# systemd-analyze (unit checks), dpkg-dev
# (cargo-deb's Depends line), h2load (Debian package `nghttp2-client`: HTTP/2
# load through the proxy), etcd and etcdctl (Debian packages `etcd-server`
# and `etcd-client`: the etcd store's tests), protoc (Debian package
# `protobuf-compiler`: the etcd-client crate compiles etcd's .proto files
# when it builds), the PyPI packages grpcio, h2, websockets and
# opentelemetry-proto for python3 (the gRPC, raw HTTP/2 and WebSocket apps
# and clients, and the OTLP receiver, of tests/py/), Debian's chromium with
# Node.js and npm, and the npm package playwright-core in
# tests/browser/node_modules (`npm ci` from the committed package-lock.json:
# the dashboard's browser test, tests/tests/dashboard.rs), and the
# rustfmt/clippy components.
# Idempotent; safe to run on every CI run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DEBIAN_FRONTEND=noninteractive

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -n"
    fi
fi

need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v testssl >/dev/null 2>&1 || need_apt+=(testssl.sh)
# `ip netns` builds the multi-host test network (tests/tests/hosts.rs).
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
# `nft` installs the interception rules inside the test hosts only.
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
# `systemd-analyze verify` on the shipped units (tests/tests/systemd.rs,
# scripts/test-package.sh); dpkg-shlibdeps for cargo-deb (scripts/package.sh).
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v dpkg-shlibdeps >/dev/null 2>&1 || need_apt+=(dpkg-dev)
# h2load: HTTP/2 load through the outbound proxy (tests/tests/h2.rs).
command -v h2load >/dev/null 2>&1 || need_apt+=(nghttp2-client)
# Headless Chromium for the dashboard's browser test (tests/tests/dashboard.rs),
# driven by playwright-core under Node.js (installed below with npm).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# etcd: the three-member cluster of the etcd store's test (tests/tests/etcd.rs)
# runs /usr/bin/etcd; etcdctl for the set-up in docs/etcd.md.
[ -x /usr/bin/etcd ] || need_apt+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
# protoc: etcd-client's build script compiles etcd's protobuf definitions.
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)

# PyPI packages for the Python test apps and clients (tests/py/), by import
# name -> package name; pip comes from Debian when python3 lacks it.
declare -A py_packages=([grpc]=grpcio [h2]=h2 [websockets]=websockets
    [opentelemetry.proto.collector.trace.v1.trace_service_pb2]=opentelemetry-proto)
py_modules=(grpc h2 websockets opentelemetry.proto.collector.trace.v1.trace_service_pb2)
need_pip=()
for module in "${py_modules[@]}"; do
    if ! command -v python3 >/dev/null 2>&1 \
        || ! python3 -c "import $module" >/dev/null 2>&1 </dev/null; then
        need_pip+=("${py_packages[$module]}")
    fi
done
if [ "${#need_pip[@]}" -gt 0 ]; then
    if ! command -v python3 >/dev/null 2>&1 \
        || ! python3 -m pip --version >/dev/null 2>&1 </dev/null; then
        need_apt+=(python3-pip)
    fi
fi

if [ "${#need_apt[@]}" -gt 0 ]; then
    echo "install-deps: installing Debian packages: ${need_apt[*]}"
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-deps: apt-get not found; install ${need_apt[*]} by hand" >&2
        exit 1
    fi
    $SUDO apt-get update -q </dev/null
    # --no-install-recommends keeps prometheus from pulling in a web UI stack;
    # promtool is all we use from it.
    $SUDO apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${need_apt[@]}" </dev/null
    # The prometheus package may start a server on :9090; we only need promtool.
    if [[ " ${need_apt[*]} " == *" prometheus "* ]]; then
        $SUDO service prometheus stop >/dev/null 2>&1 || true
    fi
    # Likewise redis-server's own instance on :6379: the tests start theirs.
    if [[ " ${need_apt[*]} " == *" redis-server "* ]]; then
        $SUDO service redis-server stop >/dev/null 2>&1 || true
    fi
    # And etcd's on :2379 (where systemd runs it): the tests start their
    # own cluster on free ports.
    if [[ " ${need_apt[*]} " == *" etcd-server "* ]]; then
        $SUDO service etcd stop >/dev/null 2>&1 || true
    fi
fi

if [ "${#need_pip[@]}" -gt 0 ]; then
    echo "install-deps: installing PyPI packages for python3: ${need_pip[*]}"
    pip_install=(python3 -m pip install --no-input --disable-pip-version-check --root-user-action=ignore -q)
    # A Debian python3 refuses pip installs outside a venv (PEP 668); these
    # are test-only packages, installed for the interpreter the tests run.
    if ! "${pip_install[@]}" "${need_pip[@]}" </dev/null; then
        "${pip_install[@]}" --break-system-packages "${need_pip[@]}" </dev/null
    fi
    for module in "${py_modules[@]}"; do
        python3 -c "import $module" </dev/null || {
            echo "install-deps: python3 still cannot import $module" >&2
            exit 1
        }
    done
fi

# playwright-core, exactly as tests/browser/package-lock.json pins it, into
# tests/browser/node_modules (nothing global; no browser download: the test
# launches Debian's /usr/bin/chromium).
BROWSER_DIR="$ROOT/tests/browser"
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' </dev/null; then
    echo "install-deps: playwright-core needs Node.js 20 or later; this node is $(node --version)" >&2
    exit 1
fi
# Runs only when the installed version is not the locked one.
if ! (cd "$BROWSER_DIR" && node -e '
    const want = require("./package-lock.json").packages["node_modules/playwright-core"].version;
    const have = require("./node_modules/playwright-core/package.json").version;
    process.exit(want === have ? 0 : 1);' >/dev/null 2>&1 </dev/null); then
    echo "install-deps: installing npm packages in tests/browser (npm ci)"
    (cd "$BROWSER_DIR" && npm ci --no-audit --no-fund --loglevel=error </dev/null)
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "install-deps: cargo not found: install a stable Rust toolchain (rustup) first" >&2
    exit 1
fi

need_rust=()
cargo fmt --version >/dev/null 2>&1 || need_rust+=(rustfmt)
cargo clippy --version >/dev/null 2>&1 || need_rust+=(clippy)
if [ "${#need_rust[@]}" -gt 0 ]; then
    echo "install-deps: adding rust components: ${need_rust[*]}"
    rustup component add "${need_rust[@]}" </dev/null
fi

echo "install-deps: ok (curl, promtool, python3 with grpcio/h2/websockets/opentelemetry-proto, cc, redis, testssl, ip, nft, systemd-analyze, dpkg-dev, h2load, chromium, node with playwright-core, etcd, etcdctl, protoc, rustfmt, clippy present)"
