//! The two hostile clients the soak runs beside the load, against web's
//! outbound listener: a slowloris client (request heads dribbled a byte a
//! second, never finished) and an h2 rapid-reset client (streams opened
//! and reset at once, CVE-2023-44487). Neither is expected to get
//! anything; the proxy should shed them (the slowloris connections after
//! `[timeouts] head_read`, the rapid-reset connections with GOAWAY) while
//! the load beside them loses nothing.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Slowloris connections held at once.
pub const SLOWLORIS_CONNS: usize = 8;
/// Streams the rapid-reset client opens and resets per burst, and the
/// pause between bursts.
pub const RESET_BURST: usize = 64;
const RESET_PAUSE: Duration = Duration::from_millis(250);

/// What the slowloris client saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Slowloris {
    pub connections: u64,
    /// Connections the proxy closed (or answered) before the client gave up.
    pub closed_by_proxy: u64,
    /// How long those connections had been open, at most (seconds).
    pub longest_open_s: f64,
    pub bytes_sent: u64,
}

/// Holds [`SLOWLORIS_CONNS`] connections to `addr`, each sending a
/// request head one byte a second; a connection the proxy closes is
/// counted and replaced. Runs until `stop`.
pub fn slowloris(addr: SocketAddr, stop: Arc<AtomicBool>) -> Slowloris {
    let mut out = Slowloris::default();
    let head = b"GET /size/128 HTTP/1.1\r\nHost: api\r\nX-Slow: ".as_slice();
    // Each connection: its socket, when it opened, bytes of the head sent.
    let mut conns: Vec<Option<(TcpStream, Instant, usize)>> =
        (0..SLOWLORIS_CONNS).map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        for c in conns.iter_mut() {
            if c.is_none() {
                if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    let _ = s.set_nonblocking(true);
                    out.connections += 1;
                    *c = Some((s, Instant::now(), 0));
                }
                continue;
            }
            let (s, opened, sent) = c.as_mut().expect("checked");
            // The head's start, then a header value that never ends.
            let byte = head.get(*sent).copied().unwrap_or(b'a');
            let mut buf = [0u8; 512];
            let closed = match s.read(&mut buf) {
                Ok(_) => true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    s.write(&[byte]).map_or(true, |_| false)
                }
                Err(_) => true,
            };
            if closed {
                out.closed_by_proxy += 1;
                out.longest_open_s = out.longest_open_s.max(opened.elapsed().as_secs_f64());
                *c = None;
            } else {
                *sent += 1;
                out.bytes_sent += 1;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    out
}

/// What the rapid-reset client saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RapidReset {
    pub connections: u64,
    pub streams_reset: u64,
    /// Connections the proxy ended (GOAWAY or close).
    pub closed_by_proxy: u64,
}

/// Opens h2c connections to `addr` and, in bursts of [`RESET_BURST`],
/// opens streams (GET, `:authority` api) and resets each at once; a
/// connection the proxy ends is counted and replaced. Runs until `stop`.
pub fn rapid_reset(addr: SocketAddr, stop: Arc<AtomicBool>) -> io::Result<RapidReset> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut out = RapidReset::default();
    rt.block_on(async {
        while !stop.load(Ordering::Relaxed) {
            let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
                tokio::time::sleep(RESET_PAUSE).await;
                continue;
            };
            let Ok((mut send, conn)) = h2::client::handshake(tcp).await else {
                tokio::time::sleep(RESET_PAUSE).await;
                continue;
            };
            out.connections += 1;
            let driver = tokio::spawn(conn);
            'conn: while !stop.load(Ordering::Relaxed) {
                for _ in 0..RESET_BURST {
                    let req = http::Request::get("http://api/size/128")
                        .body(())
                        .expect("a valid request");
                    let ready = match send.ready().await {
                        Ok(s) => s,
                        Err(_) => break 'conn,
                    };
                    send = ready;
                    match send.send_request(req, true) {
                        // Dropping both halves of the stream resets it
                        // (RST_STREAM CANCEL).
                        Ok((resp, stream)) => {
                            drop((resp, stream));
                            out.streams_reset += 1;
                        }
                        Err(_) => break 'conn,
                    }
                }
                tokio::time::sleep(RESET_PAUSE).await;
                if driver.is_finished() {
                    break;
                }
            }
            if !stop.load(Ordering::Relaxed) {
                out.closed_by_proxy += 1;
            }
            driver.abort();
            tokio::time::sleep(RESET_PAUSE).await;
        }
    });
    Ok(out)
}
