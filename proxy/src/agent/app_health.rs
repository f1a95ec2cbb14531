//! Health checks of the local app (`[control.health]`), run on the agent
//! thread every `interval`: a connect to `[inbound] app` (TCP, or its Unix
//! socket file), an HTTP/1.1
//! `GET <path>` whose status is 2xx or 3xx, or a gRPC health check
//! (grpc.health.v1 `Check` over h2c) that answers SERVING. Each check is bounded by
//! `timeout`. The latest result is what the control session reports with
//! every heartbeat; changes are logged once, not every interval.

use std::cell::RefCell;
use std::rc::Rc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::config::{AppAddr, HealthConfig, HealthKind};

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    pub healthy: bool,
    /// What was seen: `"connected"`, `"HTTP 200"`, `"connect: Connection refused"`...
    pub detail: String,
}

/// The latest report, shared on the agent thread; `None` until the first
/// check finishes.
pub type LatestHealth = Rc<RefCell<Option<HealthReport>>>;

/// How to check the app, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct Checker {
    pub app: AppAddr,
    pub config: HealthConfig,
}

impl Checker {
    /// Runs one check, bounded by the configured timeout.
    pub async fn check(&self) -> HealthReport {
        let timeout = self.config.timeout;
        let run = async {
            let connected = match &self.app {
                AppAddr::Tcp(a) => TcpStream::connect(a).await.map(|s| self.on(s)),
                AppAddr::Unix(p) => UnixStream::connect(p).await.map(|s| self.on(s)),
            };
            match connected {
                Ok(check) => check.await,
                Err(e) => HealthReport {
                    healthy: false,
                    detail: format!("connect: {e}"),
                },
            }
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => HealthReport {
                healthy: false,
                detail: format!(
                    "no answer within {}",
                    crate::config::format_duration(timeout)
                ),
            },
        }
    }

    /// The check itself, on a connection to the app.
    fn on<S>(&self, s: S) -> std::pin::Pin<Box<dyn std::future::Future<Output = HealthReport> + '_>>
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        // The Host header and :authority: the app's address, or `localhost`
        // for a socket file (which names no host).
        let authority = match &self.app {
            AppAddr::Tcp(a) => a.to_string(),
            AppAddr::Unix(_) => "localhost".to_string(),
        };
        // Boxed: one allocation per check (every few seconds, agent thread),
        // and the two stream types need no second copy of each check.
        match self.config.kind {
            HealthKind::Tcp => Box::pin(async {
                HealthReport {
                    healthy: true,
                    detail: "connected".into(),
                }
            }),
            HealthKind::Http => Box::pin(http(s, authority, &self.config.path)),
            HealthKind::Grpc => Box::pin(grpc(s, authority, &self.config.grpc_service)),
        }
    }

    /// Checks every interval forever, keeping `latest` current and telling
    /// the shards (which answer probes from peers with it) of every change.
    pub async fn run(self, latest: LatestHealth, shards: Vec<crate::msg::ShardHandle>) {
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let report = self.check().await;
            let before = latest.borrow().clone();
            match &before {
                Some(b) if b.healthy == report.healthy => {}
                _ if report.healthy => {
                    tracing::info!(app = %self.app, "app is healthy ({})", report.detail)
                }
                _ => tracing::warn!(
                    app = %self.app,
                    "app is unhealthy: {} check failed: {}",
                    self.config.kind.as_str(),
                    report.detail
                ),
            }
            if before.as_ref().map(|b| b.healthy) != Some(report.healthy) {
                for h in &shards {
                    let _ =
                        h.tx.try_send(crate::msg::ShardMsg::AppHealth(report.healthy));
                }
            }
            *latest.borrow_mut() = Some(report);
        }
    }
}

/// Longest gRPC health answer read.
const MAX_GRPC_ANSWER: usize = 1024;

/// `grpc.health.v1.Health/Check` for `service` over h2c.
async fn grpc<S>(s: S, app: String, service: &str) -> HealthReport
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let unhealthy = |detail: String| HealthReport {
        healthy: false,
        detail,
    };
    let (client, connection) = match h2::client::handshake(s).await {
        Ok(pair) => pair,
        Err(e) => return unhealthy(format!("HTTP/2: {e}")),
    };
    tokio::select! {
        r = grpc_check(client, &app, service) => r.unwrap_or_else(unhealthy),
        r = connection => unhealthy(match r {
            Ok(()) => "the app closed the connection".into(),
            Err(e) => format!("HTTP/2: {e}"),
        }),
    }
}

