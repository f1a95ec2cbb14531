//! Request heads (RFC 9112 3, 6.1-6.3; RFC 9110 7.2, 7.6.1, 7.8).

use std::mem::MaybeUninit;

use super::authority::validate_authority;
use super::fields::{offset, Fields, Kind};
use super::scan::{scan_head, LineMask};
use super::{Framing, Limits, Method, ParseError, Span, TargetForm, Version, MAX_HEADERS_CAP};

/// A parsed request head. Every [`Span`] indexes the buffer given to
/// [`parse_request`]; the head occupies `buf[..head_len]` and the body (or the
/// next pipelined request) starts at `head_len`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes up to and including the blank line (and any empty lines that
    /// preceded the request line).
    pub head_len: usize,
    pub method: Method,
    pub version: Version,
    /// The request-target as received.
    pub target: Span,
    pub target_form: TargetForm,
    /// `host[:port]`: from an absolute-form or authority-form target
    /// (RFC 9112 3.2.2), else the Host field value (trimmed); `None` only for
    /// an HTTP/1.0 request with neither. Always syntactically valid (see
    /// [`super::split_authority`]).
    pub authority: Option<Span>,
    /// Origin-form: the whole target (path and query). Absolute-form: what
    /// follows the authority, possibly empty or starting with `?` (forwarded
    /// with a `/` in front). Asterisk-form: `*`. Authority-form: empty.
    pub path: Span,
    /// `None`, `Length(n)` or `Chunked`; never `UntilClose`.
    pub framing: Framing,
    /// HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with
    /// `Connection: keep-alive`.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// HTTP/1.1, Connection lists `upgrade` and an Upgrade field is present.
    pub upgrade: bool,
    /// First byte of the request line.
    pub(crate) start: usize,
    /// The CR ending the request line.
    pub(crate) line_end: usize,
    /// Field lines to leave out when forwarding (hop-by-hop, replaced Host).
    pub(crate) drop: LineMask,
    /// Emit `host: <authority>` when forwarding.
    pub(crate) add_host: bool,
    /// Where the trace-context fields are.
    pub(crate) trace: crate::trace::TraceFields,
}

impl RequestHead {
    /// The method token as received (for a method [`Method::Other`] does
    /// not name); `src` is the buffer given to [`parse_request`].
    pub fn method_bytes<'a>(&self, src: &'a [u8]) -> &'a [u8] {
        src[self.start..self.target.start].trim_ascii()
    }

    /// The value of the first field named `name` (ASCII case-insensitive),
    /// trimmed; `src` is the buffer given to [`parse_request`]. A linear scan
    /// of the head: only routes that match on headers call it.
    pub fn header<'a>(&self, src: &'a [u8], name: &str) -> Option<&'a [u8]> {
        crate::fields::find(src, self.line_end, self.head_len, name)
    }

    /// Leaves every field named `name` out of the forwarded head (a header
    /// the proxy sets itself, such as the caller identity, must not be
    /// forged by the client). Returns how many lines were dropped.
    pub fn drop_header(&mut self, src: &[u8], name: &str) -> usize {
        crate::fields::mark(src, self.line_end, self.head_len, name, &mut self.drop)
    }

    /// The trimmed value of the first trace-context field `f`; `src` is
    /// the buffer given to [`parse_request`]. `traceparent` was located by
    /// the parse, and an absent field costs nothing; another present field
    /// is found by a scan of the head.
    pub fn trace_field<'a>(&self, src: &'a [u8], f: crate::TraceField) -> Option<&'a [u8]> {
        if !self.trace.has(f) {
            return None;
        }
        match self
            .trace
            .traceparent()
            .filter(|_| f == crate::TraceField::Traceparent)
        {
            Some(s) => src.get(s),
            // Rarer fields: a scan, only when the parse saw one.
            None => self.header(src, crate::trace::NAMES[f as usize]),
        }
    }

    /// Whether the head has any trace-context field.
    pub fn has_trace_fields(&self) -> bool {
        self.trace.any()
    }

    /// Leaves every trace-context field (`traceparent`, `tracestate`, B3)
    /// out of the forwarded head except `tracestate` when `keep_state`: a
    /// proxy that sets its own `traceparent` drops the client's. Costs
    /// nothing more than the parse unless a field occurs twice.
    pub fn drop_trace_fields(&mut self, src: &[u8], keep_state: bool) {
        let keep = keep_state.then_some(crate::TraceField::Tracestate);
        for line in self.trace.lines_except(keep) {
            self.drop.set(line);
        }
        if self.trace.repeated {
            for name in crate::trace::NAMES {
                if keep_state && name == "tracestate" {
                    continue;
                }
                crate::fields::mark(src, self.line_end, self.head_len, name, &mut self.drop);
            }
        }
    }
}

