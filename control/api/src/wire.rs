//! Messages on the control connection (QUIC, ALPN [`ALPN`]) and their
//! framing: a 4-byte big-endian length, then that many bytes of JSON. Frames
//! over [`MAX_FRAME`] are refused before they are buffered.
//!
//! A peer that lists [`ZSTD`] in its Hello's `compression` may be sent
//! frames whose header has [`COMPRESSED`] set: the length is then that of a
//! zstd frame holding the JSON (see [`compress`]). Control sends snapshots
//! that way: a few KiB of JSON become one or two QUIC datagrams instead of
//! five or six, which is most of the cost of a push to a large fleet.
//!
//! Session lifecycle (one bidirectional stream per connection):
//!
//! ```text
//! joining (no client certificate):  Join ──▶ Joined | Error, then close
//! session (client certificate):     Hello ──▶ Welcome, Snapshot
//!                                   then, in any order: Ack/Nack(version),
//!                                   Register, Health (also the heartbeat),
//!                                   Renew ──▶ Renewed, Deregister ──▶ Deregistered
//!                                   control: Snapshot whenever something changes
//! optional features (each side sends these only when the other said it
//! knows them: control lists [`FEATURES`] in its Welcome, the proxy answers
//! with Features; an older peer never sees a message it cannot parse):
//!                                   Features, Clock (every CLOCK_EVERY)
//!                                   control: TapStart (renewed) / TapStop
//!                                   proxy: TapRecords while a tap runs
//! ```
//! A malformed, oversized or out-of-order message closes the stream with an
//! error logged on both sides; it never takes down control or the proxy.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::snapshot::Snapshot;

/// Bumped on incompatible changes; additive changes keep it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Whether `address`, registered by a proxy whose session runs between
/// itself and `peer` (control's address as the proxy sees it, or the
/// proxy's as control sees it), is a loopback address while the session is
/// not: callers on other hosts would connect to their own loopback.
/// Control refuses such a registration; the proxy knows beforehand.
pub fn loopback_from_afar(address: SocketAddr, peer: SocketAddr) -> bool {
    // A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d.
    address.ip().to_canonical().is_loopback() && !peer.ip().to_canonical().is_loopback()
}
/// QUIC ALPN of the control protocol.
pub const ALPN: &[u8] = b"coremesh-control/1";
/// Largest frame either side accepts, and the largest a compressed frame
/// may expand to.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Header bit of a compressed frame (lengths are below [`MAX_FRAME`], so
/// the top bit is free).
pub const COMPRESSED: u32 = 1 << 31;
/// zstd, as named in `Hello::compression` and `Welcome::compression`.
pub const ZSTD: &str = "zstd";
/// Frames at most this long are sent as they are: they fit in a datagram.
pub const COMPRESS_ABOVE: usize = 1024;
/// zstd's default level: a 6.6 KiB snapshot of 50 endpoints becomes ~1 KiB.
const ZSTD_LEVEL: i32 = 3;

/// Proxy → control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProxyMsg {
    /// The only message of a joining connection.
    Join {
        protocol: u32,
        /// The join token's id and secret (`JoinToken::to_string()`).
        token: String,
        /// PKCS#10 CSR (PEM) for a key generated on the proxy's host.
        csr_pem: String,
        node: String,
    },
    /// First message of a session. `service` must match the client
    /// certificate's SPIFFE ID.
    Hello {
        protocol: u32,
        service: String,
        node: String,
        /// The snapshot version the proxy runs (persisted), if any.
        #[serde(default)]
        version: Option<u64>,
        /// The services it calls; `None`: all of them.
        #[serde(default)]
        calls: Option<Vec<String>>,
        /// Frame compressions it decodes, e.g. [`ZSTD`]; control picks one
        /// for its snapshots, or sends them plain.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        compression: Vec<String>,
    },
    Ack {
        version: u64,
    },
    Nack {
        version: u64,
        reason: String,
    },
    /// Register (or update) this proxy's inbound address as an endpoint of
    /// its service.
    Register {
        address: SocketAddr,
        #[serde(default)]
        labels: BTreeMap<String, String>,
    },
    /// The local app's health; sent every heartbeat interval.
    Health {
        healthy: bool,
        #[serde(default)]
        detail: String,
    },
    /// Withdraw this proxy's endpoint (graceful shutdown).
    Deregister,
    /// A new CSR for the same service (renewal at ~2/3 of the lifetime).
    Renew {
        csr_pem: String,
    },
    /// The optional features this proxy supports, of those control's
    /// Welcome listed; sent once, right after the Welcome.
    Features {
        features: Vec<String>,
    },
    /// The proxy's wall clock (Unix milliseconds) as it sends this; control
    /// compares it with its own on receipt (`meshctl check`'s clock skew).
    Clock {
        unix_ms: u64,
    },
    /// Requests a running tap caught, and how many it dropped since the
    /// last batch (over the rate limit or a full queue).
    TapRecords {
        tap: u64,
        records: Vec<TapRecord>,
        #[serde(default)]
        dropped: u64,
    },
}

