#!/usr/bin/env python3
"""The gRPC client the end-to-end tests drive (tests/src/grpc.rs).

One channel per run, so every call of a run rides one HTTP/2 connection
(what per-stream balancing is measured on). Messages are encoded as
grpc_app.py encodes them (a JSON line, then raw payload bytes).

Usage: grpc_client.py --target HOST:PORT [--authority NAME] [--timeout S]
                      [--metadata K=V ...] COMMAND [options]

Commands: unary, sleep, status, server-stream, client-stream, bidi, health,
stats, set-health (see --help of each). Prints one JSON object on stdout:

  {"calls": [{"code": "OK", "code_num": 0, "details": "...",
              "instance": "...", "reply": {...}, "reply_size": N,
              "reply_sha256": "...", "replies": [...], "initial": {...},
              "trailing": {...}, "elapsed_ms": T}, ...],
   "codes": {"OK": n, ...}, "instances": {"api-v1": n, ...}}

Exit code 0 whatever the calls' statuses (the test judges them); 2 on a
usage error.
"""

import argparse
import hashlib
import json
import sys
import threading
import time

import grpc

MAX_MESSAGE = 64 << 20


def encode(obj, payload=b""):
    head = json.dumps(obj, separators=(",", ":")).encode()
    if payload:
        return head + b"\n" + payload
    return head


def decode(data):
    head, _, payload = data.partition(b"\n")
    return (json.loads(head.decode()) if head else {}), payload