const BAD_TARGET: ParseError = ParseError::bad("invalid request-target");

/// Parses a request head at the start of `buf`, in place.
///
/// `Ok(None)`: no complete head yet and still within the limits; read more
/// and call again with the grown buffer. Errors carry the status to answer
/// with: 400, 414 (request line longer than `max_request_line` including its
/// CRLF), 431 (no complete head within `max_head_bytes`, or more than
/// `max_headers` fields), 505 (an `HTTP/x.y` version other than 1.0 and 1.1).
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<RequestHead>, ParseError> {
    let Some(b) = scan_head(buf, limits)? else {
        return Ok(None);
    };
    let head = &buf[b.start..b.head_len];

    // Uninitialised storage: httparse writes only the entries it fills, so a
    // request costs no 16 KiB memset.
    let mut storage = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS_CAP];
    let n = limits.max_headers.min(MAX_HEADERS_CAP);
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut storage[..n]) {
        Ok(httparse::Status::Complete(len)) if len == head.len() => {}
        Ok(_) => return Err(ParseError::bad("malformed request head")),
        Err(e) => return Err(map_error(e, &buf[b.start..b.line_end])),
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(ParseError::bad("malformed request head"));
    };
    let method = Method::from_bytes(method.as_bytes());
    let version = if minor == 1 {
        Version::Http11
    } else {
        Version::Http10
    };
    let t0 = offset(buf, target.as_bytes());
    let target = t0..t0 + target.len();
    let t = &buf[target.clone()];
    // RFC 9112 3.2: the target is ASCII and carries no fragment.
    if t.iter().any(|&c| c >= 0x80 || c == b'#') {
        return Err(BAD_TARGET);
    }

    let (target_form, target_authority, path) = classify_target(method, t, t0)?;

    let headers = &*req.headers;
    let mut f = Fields::collect(buf, headers, true)?;

    // RFC 9112 6.1: a Transfer-Encoding in HTTP/1.0 means faulty framing.
    if f.te && version == Version::Http10 {
        return Err(ParseError::bad("Transfer-Encoding in an HTTP/1.0 request"));
    }
    // RFC 9112 6.3 (3): both framings at once is the request-smuggling case.
    if f.te && f.content_length.is_some() {
        return Err(ParseError::bad(
            "both Content-Length and Transfer-Encoding in a request",
        ));
    }
    // RFC 9112 6.3 (4): the final coding of a request must be chunked.
    if f.te && !f.te_chunked_final {
        return Err(ParseError::bad(
            "final transfer coding of a request is not chunked",
        ));
    }
    if version == Version::Http11 && f.host.is_none() {
        return Err(ParseError::bad("missing Host field in an HTTP/1.1 request"));
    }

    let authority = match (target_authority, &f.host) {
        (Some(a), _) => Some(a),
        (None, Some((_, h))) => {
            validate_authority(&buf[h.clone()], false)?;
            Some(h.clone())
        }
        (None, None) => None,
    };

    let framing = if f.te {
        Framing::Chunked
    } else if let Some(n) = f.content_length {
        Framing::Length(n)
    } else {
        Framing::None
    };
    let keep_alive = match version {
        Version::Http11 => !f.close,
        Version::Http10 => f.keep_alive && !f.close,
    };
    // RFC 9110 7.8: Upgrade is ignored in HTTP/1.0 and needs the connection
    // option (Upgrade is hop-by-hop).
    let upgrade = version == Version::Http11 && f.conn_upgrade && f.upgrade_field;
    if f.upgrade_field && !upgrade {
        f.drop_kind(headers, Kind::Upgrade);
    }
    // RFC 9112 3.2.2: a proxy receiving an absolute-form target ignores the
    // Host field and generates one from the target.
    let absolute = target_form == TargetForm::Absolute;
    if let (true, Some((i, _))) = (absolute, &f.host) {
        f.drop.set(*i);
    }
    let add_host = authority.is_some() && (absolute || f.host.is_none());

    Ok(Some(RequestHead {
        head_len: b.head_len,
        method,
        version,
        target,
        target_form,
        authority,
        path,
        framing,
        keep_alive,
        expect_continue: f.expect_continue,
        upgrade,
        start: b.start,
        line_end: b.line_end,
        drop: f.drop,
        add_host,
        trace: f.trace,
    }))
}

