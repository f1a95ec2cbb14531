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
mod tests {
    use std::fmt::Debug;

    use super::*;
    use crate::resource::{parse_documents, Protocol, Resource};
    use crate::snapshot::{Endpoint, ServiceEndpoints};

    fn proxy_msgs() -> Vec<ProxyMsg> {
        let addr: SocketAddr = "10.0.0.7:4143".parse().unwrap();
        vec![
            ProxyMsg::Join {
                protocol: PROTOCOL_VERSION,
                token: "cmjt1.id.secret.00".into(),
                csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\n...".into(),
                node: "host-a".into(),
            },
            ProxyMsg::Hello {
                protocol: PROTOCOL_VERSION,
                service: "web".into(),
                node: "host-a".into(),
                version: Some(7),
                calls: Some(vec!["api".into()]),
                compression: vec![ZSTD.into()],
            },
            ProxyMsg::Hello {
                protocol: PROTOCOL_VERSION,
                service: "web".into(),
                node: "host-a".into(),
                version: None,
                calls: None,
                compression: Vec::new(),
            },
            ProxyMsg::Ack { version: 8 },
            ProxyMsg::Nack {
                version: 9,
                reason: "route api: no such subset".into(),
            },
            ProxyMsg::Register {
                address: addr,
                labels: [("version".to_string(), "v2".to_string())].into(),
            },
            ProxyMsg::Health {
                healthy: false,
                detail: "connect refused".into(),
            },
            ProxyMsg::Deregister,
            ProxyMsg::Renew {
                csr_pem: "csr".into(),
            },
        ]
    }

    fn control_msgs() -> Vec<ControlMsg> {
        let routes = parse_documents(crate::resource::EXAMPLE)
            .unwrap()
            .into_iter()
            .filter_map(|r| match r {
                Resource::Route(r) => Some(r),
                _ => None,
            })
            .collect();
        let access_policy = parse_documents(crate::resource::ACCESS_EXAMPLE)
            .unwrap()
            .into_iter()
            .find_map(|r| match r {
                Resource::AccessPolicy(p) => Some(p),
                _ => None,
            });
        let resilience = parse_documents(crate::resource::RESILIENCE_EXAMPLE)
            .unwrap()
            .into_iter()
            .filter_map(|r| match r {
                Resource::Resilience(r) => Some(r),
                _ => None,
            })
            .chain([crate::resource::Resilience {
                load_balancer: crate::resource::LoadBalancer::RingHash(
                    crate::resource::HashKey::Cookie("session".into()),
                ),
                ..crate::resource::Resilience::new("db")
            }])
            .collect();
        vec![
            ControlMsg::Joined {
                cert_pem: "cert".into(),
                ca_pem: "ca".into(),
                spiffe_id: "spiffe://mesh.local/service/web".into(),
            },
            ControlMsg::Welcome {
                protocol: PROTOCOL_VERSION,
                heartbeat_interval_ms: 5000,
                compression: None,
            },
            ControlMsg::Welcome {
                protocol: PROTOCOL_VERSION,
                heartbeat_interval_ms: 5000,
                compression: Some(ZSTD.into()),
            },
            ControlMsg::Snapshot(Snapshot {
                version: 12,
                config_version: 3,
                store_id: "5f0c2a9e1d7b4c38a6e2f1d0b9c8a7e6".into(),
                config_digest: "9a1f".into(),
                services: vec![ServiceEndpoints {
                    name: "api".into(),
                    protocol: Protocol::Http,
                    endpoints: vec![Endpoint {
                        address: "10.0.0.8:4143".parse().unwrap(),
                        labels: [("version".to_string(), "v1".to_string())].into(),
                        node: "host-b".into(),
                        healthy: true,
                    }],
                }],
                routes,
                access_policy,
                default_access: crate::resource::Access::Deny,
                trust_bundle: vec!["root 1".into(), "root 2".into()],
                resilience,
            }),
            ControlMsg::Renewed {
                cert_pem: "cert2".into(),
            },
            ControlMsg::Deregistered,
            ControlMsg::Error {
                code: ErrorCode::TokenRefused,
                message: "token expired".into(),
            },
        ]
    }

    /// Encodes all, then decodes from pushes of `chunk` bytes.
    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(msgs: &[T], chunk: usize) {
        let mut bytes = Vec::new();
        for m in msgs {
            encode(m, &mut bytes).unwrap();
        }
        let mut dec = FrameDecoder::new(MAX_FRAME);
        let mut got = Vec::new();
        for piece in bytes.chunks(chunk) {
            dec.push(piece);
            while let Some(m) = dec.next::<T>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, msgs);
        assert_eq!(dec.buffered(), 0);
    }

