//! Health checks of the local app (`[control.health]`), run on the agent
//! thread every `interval`: a TCP connect to `[inbound] app`, or an HTTP/1.1
//! `GET <path>` whose status is 2xx or 3xx. Each check is bounded by
//! `timeout`. The latest result is what the control session reports with
//! every heartbeat; changes are logged once, not every interval.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{HealthConfig, HealthKind};

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
    pub app: SocketAddr,
    pub config: HealthConfig,
}

impl Checker {
    /// Runs one check, bounded by the configured timeout.
    pub async fn check(&self) -> HealthReport {
        let timeout = self.config.timeout;
        let run = async {
            match self.config.kind {
                HealthKind::Tcp => tcp(self.app).await,
                HealthKind::Http => http(self.app, &self.config.path).await,
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

async fn tcp(app: SocketAddr) -> HealthReport {
    match TcpStream::connect(app).await {
        Ok(_) => HealthReport {
            healthy: true,
            detail: "connected".into(),
        },
        Err(e) => HealthReport {
            healthy: false,
            detail: format!("connect: {e}"),
        },
    }
}

/// Longest response head read before giving up on finding the status line.
const MAX_STATUS_LINE: usize = 1024;

async fn http(app: SocketAddr, path: &str) -> HealthReport {
    let unhealthy = |detail: String| HealthReport {
        healthy: false,
        detail,
    };
    let mut s = match TcpStream::connect(app).await {
        Ok(s) => s,
        Err(e) => return unhealthy(format!("connect: {e}")),
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
