//! `host[:port]` (RFC 3986 3.2.2 and 3.2.3, as used by RFC 9110 4.2.1 and 7.2).

use super::ParseError;

const BAD_PORT: ParseError = ParseError::bad("invalid port in authority");
const BAD_HOST: ParseError = ParseError::bad("invalid host in authority");

/// Splits `host:port`, `[v6]:port` or `host` into the host (without brackets)
/// and the port. An empty port (`host:`, allowed by RFC 3986) is `None`.
/// Errors: a port that is not 1-5 digits up to 65535, an unclosed `[`, or
/// anything but `:port` after `]`. The host is not validated here.
pub fn split_authority(a: &[u8]) -> Result<(&[u8], Option<u16>), ParseError> {
    let (host, rest) = if let Some(inner) = a.strip_prefix(b"[") {
        let close = inner.iter().position(|&b| b == b']').ok_or(BAD_HOST)?;
        (&inner[..close], &inner[close + 1..])
    } else {
        match a.iter().position(|&b| b == b':') {
            Some(i) => (&a[..i], &a[i..]),
            None => (a, &a[a.len()..]),
        }
    };
    let port = match rest {
        [] | [b':'] => None,
        [b':', digits @ ..] => Some(parse_port(digits)?),
        _ => return Err(BAD_HOST),
    };
    Ok((host, port))
}

fn parse_port(d: &[u8]) -> Result<u16, ParseError> {
    if d.len() > 5 || !d.iter().all(u8::is_ascii_digit) {
        return Err(BAD_PORT);
    }
    let v = d.iter().fold(0u32, |v, &b| v * 10 + u32::from(b - b'0'));
    u16::try_from(v).map_err(|_| BAD_PORT)
}

/// Full syntax check of an authority from a request (target or Host field):
/// a non-empty reg-name, IPv4 address or IP-literal, and an optional port
/// (required when `need_port`, as for CONNECT, RFC 9112 3.2.3). Userinfo is
/// rejected (RFC 9110 4.2.4: treat its presence as an error).
pub(crate) fn validate_authority(a: &[u8], need_port: bool) -> Result<(), ParseError> {
    if a.contains(&b'@') {
        return Err(ParseError::bad("userinfo in authority"));
    }
    let (host, port) = split_authority(a)?;
    if need_port && port.is_none() {
        return Err(ParseError::bad("CONNECT target must be host:port"));
    }
    if host.is_empty() {
        return Err(BAD_HOST);
    }
    let ok = if a[0] == b'[' {
        // IPv6address or IPvFuture: hex digits, ':' and '.', or the
        // unreserved/sub-delims of IPvFuture.
        host.iter()
            .all(|&b| b == b':' || is_unreserved(b) || is_sub_delim(b))
    } else {
        reg_name_ok(host)
    };
    if ok {
        Ok(())
    } else {
        Err(BAD_HOST)
    }
}

fn reg_name_ok(h: &[u8]) -> bool {
    let mut i = 0;
    while i < h.len() {
        let b = h[i];
        if b == b'%' {
            if !(i + 2 < h.len() && h[i + 1].is_ascii_hexdigit() && h[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
            continue;
        }
        if !(is_unreserved(b) || is_sub_delim(b)) {
            return false;
        }
        i += 1;
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

#[cfg(test)]
mod tests;
