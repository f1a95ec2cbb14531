//! The fields that decide framing and connection management, shared by
//! requests and responses: Content-Length and Transfer-Encoding (RFC 9112
//! 6.1-6.3), Connection and the hop-by-hop fields (RFC 9110 7.6.1), and for
//! requests Host (RFC 9110 7.2) and Expect (RFC 9110 10.1.1).
//!
//! Called once per head over httparse's field array; records which lines to
//! leave out when forwarding in a [`LineMask`] so the plan never re-parses
//! field values.

use super::scan::{is_token, list_elements, trim_ows, LineMask};
use super::{ParseError, Span};

pub(crate) const CL_INVALID: ParseError = ParseError::bad("invalid Content-Length");
pub(crate) const CL_CONFLICT: ParseError = ParseError::bad("conflicting Content-Length values");
pub(crate) const TE_INVALID: ParseError = ParseError::bad("invalid Transfer-Encoding");
pub(crate) const TE_CHUNKED_TWICE: ParseError =
    ParseError::bad("chunked applied more than once in Transfer-Encoding");

/// Field names the codec acts on. Names are matched case-insensitively
/// (RFC 9110 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    Te,
    Upgrade,
    ProxyConnection,
    Expect,
    /// `coremesh-error`: a proxy's word on its own answers.
    ProxyError,
    Other,
}

pub(crate) fn classify(n: &[u8]) -> Kind {
    let is = |s: &[u8]| n.eq_ignore_ascii_case(s);
    match n.len() {
        2 if is(b"te") => Kind::Te,
        4 if is(b"host") => Kind::Host,
        6 if is(b"expect") => Kind::Expect,
        7 if is(b"upgrade") => Kind::Upgrade,
        10 if is(b"connection") => Kind::Connection,
        10 if is(b"keep-alive") => Kind::KeepAlive,
        14 if is(b"content-length") => Kind::ContentLength,
        14 if is(b"coremesh-error") => Kind::ProxyError,
        16 if is(b"proxy-connection") => Kind::ProxyConnection,
        17 if is(b"transfer-encoding") => Kind::TransferEncoding,
        _ => Kind::Other,
    }
}

/// What the fields of one head say.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    pub content_length: Option<u64>,
    /// A Transfer-Encoding field is present (even if empty).
    pub te: bool,
    /// The final transfer coding is `chunked` (and it appears once).
    pub te_chunked_final: bool,
    te_chunked_seen: bool,
    /// Connection options.
    pub close: bool,
    pub keep_alive: bool,
    pub conn_upgrade: bool,
    /// An Upgrade field is present.
    pub upgrade_field: bool,
    /// Index and trimmed value of the Host field (requests only).
    pub host: Option<(usize, Span)>,
    pub expect_continue: bool,
    /// The trimmed value of the first `coremesh-error` field, if any.
    pub proxy_error: Option<Span>,
    /// Lines to leave out when forwarding.
    pub drop: LineMask,
    /// The trace-context fields (requests only).
    pub trace: crate::trace::TraceFields,
}

/// The field lines of a head of `head_len` bytes whose start line ends at
/// `line_end` (its CR): (line index, name, trimmed value). A linear scan, for
/// the few lookups made off the hot path (route matches on headers, a
/// configured header dropped).
fn field_lines(
    src: &[u8],
    line_end: usize,
    head_len: usize,
) -> impl Iterator<Item = (usize, &[u8], &[u8])> {
    let end = head_len.saturating_sub(2);
    let mut pos = line_end + 2;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let next = src[pos..end]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(end, |k| pos + k + 1);
        let line = &src[pos..next];
        pos = next;
        Some(line)
    })
    .enumerate()
    .filter_map(|(i, line)| {
        let colon = line.iter().position(|&b| b == b':')?;
        Some((i, &line[..colon], line[colon + 1..].trim_ascii()))
    })
}

/// Marks every field line named `name` (ASCII case-insensitive) in `drop`,
/// so the forwarded head leaves it out; returns how many.
pub(crate) fn mark(
    src: &[u8],
    line_end: usize,
    head_len: usize,
    name: &str,
    drop: &mut LineMask,
) -> usize {
    let mut dropped = 0;
    for (i, n, _) in field_lines(src, line_end, head_len) {
        if n.eq_ignore_ascii_case(name.as_bytes()) {
            drop.set(i);
            dropped += 1;
        }
    }
    dropped
}

/// The value of the first field named `name` (ASCII case-insensitive),
/// trimmed.
pub(crate) fn find<'a>(
    src: &'a [u8],
    line_end: usize,
    head_len: usize,
    name: &str,
) -> Option<&'a [u8]> {
    field_lines(src, line_end, head_len)
        .find(|(_, n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, _, v)| v)
}

/// Offset of `part` inside `buf` (both from the same parse).
pub(crate) fn offset(buf: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - buf.as_ptr() as usize
}

