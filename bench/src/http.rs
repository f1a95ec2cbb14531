//! Minimal HTTP/1.1 framing for the load generator and the origin, sans-I/O.
//!
//! This is deliberately not the proxy's codec: the generator must stay cheap
//! and independent of the thing it measures. It understands exactly what a
//! benchmark needs: the status code, `Content-Length`, `Transfer-Encoding:
//! chunked`, `Connection` and read-until-close bodies. Nothing here allocates;
//! the caller owns the buffers and feeds bytes in.

use std::fmt;

/// Why a response (or request) could not be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The status line or a header line is malformed.
    BadHead,
    /// A `Content-Length` value is not a number, or two disagree.
    BadLength,
    /// A chunk-size line is malformed.
    BadChunk,
    /// The connection closed before the message was complete.
    Truncated,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameError::BadHead => "malformed head",
            FrameError::BadLength => "bad content-length",
            FrameError::BadChunk => "bad chunk size",
            FrameError::Truncated => "connection closed mid-message",
        })
    }
}

impl std::error::Error for FrameError {}

/// Byte offset just past the blank line ending a head, if `buf` holds one.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    // Heads here are ~100 bytes; a scan for LF and a look around it is as
    // fast as anything cleverer and needs no dependency.
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// Iterates the header lines of a head (after the start line), as
/// `(name, value)` with the value trimmed of optional whitespace.
fn header_lines(head: &[u8]) -> impl Iterator<Item = Result<(&[u8], &[u8]), FrameError>> {
    head.split(|&b| b == b'\n')
        .skip(1)
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .map(|line| {
            let colon = line
                .iter()
                .position(|&b| b == b':')
                .ok_or(FrameError::BadHead)?;
            Ok((&line[..colon], trim(&line[colon + 1..])))
        })
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

/// Does a comma-separated header value contain `token` (case-insensitive)?
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// HTTP/1.0-style: the body runs until the server closes.
    UntilClose,
}

/// The parts of a response head the generator acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub head_len: usize,
    pub framing: Framing,
    pub keep_alive: bool,
    /// The [`INSTANCE_HEADER`] value: which origin instance answered.
    pub instance: Option<Tag>,
}

/// The response header in which the bench origin names its instance
/// (`coremesh-bench origin --instance NAME`), so a load run can tell which
/// endpoint answered each request.
pub const INSTANCE_HEADER: &str = "x-instance";

/// A short header value kept inline (no allocation per response): at most
/// [`Tag::MAX`] bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag {
    len: u8,
    bytes: [u8; Tag::MAX],
}

impl Tag {
    pub const MAX: usize = 31;

