//! Frame-header scanning of the bytes an HTTP/2 connection carries, a few
//! instructions per frame (payloads are skipped): what a peer sends is
//! held to `[limits.h2]`'s per-second rates ([`ReadScan`]); what the proxy
//! sends is watched for refused streams ([`WriteScan`]).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::config::H2Limits;

/// Frame types (RFC 9113, section 6).
const DATA: u8 = 0;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
/// END_STREAM on DATA, ACK on SETTINGS and PING.
const FLAG_0: u8 = 1;
/// The RST_STREAM error code of a stream refused before any work was done.
const REFUSED_STREAM: u32 = 7;

/// A flood that closed a connection (what
/// `coremesh_h2_connection_errors_total` counts it as).
#[derive(Debug)]
pub struct Flood(pub &'static str);

impl std::fmt::Display for Flood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Starts with the reason: the h2 crate keeps an I/O error's text,
        // not the error itself (see `Flood::of`).
        write!(f, "{}: frames beyond the per-second limit", self.0)
    }
}

impl Flood {
    /// The flood an I/O error's text says closed a connection.
    pub fn of(text: &str) -> Option<&'static str> {
        ["SETTINGS_FLOOD", "PING_FLOOD", "EMPTY_FRAME_FLOOD"]
            .into_iter()
            .find(|r| text.starts_with(r))
    }
}

impl std::error::Error for Flood {}

/// What one frame of the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen<'a> {
    Head {
        kind: u8,
        flags: u8,
        len: usize,
    },
    /// The start of an RST_STREAM or GOAWAY frame's payload (after its
    /// `Head`), up to [`CAPTURE`] bytes.
    Payload {
        kind: u8,
        bytes: &'a [u8],
    },
}

/// Payload bytes kept of an RST_STREAM or GOAWAY frame: the error code,
/// and the start of GOAWAY's debug data.
const CAPTURE: usize = 48;
const GOAWAY: u8 = 7;

/// A payload being gathered.
struct Capture {
    kind: u8,
    bytes: [u8; CAPTURE],
    want: usize,
    have: usize,
}

/// Follows frame boundaries in a byte stream fed in pieces of any size.
struct Frames {
    /// Bytes of the client preface still to skip (server side).
    preface: usize,
    head: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to skip.
    skip: usize,
    /// Payload kept of RST_STREAM and GOAWAY frames (a writer's scan only).
    capture: Option<Capture>,
    keep_payloads: bool,
}

impl Frames {
    fn new(preface: usize, keep_payloads: bool) -> Frames {
        Frames {
            preface,
            head: [0; 9],
            have: 0,
            skip: 0,
            capture: None,
            keep_payloads,
        }
    }

