//! Response heads (RFC 9112 4, 6.3; RFC 9110 7.6.1, 15).

use std::mem::MaybeUninit;

use super::fields::{Fields, Kind};
use super::scan::{scan_head, LineMask};
use super::{Framing, Limits, Method, ParseError, Span, Version, MAX_HEADERS_CAP};

/// A parsed response head; the head occupies `buf[..head_len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub head_len: usize,
    pub status: u16,
    pub version: Version,
    /// RFC 9112 6.3: `None` for a response to HEAD, 1xx, 204, 304 and 2xx to
    /// CONNECT; `Chunked` if the final transfer coding is chunked;
    /// `UntilClose` if Transfer-Encoding is present with another final coding,
    /// or neither Content-Length nor Transfer-Encoding is present;
    /// `Length(n)` otherwise.
    pub framing: Framing,
    /// The upstream connection may carry another request after this response.
    /// False for HTTP/1.0 without `Connection: keep-alive`, `Connection:
    /// close`, `UntilClose`, Content-Length together with Transfer-Encoding,
    /// 101 and 2xx to CONNECT (the connection becomes a tunnel).
    pub keep_alive: bool,
    /// 1xx other than 101: relay it and parse the next head for the final
    /// response.
    pub interim: bool,
    /// 101 Switching Protocols: after the head both sides speak the new
    /// protocol; relay bytes both ways.
    pub switching: bool,
    /// The first `coremesh-error` value ([`ResponseHead::proxy_error`]).
    pub(crate) proxy_error: Option<Span>,
    pub(crate) line_end: usize,
    pub(crate) drop: LineMask,
}

impl ResponseHead {
    /// The value of its first `coremesh-error` field (found while parsing);
    /// `src` is the buffer given to [`parse_response`].
    pub fn proxy_error<'a>(&self, src: &'a [u8]) -> Option<&'a [u8]> {
        self.proxy_error.clone().map(|s| &src[s])
    }

    /// Leaves every `coremesh-error` field out of the forwarded head (only
    /// proxies may say it, not the app behind one). Nothing to do, and no
    /// scan, when the response has none.
    pub fn drop_proxy_error(&mut self, src: &[u8]) {
        if self.proxy_error.is_some() {
            crate::fields::mark(
                src,
                self.line_end,
                self.head_len,
                "coremesh-error",
                &mut self.drop,
            );
        }
    }
}

const MALFORMED: ParseError = ParseError {
    status: 502,
    reason: "malformed response head",
};

/// Parses a response head at the start of `buf`, in place. `request_method`
/// is the method of the request this answers (it decides framing).
///
/// `Ok(None)`: incomplete, read more. Every error has status 502: the caller
/// closes the upstream connection and answers 502 (RFC 9112 6.3).
pub fn parse_response(
    buf: &[u8],
    request_method: Method,
    limits: &Limits,
) -> Result<Option<ResponseHead>, ParseError> {
    parse(buf, request_method, limits).map_err(|e| e.with_status(502))
}

fn parse(
    buf: &[u8],
    request_method: Method,
    limits: &Limits,
) -> Result<Option<ResponseHead>, ParseError> {
    let Some(b) = scan_head(buf, limits).map_err(|e| match e.status {
        414 => ParseError::bad("status line too long"),
        431 => ParseError::bad("response head too large"),
        _ => e,
    })?
    else {
        return Ok(None);
    };
    if b.start != 0 {
        // Empty lines before a status line are not allowed (RFC 9112 2.2
        // only tolerates them before a request line).
        return Err(ParseError::bad("empty line before the status line"));
    }
    let head = &buf[..b.head_len];
    let mut storage = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS_CAP];
    let n = limits.max_headers.min(MAX_HEADERS_CAP);
    let mut res = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        head,
        &mut storage[..n],
    ) {
        Ok(httparse::Status::Complete(len)) if len == head.len() => {}
        Ok(_) => return Err(MALFORMED),
        Err(e) => {
            use httparse::Error as E;
            return Err(match e {
                E::HeaderName => ParseError::bad("invalid field name in response"),
                E::HeaderValue => ParseError::bad("invalid octet in a response field value"),
                E::TooManyHeaders => ParseError::bad("too many response header fields"),
                E::Version => ParseError::bad("unsupported HTTP version in response"),
                _ => ParseError::bad("invalid status line"),
            });
        }
    }
    let (Some(minor), Some(status)) = (res.version, res.code) else {
        return Err(MALFORMED);
    };
    // RFC 9110 15: status codes are 100-599.
    if !(100..=599).contains(&status) {
        return Err(ParseError::bad("invalid status code"));
    }
    let version = if minor == 1 {
        Version::Http11
    } else {
        Version::Http10
    };
    let headers = &*res.headers;
    let mut f = Fields::collect(buf, headers, false)?;

    // RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty
    // framing.
    if f.te && version == Version::Http10 {
        return Err(ParseError::bad("Transfer-Encoding in an HTTP/1.0 response"));
    }

    let switching = status == 101;
    let interim = (100..200).contains(&status) && !switching;
    let tunnel = request_method == Method::Connect && (200..300).contains(&status);
    let no_body = request_method == Method::Head
        || (100..200).contains(&status)
        || status == 204
        || status == 304
        || tunnel;
    // RFC 9112 6.3, in its order.
    let framing = if no_body {
        Framing::None
    } else if f.te {
        if f.te_chunked_final {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = f.content_length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let mut keep_alive = match version {
        Version::Http11 => !f.close,
        Version::Http10 => f.keep_alive && !f.close,
    };
    // RFC 9112 6.3 (3): CL with TE "ought to be handled as an error"; TE wins
    // for framing but the connection is not reused.
    if framing == Framing::UntilClose || (f.te && f.content_length.is_some()) || switching || tunnel
    {
        keep_alive = false;
    }
    if !switching {
        f.drop_kind(headers, Kind::Upgrade);
    }
    // RFC 9112 6.3 (3): an intermediary forwarding such a message first
    // removes Content-Length, so the client cannot frame it differently.
    if f.te && f.content_length.is_some() {
        f.drop_kind(headers, Kind::ContentLength);
    }

    Ok(Some(ResponseHead {
        head_len: b.head_len,
        status,
        version,
        framing,
        keep_alive,
        interim,
        switching,
        proxy_error: f.proxy_error,
        line_end: b.line_end,
        drop: f.drop,
    }))
}
