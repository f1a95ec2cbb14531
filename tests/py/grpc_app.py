#!/usr/bin/env python3
"""A gRPC test app for the end-to-end suite (tests/src/grpc.rs starts it).

No generated code: the service is registered with
grpc.method_handlers_generic_handler and every message is a JSON object on
one line, optionally followed by b"\\n" and raw payload bytes (so a message
of several MiB costs no JSON escaping). See encode()/decode().

Service test.Echo (every reply names this instance, so a test can count which
endpoint served a call):

  Unary         {"size": N, "reply_size": M} + N bytes
                -> {"instance", "method", "got_size", "got_sha256",
                    "deadline_s", "metadata"} + M bytes
  Sleep         {"ms": MS} -> sleeps MS ms (stops early when the call is
                cancelled or its deadline passes), then replies as Unary
  Status        {"code": C, "details": D} -> ends the call with status C
  ServerStream  {"count": K, "reply_size": M, "interval_ms": T} -> K replies
                {"index": i, ...}, T ms apart
  ClientStream  K requests -> one reply {"count": K, "got_size": total, ...}
  Bidi          each request -> one reply {"index": i, "got_size", ...}
  Stats         {} -> {"instance", "calls": {method: n}, "cancelled": n}
  SetHealth     {"serving": bool} -> what grpc.health.v1 Check answers from now

Also grpc.health.v1.Health/Check, by hand (the two protobuf messages are a
few bytes): SERVING, or NOT_SERVING after SetHealth {"serving": false}.

Usage: grpc_app.py --name NAME [--listen 127.0.0.1:0]
Prints one line `READY 127.0.0.1:PORT` on stdout once it serves.
"""

import argparse
import hashlib
import json
import sys
import threading
import time
from concurrent import futures

import grpc

MAX_MESSAGE = 64 << 20
OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    # A stopped app must free its port: no other process shares it.
    ("grpc.so_reuseport", 0),
]


def encode(obj, payload=b""):
    head = json.dumps(obj, separators=(",", ":")).encode()
    if payload:
        return head + b"\n" + payload
    return head


def decode(data):
    head, sep, payload = data.partition(b"\n")
    obj = json.loads(head.decode()) if head else {}
    return obj, payload


def pattern(n):
    """n deterministic bytes (a repeating block), cheap for several MiB."""
    block = bytes(range(251))
    reps = n // len(block) + 1
    return (block * reps)[:n]


