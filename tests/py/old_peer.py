"""A peer proxy from before multiplexing, as the mesh hop sees one: mutual
TLS with the service's certificate, ALPN ``http/1.1`` only, keep-alive
HTTP/1.1 answers ``200`` with ``x-old-peer: 1`` and the ALPN it agreed.

Usage: old_peer.py CERT KEY CA. Prints its port, then serves until killed.
"""

import socket
import ssl
import sys
import threading


def serve(ctx, raw):
    try:
        conn = ctx.wrap_socket(raw, server_side=True)
        alpn = conn.selected_alpn_protocol()
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buf) < length:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            buf = buf[length:]
            body = ("old peer, alpn %s" % alpn).encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nx-old-peer: 1\r\n\r\n%s"
                % (len(body), body)
            )
    except (OSError, ssl.SSLError):
        pass


def main():
    cert, key, ca = sys.argv[1:4]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["http/1.1"])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(listener.getsockname()[1], flush=True)
    while True:
        raw, _ = listener.accept()
        threading.Thread(target=serve, args=(ctx, raw), daemon=True).start()


if __name__ == "__main__":
    main()
