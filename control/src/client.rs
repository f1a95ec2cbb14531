//! A small blocking HTTP/1.1 client for meshctl: one request per
//! connection (`Connection: close`), over TLS 1.3 (`https://`, rustls,
//! verifying control's certificate against a pinned CA file and the URL's
//! host name) or plain HTTP (`http://`, for a control started with
//! `--api-plaintext` on loopback). Blocking std sockets, so meshctl needs
//! no runtime.
//!
//! Several URLs (control replicas sharing one etcd store) are tried in
//! order at each request until one accepts the TCP connection; once one
//! has, its answer (or error: TLS, HTTP, a broken exchange) is final, so a
//! request is never sent twice. Later requests start at the one that
//! answered.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, ClientConnection, StreamOwned};

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
    /// Several URLs, and none accepted a connection (meshctl exit 2).
    #[error("cannot reach control at any of {}", join_tried(.tried))]
    NoneReachable { tried: Vec<(String, io::Error)> },
    #[error("{0}")]
    BadUrl(String),
    /// `https://` without a CA to verify control with.
    #[error("--api {url}: https:// needs the CA that issued control's API certificate, and none was given")]
    NoCa { url: String },
    /// The CA file cannot be used.
    #[error("CA file {path}: {reason}")]
    BadCa { path: PathBuf, reason: String },
    /// Control's certificate does not chain to the pinned CA (or is
    /// expired, or not for a server).
    #[error("untrusted certificate: control at {addr} presented a certificate that the CA in {ca} does not vouch for ({detail})")]
    Untrusted {
        addr: String,
        ca: PathBuf,
        detail: String,
    },
    /// Control's certificate is not for the host name in the URL.
    #[error("wrong name: control at {addr} presented a certificate for {presented}, not for {name:?}; use one of those names in --api, or start control with --api-san {name}")]
    WrongName {
        addr: String,
        name: String,
        presented: String,
    },
    /// Another TLS failure (e.g. control speaks plain HTTP).
    #[error("TLS with control at {addr} failed: {detail}")]
    Tls { addr: String, detail: String },
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

/// What `https://` verifies control with.
struct Tls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    ca: PathBuf,
}

/// One URL of `--api`.
struct Target {
    /// `host:port`
    authority: String,
    tls: Option<Tls>,
}

pub struct Client {
    /// In the order given; at least one.
    targets: Vec<Target>,
    /// The target to try first: the last one that accepted a connection.
    first: Cell<usize>,
    credential: String,
}