impl Fields {
    pub fn collect(
        buf: &[u8],
        headers: &[httparse::Header<'_>],
        request: bool,
    ) -> Result<Fields, ParseError> {
        let mut f = Fields::default();
        // Connection named something other than the options handled here, so
        // a second pass must find the fields it names.
        let mut names_fields = false;
        for (i, h) in headers.iter().enumerate() {
            match classify(h.name.as_bytes()) {
                Kind::ContentLength => {
                    let n = parse_content_length(h.value)?;
                    match f.content_length {
                        Some(prev) if prev != n => return Err(CL_CONFLICT),
                        _ => f.content_length = Some(n),
                    }
                }
                Kind::TransferEncoding => {
                    f.te = true;
                    // Several fields form one list (RFC 9110 5.3), so the
                    // state carries over from the previous field.
                    for coding in list_elements(h.value) {
                        if coding.is_empty() {
                            continue;
                        }
                        let (name, params) = match coding.iter().position(|&b| b == b';') {
                            Some(p) => (trim_ows(&coding[..p]), true),
                            None => (coding, false),
                        };
                        if !is_token(name) {
                            return Err(TE_INVALID);
                        }
                        if name.eq_ignore_ascii_case(b"chunked") {
                            // RFC 9112 7.1: chunked has no parameters and is
                            // applied at most once.
                            if params {
                                return Err(TE_INVALID);
                            }
                            if f.te_chunked_seen {
                                return Err(TE_CHUNKED_TWICE);
                            }
                            f.te_chunked_seen = true;
                            f.te_chunked_final = true;
                        } else {
                            f.te_chunked_final = false;
                        }
                    }
                }
                Kind::Connection => {
                    f.drop.set(i);
                    for opt in list_elements(h.value) {
                        if opt.eq_ignore_ascii_case(b"close") {
                            f.close = true;
                        } else if opt.eq_ignore_ascii_case(b"keep-alive") {
                            f.keep_alive = true;
                        } else if opt.eq_ignore_ascii_case(b"upgrade") {
                            f.conn_upgrade = true;
                        } else if is_token(opt) {
                            names_fields = true;
                        }
                    }
                }
                Kind::KeepAlive | Kind::Te | Kind::ProxyConnection => f.drop.set(i),
                Kind::Upgrade => f.upgrade_field = true,
                Kind::Host if request => {
                    if f.host.is_some() {
                        return Err(ParseError::bad("more than one Host field"));
                    }
                    let start = offset(buf, h.value);
                    f.host = Some((i, start..start + h.value.len()));
                }
                Kind::ProxyError if f.proxy_error.is_none() => {
                    let v = trim_ows(h.value);
                    let start = offset(buf, v);
                    f.proxy_error = Some(start..start + v.len());
                }
                Kind::Expect
                    if request && trim_ows(h.value).eq_ignore_ascii_case(b"100-continue") =>
                {
                    f.expect_continue = true;
                }
                Kind::Other if request => {
                    if let Some(t) = crate::trace::classify(h.name.as_bytes()) {
                        let v = trim_ows(h.value);
                        let start = offset(buf, v);
                        f.trace.note(t, i, start..start + v.len());
                    }
                }
                _ => {}
            }
        }
        if names_fields {
            f.drop_named_by_connection(headers);
        }
        Ok(f)
    }

    /// RFC 9110 7.6.1: every field named by Connection is hop-by-hop. The
    /// framing fields and Host are never dropped this way: removing them
    /// would make the upstream frame the message differently from us (a
    /// `Connection: content-length` smuggling attempt).
    fn drop_named_by_connection(&mut self, headers: &[httparse::Header<'_>]) {
        for h in headers {
            if classify(h.name.as_bytes()) != Kind::Connection {
                continue;
            }
            for opt in list_elements(h.value) {
                if !is_token(opt) {
                    continue;
                }
                match classify(opt) {
                    Kind::ContentLength | Kind::TransferEncoding | Kind::Host => continue,
                    // Upgrade is decided by the caller; the rest are dropped anyway.
                    Kind::Upgrade | Kind::Connection | Kind::KeepAlive | Kind::Te => continue,
                    _ => {}
                }
                for (j, other) in headers.iter().enumerate() {
                    if other.name.len() == opt.len()
                        && other.name.as_bytes().eq_ignore_ascii_case(opt)
                    {
                        self.drop.set(j);
                    }
                }
            }
        }
    }

    /// Leaves out every field of this kind.
    pub fn drop_kind(&mut self, headers: &[httparse::Header<'_>], kind: Kind) {
        for (i, h) in headers.iter().enumerate() {
            if classify(h.name.as_bytes()) == kind {
                self.drop.set(i);
            }
        }
    }
}

/// RFC 9112 6.3: 1*DIGIT, or a list of identical values (RFC 9110 8.6 allows
/// a recipient to accept `Content-Length: 42, 42`). No sign, no empty element,
/// no overflow.
pub(crate) fn parse_content_length(v: &[u8]) -> Result<u64, ParseError> {
    let mut out = None;
    for e in list_elements(v) {
        if e.is_empty() || !e.iter().all(u8::is_ascii_digit) {
            return Err(CL_INVALID);
        }
        let mut n: u64 = 0;
        for &b in e {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(b - b'0')))
                .ok_or(CL_INVALID)?;
        }
        match out {
            Some(prev) if prev != n => return Err(CL_CONFLICT),
            _ => out = Some(n),
        }
    }
    out.ok_or(CL_INVALID)
}

#[cfg(test)]
mod tests;
