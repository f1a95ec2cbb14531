//! gRPC over HTTP/2, as much as a benchmark needs, without generated code
//! and sans-I/O: the 5-byte length-prefixed message framing, the one
//! unary method the origin serves and the load generator calls, and the
//! protobuf bytes of its request and reply written by hand.
//!
//! The method is `/coremesh.bench.Bench/Unary`:
//!
//! ```text
//! message Request { uint32 size = 1; }   // reply payload size asked for
//! message Reply   { bytes payload = 1; }
//! ```
//!
//! A call is a POST with `content-type: application/grpc` and `te:
//! trailers` whose body is one length-prefixed message; the answer is HTTP
//! 200, one length-prefixed `Reply`, and `grpc-status: 0` in the trailers.

/// The method's path.
pub const METHOD: &str = "/coremesh.bench.Bench/Unary";
/// `content-type` of a gRPC request and response.
pub const CONTENT_TYPE: &str = "application/grpc";
/// gRPC status codes the origin answers with.
pub const OK: u32 = 0;
pub const INTERNAL: u32 = 13;
pub const UNIMPLEMENTED: u32 = 12;

/// Why a gRPC body could not be read as one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GrpcFrameError {
    #[error("shorter than the 5-byte message prefix")]
    Short,
    #[error("compressed flag set (no compression was negotiated)")]
    Compressed,
    #[error("message length {declared} but {got} bytes follow the prefix")]
    Length { declared: usize, got: usize },
    #[error("not the expected protobuf message")]
    Protobuf,
}

/// One message in the length-prefixed framing: flag 0 (uncompressed),
/// 4-byte big-endian length, the message.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + message.len());
    v.push(0);
    v.extend_from_slice(&(message.len() as u32).to_be_bytes());
    v.extend_from_slice(message);
    v
}

/// The message of a body that holds exactly one length-prefixed message.
pub fn unframe(body: &[u8]) -> Result<&[u8], GrpcFrameError> {
    let [flag, a, b, c, d, rest @ ..] = body else {
        return Err(GrpcFrameError::Short);
    };
    if *flag != 0 {
        return Err(GrpcFrameError::Compressed);
    }
    let declared = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    if declared != rest.len() {
        return Err(GrpcFrameError::Length {
            declared,
            got: rest.len(),
        });
    }
    Ok(rest)
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn read_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut n = 0u64;
    for (i, b) in buf.iter().enumerate().take(10) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((n, i + 1));
        }
    }
    None
}

/// `Request { size }` as protobuf (field 1, varint).
pub fn request(size: u32) -> Vec<u8> {
    let mut v = vec![0x08];
    varint(u64::from(size), &mut v);
    v
}

/// The `size` of a `Request`; an empty message is size 0.
pub fn parse_request(msg: &[u8]) -> Result<u32, GrpcFrameError> {
    match msg {
        [] => Ok(0),
        [0x08, rest @ ..] => match read_varint(rest) {
            Some((n, used)) if used == rest.len() => {
                u32::try_from(n).map_err(|_| GrpcFrameError::Protobuf)
            }
            _ => Err(GrpcFrameError::Protobuf),
        },
        _ => Err(GrpcFrameError::Protobuf),
    }
}

/// `Reply { payload: size bytes }` as protobuf (field 1, length-delimited).
pub fn reply(size: usize) -> Vec<u8> {
    let mut v = vec![0x0a];
    varint(size as u64, &mut v);
    v.resize(v.len() + size, b'x');
    v
}

/// The payload length of a `Reply`.
pub fn parse_reply(msg: &[u8]) -> Result<usize, GrpcFrameError> {
    match msg {
        [] => Ok(0),
        [0x0a, rest @ ..] => match read_varint(rest) {
            Some((n, used)) if used as u64 + n == rest.len() as u64 => Ok(n as usize),
            _ => Err(GrpcFrameError::Protobuf),
        },
        _ => Err(GrpcFrameError::Protobuf),
    }
}

/// Whether a `content-type` value is gRPC's (`application/grpc`,
/// `application/grpc+proto`, ...).
pub fn is_grpc(content_type: &[u8]) -> bool {
    content_type
        .strip_prefix(CONTENT_TYPE.as_bytes())
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
}

#[cfg(test)]
mod tests;
