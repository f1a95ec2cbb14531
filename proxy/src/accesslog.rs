//! Per-shard access log: one JSON object per line, buffered per core.
//!
//! Each shard opens the log file itself (`O_APPEND`) and formats entries into
//! its own buffer; nothing is shared between cores. The buffer is written when
//! it passes [`FLUSH_AT`] bytes and when the shard calls [`AccessLog::flush`]
//! (about once a second and on shutdown). A flush is one `write(2)` of whole
//! lines: with `O_APPEND` the kernel places each write at the end of the file
//! atomically, so lines of different shards sharing one file never interleave
//! mid-line. (A short write, which regular files only produce on a full disk
//! or a size limit, is the exception.)
//!
//! The write is a blocking syscall on the shard. It goes to the page cache and
//! happens once per 64 KiB or once a second, like nginx's buffered
//! `access_log`; a log on slow storage should be a pipe to a collector instead.
//!
//! Line format (fields in this order):
//!
//! ```text
//! {"ts":"2024-05-01T12:34:56.789Z","core":0,"direction":"outbound","service":"api",
//!  "method":"GET","authority":"api","path":"/x","status":200,"duration_us":1234,
//!  "bytes_in":120,"bytes_out":5120,"upstream":"10.0.0.7:8080"}
//! ```
//!
//! Request bytes are untrusted: valid UTF-8 is kept, `"`, `\` and control
//! characters are JSON-escaped, and bytes that are not UTF-8 are written as
//! the four characters `\xNN` (JSON `"\\xNN"`), as nginx does, so every line
//! parses as JSON. `upstream` is `null` when no upstream was picked, and
//! `"unix"` for the local app on its Unix socket file; `status`
//! 0 means no response was sent.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::stats::Direction;

/// Buffer size past which [`AccessLog::log`] writes the buffer out.
pub const FLUSH_AT: usize = 64 * 1024;

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
}

/// One shard's access log.
#[derive(Debug)]
pub struct AccessLog {
    file: File,
    buf: Vec<u8>,
    /// Lines lost to write errors since the log was opened.
    dropped_lines: u64,
    /// Set after a failed write so a full disk logs one warning, not one per
    /// flush; cleared by the next successful write.
    failing: bool,
}

impl AccessLog {
    /// Opens (creating if needed) `path` for appending.
    pub fn open(path: &Path) -> io::Result<AccessLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(AccessLog {
            file,
            // Room for a full buffer plus the line that tips it over.
            buf: Vec::with_capacity(FLUSH_AT + 4096),
            dropped_lines: 0,
            failing: false,
        })
    }

    /// Appends one line to the buffer; writes the buffer out once it exceeds
    /// [`FLUSH_AT`].
    pub fn log(&mut self, e: &AccessEntry<'_>) {
        self.log_at(e, SystemTime::now());
    }

    fn log_at(&mut self, e: &AccessEntry<'_>, now: SystemTime) {
        format_line(&mut self.buf, e, now);
        if self.buf.len() > FLUSH_AT {
            self.flush();
        }
    }

    /// Writes out every buffered line. On error the buffered lines are dropped
    /// (a log must not grow the shard's memory without bound) and counted.
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        match self.file.write_all(&self.buf) {
            Ok(()) => {
                if self.failing {
                    tracing::warn!(
                        dropped = self.dropped_lines,
                        "access log writes work again; lines dropped while failing (since the log was opened)"
                    );
                }
                self.failing = false;
            }
            Err(err) => {
                let lines = self.buf.iter().filter(|&&b| b == b'\n').count() as u64;
                self.dropped_lines += lines;
                if !self.failing {
                    tracing::warn!(%err, lines, "access log write failed; dropping lines");
                    self.failing = true;
                }
            }
        }
        self.buf.clear();
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.flush();
    }
}

fn format_line(out: &mut Vec<u8>, e: &AccessEntry<'_>, now: SystemTime) {
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
    out.extend_from_slice(b"}\n");
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
