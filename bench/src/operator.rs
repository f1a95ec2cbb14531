//! A blocking client for coremesh-control's operator HTTP API (what meshctl
//! speaks; see `coremesh_api::http` for the paths and bodies): one
//! HTTP/1.1 request per connection (`Connection: close`), authorized with
//! the operator credential from control's data directory. For the harness
//! (`fleet`, the policy scenarios of `compare`), not for the data plane.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use coremesh_api::http::ApplyResult;

/// `METHOD path` with `body`; the body of a 2xx answer (de-chunked), else
/// an error with the status and what control said.
pub fn http(
    api: SocketAddr,
    credential: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect(api).map_err(|e| format!("API {api}: {e}"))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {credential}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(body))
        .map_err(|e| format!("API {method} {path}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("API {method} {path}: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("API {method} {path}: no HTTP header in the answer"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    let status = head.split(' ').nth(1).unwrap_or("");
    if !status.starts_with('2') {
        return Err(format!(
            "API {method} {path}: {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(body)
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunked body")?;
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(rest.get(..size).ok_or("short chunk")?);
        rest = rest.get(size + 2..).ok_or("short chunk")?;
    }
}

/// `POST /v1/apply` of YAML documents: the new config version.
pub fn apply(api: SocketAddr, credential: &str, yaml: &str) -> Result<ApplyResult, String> {
    let body = http(api, credential, "POST", "/v1/apply", yaml.as_bytes())?;
    serde_json::from_slice(&body).map_err(|e| format!("apply answer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n").unwrap(),
            b"abcd"
        );
    }
}