fn join_tried(tried: &[(String, io::Error)]) -> String {
    tried
        .iter()
        .map(|(addr, e)| format!("{addr} ({e})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The order in which to try `len` targets: `first`, then the following
/// ones round the list.
pub fn try_order(first: usize, len: usize) -> impl Iterator<Item = usize> {
    (0..len).map(move |k| (first + k) % len.max(1))
}

/// The certificates of a PEM file, as roots for a TLS 1.3 client.
pub fn tls_config(ca: &Path) -> Result<Arc<ClientConfig>, ClientError> {
    let bad = |reason: String| ClientError::BadCa {
        path: ca.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(ca).map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("not PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl Client {
    /// `url` is `https://host:port` (verified with the CA in `ca`) or
    /// `http://host:port` (plain; `ca` unused); a trailing `/` is fine.
    pub fn new(url: &str, credential: &str, ca: Option<&Path>) -> Result<Client, ClientError> {
        Client::with_urls(&[url], credential, ca)
    }

    /// Several URLs of the same control plane (replicas), tried in this
    /// order; every `https://` one is verified with the CA in `ca`.
    pub fn with_urls(
        urls: &[impl AsRef<str>],
        credential: &str,
        ca: Option<&Path>,
    ) -> Result<Client, ClientError> {
        let targets = urls
            .iter()
            .map(|u| Target::new(u.as_ref(), ca))
            .collect::<Result<Vec<_>, _>>()?;
        if targets.is_empty() {
            return Err(ClientError::BadUrl(
                "--api: no URL given; e.g. https://127.0.0.1:7080".into(),
            ));
        }
        Ok(Client {
            targets,
            first: Cell::new(0),
            credential: credential.trim().to_string(),
        })
    }

    pub fn get(&self, path: &str) -> Result<Response, ClientError> {
        self.request("GET", path, None)
    }

    /// A TCP connection to the first target that accepts one, from the
    /// last that did, round the list. Refused, timed out or unresolvable:
    /// the next one.
    fn connect(&self) -> Result<(TcpStream, &Target), ClientError> {
        let mut tried = Vec::new();
        for i in try_order(self.first.get(), self.targets.len()) {
            let t = &self.targets[i];
            match t.connect() {
                Ok(s) => {
                    self.first.set(i);
                    return Ok((s, t));
                }
                Err(e) => tried.push((t.authority.clone(), e)),
            }
        }
        if tried.len() == 1 {
            let (addr, source) = tried.remove(0);
            return Err(ClientError::Unreachable {
                addr,
                step: "",
                source,
            });
        }
        Err(ClientError::NoneReachable { tried })
    }
}

impl Target {
    fn new(url: &str, ca: Option<&Path>) -> Result<Target, ClientError> {
        let (rest, tls, default_port) = if let Some(rest) = url.strip_prefix("https://") {
            (rest, true, 443)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (rest, false, 80)
        } else {
            return Err(ClientError::BadUrl(format!(
                "--api {url:?}: must start with https:// (or http:// for a control with --api-plaintext), e.g. https://127.0.0.1:7080"
            )));
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(ClientError::BadUrl(format!(
                "--api {url:?}: expected https://host:port"
            )));
        }
        let (host, authority) = match authority.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() && !h.ends_with(':') => {
                (h.to_string(), authority.to_string())
            }
            _ => (authority.to_string(), format!("{authority}:{default_port}")),
        };
        let tls = if tls {
            let ca = ca.ok_or_else(|| ClientError::NoCa { url: url.into() })?;
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(bare.to_string()).map_err(|_| {
                ClientError::BadUrl(format!(
                    "--api {url:?}: {host:?} is not a host name or IP address"
                ))
            })?;
            Some(Tls {
                config: tls_config(ca)?,
                name,
                ca: ca.to_path_buf(),
            })
        } else {
            None
        };
        Ok(Target { authority, tls })
    }

    fn connect(&self) -> io::Result<TcpStream> {
        let addrs: Vec<_> = self.authority.to_socket_addrs()?.collect();
        let mut last = io::Error::new(io::ErrorKind::AddrNotAvailable, "no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(s) => {
                    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

impl Client {
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<Response, ClientError> {
        let (tcp, t) = self.connect()?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\nAccept: application/json\r\n",
            t.authority, self.credential
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
        let mut raw = Vec::new();
        let done = match &t.tls {
            None => exchange(tcp, &req, body_bytes, &mut raw),
            Some(tls) => {
                let conn = ClientConnection::new(tls.config.clone(), tls.name.clone())
                    .map_err(|e| t.tls_error(tls, e))?;
                exchange(StreamOwned::new(conn, tcp), &req, body_bytes, &mut raw)
            }
        };
        if let Err((step, e)) = done {
            let tls_cause = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .cloned();
            match (&t.tls, tls_cause) {
                (Some(tls), Some(cause)) => return Err(t.tls_error(tls, cause)),
                // A peer that closed without close_notify after a whole
                // answer: the answer is good.
                _ if e.kind() == io::ErrorKind::UnexpectedEof && parse_response(&raw).is_ok() => {}
                _ => {
                    return Err(ClientError::Unreachable {
                        addr: t.authority.clone(),
                        step,
                        source: e,
                    })
                }
            }
        }
        parse_response(&raw).map_err(|reason| ClientError::Protocol {
            addr: t.authority.clone(),
            reason,
        })
    }

    /// GETs `path` and hands each line of the answer's body to `line` as it
    /// arrives (a streamed answer: chunked, or until the server closes),
    /// until `line` returns false or the stream ends. A non-2xx answer is
    /// read whole and returned instead.
    pub fn stream_lines(
        &self,
        path: &str,
        mut line: impl FnMut(&[u8]) -> bool,
    ) -> Result<Option<Response>, ClientError> {
        let (tcp, t) = self.connect()?;
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\nAccept: application/x-ndjson\r\n\r\n",
            t.authority, self.credential
        );
        let mut stream: Box<dyn ReadWrite> = match &t.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let conn = ClientConnection::new(tls.config.clone(), tls.name.clone())
                    .map_err(|e| t.tls_error(tls, e))?;
                Box::new(StreamOwned::new(conn, tcp))
            }
        };
        let failed = |step: &'static str, e: io::Error| {
            let tls_cause = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .cloned();
            match (&t.tls, tls_cause) {
                (Some(tls), Some(cause)) => t.tls_error(tls, cause),
                _ => ClientError::Unreachable {
                    addr: t.authority.clone(),
                    step,
                    source: e,
                },
            }
        };
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.flush())
            .map_err(|e| failed("", e))?;
        let mut raw = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        let head_end = loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            match stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(ClientError::Protocol {
                        addr: t.authority.clone(),
                        reason: ResponseError::NoHead,
                    })
                }
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(failed("reading the answer: ", e)),
            }
        };
        let protocol = |reason| ClientError::Protocol {
            addr: t.authority.clone(),
            reason,
        };
        // The head alone, to learn the status and the framing.
        let mut head_only = raw[..head_end + 4].to_vec();
        let status_line = String::from_utf8_lossy(&head_only);
        let status_line = status_line.lines().next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| protocol(ResponseError::BadStatusLine(status_line.to_string())))?;
        if !(200..300).contains(&status) {
            let _ = stream.read_to_end(&mut raw);
            return parse_response(&raw).map(Some).map_err(protocol);
        }
        head_only.make_ascii_lowercase();
        let chunked = head_only
            .windows(26)
            .any(|w| w == b"transfer-encoding: chunked");
        let mut body = Lines::new(chunked);
        if !body
            .push(&raw[head_end + 4..], &mut line)
            .map_err(protocol)?
        {
            return Ok(None);
        }
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => {
                    if !body.push(&chunk[..n], &mut line).map_err(protocol)? {
                        return Ok(None);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(failed("reading the stream: ", e)),
            }
        }
    }
}

