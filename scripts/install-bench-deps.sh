#!/usr/bin/env bash
# Installs what `coremesh-bench compare` and the perf/ scripts use, from
# Debian, only where it is missing: nginx (nginx-light), haproxy, wrk (a
# closed-loop cross-check), perf (linux-perf) and valgrind (callgrind).
# Idempotent: a second run installs nothing. Envoy and Caddy are not in
# Debian's main archive; compare uses them when they are on the PATH.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -n"
    fi
fi

# command name -> Debian package
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
need=()
have nginx || need+=(nginx-light)
have haproxy || need+=(haproxy)
have wrk || need+=(wrk)
have perf || need+=(linux-perf)
have valgrind || need+=(valgrind)
have taskset || need+=(util-linux)

if [ "${#need[@]}" -eq 0 ]; then
    echo "install-bench-deps: nginx, haproxy, wrk, perf, valgrind, taskset already installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-bench-deps: apt-get not found; install ${need[*]} by hand" >&2
    exit 1
fi
echo "install-bench-deps: installing Debian packages: ${need[*]}"
$SUDO apt-get update -q </dev/null
$SUDO apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${need[@]}" </dev/null

# The packages start system services on :80 (nginx) and from
# /etc/haproxy/haproxy.cfg; compare runs its own instances, so stop those.
for svc in nginx haproxy; do
    if [[ " ${need[*]} " == *" ${svc}"* ]]; then
        $SUDO service "$svc" stop >/dev/null 2>&1 || true
    fi
done
