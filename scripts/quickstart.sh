#!/usr/bin/env bash
# Builds coremesh, starts the control plane and a small mesh on loopback, and
# shows a canary route at work:
#
#   curl ─▶ web app ─▶ web sidecar ─┬─▶ api sidecar (v1) ─▶ api app v1 ─▶ api sidecar ─▶ db sidecar ─▶ db app
#                      [outbound]   └─▶ api sidecar (v2) ─▶ api app v2 ─┘  [outbound]    [inbound]
#                                        [inbound]
#                ▲ every sidecar joins coremesh-control with a token and gets its routes over QUIC
#
# The policy is scripts/demo/mesh.yaml (services web, api, db; requests with
# `x-canary: true` go to api v2, the rest are split 90/10); the demo apps are
# scripts/demo/app.py. Every port comes from the OS (port 0) and is read back
# from the logs. Everything started here is stopped on exit.
#
#   scripts/quickstart.sh          run the demo, then stop
#   scripts/quickstart.sh --keep   leave the mesh running until Ctrl-C
#
# For scripts and tests (tests/tests/dashboard.rs runs it so):
#   --bin-dir DIR   use coremesh-proxy, coremesh-control and meshctl from DIR
#                   (no install-deps, no cargo build)
#   --info FILE     once the mesh is up, write KEY=VALUE lines to FILE:
#                   DASHBOARD_URL, API, API_CA, CREDENTIAL_FILE, DATA_DIR,
#                   WEB_URL, MESHCTL (written whole: it appears complete)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

usage() { echo "usage: $0 [--keep] [--bin-dir DIR] [--info FILE]" >&2; exit 2; }
KEEP=0
BIN_DIR=""
INFO=""
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) KEEP=1 ;;
        --bin-dir) [ $# -ge 2 ] || usage; BIN_DIR="$2"; shift ;;
        --info) [ $# -ge 2 ] || usage; INFO="$2"; shift ;;
        *) usage ;;
    esac
    shift
done

if [ -n "$BIN_DIR" ]; then
    BIN_DIR="$(cd "$BIN_DIR" && pwd)"
    PROXY="$BIN_DIR/coremesh-proxy"
    CONTROL="$BIN_DIR/coremesh-control"
    MESHCTL_BIN="$BIN_DIR/meshctl"
    for bin in "$PROXY" "$CONTROL" "$MESHCTL_BIN"; do
        [ -x "$bin" ] || { echo "--bin-dir: no $bin" >&2; exit 1; }
    done
else
    bash "$ROOT/scripts/install-deps.sh" >/dev/null

    echo "==> building coremesh-proxy and coremesh-control (release)"
    cargo build --release -p coremesh-proxy -p coremesh-control
    TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
    case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
    PROXY="$TARGET_DIR/release/coremesh-proxy"
    CONTROL="$TARGET_DIR/release/coremesh-control"
    MESHCTL_BIN="$TARGET_DIR/release/meshctl"
