//! A blocking client for coremesh-control's operator HTTP API (what meshctl
//! speaks; see `coremesh_api::http` for the paths and bodies): one
//! HTTP/1.1 request per connection (`Connection: close`) over TLS 1.3,
//! verified against the data directory's `api-ca.pem` (which control
//! writes at start) and authorized with the operator credential. For the
//! harness (`fleet`, the policy scenarios of `compare`), not for the data
//! plane.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use coremesh_api::http::ApplyResult;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Control's API: its address and the TLS client that verifies it.
#[derive(Clone)]
pub struct Api {
    pub addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

impl Api {
    /// The API at `addr` of the control whose data directory is
    /// `data_dir` (its `api-ca.pem` is the CA to verify it with).
    pub fn new(addr: SocketAddr, data_dir: &Path) -> Result<Api, OperatorError> {
        let path = data_dir.join("api-ca.pem");
        let bad = |reason: String| OperatorError::Ca {
            path: path.clone(),
            reason,
        };
        let pem = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&pem) {
            roots
                .add(c.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Api {
            addr,
            tls: Arc::new(tls),
        })
    }
}

/// What went wrong with one operator API request; every variant names the
/// request (or, before it could be sent, the API address).
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("API {api}: cannot connect")]
    Connect {
        api: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("API CA {path}: {reason} (control writes it at start)")]
    Ca { path: PathBuf, reason: String },
    #[error("API {method} {path}: sending the request")]
    Send {
        method: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("API {method} {path}: reading the answer")]
    Receive {
        method: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("API {method} {path}: no HTTP header in the answer")]
    NoHeader { method: String, path: String },
    #[error("API {method} {path}: bad chunked body")]
    Chunked {
        method: String,
        path: String,
        #[source]
        source: ChunkError,
    },
    /// A non-2xx answer, with what control said.
    #[error("API {method} {path}: {status}: {body}")]
    Status {
        method: String,
        path: String,
        status: String,
        body: String,
    },
    /// A 2xx answer whose JSON body is not what was expected.
    #[error("API {method} {path}: unreadable answer")]
    Answer {
        method: String,
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Why a chunked body could not be de-chunked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("no line end where a chunk size should be")]
    NoLineEnd,
    #[error("bad chunk size {text:?}")]
    BadSize {
        text: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("short chunk")]
    Short,
}

/// `METHOD path` with `body`; the body of a 2xx answer (de-chunked), else
/// an error with the status and what control said.
pub fn http(
    api: &Api,
    credential: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Vec<u8>, OperatorError> {
    let m = || method.to_string();
    let p = || path.to_string();
    let addr = api.addr;
    let tcp =
        TcpStream::connect(addr).map_err(|source| OperatorError::Connect { api: addr, source })?;
    let tls =
        rustls::ClientConnection::new(api.tls.clone(), ServerName::IpAddress(addr.ip().into()))
            .map_err(|e| OperatorError::Send {
                method: m(),
                path: p(),
                source: std::io::Error::other(e),
            })?;
    let mut s = rustls::StreamOwned::new(tls, tcp);
    let api = addr;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {credential}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(body))
        .map_err(|source| OperatorError::Send {
            method: m(),
            path: p(),
            source,
        })?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|source| OperatorError::Receive {
            method: m(),
            path: p(),
            source,
        })?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| OperatorError::NoHeader {
            method: m(),
            path: p(),
        })?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body).map_err(|source| OperatorError::Chunked {
            method: m(),
            path: p(),
            source,
        })?;
    }
    let status = head.split(' ').nth(1).unwrap_or("");
    if !status.starts_with('2') {
        return Err(OperatorError::Status {
            method: m(),
            path: p(),
            status: status.to_string(),
            body: String::from_utf8_lossy(&body).to_string(),
        });
    }
    Ok(body)
}

/// [`http`], its answer read as JSON.
pub fn json<T: serde::de::DeserializeOwned>(
    api: &Api,
    credential: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<T, OperatorError> {
    let answer = http(api, credential, method, path, body)?;
    serde_json::from_slice(&answer).map_err(|source| OperatorError::Answer {
        method: method.to_string(),
        path: path.to_string(),
        source,
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, ChunkError> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(ChunkError::NoLineEnd)?;
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|source| ChunkError::BadSize {
            text: size_text.to_string(),
            source,
        })?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(rest.get(..size).ok_or(ChunkError::Short)?);
        rest = rest.get(size + 2..).ok_or(ChunkError::Short)?;
    }
}

/// `POST /v1/apply` of YAML documents: the new config version.
pub fn apply(api: &Api, credential: &str, yaml: &str) -> Result<ApplyResult, OperatorError> {
    json(api, credential, "POST", "/v1/apply", yaml.as_bytes())
}

#[cfg(test)]
mod tests;
