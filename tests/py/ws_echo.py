#!/usr/bin/env python3
"""A WebSocket echo app (PyPI `websockets`) for the end-to-end suite.

On each connection it first sends one text message, a JSON object naming
this instance and what the handshake carried ({"instance", "path", "host"}),
then echoes every message back unchanged (text as text, binary as binary).

Usage: ws_echo.py --name NAME [--listen 127.0.0.1:0]
Prints one line `READY 127.0.0.1:PORT` on stdout once it serves.
"""

import argparse
import json

from websockets.sync.server import serve


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--listen", default="127.0.0.1:0")
    args = ap.parse_args()
    host, _, port = args.listen.rpartition(":")

    def handler(ws):
        req = ws.request
        ws.send(
            json.dumps(
                {
                    "instance": args.name,
                    "path": req.path if req else None,
                    "host": req.headers.get("Host") if req else None,
                }
            )
        )
        for message in ws:
            ws.send(message)

    with serve(handler, host, int(port), max_size=None, compression=None) as server:
        bound = server.socket.getsockname()
        print(f"READY {bound[0]}:{bound[1]}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
