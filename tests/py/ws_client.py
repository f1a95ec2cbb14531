#!/usr/bin/env python3
"""A WebSocket client (PyPI `websockets`) for the end-to-end suite: connects
to ws://AUTHORITY/PATH over a TCP connection to --connect (a proxy's outbound
listener, or the app itself), reads the app's greeting, sends text and
binary messages of several sizes and a ping, checks every echo, and closes.

Usage: ws_client.py --connect HOST:PORT --url ws://api/chat [--big BYTES]
Prints one JSON object: {"greeting": {...}, "sent": n, "echoed": n,
"mismatches": [...], "pong": bool, "close_code": c, "error": null or "..."}
"""

import argparse
import json
import socket

from websockets.sync.client import connect


def pattern(n):
    block = bytes(range(251))
    return (block * (n // len(block) + 1))[:n]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connect", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--big", type=int, default=1 << 20)
    ap.add_argument("--count", type=int, default=50)
    args = ap.parse_args()
    host, _, port = args.connect.rpartition(":")
    out = {"greeting": None, "sent": 0, "echoed": 0, "mismatches": [], "pong": False,
           "close_code": None, "error": None}
    try:
        sock = socket.create_connection((host, int(port)), timeout=30)
        with connect(args.url, sock=sock, max_size=None, compression=None,
                     open_timeout=30, close_timeout=10) as ws:
            out["greeting"] = json.loads(ws.recv(timeout=30))
            messages = [f"hello {i}" for i in range(args.count)]
            messages += [pattern(1000), pattern(args.big), "done"]
            for m in messages:
                ws.send(m)
                out["sent"] += 1
                got = ws.recv(timeout=30)
                if got == m:
                    out["echoed"] += 1
                else:
                    out["mismatches"].append(
                        {"index": out["sent"] - 1, "sent_len": len(m), "got_len": len(got),
                         "sent_type": type(m).__name__, "got_type": type(got).__name__})
            out["pong"] = ws.ping(b"are you there").wait(timeout=10)
            ws.close()
            out["close_code"] = ws.close_code
    except Exception as e:  # report, the test judges
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
