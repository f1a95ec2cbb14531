//! Finding the end of a head and checking its line structure.
//!
//! httparse accepts a lone LF as a line end and leaves obs-fold detection to
//! configuration; a proxy must not (RFC 9112 2.2: a bare CR is an error, and a
//! recipient that treats LF alone as a line end while the upstream does not is
//! the classic request-smuggling split). So the head is scanned here first:
//! every line must end in CRLF, no line after the start line may begin with
//! whitespace, and the limits are applied, with the same answer for any prefix
//! of the input (a prefix gives `Ok(None)` or a limit error, never a different
//! verdict).

use super::{Limits, ParseError};

pub(crate) const BARE_LF: ParseError = ParseError::bad("bare LF in head (line ends must be CRLF)");
pub(crate) const BARE_CR: ParseError = ParseError::bad("bare CR in head");
pub(crate) const OBS_FOLD: ParseError =
    ParseError::bad("field line starts with whitespace (obs-fold)");
pub(crate) const LINE_TOO_LONG: ParseError = ParseError {
    status: 414,
    reason: "request line too long",
};
pub(crate) const HEAD_TOO_LARGE: ParseError = ParseError {
    status: 431,
    reason: "request head too large",
};

/// Where the parts of a complete head are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeadBounds {
    /// First byte of the start line (after skipped empty lines).
    pub start: usize,
    /// Index of the CR ending the start line.
    pub line_end: usize,
    /// One past the LF of the blank line.
    pub head_len: usize,
}

/// Scans `buf` for a complete head within the limits.
pub(crate) fn scan_head(buf: &[u8], limits: &Limits) -> Result<Option<HeadBounds>, ParseError> {
    let hay = &buf[..buf.len().min(limits.max_head_bytes)];

    // RFC 9112 2.2: a server SHOULD ignore at least one empty line before the
    // request line (clients used to send CRLF after a POST body).
    let mut start = 0;
    while hay.len() >= start + 2 && &hay[start..start + 2] == b"\r\n" {
        start += 2;
    }

    let mut line_start = start;
    let mut first_line_end = None;
    let mut pos = start;
    while let Some(k) = find_line_byte(&hay[pos..]) {
        let j = pos + k;
        if hay[j] == b'\n' {
            // Every CR consumes its LF below, so this LF stands alone.
            return Err(BARE_LF);
        }
        match hay.get(j + 1) {
            None => break, // CR at the end: wait for the LF
            Some(b'\n') => {}
            Some(_) => return Err(BARE_CR),
        }
        match first_line_end {
            None => {
                if j + 2 - start > limits.max_request_line {
                    return Err(LINE_TOO_LONG);
                }
                first_line_end = Some(j);
            }
            Some(line_end) if j == line_start => {
                return Ok(Some(HeadBounds {
                    start,
                    line_end,
                    head_len: j + 2,
                }));
            }
            Some(_) => {}
        }
        line_start = j + 2;
        pos = line_start;
        // RFC 9112 2.2 and 5.2: whitespace before the first field line or an
        // obs-fold continuation line is rejected.
        if let Some(b' ' | b'\t') = hay.get(line_start) {
            return Err(OBS_FOLD);
        }
    }

    if first_line_end.is_none() && hay.len() - start >= limits.max_request_line {
        return Err(LINE_TOO_LONG);
    }
    if buf.len() >= limits.max_head_bytes {
        return Err(HEAD_TOO_LARGE);
    }
    Ok(None)
}

/// Index of the first CR or LF, eight bytes at a time (a head is mostly long
/// lines of visible characters; this halves the scan cost against a byte loop).
pub(crate) fn find_line_byte(s: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const CR: u64 = LO * b'\r' as u64;
    const LF: u64 = LO * b'\n' as u64;
    let mut chunks = s.chunks_exact(8);
    let mut base = 0;
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let a = w ^ CR;
        let b = w ^ LF;
        // Classic "has a zero byte": exact for the lowest zero byte, which is
        // all trailing_zeros looks at.
        let z = (a.wrapping_sub(LO) & !a & HI) | (b.wrapping_sub(LO) & !b & HI);
        if z != 0 {
            return Some(base + (z.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == b'\r' || c == b'\n')
        .map(|p| base + p)
}

/// One bit per field line (index in header order), for the lines to leave out
/// when forwarding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LineMask([u64; 8]);

impl LineMask {
    pub fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    pub fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    pub fn any(&self) -> bool {
        self.0.iter().any(|&w| w != 0)
    }
}

/// Splits a field value on commas (RFC 9110 5.6.1), trimming OWS around each
/// element. Empty elements are yielded (as empty slices) so callers can decide.
pub(crate) fn list_elements(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim_ows)
}

pub(crate) fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// RFC 9110 5.6.2 tchar.
pub(crate) fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+'
        | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
}

pub(crate) fn is_token(v: &[u8]) -> bool {
    !v.is_empty() && v.iter().all(|&b| is_tchar(b))
}

/// RFC 9110 5.5 field-vchar, SP and HTAB (obs-text allowed).
pub(crate) fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

#[cfg(test)]
mod tests;
