//! Validating a chunked body while it is relayed raw (RFC 9112 7.1).
//!
//! ```text
//! chunked-body = *chunk last-chunk trailer-section CRLF
//! chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! last-chunk   = 1*("0") [ chunk-ext ] CRLF
//! ```
//!
//! The decoder is a byte-at-a-time state machine outside chunk data and
//! skips chunk data in bulk, so feeding one byte at a time gives the same
//! result as feeding everything at once. It keeps no bytes: the caller
//! forwards exactly what `feed` reports as consumed. The one exception is
//! opt-in: a decoder made with [`ChunkedDecoder::keeping_trailers`] copies
//! the trailer section (at most 64 KiB) for a caller that carries it into
//! another protocol, where raw relaying is not possible.

use super::scan::{is_tchar, is_value_byte};
use super::trailers::TrailerFields;
use super::ParseError;

/// Longest chunk-size line (size, extensions, CRLF). Extensions are allowed
/// but bounded so a peer cannot make us scan without forwarding progress.
const MAX_SIZE_LINE: u32 = 4 * 1024;
/// Longest trailer section, final CRLF included.
const MAX_TRAILERS: u32 = 64 * 1024;

const BAD_SIZE: ParseError = ParseError::bad("invalid chunk size");
const SIZE_TOO_LONG: ParseError = ParseError::bad("chunk size longer than 16 hex digits");
const BAD_EXT: ParseError = ParseError::bad("invalid chunk extension");
const LINE_TOO_LONG: ParseError = ParseError::bad("chunk size line longer than 4 KiB");
const BAD_LINE_END: ParseError = ParseError::bad("chunk line not ended by CRLF");
const NO_DATA_CRLF: ParseError = ParseError::bad("chunk data not followed by CRLF");
const BAD_TRAILER: ParseError = ParseError::bad("invalid trailer field");
const TRAILER_FOLD: ParseError = ParseError::bad("obs-fold in trailer section");
const TRAILERS_TOO_LONG: ParseError = ParseError::bad("trailer section longer than 64 KiB");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of the chunk size (`digits` read so far).
    Size,
    /// BWS after the size, before `;`.
    SizeWs,
    /// Chunk extensions, up to the CR.
    Ext,
    /// After the CR of the size line.
    SizeLf,
    /// Chunk data, `remaining` bytes to go.
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// After the CR of the final blank line.
    EndLf,
    Done,
    Failed(ParseError),
}