def pattern(n):
    block = bytes(range(251))
    return (block * (n // len(block) + 1))[:n]


def req_ser(pair):
    return encode(*pair)


def md_dict(md):
    out = {}
    for k, v in md or ():
        out[k] = v.hex() if isinstance(v, bytes) else v
    return out


def code_of(code):
    return code.name, code.value[0]


def reply_fields(result, obj, payload):
    result["reply"] = obj
    result["reply_size"] = len(payload)
    result["reply_sha256"] = hashlib.sha256(payload).hexdigest()
    result["instance"] = obj.get("instance")


def run_unary(channel, method, req, payload, args):
    call_fn = channel.unary_unary(
        f"/test.Echo/{method}", request_serializer=req_ser, response_deserializer=decode
    )
    result = {"method": method}
    started = time.monotonic()
    try:
        (obj, rp), call = call_fn.with_call(
            (req, payload), timeout=args.timeout, metadata=args.md
        )
        result["code"], result["code_num"] = code_of(call.code())
        result["details"] = call.details() or ""
        reply_fields(result, obj, rp)
        result["initial"] = md_dict(call.initial_metadata())
        result["trailing"] = md_dict(call.trailing_metadata())
    except grpc.RpcError as e:
        result["code"], result["code_num"] = code_of(e.code())
        result["details"] = e.details() or ""
        result["initial"] = md_dict(e.initial_metadata())
        result["trailing"] = md_dict(e.trailing_metadata())
        result["instance"] = result["trailing"].get("x-instance")
    result["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
    return result


def finish_stream(result, call, replies, started):
    result["replies"] = replies
    result["reply_size"] = sum(r["size"] for r in replies)
    instances = sorted({r.get("instance") for r in replies if r.get("instance")})
    result["instance"] = instances[0] if len(instances) == 1 else (instances or None)
    try:
        result["code"], result["code_num"] = code_of(call.code())
        result["details"] = call.details() or ""
        result["initial"] = md_dict(call.initial_metadata())
        result["trailing"] = md_dict(call.trailing_metadata())
    except grpc.RpcError:
        pass
    result["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
    return result


def collect(call, result):
    replies = []
    try:
        for obj, payload in call:
            obj = dict(obj)
            obj["size"] = len(payload)
            obj["sha256"] = hashlib.sha256(payload).hexdigest()
            replies.append(obj)
    except grpc.RpcError as e:
        result["code"], result["code_num"] = code_of(e.code())
        result["details"] = e.details() or ""
    return replies


def run_server_stream(channel, args):
    fn = channel.unary_stream(
        "/test.Echo/ServerStream", request_serializer=req_ser, response_deserializer=decode
    )
    result = {"method": "ServerStream"}
    started = time.monotonic()
    req = {"count": args.count, "reply_size": args.reply_size, "interval_ms": args.interval_ms}
    call = fn((req, b""), timeout=args.timeout, metadata=args.md)
    replies = collect(call, result)
    return finish_stream(result, call, replies, started)


def requests(args):
    for i in range(args.count):
        yield {"tag": i, "reply_size": args.reply_size}, pattern(args.size)


def run_client_stream(channel, args):
    fn = channel.stream_unary(
        "/test.Echo/ClientStream", request_serializer=req_ser, response_deserializer=decode
    )
    result = {"method": "ClientStream"}
    started = time.monotonic()
    try:
        (obj, rp), call = fn.with_call(requests(args), timeout=args.timeout, metadata=args.md)
        result["code"], result["code_num"] = code_of(call.code())
        result["details"] = call.details() or ""
        reply_fields(result, obj, rp)
        result["trailing"] = md_dict(call.trailing_metadata())
    except grpc.RpcError as e:
        result["code"], result["code_num"] = code_of(e.code())
        result["details"] = e.details() or ""
        result["trailing"] = md_dict(e.trailing_metadata())
    result["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
    return result


def run_bidi(channel, args):
    """Ping-pong: the next request goes only after the previous reply came
    back, so both directions are open at once for the whole call."""
    fn = channel.stream_stream(
        "/test.Echo/Bidi", request_serializer=req_ser, response_deserializer=decode
    )
    result = {"method": "Bidi"}
    started = time.monotonic()
    turn = threading.Semaphore(1)

    def paced():
        for i, item in enumerate(requests(args)):
            if not turn.acquire(timeout=30):
                return
            if i and args.interval_ms:
                time.sleep(args.interval_ms / 1000.0)
            yield item

    call = fn(paced(), timeout=args.timeout, metadata=args.md)
    replies = []
    try:
        for obj, payload in call:
            obj = dict(obj)
            obj["size"] = len(payload)
            obj["sha256"] = hashlib.sha256(payload).hexdigest()
            replies.append(obj)
            turn.release()
    except grpc.RpcError as e:
        result["code"], result["code_num"] = code_of(e.code())
        result["details"] = e.details() or ""
    return finish_stream(result, call, replies, started)


def run_health(channel, args):
    fn = channel.unary_unary("/grpc.health.v1.Health/Check")
    result = {"method": "Health/Check"}
    try:
        reply, call = fn.with_call(b"", timeout=args.timeout, metadata=args.md)
        result["code"], result["code_num"] = code_of(call.code())
        result["serving"] = reply == b"\x08\x01"
        result["initial"] = md_dict(call.initial_metadata())
        result["trailing"] = md_dict(call.trailing_metadata())
    except grpc.RpcError as e:
        result["code"], result["code_num"] = code_of(e.code())
        result["details"] = e.details() or ""
        result["initial"] = md_dict(e.initial_metadata())
        result["trailing"] = md_dict(e.trailing_metadata())
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--authority")
    ap.add_argument("--timeout", type=float, help="per-call deadline, seconds")
    ap.add_argument("--metadata", action="append", default=[], help="K=V, repeatable")
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("unary")
    u.add_argument("--count", type=int, default=1)
    u.add_argument("--size", type=int, default=0)
    u.add_argument("--reply-size", type=int, default=0)
    u.add_argument("--concurrency", type=int, default=1, help="calls in flight at once (one channel)")
    s = sub.add_parser("sleep")
    s.add_argument("--ms", type=int, required=True)
    st = sub.add_parser("status")
    st.add_argument("--code", type=int, required=True)
    st.add_argument("--details", default="chosen status")
    ss = sub.add_parser("server-stream")
    ss.add_argument("--count", type=int, default=3)
    ss.add_argument("--reply-size", type=int, default=0)
    ss.add_argument("--interval-ms", type=int, default=0, help="between replies")
    cs = sub.add_parser("client-stream")
    cs.add_argument("--count", type=int, default=3)
    cs.add_argument("--size", type=int, default=0)
    cs.add_argument("--reply-size", type=int, default=0)
    bd = sub.add_parser("bidi")
    bd.add_argument("--count", type=int, default=3)
    bd.add_argument("--size", type=int, default=0)
    bd.add_argument("--reply-size", type=int, default=0)
    bd.add_argument("--interval-ms", type=int, default=0, help="before each request after the first")
    sub.add_parser("health")
    sub.add_parser("stats")
    sh = sub.add_parser("set-health")
    sh.add_argument("--serving", choices=["true", "false"], required=True)
    args = ap.parse_args()
    args.md = []
    for kv in args.metadata:
        k, sep, v = kv.partition("=")
        if not sep:
            ap.error(f"--metadata {kv!r}: want K=V")
        args.md.append((k.lower(), v))
    args.md = tuple(args.md) or None

    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        # The proxy's retries are under test, not the client's.
        ("grpc.enable_retries", 0),
        ("grpc.enable_http_proxy", 0),
    ]
    if args.authority:
        options.append(("grpc.default_authority", args.authority))
    channel = grpc.insecure_channel(args.target, options=options)

    calls = []
    if args.cmd == "unary":
        payload = pattern(args.size)
        req = {"size": args.size, "reply_size": args.reply_size}
        if args.concurrency <= 1:
            for i in range(args.count):
                calls.append(run_unary(channel, "Unary", dict(req, tag=i), payload, args))
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
                futs = [
                    pool.submit(run_unary, channel, "Unary", dict(req, tag=i), payload, args)
                    for i in range(args.count)
                ]
                calls = [f.result() for f in futs]
    elif args.cmd == "sleep":
        calls.append(run_unary(channel, "Sleep", {"ms": args.ms}, b"", args))
    elif args.cmd == "status":
        calls.append(run_unary(channel, "Status", {"code": args.code, "details": args.details}, b"", args))
    elif args.cmd == "server-stream":
        calls.append(run_server_stream(channel, args))
    elif args.cmd == "client-stream":
        calls.append(run_client_stream(channel, args))
    elif args.cmd == "bidi":
        calls.append(run_bidi(channel, args))
    elif args.cmd == "health":
        calls.append(run_health(channel, args))
    elif args.cmd == "stats":
        calls.append(run_unary(channel, "Stats", {}, b"", args))
    elif args.cmd == "set-health":
        calls.append(run_unary(channel, "SetHealth", {"serving": args.serving == "true"}, b"", args))
    channel.close()

    codes = {}
    instances = {}
    for c in calls:
        codes[c.get("code")] = codes.get(c.get("code"), 0) + 1
        inst = c.get("instance")
        if isinstance(inst, str):
            instances[inst] = instances.get(inst, 0) + 1
    json.dump({"calls": calls, "codes": codes, "instances": instances}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
