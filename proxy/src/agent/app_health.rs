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
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::TcpListener;

    fn checker(app: SocketAddr, kind: HealthKind) -> Checker {
        Checker {
            app,
            config: HealthConfig {
                kind,
                path: "/healthz".into(),
                interval: Duration::from_millis(50),
                timeout: Duration::from_millis(500),
            },
        }
    }

    /// An app that answers every connection with `response` once it has the
    /// request head, and records the heads.
    async fn app(response: &'static str) -> (SocketAddr, Rc<RefCell<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Rc::new(RefCell::new(Vec::new()));
        let s2 = seen.clone();
        tokio::task::spawn_local(async move {
            loop {
                let (mut c, _) = l.accept().await.unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 512];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                s2.borrow_mut()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = c.write_all(response.as_bytes()).await;
            }
        });
        (addr, seen)
    }

    fn closed_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 302 Found"), Some(302));
        assert_eq!(status_code(b"HTTP/1.1 503"), Some(503));
        assert_eq!(status_code(b"HTTP/1.1 20"), None);
        assert_eq!(status_code(b"HTTP/1.1 2000 x"), None);
        assert_eq!(status_code(b"SSH-2.0"), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn tcp_and_http_checks() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (ok, seen) = app("HTTP/1.1 204 No Content\r\n\r\n").await;
                let (bad, _) = app("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
                let (junk, _) = app("hello\r\n").await;

                let r = checker(ok, HealthKind::Tcp).check().await;
                assert_eq!((r.healthy, r.detail.as_str()), (true, "connected"));
                let r = checker(closed_port(), HealthKind::Tcp).check().await;
                assert!(!r.healthy && r.detail.starts_with("connect: "), "{r:?}");

                let r = checker(ok, HealthKind::Http).check().await;
                assert_eq!((r.healthy, r.detail.as_str()), (true, "HTTP 204"));
                let head = seen.borrow().last().cloned().unwrap();
                assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
                assert!(head.contains(&format!("Host: {ok}\r\n")), "{head}");
                let r = checker(bad, HealthKind::Http).check().await;
                assert_eq!((r.healthy, r.detail.as_str()), (false, "HTTP 503"));
                let r = checker(junk, HealthKind::Http).check().await;
                assert!(!r.healthy && r.detail.starts_with("not an HTTP status line"));
            })
            .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_silent_app_times_out_and_run_keeps_the_latest() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                // Accepts (the kernel does) but never answers.
                let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let mut c = checker(silent.local_addr().unwrap(), HealthKind::Http);
                c.config.timeout = Duration::from_millis(100);
                let r = c.check().await;
                assert_eq!(
                    (r.healthy, r.detail.as_str()),
                    (false, "no answer within 100ms")
                );

                let (ok, _) = app("HTTP/1.1 200 OK\r\n\r\n").await;
                let latest = LatestHealth::default();
                let task = tokio::task::spawn_local(
                    checker(ok, HealthKind::Http).run(latest.clone(), Vec::new()),
                );
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while latest.borrow().is_none() {
                    assert!(tokio::time::Instant::now() < deadline);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                assert!(latest.borrow().as_ref().unwrap().healthy);
                task.abort();
            })
            .await;
    }
}