    /// A snapshot of `n` endpoints, as control sends it.
    fn snapshot_frame(n: usize) -> Vec<u8> {
        let endpoints = (0..n)
            .map(|i| Endpoint {
                address: SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8], 4143)),
                labels: [("version".to_string(), format!("v{}", i % 2))].into(),
                node: format!("host-{i:05}"),
                healthy: true,
            })
            .collect();
        let msg = ControlMsg::Snapshot(Snapshot {
            version: 12,
            config_version: 3,
            services: vec![ServiceEndpoints {
                name: "api".into(),
                protocol: Protocol::Http,
                endpoints,
            }],
            ..Snapshot::default()
        });
        let mut frame = Vec::new();
        encode(&msg, &mut frame).unwrap();
        frame
    }

    fn decode_all(bytes: &[u8], chunk: usize) -> (Vec<ControlMsg>, u64) {
        let mut dec = FrameDecoder::new(MAX_FRAME);
        let mut got = Vec::new();
        for piece in bytes.chunks(chunk) {
            dec.push(piece);
            while let Some(m) = dec.next::<ControlMsg>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(dec.buffered(), 0);
        (got, dec.compressed_frames())
    }

    #[test]
    fn compressed_frames_decode_to_the_same_messages() {
        let plain = snapshot_frame(50);
        let small = {
            let mut f = Vec::new();
            encode(&ControlMsg::Deregistered, &mut f).unwrap();
            f
        };
        let packed = compress(&plain).unwrap().expect("worth compressing");
        // 50 endpoints: well under a third, so 1-2 datagrams instead of 5-6.
        assert!(
            packed.len() * 3 < plain.len(),
            "{} of {}",
            packed.len(),
            plain.len()
        );
        assert_ne!(packed[0] & 0x80, 0, "header flag");
        // Small frames stay as they are.
        assert_eq!(compress(&small).unwrap(), None);

        let (want, _) = decode_all(&plain, usize::MAX);
        let mut mixed = packed.clone();
        mixed.extend_from_slice(&small);
        mixed.extend_from_slice(&plain);
        mixed.extend_from_slice(&packed);
        for chunk in [usize::MAX, 1, 5, 700] {
            let (got, compressed) = decode_all(&mixed, chunk);
            assert_eq!(got.len(), 4);
            assert_eq!(got[0], want[0]);
            assert_eq!(got[1], ControlMsg::Deregistered);
            assert_eq!(got[2], want[0]);
            assert_eq!(got[3], want[0]);
            assert_eq!(compressed, 2);
        }
    }

    #[test]
    fn bad_compressed_frames_are_refused() {
        let header = |len: usize| (len as u32 | COMPRESSED).to_be_bytes();
        let next = |bytes: &[u8], max: usize| {
            let mut dec = FrameDecoder::new(max);
            dec.push(bytes);
            dec.next::<ControlMsg>()
        };
        // Not zstd.
        let mut bytes = header(5).to_vec();
        bytes.extend_from_slice(b"hello");
        let e = next(&bytes, MAX_FRAME).unwrap_err();
        assert_eq!(e, FrameError::BadCompression("not a zstd frame".into()));

        // Expands past the limit: refused from the zstd header, before
        // anything is decompressed (a 1 MiB run of zeros is ~60 bytes).
        let bomb = zstd::bulk::compress(&vec![0u8; 1 << 20], 3).unwrap();
        let mut bytes = header(bomb.len()).to_vec();
        bytes.extend_from_slice(&bomb);
        let e = next(&bytes, 4096).unwrap_err();
        assert!(
            e.to_string()
                .contains("expands to 1048576 bytes, over the limit of 4096"),
            "{e}"
        );

        // A compressed length over the limit is refused like a plain one.
        let e = next(&header(5000), 4096).unwrap_err();
        assert_eq!(
            e,
            FrameError::TooLarge {
                len: 5000,
                max: 4096
            }
        );

        // Truncated zstd data (content size present, blocks cut short).
        let packed = compress(&snapshot_frame(50)).unwrap().unwrap();
        let body = &packed[4..packed.len() - 10];
        let mut bytes = header(body.len()).to_vec();
        bytes.extend_from_slice(body);
        let e = next(&bytes, MAX_FRAME).unwrap_err();
        assert!(matches!(e, FrameError::BadCompression(_)), "{e}");

        // Valid zstd, not JSON.
        let junk = zstd::bulk::compress(b"not json at all", 3).unwrap();
        let mut bytes = header(junk.len()).to_vec();
        bytes.extend_from_slice(&junk);
        assert!(matches!(
            next(&bytes, MAX_FRAME),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(&proxy_msgs(), usize::MAX);
        round_trip(&control_msgs(), usize::MAX);
    }

    #[test]
    fn byte_at_a_time() {
        round_trip(&proxy_msgs(), 1);
        round_trip(&control_msgs(), 1);
        round_trip(&control_msgs(), 7);
    }

    #[test]
    fn oversize_is_refused_from_the_header() {
        let mut dec = FrameDecoder::new(16);
        dec.push(&17u32.to_be_bytes());
        assert_eq!(
            dec.next::<ProxyMsg>(),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );
        let mut dec = FrameDecoder::new(MAX_FRAME);
        dec.push(&u32::MAX.to_be_bytes());
        let e = dec.next::<ProxyMsg>().unwrap_err();
        assert!(matches!(e, FrameError::TooLarge { .. }));
        assert!(e.to_string().contains("over the limit"), "{e}");
    }

    #[test]
    fn encode_refuses_oversize() {
        let mut out = vec![1, 2, 3];
        let big = ProxyMsg::Renew {
            csr_pem: "x".repeat(MAX_FRAME),
        };
        assert!(matches!(
            encode(&big, &mut out),
            Err(FrameError::TooLarge { max: MAX_FRAME, .. })
        ));
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn garbage_is_malformed() {
        let mut dec = FrameDecoder::new(MAX_FRAME);
        dec.push(&[0, 0, 0, 3, b'x', b'y', b'z']);
        let e = dec.next::<ProxyMsg>().unwrap_err();
        assert!(matches!(e, FrameError::Malformed(_)), "{e}");
        assert!(e.to_string().starts_with("malformed message: "), "{e}");

        // Valid JSON, unknown message type.
        let mut bytes = Vec::new();
        encode(&serde_json::json!({"type": "launch"}), &mut bytes).unwrap();
        dec.push(&bytes);
        let e = dec.next::<ProxyMsg>().unwrap_err();
        assert!(e.to_string().contains("unknown variant `launch`"), "{e}");

        // Empty frame.
        dec.push(&[0, 0, 0, 0]);
        assert!(matches!(
            dec.next::<ControlMsg>(),
            Err(FrameError::Malformed(_))
        ));
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn partial_frames_wait() {
        let mut bytes = Vec::new();
        encode(&ProxyMsg::Ack { version: 1 }, &mut bytes).unwrap();
        let mut dec = FrameDecoder::new(MAX_FRAME);
        dec.push(&bytes[..2]);
        assert_eq!(dec.next::<ProxyMsg>(), Ok(None));
        dec.push(&bytes[2..bytes.len() - 1]);
        assert_eq!(dec.next::<ProxyMsg>(), Ok(None));
        assert_eq!(dec.buffered(), bytes.len() - 1);
        dec.push(&bytes[bytes.len() - 1..]);
        assert_eq!(
            dec.next::<ProxyMsg>(),
            Ok(Some(ProxyMsg::Ack { version: 1 }))
        );
    }

    #[test]
    fn additive_fields_are_optional() {
        // An older proxy's Hello, without the defaulted fields.
        let mut bytes = Vec::new();
        encode(
            &serde_json::json!({"type": "hello", "protocol": 1, "service": "web", "node": "a"}),
            &mut bytes,
        )
        .unwrap();
        let mut dec = FrameDecoder::new(MAX_FRAME);
        dec.push(&bytes);
        let Some(ProxyMsg::Hello {
            version,
            calls,
            compression,
            ..
        }) = dec.next().unwrap()
        else {
            panic!("not a hello")
        };
        assert_eq!((version, calls), (None, None));
        assert!(compression.is_empty());
        // And a Hello without compression is written as before.
        let hello = ProxyMsg::Hello {
            protocol: 1,
            service: "web".into(),
            node: "a".into(),
            version: None,
            calls: None,
            compression: Vec::new(),
        };
        assert_eq!(
            serde_json::to_string(&hello).unwrap(),
            r#"{"type":"hello","protocol":1,"service":"web","node":"a","version":null,"calls":null}"#
        );

        // An older control's snapshot, without policy or trust bundle.
        let mut bytes = Vec::new();
        encode(
            &serde_json::json!({"type": "snapshot", "version": 2, "config_version": 1, "services": []}),
            &mut bytes,
        )
        .unwrap();
        dec.push(&bytes);
        let Some(ControlMsg::Snapshot(s)) = dec.next().unwrap() else {
            panic!("not a snapshot")
        };
        assert_eq!(s.access_policy, None);
        assert_eq!(s.default_access, crate::resource::Access::Allow);
        assert!(s.trust_bundle.is_empty() && s.routes.is_empty());
        assert!(s.resilience.is_empty());
    }

    /// A proxy built before the traffic-management fields refuses unknown
    /// fields in a Route; a Route that does not use them must serialize
    /// exactly as before, so that such a proxy still applies it.
    #[test]
    fn routes_without_new_features_serialize_as_before() {
        let route = parse_documents(crate::resource::EXAMPLE)
            .unwrap()
            .into_iter()
            .find_map(|r| match r {
                Resource::Route(r) => Some(r),
                _ => None,
            })
            .unwrap();
        let json = serde_json::to_string(&route).unwrap();
        assert_eq!(
            json,
            r#"{"name":"api-canary","service":"api","rules":[{"match":{"headers":{"x-canary":"true"}},"backends":[{"subset":{"version":"v2"},"weight":1}]},{"match":{"pathPrefix":"/"},"timeout":"2s","retries":{"attempts":2,"perTryTimeout":"500ms","on":["connect-failure","reset","5xx"]},"backends":[{"subset":{"version":"v1"},"weight":90},{"subset":{"version":"v2"},"weight":10}]}]}"#
        );
        // And the snapshot of a proxy no Resilience concerns has no new key.
        let snap = serde_json::to_value(Snapshot::default()).unwrap();
        assert!(snap.get("resilience").is_none(), "{snap}");
    }
}