async fn grpc_check(
    client: h2::client::SendRequest<bytes::Bytes>,
    app: &str,
    service: &str,
) -> Result<HealthReport, String> {
    let mut client = client.ready().await.map_err(|e| format!("HTTP/2: {e}"))?;
    let req = http::Request::post(format!("http://{app}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "coremesh-health")
        .body(())
        .map_err(|e| e.to_string())?;
    let (resp, mut send) = client
        .send_request(req, false)
        .map_err(|e| format!("HTTP/2: {e}"))?;
    send.send_data(health_request(service).into(), true)
        .map_err(|e| format!("HTTP/2: {e}"))?;
    let resp = resp.await.map_err(|e| format!("HTTP/2: {e}"))?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("HTTP {}", resp.status().as_u16()));
    }
    let trailers_only = resp.headers().get("grpc-status").cloned();
    let mut body = resp.into_body();
    let mut msg = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("HTTP/2: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        msg.extend_from_slice(&chunk);
        if msg.len() > MAX_GRPC_ANSWER {
            return Err("answer too large".into());
        }
    }
    let trailers = body.trailers().await.map_err(|e| format!("HTTP/2: {e}"))?;
    let status = trailers_only.or_else(|| {
        trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status").cloned())
    });
    match status.as_ref().map(|s| s.as_bytes()) {
        Some(b"0") => {}
        Some(code) => {
            let message = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-message"))
                .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                .unwrap_or_default();
            return Err(format!(
                "grpc-status {} {message}",
                String::from_utf8_lossy(code)
            ));
        }
        None => return Err("no grpc-status".into()),
    }
    let serving = health_status(&msg).ok_or("malformed HealthCheckResponse")?;
    Ok(HealthReport {
        healthy: serving == 1,
        detail: match serving {
            1 => "SERVING".into(),
            2 => "NOT_SERVING".into(),
            3 => "SERVICE_UNKNOWN".into(),
            _ => "UNKNOWN".into(),
        },
    })
}

/// A length-prefixed `HealthCheckRequest { service }` (grpc.health.v1;
/// field 1, a string). One field: written here rather than pulling a
/// protobuf code generator into the proxy for it.
fn health_request(service: &str) -> Vec<u8> {
    let mut msg = Vec::with_capacity(service.len() + 3);
    if !service.is_empty() {
        msg.push(0x0a);
        let mut n = service.len();
        while n >= 0x80 {
            msg.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        msg.push(n as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut framed = Vec::with_capacity(msg.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    framed
}

/// The `status` (field 1, an enum) of a length-prefixed
/// `HealthCheckResponse`; 0 (UNKNOWN) when the field is absent.
fn health_status(framed: &[u8]) -> Option<u64> {
    let (&flag, rest) = framed.split_first()?;
    if flag != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
    let mut msg = rest.get(4..4 + len)?;
    let mut status = 0;
    while let Some((&tag, tail)) = msg.split_first() {
        let (value, used) = varint(tail)?;
        match tag {
            0x08 => {
                status = value;
                msg = &tail[used..];
            }
            // Other varint fields (none in v1), skipped.
            t if t & 7 == 0 => msg = &tail[used..],
            _ => return None,
        }
    }
    Some(status)
}

fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Longest response head read before giving up on finding the status line.
const MAX_STATUS_LINE: usize = 1024;

async fn http<S>(mut s: S, app: String, path: &str) -> HealthReport
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let unhealthy = |detail: String| HealthReport {
        healthy: false,
        detail,
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {app}\r\nUser-Agent: coremesh-health\r\nConnection: close\r\n\r\n"
    );
    if let Err(e) = s.write_all(request.as_bytes()).await {
        return unhealthy(format!("write: {e}"));
    }
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    let line = loop {
        if let Some(end) = head.windows(2).position(|w| w == b"\r\n") {
            break head[..end].to_vec();
        }
        if head.len() >= MAX_STATUS_LINE {
            return unhealthy("status line too long".into());
        }
        match s.read(&mut buf).await {
            Ok(0) => return unhealthy("connection closed before a status line".into()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return unhealthy(format!("read: {e}")),
        }
    };
    match status_code(&line) {
        Some(code) => HealthReport {
            healthy: (200..400).contains(&code),
            detail: format!("HTTP {code}"),
        },
        None => unhealthy(format!(
            "not an HTTP status line: {:?}",
            String::from_utf8_lossy(&line)
        )),
    }
}

/// The status code of `HTTP/1.x NNN reason`.
fn status_code(line: &[u8]) -> Option<u16> {
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ') {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests;
