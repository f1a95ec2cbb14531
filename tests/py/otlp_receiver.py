#!/usr/bin/env python3
"""An OTLP/HTTP trace receiver for the end-to-end suite (tests/tests/tracing.rs
starts it through tests/src/grpc.rs's PyApp).

Accepts POST /v1/traces with Content-Type application/x-protobuf, decodes the
body as an ExportTraceServiceRequest with PyPI's opentelemetry-proto, answers
200 with an empty ExportTraceServiceResponse, and prints one line per span:

  SPAN {"service", "trace_id", "span_id", "parent_span_id", "name", "kind",
        "attributes": {key: value}, "events": [name], "status_code",
        "start", "end"}

(ids as lowercase hex, "" for no parent). Anything else gets 404 or 415.

Usage: otlp_receiver.py --name NAME [--listen 127.0.0.1:0]
Prints one line `READY 127.0.0.1:PORT` on stdout once it serves.
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind in ("array_value", "kvlist_value"):
        return str(getattr(v, kind))
    return getattr(v, kind)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        if self.path != "/v1/traces":
            return self.reply(404, b"")
        if self.headers.get("content-type") != "application/x-protobuf":
            return self.reply(415, b"")
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            service = ""
            for kv in rs.resource.attributes:
                if kv.key == "service.name":
                    service = value(kv.value)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    line = {
                        "service": service,
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "kind": s.kind,
                        "attributes": {kv.key: value(kv.value) for kv in s.attributes},
                        "events": [e.name for e in s.events],
                        "status_code": s.status.code,
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                    }
                    print("SPAN " + json.dumps(line, sort_keys=True), flush=True)
        self.reply(200, ExportTraceServiceResponse().SerializeToString())

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--listen", default="127.0.0.1:0")
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    print(f"READY {host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
