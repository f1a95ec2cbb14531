use super::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;

fn checker(app: SocketAddr, kind: HealthKind) -> Checker {
    on(AppAddr::Tcp(app), kind)
}

fn on(app: AppAddr, kind: HealthKind) -> Checker {
    Checker {
        app,
        config: HealthConfig {
            kind,
            path: "/healthz".into(),
            grpc_service: String::new(),
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

/// `[inbound] app = "unix:..."`: every kind of check connects to the
/// socket file; HTTP names `localhost` as the host.
#[tokio::test(flavor = "current_thread")]
async fn checks_reach_an_app_on_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("coremesh-health-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.sock");
    let _ = std::fs::remove_file(&path);
    let l = tokio::net::UnixListener::bind(&path).unwrap();
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let seen = Rc::new(RefCell::new(String::new()));
            let s2 = seen.clone();
            tokio::task::spawn_local(async move {
                loop {
                    let (mut c, _) = l.accept().await.unwrap();
                    let mut buf = [0u8; 512];
                    let n = c.read(&mut buf).await.unwrap_or(0);
                    *s2.borrow_mut() = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let _ = c.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
                }
            });
            let app = AppAddr::Unix(path.clone());
            let r = on(app.clone(), HealthKind::Tcp).check().await;
            assert_eq!((r.healthy, r.detail.as_str()), (true, "connected"));
            let r = on(app, HealthKind::Http).check().await;
            assert_eq!((r.healthy, r.detail.as_str()), (true, "HTTP 200"));
            assert!(seen.borrow().contains("Host: localhost\r\n"), "{seen:?}");
            let gone = AppAddr::Unix(dir.join("nobody.sock"));
            let r = on(gone, HealthKind::Http).check().await;
            assert!(!r.healthy && r.detail.starts_with("connect: "), "{r:?}");
        })
        .await;
    let _ = std::fs::remove_dir_all(&dir);
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

#[test]
fn health_messages_round_trip() {
    assert_eq!(health_request(""), vec![0, 0, 0, 0, 0]);
    assert_eq!(
        health_request("pkg.Svc"),
        [&[0u8, 0, 0, 0, 9, 0x0a, 7][..], b"pkg.Svc"].concat()
    );
    assert_eq!(health_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
    assert_eq!(health_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
    // No field: UNKNOWN.
    assert_eq!(health_status(&[0, 0, 0, 0, 0]), Some(0));
    // Compressed, truncated, or a field of another wire type: refused.
    assert_eq!(health_status(&[1, 0, 0, 0, 2, 0x08, 1]), None);
    assert_eq!(health_status(&[0, 0, 0, 0, 3, 0x08, 1]), None);
    assert_eq!(health_status(&[0, 0, 0, 0, 2, 0x0a, 0]), None);
}

/// A gRPC app answering every health check with `status` (and the
/// service it was asked about in the log).
async fn grpc_app(status: u8) -> (SocketAddr, Rc<RefCell<Vec<Vec<u8>>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s2 = seen.clone();
    tokio::task::spawn_local(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            let seen = s2.clone();
            tokio::task::spawn_local(async move {
                let mut conn = h2::server::handshake(c).await.unwrap();
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                    let mut body = req.into_body();
                    let mut got = Vec::new();
                    while let Some(Ok(b)) = body.data().await {
                        got.extend_from_slice(&b);
                    }
                    seen.borrow_mut().push(got);
                    let resp = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(())
                        .unwrap();
                    let mut send = respond.send_response(resp, false).unwrap();
                    send.send_data(vec![0, 0, 0, 0, 2, 0x08, status].into(), false)
                        .unwrap();
                    let mut t = http::HeaderMap::new();
                    t.insert("grpc-status", "0".parse().unwrap());
                    send.send_trailers(t).unwrap();
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "current_thread")]
async fn grpc_checks_want_serving() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let (serving, seen) = grpc_app(1).await;
            let (not_serving, _) = grpc_app(2).await;
            let mut c = checker(serving, HealthKind::Grpc);
            c.config.grpc_service = "pkg.Svc".into();
            let r = c.check().await;
            assert_eq!((r.healthy, r.detail.as_str()), (true, "SERVING"));
            assert_eq!(seen.borrow()[0], health_request("pkg.Svc"));
            let r = checker(not_serving, HealthKind::Grpc).check().await;
            assert_eq!((r.healthy, r.detail.as_str()), (false, "NOT_SERVING"));
            let r = checker(closed_port(), HealthKind::Grpc).check().await;
            assert!(!r.healthy && r.detail.starts_with("connect: "), "{r:?}");
            // An HTTP/1.1 app does not speak gRPC.
            let (h1, _) = app("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
            let r = checker(h1, HealthKind::Grpc).check().await;
            assert!(!r.healthy, "{r:?}");
        })
        .await;
}
