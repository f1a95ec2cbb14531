//! The access log: one line per request, JSON or text, formatted on the
//! shard and written by a thread of its own.
//!
//! Each shard formats entries into its own buffer; nothing is shared between
//! cores while a line is built. A buffer is handed over when it passes
//! [`FLUSH_AT`] bytes and when the shard calls [`AccessLog::flush`] (about
//! once a second, and on shutdown): it goes by a bounded channel
//! ([`QUEUE`] buffers) to the writer thread ([`writer`]), which owns the
//! file. So the shard never makes a blocking `write(2)` to the file: a
//! slow disk fills the queue, and what does not fit is dropped and counted
//! (`coremesh_access_log_dropped_lines_total{reason="queue_full"}`), as a
//! full disk's lost lines are (`reason="write_error"`). Emptied buffers go
//! back to the shards through a small spare list, so a busy log allocates
//! no new buffer per hand-over.
//!
//! The writer makes one `write(2)` of whole lines per buffer, on a file
//! opened with `O_APPEND`: lines never interleave mid-line, even with other
//! writers on the same file. SIGUSR1 makes it reopen the path (for
//! logrotate: `mv access.log access.log.1; kill -USR1 PID`); lines handed
//! over after the signal go to the new file.
//!
//! Two formats (`[access_log] format`), with the same fields:
//!
//! JSON (fields in this order; `grpc_status` only for gRPC calls):
//!
//! ```text
//! {"ts":"2024-05-01T12:34:56.789Z","core":0,"direction":"outbound","service":"api",
//!  "method":"GET","authority":"api","path":"/x","status":200,"duration_us":1234,
//!  "bytes_in":120,"bytes_out":5120,"upstream":"10.0.0.7:8080","protocol":"HTTP/1.1",
//!  "request_id":"5b0e3f5c-...","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736",
//!  "caller":"spiffe://mesh.example/service/web"}
//! ```
//!
//! Text, close to the combined log format (`%h %l %u %t "%r" %>s %b`), the
//! caller's identity in the user field, then `key=value` pairs:
//!
//! ```text
//! - - spiffe://mesh.example/service/web [01/May/2024:12:34:56 +0000] "GET /x HTTP/1.1" 200 5120
//!  request_id="5b0e3f5c-..." trace_id=4bf92f3577b34da6a3ce929d0e0e4736 direction=outbound
//!  service=api authority="api" upstream=10.0.0.7:8080 duration_us=1234 bytes_in=120 core=0
//! ```
//!
//! (one line in the file). A missing value is `-` in text and `null` in
//! JSON.
//!
//! Request bytes are untrusted. JSON: valid UTF-8 is kept, `"`, `\` and
//! control characters are escaped, and bytes that are not UTF-8 are written
//! as the four characters `\xNN` (JSON `"\\xNN"`), as nginx does, so every
//! line parses as JSON. Text: `"` and `\` are escaped with `\`, and every
//! byte below 0x20 or from 0x7f up is `\xNN` (as nginx's text log), so a
//! line is printable ASCII. `upstream` is `null`/`-` when no upstream was
//! picked, and `unix` for the local app on its Unix socket file; `status`
//! 0 means no response was sent.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::AccessLogFormat;
use crate::stats::Direction;

pub mod writer;
pub use writer::{Sink, Writer, COUNTERS};

/// Buffer size past which [`AccessLog::log`] hands the buffer to the writer.
pub const FLUSH_AT: usize = 64 * 1024;

/// Buffers the channel to the writer holds; past this, lines are dropped.
/// Together at most about 4.3 MiB of log lines wait for the disk.
pub const QUEUE: usize = 64;

/// One finished request, borrowed from the request's buffers.
#[derive(Debug, Clone)]
pub struct AccessEntry<'a> {
    pub direction: Direction,
    pub service: &'a str,
    pub method: &'a [u8],
    pub authority: &'a [u8],
    pub path: &'a [u8],
    pub status: u16,
    pub duration: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub upstream: Option<SocketAddr>,
    pub core: usize,
    /// `HTTP/1.1`, `HTTP/1.0` or `HTTP/2`.
    pub protocol: &'a str,
    /// A gRPC call's final `grpc-status` (absent for other requests, or a
    /// call that ended without one).
    pub grpc_status: Option<u8>,
    /// The `x-request-id` the request was forwarded with (kept or
    /// generated; see `forward::request_id`).
    pub request_id: &'a [u8],
    /// The trace id of the `traceparent` the request was forwarded with:
    /// 32 lowercase hex digits.
    pub trace_id: Option<&'a [u8; 32]>,
    /// Who called: the peer's SPIFFE ID on the inbound side (mutual TLS),
    /// this proxy's own on the outbound side.
    pub caller: Option<&'a str>,
}