/// Validates a chunked body while it is relayed raw.
///
/// [`feed`](Self::feed) returns how many bytes of `data` belong to this body.
/// It consumes everything until the body ends; once the last chunk, the
/// trailer section and the final CRLF are consumed, [`is_done`](Self::is_done)
/// is true and any bytes after them (the next pipelined message) are not
/// consumed. After the end `feed` returns `Ok(0)`; after an error it returns
/// the same error again. Errors have status 400 (the caller answers 502 for
/// an upstream body).
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Chunk size while reading it, then the data still to come.
    remaining: u64,
    digits: u8,
    /// Bytes of the current size line, or of the trailer section.
    line: u32,
    /// The trailer section's field lines (each with its CRLF), when kept.
    trailers: Option<Vec<u8>>,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size,
            remaining: 0,
            digits: 0,
            line: 0,
            trailers: None,
        }
    }

    /// A decoder that also keeps the trailer section's field lines, read
    /// back with [`trailers`](Self::trailers) once the body is done.
    pub fn keeping_trailers() -> Self {
        ChunkedDecoder {
            trailers: Some(Vec::new()),
            ..Self::new()
        }
    }

    /// The trailer fields of a finished body, as sent (nothing prohibited
    /// is removed: see [`is_prohibited_trailer`](crate::is_prohibited_trailer)).
    /// Empty before the body is done, or when the decoder was not made with
    /// [`keeping_trailers`](Self::keeping_trailers).
    pub fn trailers(&self) -> TrailerFields<'_> {
        let kept = match (&self.trailers, self.state) {
            (Some(t), State::Done) => t.as_slice(),
            _ => &[],
        };
        TrailerFields::new(kept)
    }

    /// The whole body, trailers and final CRLF included, has been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    pub fn feed(&mut self, data: &[u8]) -> Result<usize, ParseError> {
        self.feed_with(data, |_| {})
    }

    /// As [`ChunkedDecoder::feed`], also reporting each span of chunk data
    /// (offsets into `data`), for a caller that must de-chunk the body.
    pub fn feed_with(
        &mut self,
        data: &[u8],
        mut on_data: impl FnMut(std::ops::Range<usize>),
    ) -> Result<usize, ParseError> {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Done => return Ok(i),
                State::Failed(e) => return Err(e),
                State::Data => {
                    let avail = (data.len() - i) as u64;
                    let n = avail.min(self.remaining);
                    // n <= data.len() - i, so it fits in usize.
                    if n > 0 {
                        on_data(i..i + n as usize);
                    }
                    i += n as usize;
                    self.remaining -= n;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                }
                _ => {
                    if let Err(e) = self.step(data[i]) {
                        self.state = State::Failed(e);
                        return Err(e);
                    }
                    i += 1;
                }
            }
        }
        match self.state {
            State::Failed(e) => Err(e),
            _ => Ok(i),
        }
    }

    /// One byte outside chunk data.
    fn step(&mut self, b: u8) -> Result<(), ParseError> {
        match self.state {
            State::Size | State::SizeWs | State::Ext => {
                self.line += 1;
                if self.line > MAX_SIZE_LINE {
                    return Err(LINE_TOO_LONG);
                }
            }
            State::TrailerStart
            | State::TrailerName
            | State::TrailerValue
            | State::TrailerLf
            | State::EndLf => {
                self.line += 1;
                if self.line > MAX_TRAILERS {
                    return Err(TRAILERS_TOO_LONG);
                }
            }
            _ => {}
        }
        let before = self.state;
        self.state = self.next_state(b)?;
        if let Some(kept) = &mut self.trailers {
            // Field lines only: not the CRLF that ends the section.
            let field = matches!(
                before,
                State::TrailerName | State::TrailerValue | State::TrailerLf
            ) || (before == State::TrailerStart && self.state == State::TrailerName);
            if field {
                kept.push(b);
            }
        }
        Ok(())
    }

    /// The state after byte `b` (outside chunk data).
    fn next_state(&mut self, b: u8) -> Result<State, ParseError> {
        Ok(match (self.state, b) {
            (State::Size, _) if b.is_ascii_hexdigit() => {
                if self.digits == 16 {
                    return Err(SIZE_TOO_LONG);
                }
                self.digits += 1;
                // 16 hex digits fit in a u64, so this cannot overflow.
                self.remaining = (self.remaining << 4) | u64::from(hex_value(b));
                State::Size
            }
            (State::Size, _) if self.digits == 0 => return Err(BAD_SIZE),
            (State::Size | State::SizeWs, b' ' | b'\t') => State::SizeWs,
            (State::Size | State::SizeWs, b';') => State::Ext,
            (State::Size | State::Ext, b'\r') => State::SizeLf,
            (State::Size, _) => return Err(BAD_SIZE),
            (State::SizeWs, _) => return Err(BAD_EXT),
            // chunk-ext is tokens, `=`, `;`, BWS and quoted strings; none of
            // them contains a control character other than HTAB, so a byte
            // check bounds it without a full grammar (the upstream parses it).
            (State::Ext, _) if is_value_byte(b) => State::Ext,
            (State::Ext, b'\n') => return Err(BAD_LINE_END),
            (State::Ext, _) => return Err(BAD_EXT),
            (State::SizeLf, b'\n') => {
                if self.remaining == 0 {
                    self.line = 0;
                    State::TrailerStart
                } else {
                    State::Data
                }
            }
            (State::SizeLf, _) => return Err(BAD_LINE_END),
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataCr, _) => return Err(NO_DATA_CRLF),
            (State::DataLf, b'\n') => {
                self.digits = 0;
                self.line = 0;
                State::Size
            }
            (State::DataLf, _) => return Err(NO_DATA_CRLF),
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::TrailerStart, b' ' | b'\t') => return Err(TRAILER_FOLD),
            (State::TrailerStart | State::TrailerName, _) if is_tchar(b) => State::TrailerName,
            (State::TrailerName, b':') => State::TrailerValue,
            (State::TrailerStart | State::TrailerName, b'\n') => return Err(BAD_LINE_END),
            (State::TrailerStart | State::TrailerName, _) => return Err(BAD_TRAILER),
            (State::TrailerValue, b'\r') => State::TrailerLf,
            (State::TrailerValue, _) if is_value_byte(b) => State::TrailerValue,
            (State::TrailerValue, b'\n') => return Err(BAD_LINE_END),
            (State::TrailerValue, _) => return Err(BAD_TRAILER),
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::TrailerLf, _) => return Err(BAD_LINE_END),
            (State::EndLf, b'\n') => State::Done,
            (State::EndLf, _) => return Err(BAD_LINE_END),
            (State::Data | State::Done | State::Failed(_), _) => {
                unreachable!("handled in feed")
            }
        })
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}
