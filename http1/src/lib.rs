//! coremesh-http1: the sans-I/O HTTP/1.1 codec of coremesh's proxy. Bytes
//! in, parsed heads and forwarding plans out.
//!
//! Nothing here touches a socket, a clock or a runtime, so the codec is
//! unit-tested with in-memory buffers and fuzzed (`fuzz/`) on its own. The
//! data flow for one exchange:
//!
//! ```text
//! client bytes ──▶ parse_request (in place: spans into the pooled buffer)
//!     ──▶ RequestHead::plan_forward ──▶ HeadPlan (spans of the same buffer + a few
//!         added bytes, written with one vectored write; never re-serialized)
//!     ──▶ body relayed raw: Framing::Length counted by the caller,
//!         Framing::Chunked validated by ChunkedDecoder as it passes through
//! upstream bytes ──▶ parse_response ──▶ ResponseHead::plan_forward ──▶ client
//! ```
//!
//! Files, one concern each:
//! * `scan.rs`: finds the end of a head, enforces the size limits and the line
//!   syntax httparse is lenient about (bare CR/LF, obs-fold).
//! * `fields.rs`: the semantics of the framing and connection-management fields
//!   shared by requests and responses (Content-Length, Transfer-Encoding,
//!   Connection, hop-by-hop fields).
//! * `request.rs`, `response.rs`: the heads and their framing rules.
//! * `plan.rs`: [`HeadPlan`] and the forwarding rewrites.
//! * `chunked.rs`: the chunked body validator.
//! * `trailers.rs`: a kept trailer section's fields, and which fields may
//!   be trailers (for translation to HTTP/2; raw relaying never reads them).
//! * `authority.rs`: `host[:port]` syntax.
//! * `local.rs`: responses the proxy writes itself, reason phrases.
//! * `tests`: the public API end to end, one test per rejected attack, and
//!   a randomized test that splits valid messages at every offset.
//!
//! RFC sections followed:
//! * RFC 9112 2.2 (message parsing: CRLF only, no bare CR, no whitespace before
//!   the first field line, leading empty lines before a request ignored),
//!   3 (request line), 3.2 (request-target forms, Host rules), 4 (status line),
//!   5 (field syntax; 5.1 no whitespace before the colon, 5.2 obs-fold rejected),
//!   6.1 (Transfer-Encoding), 6.3 (message body length, smuggling defences),
//!   7.1 (chunked coding, chunk extensions, trailer section),
//!   9.3 and 9.6 (persistence, `Connection: close`, HTTP/1.0 keep-alive).
//! * RFC 9110 5.5 (field values), 6.5.1 (fields prohibited in trailers),
//!   7.2 (Host), 7.6.1 (Connection and hop-by-hop fields), 7.8 (Upgrade), 9.2.2 (idempotent methods), 9.3.6 (CONNECT),
//!   10.1.1 (Expect), 15 (status codes, reason phrases).
//!
//! Every request the codec rejects must not reach the upstream; the caller
//! answers it with [`ParseError::status`] (400, 414, 431 or 505) using
//! [`write_error_response`]. Response errors carry status 502.

#![forbid(unsafe_code)]

mod authority;
mod chunked;
mod fields;
mod local;
mod plan;
mod request;
mod response;
mod scan;
mod trace;
mod trailers;

#[cfg(test)]
mod tests;

pub use authority::split_authority;
pub use chunked::ChunkedDecoder;
pub use local::{reason_phrase, write_error_response, write_probe_response};
pub use plan::{HeadPlan, Seg};
pub use request::{parse_request, RequestHead};
pub use response::{parse_response, ResponseHead};
pub use trace::TraceField;
pub use trailers::{is_prohibited_trailer, TrailerFields};

use std::fmt;

/// A byte range into the caller's buffer (the one passed to the parse call).
pub type Span = std::ops::Range<usize>;

/// The protocol versions this codec speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// Request method. Methods are case-sensitive (RFC 9110 9.1): `get` is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    Other,
}

impl Method {
    /// RFC 9110 9.2.2: PUT, DELETE and the safe methods (GET, HEAD, OPTIONS,
    /// TRACE). An unknown method is not assumed idempotent.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }

    pub(crate) fn from_bytes(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"CONNECT" => Method::Connect,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }
}

/// How the body of a message is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body follows the head.
    None,
    /// Exactly this many bytes follow (`Length(0)` for `Content-Length: 0`).
    Length(u64),
    /// A chunked body follows; relay it through a [`ChunkedDecoder`].
    Chunked,
    /// The body ends when the upstream closes the connection (responses only).
    UntilClose,
}

/// The form of the request-target (RFC 9112 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`
    Origin,
    /// `http://host:port/path?query` (requests to a proxy)
    Absolute,
    /// `host:port` (CONNECT only)
    Authority,
    /// `*` (OPTIONS only)
    Asterisk,
}

/// Size limits applied while parsing a head.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The whole head, blank line included (and any empty lines skipped before
    /// a request line). A longer head is a 431.
    pub max_head_bytes: usize,
    /// The request line (or status line) including its CRLF. Longer is a 414.
    pub max_request_line: usize,
    /// Field lines in the head; more is a 431. Capped at 512.
    pub max_headers: usize,
}

impl Default for Limits {
    /// 32 KiB heads, 8 KiB request lines, 100 fields: above what browsers and
    /// gRPC-web clients send, below what lets one connection pin much memory.
    fn default() -> Self {
        Limits {
            max_head_bytes: 32 * 1024,
            max_request_line: 8 * 1024,
            max_headers: 100,
        }
    }
}

/// The hard cap on field lines: the header array lives on the stack and the
/// per-line "drop" mask is a 512-bit set.
pub(crate) const MAX_HEADERS_CAP: usize = 512;

/// Why a message was rejected, with the status to answer it with.
///
/// Requests: 400, 414, 431 or 505. Responses: always 502. Chunked bodies: 400
/// (the caller answers 502 when the body came from the upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseError {
    pub status: u16,
    pub reason: &'static str,
}

impl ParseError {
    pub(crate) const fn bad(reason: &'static str) -> Self {
        ParseError {
            status: 400,
            reason,
        }
    }

    pub(crate) const fn with_status(self, status: u16) -> Self {
        ParseError {
            status,
            reason: self.reason,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason)
    }
}

impl std::error::Error for ParseError {}