impl Target {
    /// A rustls error, told as what the operator should check.
    fn tls_error(&self, tls: &Tls, e: rustls::Error) -> ClientError {
        let addr = self.authority.clone();
        match e {
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                expected,
                presented,
            }) => ClientError::WrongName {
                addr,
                name: expected.to_str().into_owned(),
                presented: presented
                    .iter()
                    .map(|p| bare_name(p))
                    .collect::<Vec<_>>()
                    .join(", "),
            },
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => {
                ClientError::WrongName {
                    addr,
                    name: tls.name.to_str().into_owned(),
                    presented: "other names".into(),
                }
            }
            rustls::Error::InvalidCertificate(c) => ClientError::Untrusted {
                addr,
                ca: tls.ca.clone(),
                detail: rustls::Error::InvalidCertificate(c).to_string(),
            },
            other => ClientError::Tls {
                addr,
                detail: other.to_string(),
            },
        }
    }
}

/// A plain or TLS connection.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Splits a streamed body into lines as its bytes arrive, undoing the
/// chunked framing first when there is one.
pub struct Lines {
    chunked: bool,
    /// Bytes not yet decoded (chunked framing).
    framed: Vec<u8>,
    /// Bytes of the chunk being read still to come; `None`: a size line next.
    left: Option<usize>,
    /// The current line so far.
    line: Vec<u8>,
    /// The last chunk was seen.
    done: bool,
}

impl Lines {
    pub fn new(chunked: bool) -> Lines {
        Lines {
            chunked,
            framed: Vec::new(),
            left: None,
            line: Vec::new(),
            done: false,
        }
    }

    /// Feeds bytes; calls `each` per complete line (without the newline).
    /// `Ok(false)`: `each` asked to stop, or the body ended.
    pub fn push(
        &mut self,
        bytes: &[u8],
        each: &mut impl FnMut(&[u8]) -> bool,
    ) -> Result<bool, ResponseError> {
        if !self.chunked {
            return Ok(self.body(bytes, each));
        }
        self.framed.extend_from_slice(bytes);
        let mut at = 0;
        let more = loop {
            if self.done {
                break false;
            }
            match self.left {
                None => {
                    let rest = &self.framed[at..];
                    let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
                        break true;
                    };
                    let text = String::from_utf8_lossy(&rest[..end]);
                    let size = text.split(';').next().unwrap_or_default().trim();
                    if size.is_empty() {
                        // The CRLF after a chunk's data.
                        at += end + 2;
                        continue;
                    }
                    let n = usize::from_str_radix(size, 16).map_err(|_| {
                        ResponseError::BadChunkSize {
                            text: size.to_string(),
                        }
                    })?;
                    at += end + 2;
                    if n == 0 {
                        self.done = true;
                    } else {
                        self.left = Some(n);
                    }
                }
                Some(n) => {
                    let avail = (self.framed.len() - at).min(n);
                    if avail == 0 {
                        break true;
                    }
                    let data = self.framed[at..at + avail].to_vec();
                    at += avail;
                    self.left = (n > avail).then_some(n - avail);
                    if !self.body(&data, each) {
                        break false;
                    }
                }
            }
        };
        self.framed.drain(..at);
        Ok(more)
    }

    fn body(&mut self, mut bytes: &[u8], each: &mut impl FnMut(&[u8]) -> bool) -> bool {
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&bytes[..nl]);
            bytes = &bytes[nl + 1..];
            let line = std::mem::take(&mut self.line);
            if !each(&line) {
                return false;
            }
        }
        self.line.extend_from_slice(bytes);
        true
    }
}

/// `localhost` for rustls' `DnsName("localhost")`, `10.0.0.5` for
/// `IpAddress(10.0.0.5)`: the names as the operator would type them.
fn bare_name(presented: &str) -> &str {
    let inner = presented
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or(presented);
    inner.trim_matches('"')
}

/// Writes the request, reads the answer into `raw` until the peer closes.
/// On error, which step failed.
fn exchange(
    mut stream: impl Read + Write,
    head: &str,
    body: &[u8],
    raw: &mut Vec<u8>,
) -> Result<(), (&'static str, io::Error)> {
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .and_then(|()| stream.flush())
        .map_err(|e| ("", e))?;
    stream
        .read_to_end(raw)
        .map_err(|e| ("reading the answer: ", e))?;
    Ok(())
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