class Echo:
    def __init__(self, name):
        self.name = name
        self.lock = threading.Lock()
        self.calls = {}
        self.cancelled = 0
        self.serving = True
        self.health_checks = 0

    def count(self, method):
        with self.lock:
            self.calls[method] = self.calls.get(method, 0) + 1

    def base(self, method, context, got=b""):
        remaining = context.time_remaining()
        md = {}
        for k, v in context.invocation_metadata():
            if isinstance(v, bytes):
                v = v.hex()
            md[k] = v
        return {
            "instance": self.name,
            "method": method,
            "got_size": len(got),
            "got_sha256": hashlib.sha256(got).hexdigest(),
            # Seconds left of the deadline the app received (grpc-timeout),
            # None without one.
            "deadline_s": remaining if remaining is not None and remaining < 1e9 else None,
            "metadata": md,
        }

    def unary(self, request, context):
        self.count("Unary")
        req, payload = request
        reply = self.base("Unary", context, payload)
        reply["tag"] = req.get("tag")
        return reply, pattern(int(req.get("reply_size", 0)))

    def sleep(self, request, context):
        self.count("Sleep")
        req, payload = request
        until = time.monotonic() + int(req.get("ms", 0)) / 1000.0
        while time.monotonic() < until:
            if not context.is_active():
                with self.lock:
                    self.cancelled += 1
                return {"instance": self.name, "cancelled": True}, b""
            time.sleep(0.01)
        reply = self.base("Sleep", context, payload)
        return reply, b""

    def status(self, request, context):
        self.count("Status")
        req, _ = request
        code = int(req.get("code", 2))
        status = next((s for s in grpc.StatusCode if s.value[0] == code), grpc.StatusCode.UNKNOWN)
        context.set_trailing_metadata((("x-instance", self.name),))
        context.abort(status, req.get("details", "chosen status"))

    def server_stream(self, request, context):
        self.count("ServerStream")
        req, _ = request
        size = int(req.get("reply_size", 0))
        interval = int(req.get("interval_ms", 0)) / 1000.0
        for i in range(int(req.get("count", 1))):
            if i and interval:
                time.sleep(interval)
            reply = {"instance": self.name, "method": "ServerStream", "index": i}
            yield reply, pattern(size)

    def client_stream(self, request_iterator, context):
        self.count("ClientStream")
        h = hashlib.sha256()
        count = 0
        total = 0
        for _req, payload in request_iterator:
            count += 1
            total += len(payload)
            h.update(payload)
        return {
            "instance": self.name,
            "method": "ClientStream",
            "count": count,
            "got_size": total,
            "got_sha256": h.hexdigest(),
        }, b""

    def bidi(self, request_iterator, context):
        self.count("Bidi")
        for i, (req, payload) in enumerate(request_iterator):
            reply = {
                "instance": self.name,
                "method": "Bidi",
                "index": i,
                "tag": req.get("tag"),
                "got_size": len(payload),
                "got_sha256": hashlib.sha256(payload).hexdigest(),
            }
            yield reply, pattern(int(req.get("reply_size", 0)))

    def stats(self, request, context):
        with self.lock:
            return {
                "instance": self.name,
                "calls": dict(self.calls),
                "cancelled": self.cancelled,
                "serving": self.serving,
                "health_checks": self.health_checks,
            }, b""

    def set_health(self, request, context):
        req, _ = request
        with self.lock:
            self.serving = bool(req.get("serving", True))
            return {"instance": self.name, "serving": self.serving}, b""

    def health_check(self, request, context):
        # HealthCheckResponse{status}: field 1, varint; SERVING = 1,
        # NOT_SERVING = 2.
        with self.lock:
            self.health_checks += 1
            return b"\x08\x01" if self.serving else b"\x08\x02"


def req_de(data):
    return decode(data)


def resp_ser(pair):
    obj, payload = pair
    return encode(obj, payload)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--workers", type=int, default=64)
    args = ap.parse_args()

    echo = Echo(args.name)

    def unary(fn):
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=req_de, response_serializer=resp_ser
        )

    handlers = {
        "Unary": unary(echo.unary),
        "Sleep": unary(echo.sleep),
        "Status": unary(echo.status),
        "Stats": unary(echo.stats),
        "SetHealth": unary(echo.set_health),
        "ServerStream": grpc.unary_stream_rpc_method_handler(
            echo.server_stream, request_deserializer=req_de, response_serializer=resp_ser
        ),
        "ClientStream": grpc.stream_unary_rpc_method_handler(
            echo.client_stream, request_deserializer=req_de, response_serializer=resp_ser
        ),
        "Bidi": grpc.stream_stream_rpc_method_handler(
            echo.bidi, request_deserializer=req_de, response_serializer=resp_ser
        ),
    }
    health = {
        "Check": grpc.unary_unary_rpc_method_handler(
            echo.health_check, request_deserializer=None, response_serializer=None
        ),
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers),
        options=OPTIONS,
        maximum_concurrent_rpcs=None,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler("test.Echo", handlers),
            grpc.method_handlers_generic_handler("grpc.health.v1.Health", health),
        )
    )
    host, _, port = args.listen.rpartition(":")
    bound = server.add_insecure_port(args.listen)
    if bound == 0:
        print(f"cannot listen on {args.listen}", file=sys.stderr)
        sys.exit(1)
    server.start()
    print(f"READY {host}:{bound}", flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