    /// `None` when `value` is longer than [`Tag::MAX`].
    pub fn new(value: &[u8]) -> Option<Tag> {
        if value.len() > Tag::MAX {
            return None;
        }
        let mut bytes = [0u8; Tag::MAX];
        bytes[..value.len()].copy_from_slice(value);
        Some(Tag {
            len: value.len() as u8,
            bytes,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// Parses a response head from the start of `buf`; `Ok(None)` if incomplete.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<ResponseHead>, FrameError> {
    let Some(head_len) = head_end(buf) else {
        return Ok(None);
    };
    let head = &buf[..head_len];
    // "HTTP/1.x SSS ..."
    if head.len() < 12 || &head[..7] != b"HTTP/1." || head[8] != b' ' {
        return Err(FrameError::BadHead);
    }
    let http11 = head[7] == b'1';
    let status = parse_u64(&head[9..12]).ok_or(FrameError::BadHead)? as u16;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut keep_alive = http11;
    let mut instance = None;
    for h in header_lines(head) {
        let (name, value) = h?;
        if name.eq_ignore_ascii_case(INSTANCE_HEADER.as_bytes()) {
            instance = Tag::new(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_u64(value).ok_or(FrameError::BadLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(FrameError::BadLength);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // RFC 9112 6.3: chunked must be the final coding to frame the body.
            let last = value.rsplit(|&b| b == b',').next().map(trim).unwrap_or(b"");
            chunked = last.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            if has_token(value, b"close") {
                keep_alive = false;
            } else if has_token(value, b"keep-alive") {
                keep_alive = true;
            }
        }
    }
    // RFC 9112 6.3: 1xx, 204 and 304 have no body; Transfer-Encoding wins over
    // Content-Length.
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    Ok(Some(ResponseHead {
        status,
        head_len,
        framing,
        keep_alive,
        instance,
    }))
}

/// Chunked body decoder state (RFC 9112 7.1). Counts bytes; keeps none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading hex digits of a chunk size (`any` once one digit was seen).
    Size {
        size: u64,
        any: bool,
    },
    /// Skipping a chunk extension up to LF.
    SizeLine {
        size: u64,
    },
    Data {
        left: u64,
    },
    /// After data: expecting CRLF.
    DataEnd,
    /// At the start of a trailer line (or the final blank line).
    TrailerStart,
    /// Inside a trailer field line, skipping to LF.
    Trailer,
    /// Saw CR of the final blank line.
    FinalLf,
    Done,
}

/// Body progress of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

/// What [`ResponseReader::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// More bytes are needed.
    More,
    /// A whole response was read.
    Done(Response),
}

/// A complete response, as the generator accounts for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub keep_alive: bool,
}

/// Incremental response reader: feed it what arrived, it says how much it
/// consumed and whether the response is complete. Bytes of the head are not
/// consumed until the head is whole, so the caller keeps them buffered; body
/// bytes are always consumed, so a large body streams through one buffer.
#[derive(Debug, Default, Clone)]
pub struct ResponseReader {
    head: Option<(ResponseHead, Body)>,
    /// The instance named by the last response head read.
    instance: Option<Tag>,
}

impl ResponseReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget any partial response (after a connection error).
    pub fn reset(&mut self) {
        self.head = None;
        self.instance = None;
    }

    /// The [`INSTANCE_HEADER`] of the last response head read (the
    /// response just completed, once [`Step::Done`] came).
    pub fn instance(&self) -> Option<Tag> {
        self.instance
    }

    /// Feed the unconsumed bytes; returns how many were consumed and whether a
    /// response completed. Bytes after a complete response are not consumed.
    pub fn feed(&mut self, data: &[u8]) -> Result<(usize, Step), FrameError> {
        let mut used = 0;
        loop {
            let (head, body) = match &mut self.head {
                Some((h, b)) => (*h, b),
                None => {
                    let Some(head) = parse_response_head(&data[used..])? else {
                        return Ok((used, Step::More));
                    };
                    used += head.head_len;
                    self.instance = head.instance;
                    let body = match head.framing {
                        Framing::Length(n) => Body::Length(n),
                        Framing::Chunked => Body::Chunked(Chunk::Size {
                            size: 0,
                            any: false,
                        }),
                        Framing::UntilClose => Body::UntilClose,
                    };
                    let (h, b) = self.head.insert((head, body));
                    (*h, b)
                }
            };
            let rest = &data[used..];
            let done = match body {
                Body::Length(left) => {
                    let take = (*left).min(rest.len() as u64);
                    *left -= take;
                    used += take as usize;
                    *left == 0
                }
                Body::UntilClose => {
                    used += rest.len();
                    false
                }
                Body::Chunked(state) => {
                    let n = decode_chunked(state, rest)?;
                    used += n;
                    *state == Chunk::Done
                }
            };
            if !done {
                return Ok((used, Step::More));
            }
            self.head = None;
            if (100..200).contains(&head.status) && head.status != 101 {
                // Interim response (100 Continue, 103): the real one follows.
                continue;
            }
            let resp = Response {
                status: head.status,
                keep_alive: head.keep_alive,
            };
            return Ok((used, Step::Done(resp)));
        }
    }

    /// The peer closed the connection: completes a read-until-close body.
    pub fn feed_eof(&mut self) -> Result<Response, FrameError> {
        match self.head.take() {
            Some((h, Body::UntilClose)) => Ok(Response {
                status: h.status,
                keep_alive: false,
            }),
            _ => Err(FrameError::Truncated),
        }
    }

    /// Is a response partly read?
    pub fn in_progress(&self) -> bool {
        self.head.is_some()
    }
}

/// Runs the chunked state machine over `data`; returns bytes consumed (all of
/// them, or up to the end of the body).
fn decode_chunked(state: &mut Chunk, data: &[u8]) -> Result<usize, FrameError> {
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        match *state {
            Chunk::Size { size, any } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    if size > (u64::MAX >> 4) {
                        return Err(FrameError::BadChunk);
                    }
                    *state = Chunk::Size {
                        size: size << 4 | d,
                        any: true,
                    };
                }
                b';' | b' ' | b'\t' | b'\r' if any => *state = Chunk::SizeLine { size },
                b'\n' if any => *state = chunk_after_size(size),
                _ => return Err(FrameError::BadChunk),
            },
            Chunk::SizeLine { size } => {
                if b == b'\n' {
                    *state = chunk_after_size(size);
                }
            }
            Chunk::Data { left } => {
                let take = left.min((data.len() - i) as u64);
                let left = left - take;
                i += take as usize;
                *state = if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data { left }
                };
                continue;
            }
            Chunk::DataEnd => match b {
                b'\r' => {}
                b'\n' => {
                    *state = Chunk::Size {
                        size: 0,
                        any: false,
                    }
                }
                _ => return Err(FrameError::BadChunk),
            },
            Chunk::TrailerStart => match b {
                b'\r' => *state = Chunk::FinalLf,
                b'\n' => {
                    *state = Chunk::Done;
                    return Ok(i + 1);
                }
                _ => *state = Chunk::Trailer,
            },
            Chunk::Trailer => {
                if b == b'\n' {
                    *state = Chunk::TrailerStart;
                }
            }
            Chunk::FinalLf => {
                if b != b'\n' {
                    return Err(FrameError::BadChunk);
                }
                *state = Chunk::Done;
                return Ok(i + 1);
            }
            Chunk::Done => return Ok(i),
        }
        i += 1;
    }
    Ok(i)
}

