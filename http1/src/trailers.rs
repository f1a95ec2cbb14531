//! The trailer section of a chunked body (RFC 9112 7.1.2) as fields, and
//! which fields may travel as trailers at all (RFC 9110 6.5.1), for a
//! caller that carries trailers into another protocol (HTTP/2 trailers).
//!
//! Raw relaying passes the section on untouched; only translation reads it.

use super::scan::trim_ows;

/// The fields of a trailer section the [`ChunkedDecoder`](crate::ChunkedDecoder)
/// kept: `(name, value)` in the order sent, the name as sent, the value
/// without its surrounding whitespace. The decoder has checked the syntax
/// (token names, no obs-fold, no control bytes), so nothing here fails.
#[derive(Debug, Clone)]
pub struct TrailerFields<'a> {
    rest: &'a [u8],
}

impl<'a> TrailerFields<'a> {
    pub(crate) fn new(kept: &'a [u8]) -> Self {
        TrailerFields { rest: kept }
    }
}

impl<'a> Iterator for TrailerFields<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        // Each kept line is `name ":" value CRLF`, and neither part holds a
        // CR or a LF (the decoder refused them).
        let end = self.rest.iter().position(|&b| b == b'\r')?;
        let line = &self.rest[..end];
        self.rest = self.rest.get(end + 2..).unwrap_or(&[]);
        let colon = line.iter().position(|&b| b == b':')?;
        Some((&line[..colon], trim_ows(&line[colon + 1..])))
    }
}

/// Whether a field must not be sent as a trailer, whatever the sender put
/// there (matched case-insensitively).
///
/// RFC 9110 6.5.1 allows in trailers only fields whose definition permits
/// it, and names what cannot be: fields that frame the message or manage
/// the connection, route it, authenticate it, modify the request, control
/// the response, or describe the content's format. This lists the fields
/// of those kinds that HTTP defines; an unknown field is not prohibited
/// (the recipient decides whether to use it, RFC 9110 6.5.2). HTTP/2 also
/// refuses the connection-specific ones outright (RFC 9113 8.2.2).
pub fn is_prohibited_trailer(name: &[u8]) -> bool {
    const PROHIBITED: [&[u8]; 30] = [
        // Framing and connection management (RFC 9112 6, RFC 9110 7.6).
        b"content-length",
        b"transfer-encoding",
        b"trailer",
        b"te",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"upgrade",
        // Routing (RFC 9110 7.2, 7.6.2).
        b"host",
        b"max-forwards",
        // Authentication and state (RFC 9110 11, RFC 6265).
        b"authorization",
        b"proxy-authorization",
        b"www-authenticate",
        b"proxy-authenticate",
        b"cookie",
        b"set-cookie",
        // Request modifiers (RFC 9110 10.1, 13, 14.2; RFC 9111 5.2).
        b"expect",
        b"range",
        b"if-match",
        b"if-none-match",
        b"if-modified-since",
        b"if-unmodified-since",
        b"if-range",
        b"cache-control",
        // Response controls (RFC 9110 10.2).
        b"location",
        b"retry-after",
        b"vary",
        // The content's format (RFC 9110 8.3, 8.4, 14.4).
        b"content-type",
        b"content-encoding",
        b"content-range",
    ];
    PROHIBITED.iter().any(|p| name.eq_ignore_ascii_case(p))
}