/// [`FEATURE_TAP`] and [`FEATURE_CLOCK`].
pub const FEATURES: [&str; 2] = [FEATURE_TAP, FEATURE_CLOCK];
/// TapStart, TapStop and TapRecords.
pub const FEATURE_TAP: &str = "tap";
/// Clock.
pub const FEATURE_CLOCK: &str = "clock";

/// One request a tap caught: the request line's fields, who called, how
/// it ended. Never a body, and no header value but the trace id (read from
/// `traceparent`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapRecord {
    /// Unix milliseconds when the request began.
    pub at_ms: u64,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// The caller's SPIFFE ID (inbound, over mutual TLS); `None` outbound
    /// (the caller is the proxy's own app) or on a plaintext port.
    #[serde(default)]
    pub caller: Option<String>,
    /// The service the request went to (outbound), or this proxy's own.
    pub service: String,
    pub method: String,
    pub authority: String,
    /// The path, without the query.
    pub path: String,
    /// 0: no response was sent.
    pub status: u16,
    pub latency_us: u64,
    /// The W3C trace id (32 hex digits), when the request carried one.
    #[serde(default)]
    pub trace_id: Option<String>,
}

/// Control → proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMsg {
    Joined {
        /// The signed certificate (PEM).
        cert_pem: String,
        /// The CA certificate (PEM) to trust from now on.
        ca_pem: String,
        spiffe_id: String,
    },
    Welcome {
        protocol: u32,
        /// How often the proxy sends Health.
        heartbeat_interval_ms: u64,
        /// The compression control's snapshots to this proxy use, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compression: Option<String>,
        /// The optional messages control understands ([`FEATURES`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        features: Vec<String>,
    },
    Snapshot(Snapshot),
    Renewed {
        cert_pem: String,
    },
    /// The endpoint is withdrawn and every other session has been sent a
    /// snapshot without it.
    Deregistered,
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Start (or renew) tap `tap`: hand over requests whose path starts
    /// with `path_prefix`, at most `max_rps` a second, and stop by itself
    /// `ttl_ms` after this message unless renewed.
    TapStart {
        tap: u64,
        #[serde(default)]
        path_prefix: Option<String>,
        max_rps: u32,
        ttl_ms: u64,
    },
    TapStop {
        tap: u64,
    },
}

/// Why control refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Unknown, used-up, expired or revoked token.
    TokenRefused,
    /// The certificate does not allow this service.
    Forbidden,
    /// Protocol version, message order or content.
    BadRequest,
    Internal,
}

/// Why a frame was refused. Either one closes the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The announced (or, when encoding, the actual) length is over the cap.
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The payload is not a valid message: the serde_json error.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A compressed frame that does not decompress to at most the limit.
    #[error("bad compressed frame: {0}")]
    BadCompression(String),
}

