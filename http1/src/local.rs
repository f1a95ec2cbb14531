//! Responses the proxy writes itself (errors), and reason phrases.

use std::io::Write;

/// Appends a complete error response to `out`:
///
/// ```text
/// HTTP/1.1 <status> <reason-phrase>\r\n
/// content-type: text/plain\r\n
/// coremesh-error: <error>\r\n
/// content-length: N\r\n
/// [connection: close\r\n]
/// \r\n
/// coremesh: <error>\n
/// ```
///
/// Control characters in `error` are written as spaces so that it can never
/// end the field line early (response splitting).
pub fn write_error_response(status: u16, error: &str, close: bool, out: &mut Vec<u8>) {
    let body_len = b"coremesh: ".len() + error.len() + 1;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    out.extend_from_slice(b"content-type: text/plain\r\ncoremesh-error: ");
    push_sanitized(out, error);
    let _ = write!(out, "\r\ncontent-length: {body_len}\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\ncoremesh: ");
    push_sanitized(out, error);
    out.push(b'\n');
}

/// Appends the answer to a probe of this proxy (see `forward::PROBE_PATH`):
/// 200 while its app is healthy or unchecked, 503 while it is not, with a
/// one-line JSON body saying which.
pub fn write_probe_response(app_healthy: Option<bool>, close: bool, out: &mut Vec<u8>) {
    let (status, body) = match app_healthy {
        Some(true) => (200, "{\"app\":\"healthy\"}\n"),
        Some(false) => (503, "{\"app\":\"unhealthy\"}\n"),
        None => (200, "{\"app\":\"unchecked\"}\n"),
    };
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        reason_phrase(status),
        body.len()
    );
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

fn push_sanitized(out: &mut Vec<u8>, s: &str) {
    out.extend(
        s.bytes()
            .map(|b| if b < 0x20 || b == 0x7f { b' ' } else { b }),
    );
}

/// The canonical reason phrase of a status code (RFC 9110 15), or a phrase
/// for its class when the code is not registered there.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        508 => "Loop Detected",
        505 => "HTTP Version Not Supported",
        _ => match status / 100 {
            1 => "Informational",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Unknown",
        },
    }
}

#[cfg(test)]
mod tests;
