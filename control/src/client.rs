//! A small blocking HTTP/1.1 client for meshctl: one request per
//! connection (`Connection: close`), no TLS (the API listens on loopback or
//! a private interface), std only, so meshctl stays lean.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the address, or the exchange broke off (meshctl
    /// exit 2). `step` is empty or says which step failed
    /// (`reading the answer: `).
    #[error("cannot reach control at {addr}: {step}{source}")]
    Unreachable {
        addr: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    /// Something answered, but not with HTTP we understand.
    #[error("bad answer from control at {addr}: {reason}")]
    Protocol {
        addr: String,
        #[source]
        reason: ResponseError,
    },
    #[error("{0}")]
    BadUrl(String),
}

/// Why an answer is not an HTTP/1.1 response [`parse_response`] understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("no complete HTTP head")]
    NoHead,
    #[error("HTTP head is not UTF-8")]
    HeadNotUtf8(#[source] std::str::Utf8Error),
    #[error("bad status line {0:?}")]
    BadStatusLine(String),
    #[error("body shorter than Content-Length")]
    ShortBody,
    #[error("bad chunk header")]
    BadChunkHeader,
    /// A chunk size that is not hex digits (`text`, as far as it is UTF-8).
    #[error("bad chunk size")]
    BadChunkSize { text: String },
    #[error("truncated chunk")]
    TruncatedChunk,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

pub struct Client {
    /// `host:port`
    authority: String,
    credential: String,
}

impl Client {
    /// `url` is `http://host:port` (a trailing `/` is fine).
    pub fn new(url: &str, credential: &str) -> Result<Client, ClientError> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            ClientError::BadUrl(format!(
                "--api {url:?}: must start with http:// (e.g. http://127.0.0.1:7080)"
            ))
        })?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(ClientError::BadUrl(format!(
                "--api {url:?}: expected http://host:port"
            )));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Client {
            authority,
            credential: credential.trim().to_string(),
        })
    }

    pub fn get(&self, path: &str) -> Result<Response, ClientError> {
        self.request("GET", path, None)
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<Response, ClientError> {
        let unreachable = |step: &'static str| {
            move |source: io::Error| ClientError::Unreachable {
                addr: self.authority.clone(),
                step,
                source,
            }
        };
        let addrs: Vec<_> = self
            .authority
            .to_socket_addrs()
            .map_err(unreachable(""))?
            .collect();
        let mut last = io::Error::new(io::ErrorKind::AddrNotAvailable, "no address");
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let mut stream = stream.ok_or_else(|| unreachable("")(last))?;
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\nAccept: application/json\r\n",
            self.authority, self.credential
        );
        let body_bytes = match body {
            Some((content_type, b)) => {
                req.push_str(&format!(
                    "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                    b.len()
                ));
                b
            }
            None => {
                req.push_str("Content-Length: 0\r\n");
                &[][..]
            }
        };
        req.push_str("\r\n");
        stream
            .write_all(req.as_bytes())
            .and_then(|_| stream.write_all(body_bytes))
            .map_err(unreachable(""))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .map_err(unreachable("reading the answer: "))?;
        parse_response(&raw).map_err(|reason| ClientError::Protocol {
            addr: self.authority.clone(),
            reason,
        })
    }
}

/// Parses a whole HTTP/1.1 response (read until the server closed).
pub fn parse_response(raw: &[u8]) -> Result<Response, ResponseError> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(ResponseError::NoHead)?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(ResponseError::HeadNotUtf8)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ResponseError::BadStatusLine(status_line.to_string()))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    let rest = &raw[head_end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n).ok_or(ResponseError::ShortBody)?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, ResponseError> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(ResponseError::BadChunkHeader)?;
        let line = String::from_utf8_lossy(&rest[..line_end]);
        let size_str = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_str, 16).map_err(|_| ResponseError::BadChunkSize {
                text: size_str.to_string(),
            })?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(rest.get(..size).ok_or(ResponseError::TruncatedChunk)?);
        rest = rest.get(size + 2..).ok_or(ResponseError::TruncatedChunk)?;
    }
}

#[cfg(test)]
mod tests;