/// One shard's side of the access log: its buffer, and the way to the
/// writer thread.
#[derive(Debug)]
pub struct AccessLog {
    sink: Sink,
    buf: Vec<u8>,
    /// Lines in `buf`.
    lines: u64,
}

impl AccessLog {
    pub fn new(sink: Sink) -> AccessLog {
        let buf = sink.spare();
        AccessLog {
            sink,
            buf,
            lines: 0,
        }
    }

    /// Appends one line to the buffer; hands the buffer to the writer once
    /// it exceeds [`FLUSH_AT`].
    pub fn log(&mut self, e: &AccessEntry<'_>, format: AccessLogFormat) {
        self.log_at(e, format, SystemTime::now());
    }

    fn log_at(&mut self, e: &AccessEntry<'_>, format: AccessLogFormat, now: SystemTime) {
        match format {
            AccessLogFormat::Json => format_json(&mut self.buf, e, now),
            AccessLogFormat::Text => format_text(&mut self.buf, e, now),
        }
        self.lines += 1;
        if self.buf.len() > FLUSH_AT {
            self.flush();
        }
    }

    /// Hands every buffered line to the writer without waiting: when its
    /// queue is full the lines are dropped and counted (the buffer is
    /// kept for the next lines).
    pub fn flush(&mut self) {
        if self.lines == 0 {
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        self.buf = match self.sink.try_send(buf, self.lines) {
            Ok(()) => self.sink.spare(),
            Err(mut back) => {
                back.clear();
                back
            }
        };
        self.lines = 0;
    }

    /// Hands every buffered line to the writer, waiting for room in its
    /// queue: only for the drain, when no request is left to delay.
    pub fn flush_waiting(&mut self) {
        if self.lines == 0 {
            return;
        }
        self.sink.send(std::mem::take(&mut self.buf), self.lines);
        self.lines = 0;
    }
}

/// The trace id of a W3C `traceparent` value (`VV-TRACEID-PARENTID-FLAGS`):
/// its 32 lowercase hex digits, `None` when the value is not a valid
/// traceparent (wrong shape, version `ff`, an all-zero trace id). A
/// version other than `00` may carry more after the flags.
pub fn trace_id(traceparent: &[u8]) -> Option<[u8; 32]> {
    let v = traceparent.trim_ascii();
    let hex = |b: &[u8]| {
        b.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let (version, id) = (&v[..2], &v[3..35]);
    let ok = hex(version)
        && version != b"ff"
        && (version != b"00" || v.len() == 55)
        && (v.len() == 55 || v[55] == b'-')
        && hex(id)
        && id.iter().any(|&c| c != b'0')
        && hex(&v[36..52])
        && hex(&v[53..55]);
    ok.then(|| {
        let mut out = [0u8; 32];
        out.copy_from_slice(id);
        out
    })
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.flush();
    }
}

fn format_json(out: &mut Vec<u8>, e: &AccessEntry<'_>, now: SystemTime) {
    // `write!` into a Vec<u8> cannot fail.
    out.extend_from_slice(b"{\"ts\":\"");
    push_rfc3339_millis(out, now);
    let _ = write!(
        out,
        "\",\"core\":{},\"direction\":\"{}\",\"service\":",
        e.core,
        e.direction.as_str()
    );
    push_json_str(out, e.service.as_bytes());
    out.extend_from_slice(b",\"method\":");
    push_json_str(out, e.method);
    out.extend_from_slice(b",\"authority\":");
    push_json_str(out, e.authority);
    out.extend_from_slice(b",\"path\":");
    push_json_str(out, e.path);
    let _ = write!(
        out,
        ",\"status\":{},\"duration_us\":{},\"bytes_in\":{},\"bytes_out\":{},\"upstream\":",
        e.status,
        e.duration.as_micros(),
        e.bytes_in,
        e.bytes_out
    );
    match e.upstream {
        Some(crate::config::UNIX_APP) => out.extend_from_slice(b"\"unix\""),
        // A SocketAddr's display form has no character that needs escaping.
        Some(addr) => {
            let _ = write!(out, "\"{addr}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"protocol\":");
    push_json_str(out, e.protocol.as_bytes());
    if let Some(g) = e.grpc_status {
        let _ = write!(out, ",\"grpc_status\":{g}");
    }
    out.extend_from_slice(b",\"request_id\":");
    push_json_str(out, e.request_id);
    out.extend_from_slice(b",\"trace_id\":");
    match e.trace_id {
        // Hex digits: nothing to escape.
        Some(t) => {
            out.push(b'"');
            out.extend_from_slice(t);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"caller\":");
    match e.caller {
        Some(c) => push_json_str(out, c.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"}\n");
}

/// The text line (see the module doc).
fn format_text(out: &mut Vec<u8>, e: &AccessEntry<'_>, now: SystemTime) {
    out.extend_from_slice(b"- - ");
    match e.caller {
        // A SPIFFE ID is a URI (no space), but it came from a certificate:
        // escaped all the same.
        Some(c) if !c.is_empty() => push_text(out, c.as_bytes()),
        _ => out.push(b'-'),
    }
    out.extend_from_slice(b" [");
    push_clf_time(out, now);
    out.extend_from_slice(b"] \"");
    push_text(out, e.method);
    out.push(b' ');
    push_text(out, e.path);
    out.push(b' ');
    out.extend_from_slice(e.protocol.as_bytes());
    let _ = write!(out, "\" {} {} request_id=\"", e.status, e.bytes_out);
    push_text(out, e.request_id);
    out.extend_from_slice(b"\" trace_id=");
    match e.trace_id {
        Some(t) => out.extend_from_slice(t),
        None => out.push(b'-'),
    }
    let _ = write!(out, " direction={} service=", e.direction.as_str());
    push_text(out, e.service.as_bytes());
    out.extend_from_slice(b" authority=\"");
    push_text(out, e.authority);
    out.extend_from_slice(b"\" upstream=");
    match e.upstream {
        Some(crate::config::UNIX_APP) => out.extend_from_slice(b"unix"),
        Some(addr) => {
            let _ = write!(out, "{addr}");
        }
        None => out.push(b'-'),
    }
    let _ = write!(
        out,
        " duration_us={} bytes_in={} core={}",
        e.duration.as_micros(),
        e.bytes_in,
        e.core
    );
    if let Some(g) = e.grpc_status {
        let _ = write!(out, " grpc_status={g}");
    }
    out.push(b'\n');
}

/// Writes untrusted bytes into a text line: `"` and `\` escaped with `\`,
/// bytes below 0x20 and from 0x7f up as `\xNN`.
fn push_text(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        match b {
            b'"' | b'\\' => {
                out.push(b'\\');
                out.push(b);
            }
            0x20..=0x7e => out.push(b),
            _ => {
                out.extend_from_slice(b"\\x");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
    }
}

/// Writes `bytes` as a JSON string (with quotes). See the module doc for how
/// non-UTF-8 bytes are shown.
fn push_json_str(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                // Other C0 controls and DEL: `\u00NN`, so no terminal escape
                // sequence survives into the file.
                c if (c as u32) < 0x20 || c == '\u{7f}' => {
                    let b = c as u8;
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 0xf)]);
                }
                c => {
                    let mut tmp = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
                }
            }
        }
        for &b in chunk.invalid() {
            out.extend_from_slice(b"\\\\x");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
    }
    out.push(b'"');
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC). Times before the epoch are
/// written as the epoch.
fn push_rfc3339_millis(out: &mut Vec<u8>, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    );
}

/// `DD/Mon/YYYY:HH:MM:SS +0000`, the common log format's time (UTC, whole
/// seconds).
fn push_clf_time(out: &mut Vec<u8>, t: SystemTime) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(secs / 86_400);
    let month = MONTHS[(m as usize).clamp(1, 12) - 1];
    let _ = write!(
        out,
        "{d:02}/{month}/{y:04}:{:02}:{:02}:{:02} +0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), by
/// counting in 400-year eras starting on March 1 (so the leap day is the last
/// day of the shifted year). Only non-negative day counts are needed here.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // 1970-01-01 is day 719_468 counted from 0000-03-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, 0..=146_096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // 0..=365, from March 1
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = era * 400 + yoe + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests;
