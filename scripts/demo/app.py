"""A demo service for scripts/quickstart.sh.

    python3 app.py NAME VERSION PORT_FILE [UPSTREAM_SERVICE UPSTREAM_FILE]

Listens on 127.0.0.1, port chosen by the OS (written to PORT_FILE). On
GET /healthz it answers 200 "ok". On any other GET it answers one line,
"NAME VERSION", and when it has an upstream it first calls that service
through its own sidecar's outbound listener (address read from
UPSTREAM_FILE, written once the sidecar is up) and appends the upstream's
answer: "web v1 -> api v2 -> db v1". The x-canary header is passed along,
so a canary request stays canary all the way down.
"""
import http.client
import http.server
import os
import sys

NAME, VERSION, PORT_FILE = sys.argv[1], sys.argv[2], sys.argv[3]
UPSTREAM = sys.argv[4] if len(sys.argv) > 5 else None
UPSTREAM_FILE = sys.argv[5] if len(sys.argv) > 5 else None


def call_upstream(headers):
    with open(UPSTREAM_FILE) as f:
        host, port = f.read().strip().rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    fwd = {"Host": UPSTREAM}
    if headers.get("x-canary"):
        fwd["x-canary"] = headers["x-canary"]
    conn.request("GET", "/", headers=fwd)
    resp = conn.getresponse()
    body = resp.read().decode(errors="replace").strip()
    if resp.status != 200:
        error = resp.getheader("coremesh-error") or body
        return resp.status, "%s (%d: %s)" % (UPSTREAM, resp.status, error)
    return 200, body


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        status, text = 200, "%s %s" % (NAME, VERSION)
        if self.path == "/healthz":
            text = "ok"
        elif UPSTREAM:
            try:
                up_status, up_text = call_upstream(self.headers)
            except OSError as e:
                up_status, up_text = 502, "%s (unreachable: %s)" % (UPSTREAM, e)
            status = 200 if up_status == 200 else 502
            text = "%s -> %s" % (text, up_text)
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(PORT_FILE + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
# Renamed into place, so a reader never sees a half-written file.
os.rename(PORT_FILE + ".tmp", PORT_FILE)
server.serve_forever()
