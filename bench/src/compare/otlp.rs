//! The OTLP/HTTP sink of `compare --tracing`: where the `coremesh-trace-R`
//! targets export their spans (`[tracing] collector`).
//!
//! It accepts `POST /v1/traces` over HTTP/1.1 keep-alive, reads the body
//! (Content-Length or chunked) without decoding it, answers 200 with an
//! empty body, and counts requests and body bytes; anything else gets 404.
//! A thread per connection (an exporter holds one or a few), pinned with
//! the origin and the load generator, so the sink never competes with the
//! proxy for its CPU. Its work per export is a copy of the body: far below
//! what producing the spans costs the proxy, so it is not the bottleneck.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// What the sink received.
#[derive(Debug, Default)]
pub struct SinkCounts {
    /// `POST /v1/traces` answered 200.
    pub requests: AtomicU64,
    /// Their body bytes.
    pub bytes: AtomicU64,
    /// Requests answered 404 or dropped as malformed.
    pub rejected: AtomicU64,
}

/// A running sink; dropping it stops accepting.
pub struct OtlpSink {
    addr: SocketAddr,
    counts: Arc<SinkCounts>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl OtlpSink {
    /// Listens on 127.0.0.1 (a free port); the connection threads are
    /// pinned to `cpus` (empty: not pinned).
    pub fn start(cpus: Vec<usize>) -> io::Result<OtlpSink> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(SinkCounts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (counts.clone(), stop.clone());
        let accept = std::thread::Builder::new()
            .name("otlp-sink".into())
            .spawn(move || {
                pin(&cpus);
                for conn in listener.incoming() {
                    if s.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let (c, cpus) = (c.clone(), cpus.clone());
                    let _ = std::thread::Builder::new()
                        .name("otlp-sink-conn".into())
                        .spawn(move || {
                            pin(&cpus);
                            let _ = serve(conn, &c);
                        });
                }
            })?;
        Ok(OtlpSink {
            addr,
            counts,
            stop,
            accept: Some(accept),
        })
    }

    /// `http://127.0.0.1:PORT`, for `[tracing] collector`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn counts(&self) -> &SinkCounts {
        &self.counts
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Pins the calling thread to `cpus` (best effort: unpinned on failure).
fn pin(cpus: &[usize]) {
    if cpus.is_empty() {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes
    // within it for CPU numbers below CPU_SETSIZE (checked), and
    // sched_setaffinity(0, ...) reads the set we own for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

const OK: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
/// Longest head line accepted.
const MAX_LINE: usize = 8192;

/// Serves one connection until it closes or sends something malformed.
fn serve(conn: TcpStream, counts: &SinkCounts) -> io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut r = BufReader::with_capacity(64 * 1024, conn);
    let mut line = Vec::new();
    loop {
        // Request line.
        if !read_line(&mut r, &mut line)? {
            return Ok(());
        }
        let request_line = String::from_utf8_lossy(&line).into_owned();
        let mut parts = request_line.split_ascii_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        // Fields.
        let (mut length, mut chunked, mut close) = (0u64, false, false);
        loop {
            if !read_line(&mut r, &mut line)? {
                return Ok(());
            }
            if line.is_empty() {
                break;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return bad(counts);
            };
            let name = line[..colon].to_ascii_lowercase();
            let value = String::from_utf8_lossy(&line[colon + 1..])
                .trim()
                .to_ascii_lowercase();
            match &name[..] {
                b"content-length" => match value.parse() {
                    Ok(n) => length = n,
                    Err(_) => return bad(counts),
                },
                b"transfer-encoding" => chunked = value.ends_with("chunked"),
                b"connection" => close = value.split(',').any(|t| t.trim() == "close"),
                _ => {}
            }
        }
        let body = if chunked {
            read_chunked(&mut r, &mut line)?
        } else {
            io::copy(&mut (&mut r).take(length), &mut io::sink())?
        };
        let path = target.split('?').next().unwrap_or("");
        if method == "POST" && path == "/v1/traces" {
            counts.requests.fetch_add(1, Ordering::Relaxed);
            counts.bytes.fetch_add(body, Ordering::Relaxed);
            out.write_all(OK)?;
        } else {
            counts.rejected.fetch_add(1, Ordering::Relaxed);
            out.write_all(NOT_FOUND)?;
        }
        if close {
            return Ok(());
        }
    }
}

fn bad(counts: &SinkCounts) -> io::Result<()> {
    counts.rejected.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// One line without its CRLF into `line`; `false` at EOF.
fn read_line(r: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<bool> {
    line.clear();
    let n = r.take(MAX_LINE as u64).read_until(b'\n', line)?;
    if n == 0 {
        return Ok(false);
    }
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(true)
}

/// A chunked body, discarded; returns its length.
fn read_chunked(r: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<u64> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidData, "bad chunk");
    let mut total = 0;
    loop {
        if !read_line(r, line)? {
            return Err(invalid());
        }
        let size = String::from_utf8_lossy(line);
        let size = size.split(';').next().unwrap_or("").trim();
        let n = u64::from_str_radix(size, 16).map_err(|_| invalid())?;
        if n == 0 {
            // Trailers until the blank line.
            while read_line(r, line)? && !line.is_empty() {}
            return Ok(total);
        }
        total += io::copy(&mut r.take(n), &mut io::sink())?;
        if !read_line(r, line)? || !line.is_empty() {
            return Err(invalid());
        }
    }
}

#[cfg(test)]
mod tests;
