//! gRPC over HTTP/2 as the proxy sees it: which requests are gRPC calls,
//! the deadline a call carries (`grpc-timeout`), and the gRPC status of an
//! answer the proxy makes itself (gRPC clients read `grpc-status`, not the
//! HTTP status, so a local 503 must reach them as UNAVAILABLE).
//!
//! References: gRPC over HTTP/2 (PROTOCOL-HTTP2.md in grpc/grpc) for the
//! header formats, and "HTTP to gRPC Status Code Mapping"
//! (doc/http-grpc-status-mapping.md) for statuses that are not gRPC's own.

use std::time::Duration;

use crate::error::{Answer, ErrorKind};

/// gRPC status codes the proxy produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl Code {
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// Whether a request's `content-type` makes it a gRPC call
/// (`application/grpc`, `application/grpc+proto`, `application/grpc-web`...).
pub fn is_grpc(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|ct| {
        ct.len() >= 16
            && ct[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(ct.get(16), None | Some(b'+' | b';' | b'-'))
    })
}

/// The deadline a `grpc-timeout` value asks for: 1 to 8 ASCII digits and a
/// unit (`H`, `M`, `S`, `m` milliseconds, `u` microseconds, `n`
/// nanoseconds). `None`: malformed (the call then has no deadline of its
/// own, as gRPC servers treat it).
pub fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = digits
        .iter()
        .fold(0, |acc, d| acc * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A `grpc-timeout` value for `d` (what is left of a call's deadline, sent
/// on upstream): the finest unit whose count fits in 8 digits, rounded up
/// (and never zero), so the upstream is never given less than the proxy
/// waits: the proxy's own deadline is the one that answers the client.
pub fn format_timeout(d: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let ns = d.as_nanos().max(1);
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (per, unit) in units {
        let n = ns.div_ceil(per);
        if n <= MAX {
            return format!("{n}{unit}");
        }
    }
    format!("{MAX}H")
}

/// The gRPC status of an answer the proxy makes itself.
pub fn answer_code(answer: &Answer<'_>) -> Code {
    match *answer {
        Answer::Error(kind) => error_code(kind),
        Answer::Denied { .. } => Code::PermissionDenied,
        Answer::TotalTimeout => Code::DeadlineExceeded,
        Answer::Fault { status } | Answer::Refused { status, .. } => http_code(status),
        Answer::Probe { healthy } => {
            if healthy == Some(false) {
                Code::Unavailable
            } else {
                Code::Ok
            }
        }
    }
}

/// The gRPC status of a local error.
pub fn error_code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::UpstreamTimeout | ErrorKind::Idle => Code::DeadlineExceeded,
        ErrorKind::RateLimited | ErrorKind::BufferBudget => Code::ResourceExhausted,
        ErrorKind::ClientGone => Code::Cancelled,
        ErrorKind::ConnectNotAllowed => Code::Unimplemented,
        ErrorKind::NoAuthority | ErrorKind::LoopDetected | ErrorKind::BadResponse => Code::Internal,
        ErrorKind::UnknownService
        | ErrorKind::NoEndpoints
        | ErrorKind::NoRoute
        | ErrorKind::NoHealthyEndpoints
        | ErrorKind::RetryableStatus
        | ErrorKind::ResolveFailed
        | ErrorKind::ConnectFailed
        | ErrorKind::ConnectTimeout
        | ErrorKind::PeerIdentityMismatch
        | ErrorKind::UpstreamReset
        | ErrorKind::Overloaded
        | ErrorKind::PeerAppUnreachable => Code::Unavailable,
    }
}

/// gRPC's mapping of an HTTP status that is not a gRPC answer.
pub fn http_code(status: u16) -> Code {
    match status {
        200..=299 => Code::Ok,
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        408 | 504 => Code::DeadlineExceeded,
        429 | 502 | 503 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// A `grpc-message` value: percent-encoded outside printable ASCII and `%`.
pub fn encode_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The gRPC condition of a `grpc-status` value, for a Route's retries
/// (`on: [unavailable, cancelled, deadline-exceeded, resource-exhausted,
/// internal]`): its name there, or `None` for a status no rule retries.
pub fn retry_condition(status: &[u8]) -> Option<&'static str> {
    Some(match status {
        b"1" => "cancelled",
        b"4" => "deadline-exceeded",
        b"8" => "resource-exhausted",
        b"13" => "internal",
        b"14" => "unavailable",
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