    fn feed<E>(
        &mut self,
        mut b: &[u8],
        mut on: impl FnMut(Seen<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        while !b.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(b.len());
                self.preface -= n;
                b = &b[n..];
            } else if self.skip > 0 {
                let n = self.skip.min(b.len());
                if let Some(c) = &mut self.capture {
                    let take = n.min(c.want - c.have);
                    c.bytes[c.have..c.have + take].copy_from_slice(&b[..take]);
                    c.have += take;
                    if c.have == c.want {
                        let c = self.capture.take().expect("a capture");
                        on(Seen::Payload {
                            kind: c.kind,
                            bytes: &c.bytes[..c.want],
                        })?;
                    }
                }
                self.skip -= n;
                b = &b[n..];
            } else {
                let n = (9 - self.have).min(b.len());
                self.head[self.have..self.have + n].copy_from_slice(&b[..n]);
                self.have += n;
                b = &b[n..];
                if self.have == 9 {
                    self.have = 0;
                    let h = self.head;
                    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    self.skip = len;
                    let kept = matches!(h[3], RST_STREAM | GOAWAY) && len >= 4;
                    self.capture = (self.keep_payloads && kept).then_some(Capture {
                        kind: h[3],
                        bytes: [0; CAPTURE],
                        want: len.min(CAPTURE),
                        have: 0,
                    });
                    on(Seen::Head {
                        kind: h[3],
                        flags: h[4],
                        len,
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// Per-second limits on a peer's frames, from `[limits.h2]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    pub settings: u32,
    pub pings: u32,
    pub empty_data: u32,
}

impl From<&H2Limits> for FrameLimits {
    fn from(l: &H2Limits) -> FrameLimits {
        FrameLimits {
            settings: l.max_settings_per_second,
            pings: l.max_pings_per_second,
            empty_data: l.max_empty_frames_per_second,
        }
    }
}

/// Counts a peer's SETTINGS and PING frames (ACKs are answers, not
/// counted) and its empty DATA frames without END_STREAM, per second:
/// a client sends a few SETTINGS when it connects and pings seldom (gRPC
/// keepalives: every few seconds at most); a flood of either makes the
/// proxy do work for nothing and answer with frames the client need not
/// read. Beyond a limit the connection is closed.
pub(super) struct ReadScan {
    frames: Frames,
    limits: FrameLimits,
    window: Instant,
    settings: u32,
    pings: u32,
    empty_data: u32,
}

impl ReadScan {
    pub(super) fn new(preface: usize, limits: FrameLimits) -> ReadScan {
        ReadScan {
            frames: Frames::new(preface, false),
            limits,
            window: Instant::now(),
            settings: 0,
            pings: 0,
            empty_data: 0,
        }
    }

    pub(super) fn feed(&mut self, b: &[u8]) -> Result<(), Flood> {
        let mut frames = std::mem::replace(&mut self.frames, Frames::new(0, false));
        let r = frames.feed(b, |seen| match seen {
            Seen::Head { kind, flags, len } => self.count(kind, flags & FLAG_0 != 0, len),
            Seen::Payload { .. } => Ok(()),
        });
        self.frames = frames;
        r
    }

    fn count(&mut self, kind: u8, flag: bool, len: usize) -> Result<(), Flood> {
        let which = match (kind, flag) {
            (SETTINGS, false) => 0,
            (PING, false) => 1,
            (DATA, false) if len == 0 => 2,
            _ => return Ok(()),
        };
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.settings = 0;
            self.pings = 0;
            self.empty_data = 0;
        }
        let (n, limit, name) = match which {
            0 => (&mut self.settings, self.limits.settings, "SETTINGS_FLOOD"),
            1 => (&mut self.pings, self.limits.pings, "PING_FLOOD"),
            _ => (
                &mut self.empty_data,
                self.limits.empty_data,
                "EMPTY_FRAME_FLOOD",
            ),
        };
        *n += 1;
        if *n > limit {
            return Err(Flood(name));
        }
        Ok(())
    }
}

/// What the proxy's side of a connection sent that its owner counts.
#[derive(Debug, Default)]
pub struct SentCounts {
    /// Streams refused with REFUSED_STREAM (a client beyond
    /// `max_concurrent_streams`); taken by whoever reports them.
    pub refused: Cell<u64>,
    /// The debug data of the last GOAWAY sent with an error (the `h2`
    /// crate says there which limit was broken, and keeps it to itself).
    pub goaway_debug: RefCell<Vec<u8>>,
}

/// Watches the frames the proxy writes: RST_STREAM REFUSED_STREAM, and
/// GOAWAY's debug data.
pub(super) struct WriteScan {
    frames: Frames,
    pub(super) counts: Rc<SentCounts>,
}

impl WriteScan {
    pub(super) fn new() -> WriteScan {
        WriteScan {
            frames: Frames::new(0, true),
            counts: Rc::default(),
        }
    }

    pub(super) fn feed(&mut self, b: &[u8]) {
        let counts = &self.counts;
        let _ = self.frames.feed::<()>(b, |seen| {
            match seen {
                Seen::Payload {
                    kind: RST_STREAM,
                    bytes,
                } if bytes == REFUSED_STREAM.to_be_bytes() => {
                    counts.refused.set(counts.refused.get() + 1);
                }
                Seen::Payload {
                    kind: GOAWAY,
                    bytes,
                } if bytes.len() > 8 => {
                    *counts.goaway_debug.borrow_mut() = bytes[8..].to_vec();
                }
                _ => {}
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests;