fi
APP="$ROOT/scripts/demo/app.py"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/coremesh-quickstart.XXXXXX")"
PROXY_PIDS=()
OTHER_PIDS=()
stop() { # pids...
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}
cleanup() {
    trap - EXIT INT TERM
    # Sidecars first (each deregisters from control, then drains), then
    # control and the apps.
    stop "${PROXY_PIDS[@]}"
    stop "${OTHER_PIDS[@]}"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits for FILE to exist and be non-empty (up to 15 s).
wait_file() {
    for _ in $(seq 150); do [ -s "$1" ] && return 0; sleep 0.1; done
    echo "timed out waiting for $1" >&2
    return 1
}

# Waits for a log line containing PATTERN and prints KEY's value from it.
log_value() { # log pattern key
    local line=""
    for _ in $(seq 150); do
        line="$(sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -m1 -- "$2" || true)"
        [ -n "$line" ] && break
        sleep 0.1
    done
    if [ -z "$line" ]; then
        echo "no \`$2\` line in $1; the log says:" >&2
        cat "$1" >&2
        exit 1
    fi
    echo "$line" | tr ' ' '\n' | sed -n "s/^$3=\"\{0,1\}\([^\"]*\)\"\{0,1\}\$/\1/p" | head -n1
}

# ---- control ----
"$CONTROL" --data-dir "$WORK/control" --listen 127.0.0.1:0 --api 127.0.0.1:0 \
    > "$WORK/control.log" 2>&1 &
OTHER_PIDS+=($!)
QUIC="$(log_value "$WORK/control.log" '^listening ' quic)"
API="$(log_value "$WORK/control.log" '^listening ' api)"
meshctl() { "$MESHCTL_BIN" --api "https://$API" --data-dir "$WORK/control" "$@"; }
echo "==> coremesh-control: QUIC $QUIC for proxies, API https://$API for meshctl, TLS pinned with $WORK/control/api-ca.pem (data in $WORK/control)"

echo
echo "\$ meshctl apply -f scripts/demo/mesh.yaml"
meshctl apply -f "$ROOT/scripts/demo/mesh.yaml"

# ---- apps and their sidecars ----
# Starts a demo app and its sidecar. The sidecar joins control with a fresh
# token; with CALLS it also gets an outbound listener, whose address the app
# reads to call its upstream.
start_service() { # name version calls(upstream service or "")
    local name="$1" version="$2" calls="$3" id="$1-$2"
    if [ -n "$calls" ]; then
        python3 "$APP" "$name" "$version" "$WORK/$id.app" "$calls" "$WORK/$id.outbound" &
    else
        python3 "$APP" "$name" "$version" "$WORK/$id.app" &
    fi
    OTHER_PIDS+=($!)
    wait_file "$WORK/$id.app"
    local app="127.0.0.1:$(cat "$WORK/$id.app")"

    meshctl token create --service "$name" > "$WORK/$id.token" 2>/dev/null
    {
        echo "[proxy]"
        echo "service = \"$name\""
        echo "admin = \"127.0.0.1:0\""
        echo "labels = { version = \"$version\" }"
        echo
        echo "[inbound]"
        echo "listen = \"127.0.0.1:0\""
        echo "app = \"$app\""
        if [ -n "$calls" ]; then
            echo
            echo "[outbound]"
            echo "listen = \"127.0.0.1:0\""
        fi
        echo
        echo "[control]"
        echo "address = \"$QUIC\""
        echo "token_file = \"$WORK/$id.token\""
        echo "state_dir = \"$WORK/$id.state\""
        echo "node = \"$id\""
        [ -n "$calls" ] && echo "calls = [\"$calls\"]"
        echo
        echo "[control.health]"
        echo "kind = \"http\""
        echo "path = \"/healthz\""
        echo "interval = \"1s\""
    } > "$WORK/$id.toml"
    NO_COLOR=1 "$PROXY" --config "$WORK/$id.toml" 2> "$WORK/$id.log" &
    PROXY_PIDS+=($!)
    local admin
    admin="$(log_value "$WORK/$id.log" ' bound ' admin)"
    if [ -n "$calls" ]; then
        log_value "$WORK/$id.log" ' bound ' outbound > "$WORK/$id.outbound"
    fi
    printf '==> %-7s app %s, sidecar inbound %s%s, admin %s\n' "$id" "$app" \
        "$(log_value "$WORK/$id.log" ' bound ' inbound)" \
        "$([ -n "$calls" ] && echo ", outbound $(cat "$WORK/$id.outbound") (calls $calls)")" "$admin"
    eval "ADMIN_${name}_${version}=$admin"
    eval "APP_${name}_${version}=$app"
}

echo
start_service db v1 ""
start_service api v1 db
start_service api v2 db
start_service web v1 api

# Converged: four sidecars connected, each running (ACKed, no NACK) the last
# snapshot control sent it, and four endpoints registered. Checked twice in a
# row, since control batches changes for a moment before pushing them.
converged() {
    meshctl get proxies -o json > "$WORK/proxies.json" 2>/dev/null &&
        meshctl get endpoints -o json > "$WORK/endpoints.json" 2>/dev/null &&
        python3 - "$WORK/proxies.json" "$WORK/endpoints.json" <<'PY'
import json, sys
ps = [p for p in json.load(open(sys.argv[1])) if p["connected"]]
es = json.load(open(sys.argv[2]))
ok = len(ps) == 4 and len(es) == 4 and all(
    p["nack"] is None and p["applied_version"] is not None
    and p["applied_version"] == p["sent_version"] for p in ps)
sys.exit(0 if ok else 1)
PY
}
echo
echo "==> waiting for the sidecars to join and apply the policy"
stable=0
for _ in $(seq 100); do
    if converged; then stable=$((stable + 1)); else stable=0; fi
    [ "$stable" -ge 2 ] && break
    sleep 0.15
done
if [ "$stable" -lt 2 ]; then
    echo "the mesh did not converge within 15 s:" >&2
    meshctl status >&2 || true
    exit 1
fi

# ---- traffic ----
WEB_APP="$APP_web_v1"
echo
echo "\$ curl http://$WEB_APP/        # 20 times"
for _ in $(seq 20); do
    curl -sS --max-time 10 "http://$WEB_APP/"
done | sort | uniq -c
echo
echo "\$ curl -H 'x-canary: true' http://$WEB_APP/        # 5 times"
for _ in $(seq 5); do
    curl -sS --max-time 10 -H 'x-canary: true' "http://$WEB_APP/"
done | sort | uniq -c

echo
echo "\$ meshctl status"
meshctl status
echo
echo "\$ meshctl get endpoints"
meshctl get endpoints
echo
echo "\$ meshctl history"
meshctl history

cat <<EOF

==> where to look next
  meshctl:      $MESHCTL_BIN --api https://$API --data-dir $WORK/control --help
                (get services|routes|proxies|endpoints, apply -f, rollback --to N, token list)
  the policy:   scripts/demo/mesh.yaml; change the weights, apply it, curl again
  web sidecar:  curl http://$ADMIN_web_v1/metrics   (and /config: the applied version)
  logs:         $WORK/*.log
  dashboard:    https://$API/ui/
                log in with the operator credential: cat $WORK/control/operator.credential
                (the page's certificate comes from the mesh's own CA, $WORK/control/api-ca.pem:
                the browser warns until you trust that CA; the API is on 127.0.0.1 only)
EOF

if [ -n "$INFO" ]; then
    {
        echo "DASHBOARD_URL=https://$API/ui/"
        echo "API=$API"
        echo "API_CA=$WORK/control/api-ca.pem"
        echo "CREDENTIAL_FILE=$WORK/control/operator.credential"
        echo "DATA_DIR=$WORK/control"
        echo "WEB_URL=http://$WEB_APP/"
        echo "MESHCTL=$MESHCTL_BIN"
    } > "$INFO.tmp"
    mv "$INFO.tmp" "$INFO"
fi

if [ "$KEEP" = 1 ]; then
    echo
    echo "==> the mesh keeps running; Ctrl-C stops it and removes $WORK"
    # `wait` (unlike a foreground sleep) returns as soon as a signal arrives,
    # so the trap runs at once.
    while :; do
        sleep 3600 &
        OTHER_PIDS+=($!)
        wait "$!" || true
    done
fi
echo
echo "==> stopping (each sidecar deregisters, drains and exits 0; then control and the apps)"