/// Appends one frame (4-byte big-endian length, then JSON) to `out`. On
/// error `out` is left as it was.
pub fn encode<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let written = serde_json::to_writer(&mut *out, msg);
    let len = out.len() - start - 4;
    if let Err(e) = written {
        out.truncate(start);
        return Err(FrameError::Malformed(e.to_string()));
    }
    if len > MAX_FRAME {
        out.truncate(start);
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    // MAX_FRAME < u32::MAX, so the length fits.
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// The compressed form of one frame made by [`encode`]: `Ok(None)` when it
/// is at most [`COMPRESS_ABOVE`] bytes or would not get shorter. The zstd
/// frame records its content size, which the decoder checks against its
/// limit before it decompresses anything.
pub fn compress(frame: &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
    let Some(json) = frame.get(4..) else {
        return Err(FrameError::Malformed(
            "frame shorter than its header".into(),
        ));
    };
    if frame.len() <= COMPRESS_ABOVE {
        return Ok(None);
    }
    let body = zstd::bulk::compress(json, ZSTD_LEVEL)
        .map_err(|e| FrameError::BadCompression(format!("zstd: {e}")))?;
    if body.len() + 4 >= frame.len() {
        return Ok(None);
    }
    // Shorter than the frame, so under MAX_FRAME and under COMPRESSED.
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32 | COMPRESSED).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(Some(out))
}

thread_local! {
    /// One zstd decompression context (~100 KiB) per thread, not per
    /// connection: a simulated fleet holds thousands of decoders.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// The JSON in a compressed frame's body, refused when the zstd frame does
/// not say its size, says more than `max`, or does not decompress to it.
fn decompress(body: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    let bad = |why: String| FrameError::BadCompression(why);
    let size = match zstd::zstd_safe::get_frame_content_size(body) {
        Ok(Some(size)) => size,
        Ok(None) => return Err(bad("no content size in the zstd header".into())),
        Err(_) => return Err(bad("not a zstd frame".into())),
    };
    let size = usize::try_from(size)
        .ok()
        .filter(|s| *s <= max)
        .ok_or_else(|| {
            bad(format!(
                "expands to {size} bytes, over the limit of {max} bytes"
            ))
        })?;
    let mut out = Vec::with_capacity(size);
    let written = DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let dctx = match &mut *cell {
            Some(d) => d,
            empty => empty
                .insert(zstd::bulk::Decompressor::new().map_err(|e| bad(format!("zstd: {e}")))?),
        };
        dctx.decompress_to_buffer(body, &mut out)
            .map_err(|e| bad(format!("zstd: {e}")))
    })?;
    if written != size {
        return Err(bad(format!("{written} bytes, the header said {size}")));
    }
    Ok(out)
}

/// Sans-I/O frame decoder: [`push`](Self::push) the bytes as they arrive,
/// then call [`next`](Self::next) until it returns `Ok(None)`.
///
/// A frame whose announced length is over `max` is refused as soon as its
/// 4-byte header is in, before its body is waited for. After an error the
/// stream is to be closed; the decoder is not meant to resync.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`.
    pos: usize,
    max: usize,
    /// Compressed frames decoded so far.
    compressed: u64,
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            pos: 0,
            max,
            compressed: 0,
        }
    }

    /// How many of the frames decoded so far were compressed.
    pub fn compressed_frames(&self) -> u64 {
        self.compressed
    }

    pub fn push(&mut self, bytes: &[u8]) {
        // Drop what has been read before growing.
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.buf.len() + bytes.len() > self.buf.capacity() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes pushed but not yet returned as a message: non-zero at the end
    /// of a stream means it was cut mid-frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    // Not `Iterator::next`: generic over the message type and fallible.
    #[allow(clippy::should_implement_trait)]
    pub fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let unread = &self.buf[self.pos..];
        let Some(header) = unread.get(..4) else {
            return Ok(None);
        };
        let word = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let len = (word & !COMPRESSED) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        let Some(body) = unread.get(4..4 + len) else {
            return Ok(None);
        };
        let parsed = if word & COMPRESSED != 0 {
            let json = decompress(body, self.max);
            self.pos += 4 + len;
            self.compressed += 1;
            serde_json::from_slice(&json?)
        } else {
            self.pos += 4 + len;
            serde_json::from_slice(body)
        };
        parsed
            .map(Some)
            .map_err(|e| FrameError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests;
