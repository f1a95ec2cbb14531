//! `x-request-id`: kept when the request carries one, generated when it
//! does not (or carries an empty one), and forwarded upstream, by both
//! sides of the proxy and for HTTP/1.1 and HTTP/2 alike. So an app's
//! request gets an id at its own proxy, the peer proxy keeps it, the
//! called app sees it, and both proxies' access log lines carry it.
//!
//! A generated id is a UUID v4 in text (`8-4-4-4-12` lowercase hex). Each
//! shard draws them from its own [`RequestIds`]: no lock, no syscall, a few
//! multiplications per request.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::http1::RequestHead;

/// The field's name, lowercase.
pub(crate) const NAME: &str = "x-request-id";
const H2_NAME: HeaderName = HeaderName::from_static(NAME);

/// A generated id: a UUID v4 in text.
pub(crate) type Generated = [u8; 36];

/// One shard's request id generator: a random 128-bit key (from the OS,
/// through std's hash keys) and a counter. Each half of an id is a
/// bijective mix of key half plus an odd multiple of the counter, so a
/// shard repeats no id within 2^64 requests, and shards and processes
/// differ by their keys.
#[derive(Debug)]
pub struct RequestIds {
    key: (u64, u64),
    n: Cell<u64>,
}

impl Default for RequestIds {
    fn default() -> Self {
        let draw = |salt: u64| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(salt);
            h.finish()
        };
        RequestIds {
            key: (draw(1), draw(2)),
            n: Cell::new(0),
        }
    }
}

impl RequestIds {
    /// The next id.
    pub fn next(&self) -> Generated {
        let n = self.n.get().wrapping_add(1);
        self.n.set(n);
        let hi = mix(self
            .key
            .0
            .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        let lo = mix(self
            .key
            .1
            .wrapping_add(n.wrapping_mul(0xD1B5_4A32_D192_ED03)));
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&hi.to_be_bytes());
        b[8..].copy_from_slice(&lo.to_be_bytes());
        // Version 4, variant 10 (RFC 9562).
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'-'; 36];
        let mut o = 0;
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                o += 1;
            }
            out[o] = HEX[usize::from(byte >> 4)];
            out[o + 1] = HEX[usize::from(byte & 0xf)];
            o += 2;
        }
        out
    }
}

/// SplitMix64's finalizer: a bijection on u64 that spreads every input bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// HTTP/1.1: the request's own id is kept (`None`); without one, a new id
/// goes into `extra` (the field lines the proxy adds to the forwarded
/// head, each ending in CRLF) and is returned. An empty field is left out.
pub(super) fn http1(
    head: &mut RequestHead,
    buf: &[u8],
    ids: &RequestIds,
    extra: &mut Vec<u8>,
) -> Option<Generated> {
    match head.header(buf, NAME) {
        Some(v) if !v.is_empty() => return None,
        Some(_) => {
            head.drop_header(buf, NAME);
        }
        None => {}
    }
    let id = ids.next();
    extra.extend_from_slice(NAME.as_bytes());
    extra.extend_from_slice(b": ");
    extra.extend_from_slice(&id);
    extra.extend_from_slice(b"\r\n");
    Some(id)
}

/// The id an HTTP/1.1 request goes upstream with: `generated`, or its own.
pub(super) fn of_http1<'a>(
    head: &RequestHead,
    buf: &'a [u8],
    generated: Option<&'a Generated>,
) -> &'a [u8] {
    match generated {
        Some(g) => g,
        None => head.header(buf, NAME).unwrap_or_default(),
    }
}

/// HTTP/2: the request's own id is kept; without one (or with an empty
/// one), a new one is set in `headers`, which every try, translation and
/// the access log then read.
pub(super) fn h2(headers: &mut HeaderMap, ids: &RequestIds) {
    if headers.get(&H2_NAME).is_some_and(|v| !v.is_empty()) {
        return;
    }
    // 36 hex digits and dashes: always a valid field value.
    if let Ok(v) = HeaderValue::from_bytes(&ids.next()) {
        headers.insert(H2_NAME, v);
    }
}

/// The id an HTTP/2 request goes upstream with (after [`h2`]).
pub(super) fn of_h2(headers: &HeaderMap) -> &[u8] {
    headers.get(&H2_NAME).map_or(&[], HeaderValue::as_bytes)
}

#[cfg(test)]
mod tests;