fn chunk_after_size(size: u64) -> Chunk {
    if size == 0 {
        Chunk::TrailerStart
    } else {
        Chunk::Data { left: size }
    }
}

/// Builds the bytes of the one request a load run sends over and over.
pub fn build_request(
    path: &str,
    host: &str,
    headers: &[(String, String)],
    body_size: usize,
    close: bool,
) -> Vec<u8> {
    let method = if body_size > 0 { "POST" } else { "GET" };
    let mut r = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        r.push_str(&format!("Host: {host}\r\n"));
    }
    for (n, v) in headers {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    if body_size > 0 {
        r.push_str(&format!("Content-Length: {body_size}\r\n"));
    }
    if close {
        r.push_str("Connection: close\r\n");
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.resize(bytes.len() + body_size, b'x');
    bytes
}

/// What the origin needs from a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead {
    pub head_len: usize,
    /// Request body length (chunked request bodies are refused).
    pub body_len: u64,
    pub keep_alive: bool,
    /// `N` from a `/size/N` path: the response body size asked for.
    pub size: Option<usize>,
}

/// Parses a request head from the start of `buf`; `Ok(None)` if incomplete.
pub fn parse_request_head(buf: &[u8]) -> Result<Option<RequestHead>, FrameError> {
    let Some(head_len) = head_end(buf) else {
        return Ok(None);
    };
    let head = &buf[..head_len];
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(_method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(FrameError::BadHead);
    };
    let mut keep_alive = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        _ => return Err(FrameError::BadHead),
    };
    // Absolute form ("http://host/size/16") as sent to a forward proxy: skip
    // to the path.
    let path = match target.windows(3).position(|w| w == b"://") {
        Some(p) => {
            let after = &target[p + 3..];
            &after[after.iter().position(|&b| b == b'/').unwrap_or(after.len())..]
        }
        None => target,
    };
    let size = path
        .strip_prefix(b"/size/")
        .map(|s| &s[..s.iter().position(|&b| b == b'?').unwrap_or(s.len())])
        .and_then(parse_u64)
        .map(|n| n as usize);
    let mut body_len = 0;
    for h in header_lines(head) {
        let (name, value) = h?;
        if name.eq_ignore_ascii_case(b"content-length") {
            body_len = parse_u64(value).ok_or(FrameError::BadLength)?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(FrameError::BadChunk);
        } else if name.eq_ignore_ascii_case(b"connection") {
            if has_token(value, b"close") {
                keep_alive = false;
            } else if has_token(value, b"keep-alive") {
                keep_alive = true;
            }
        }
    }
    Ok(Some(RequestHead {
        head_len,
        body_len,
        keep_alive,
        size,
    }))
}

/// A full response with a `len`-byte body, ready to write as is.
pub fn build_response(len: usize, close: bool) -> Vec<u8> {
    build_response_from(len, close, None)
}

/// [`build_response`], naming the origin `instance` in an
/// [`INSTANCE_HEADER`] when given.
pub fn build_response_from(len: usize, close: bool, instance: Option<&str>) -> Vec<u8> {
    let conn = if close { "Connection: close\r\n" } else { "" };
    let inst = instance.map_or(String::new(), |i| format!("{INSTANCE_HEADER}: {i}\r\n"));
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n{inst}{conn}\r\n"
    );
    let mut v = head.into_bytes();
    v.resize(v.len() + len, b'x');
    v
}

#[cfg(test)]
mod tests;