/// RFC 9112 3.2: which form the target has, its authority (if it carries
/// one) and the path to forward. `t0` is the target's offset in the buffer.
fn classify_target(
    method: Method,
    t: &[u8],
    t0: usize,
) -> Result<(TargetForm, Option<Span>, Span), ParseError> {
    let end = t0 + t.len();
    if method == Method::Connect {
        // RFC 9112 3.2.3: CONNECT takes the authority-form and nothing else.
        if t.contains(&b'/') {
            return Err(ParseError::bad("CONNECT target is not authority-form"));
        }
        validate_authority(t, true)?;
        return Ok((TargetForm::Authority, Some(t0..end), end..end));
    }
    if t.first() == Some(&b'/') {
        return Ok((TargetForm::Origin, None, t0..end));
    }
    if t == b"*" {
        // RFC 9112 3.2.4: only for a server-wide OPTIONS.
        if method != Method::Options {
            return Err(BAD_TARGET);
        }
        return Ok((TargetForm::Asterisk, None, t0..end));
    }
    // absolute-form: scheme "://" authority path-abempty [ "?" query ]
    let Some(colon) = t.iter().position(|&c| c == b':') else {
        return Err(BAD_TARGET);
    };
    let (scheme, rest) = (&t[..colon], &t[colon + 1..]);
    if !scheme.eq_ignore_ascii_case(b"http") {
        return Err(ParseError::bad(
            "absolute-form target with a scheme other than http",
        ));
    }
    let Some(rest) = rest.strip_prefix(b"//") else {
        return Err(BAD_TARGET);
    };
    let a_len = rest
        .iter()
        .position(|&c| c == b'/' || c == b'?')
        .unwrap_or(rest.len());
    validate_authority(&rest[..a_len], false)?;
    let a0 = t0 + colon + 3;
    Ok((TargetForm::Absolute, Some(a0..a0 + a_len), a0 + a_len..end))
}

/// Maps an httparse error to the status and reason the client gets.
fn map_error(e: httparse::Error, request_line: &[u8]) -> ParseError {
    use httparse::Error as E;
    match e {
        E::HeaderName => ParseError::bad("invalid field name (or whitespace before the colon)"),
        E::HeaderValue => ParseError::bad("invalid octet in a field value"),
        E::TooManyHeaders => ParseError {
            status: 431,
            reason: "too many header fields",
        },
        E::Version => {
            let v = request_line.rsplit(|&c| c == b' ').next().unwrap_or(b"");
            if is_http_version(v) {
                ParseError {
                    status: 505,
                    reason: "HTTP version not supported",
                }
            } else {
                ParseError::bad("invalid HTTP version")
            }
        }
        _ => ParseError::bad("invalid request line"),
    }
}

/// `HTTP/DIGIT.DIGIT` (RFC 9112 2.3) or the `HTTP/DIGIT` some clients send
/// for 2 and 3: well-formed, just not a version this codec speaks.
fn is_http_version(v: &[u8]) -> bool {
    matches!(v, [b'H', b'T', b'T', b'P', b'/', d] if d.is_ascii_digit())
        || matches!(v, [b'H', b'T', b'T', b'P', b'/', a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit())
}
