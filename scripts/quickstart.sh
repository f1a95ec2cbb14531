#!/usr/bin/env bash
# Builds coremesh-proxy, starts a demo app and two proxies on loopback, and
# shows requests flowing through them:
#
#   curl ──▶ web proxy [outbound] ──▶ api proxy [inbound] ──▶ demo app
#
# Every port comes from the OS (port 0); each proxy reports its bound
# addresses in its log, which this script reads back. Everything it started
# is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash "$ROOT/scripts/install-deps.sh" >/dev/null

echo "==> building coremesh-proxy (release)"
cargo build --release -p coremesh-proxy
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
BIN="$TARGET_DIR/release/coremesh-proxy"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/coremesh-quickstart.XXXXXX")"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# The demo app: echoes what it received as text.
cat > "$WORK/app.py" <<'PY'
import http.server, sys

class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("hello from the demo app\n%s %s\n%s" % (self.command, self.path, self.headers)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
with open(sys.argv[1], "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
PY

python3 "$WORK/app.py" "$WORK/app.port" &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$WORK/app.port" ] && break; sleep 0.1; done
[ -s "$WORK/app.port" ] || { echo "demo app did not start" >&2; exit 1; }
APP="127.0.0.1:$(cat "$WORK/app.port")"
echo "==> demo app listening on $APP"

# Waits for a proxy's `bound` log line and prints KEY's address from it.
bound_addr() { # log key
    local line=""
    for _ in $(seq 150); do
        line="$(sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -m1 ' bound ' || true)"
        [ -n "$line" ] && break
        sleep 0.1
    done
    if [ -z "$line" ]; then
        echo "proxy did not report its bound addresses; its log:" >&2
        cat "$1" >&2
        exit 1
    fi
    echo "$line" | tr ' ' '\n' | sed -n "s/^$2=\"\{0,1\}\([^\"]*\)\"\{0,1\}\$/\1/p" | head -n1
}

cat > "$WORK/api.toml" <<TOML
[proxy]
service = "api"
admin = "127.0.0.1:0"

[inbound]
listen = "127.0.0.1:0"
app = "$APP"
TOML
NO_COLOR=1 "$BIN" --config "$WORK/api.toml" 2> "$WORK/api.log" &
PIDS+=($!)
API_IN="$(bound_addr "$WORK/api.log" inbound)"
API_ADMIN="$(bound_addr "$WORK/api.log" admin)"
[ -n "$API_IN" ] && [ -n "$API_ADMIN" ] || { echo "could not read the api proxy addresses" >&2; exit 1; }
echo "==> api proxy: inbound $API_IN -> app $APP, admin $API_ADMIN"

cat > "$WORK/web.toml" <<TOML
[proxy]
service = "web"
admin = "127.0.0.1:0"

[outbound]
listen = "127.0.0.1:0"

[[services]]
name = "api"
endpoints = ["$API_IN"]
TOML
NO_COLOR=1 "$BIN" --config "$WORK/web.toml" 2> "$WORK/web.log" &
PIDS+=($!)
WEB_OUT="$(bound_addr "$WORK/web.log" outbound)"
WEB_ADMIN="$(bound_addr "$WORK/web.log" admin)"
[ -n "$WEB_OUT" ] && [ -n "$WEB_ADMIN" ] || { echo "could not read the web proxy addresses" >&2; exit 1; }
echo "==> web proxy: outbound $WEB_OUT (knows service api at $API_IN), admin $WEB_ADMIN"

echo
echo "\$ curl -H 'Host: api' http://$WEB_OUT/hello"
curl -sS --max-time 10 -H 'Host: api' "http://$WEB_OUT/hello"
echo
echo "\$ http_proxy=http://$WEB_OUT curl http://api/via-http-proxy"
env -u no_proxy -u NO_PROXY http_proxy="http://$WEB_OUT" curl -sS --max-time 10 http://api/via-http-proxy
echo
echo "\$ curl -i -H 'Host: nosuch' http://$WEB_OUT/   # not a mesh service"
curl -sS -i --max-time 10 -H 'Host: nosuch' "http://$WEB_OUT/" || true
echo

echo "==> web proxy /metrics (excerpt)"
curl -sS --max-time 10 "http://$WEB_ADMIN/metrics" | grep -E '^coremesh_(requests_total|connections_total)' | head -n 8 || true
echo "==> api proxy /metrics (excerpt)"
curl -sS --max-time 10 "http://$API_ADMIN/metrics" | grep -E '^coremesh_(requests_total|connections_total)' | head -n 8 || true
echo
echo "==> stopping (SIGTERM drains in-flight requests, then each proxy exits 0)"
