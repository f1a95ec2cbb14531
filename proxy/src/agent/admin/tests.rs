use super::*;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::stats::{Direction, ShardStats};

/// A shard thread that records a few requests and answers snapshots, like
/// the real shard loop. Ends when the agent side drops the sender.
fn fake_shard(index: usize) -> (ShardHandle, std::thread::JoinHandle<()>) {
    let (tx, rx) = async_channel::bounded::<ShardMsg>(16);
    let thread = std::thread::spawn(move || {
        let mut st = ShardStats::new(index);
        st.conn_opened(Direction::Outbound);
        for ms in [1, 2, 3, 4, 5, 6, 7] {
            st.record(
                Direction::Outbound,
                "api",
                200,
                Duration::from_millis(ms),
                100,
                200,
            );
        }
        while let Ok(msg) = rx.recv_blocking() {
            if let ShardMsg::Snapshot(reply) = msg {
                let _ = reply.send(st.snapshot());
            }
        }
    });
    let handle = ShardHandle {
        index,
        tx,
        open_conns: Arc::new(AtomicUsize::new(0)),
        ready: Arc::new(AtomicBool::new(true)),
    };
    (handle, thread)
}

/// One request over a fresh TCP connection; returns (status, head, body).
async fn get(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.unwrap();
    let resp = String::from_utf8(resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

#[test]
fn serves_every_endpoint() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let (shard, thread) = fake_shard(0);
    // A shard whose receiver is gone: skipped, never fatal.
    let (dead_tx, dead_rx) = async_channel::bounded(1);
    drop(dead_rx);
    let dead = ShardHandle {
        index: 1,
        tx: dead_tx,
        open_conns: Arc::new(AtomicUsize::new(0)),
        ready: Arc::new(AtomicBool::new(true)),
    };
    let state = Rc::new(AdminState {
        shards: vec![shard.clone(), dead],
        config_json: RefCell::new(serde_json::json!({"cores": 1, "service": "web"})),
        draining: Cell::new(false),
        certificate: RefCell::new(None),
    });

    local.block_on(&rt, async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::task::spawn_local(serve(listener, state.clone()));

        // A client that sends garbage and one that hangs up early must
        // not stop the server.
        let mut bad = tokio::net::TcpStream::connect(addr).await.unwrap();
        bad.write_all(b"\x16\x03\x01 not http\r\n\r\n").await.unwrap();
        drop(tokio::net::TcpStream::connect(addr).await.unwrap());

        let (status, head, body) = get(addr, "GET", "/metrics").await;
        assert_eq!(status, 200, "{head}");
        assert!(head.contains(METRICS_CONTENT_TYPE), "{head}");
        assert!(
            body.contains(
                r#"coremesh_requests_total{direction="outbound",service="api",class="2xx",core="0"} 7"#
            ),
            "{body}"
        );
        assert!(body.contains(r#"coremesh_shard_requests_total{core="0"} 7"#), "{body}");
        assert!(!body.contains(r#"core="1""#), "{body}");

        let (status, _, body) = get(addr, "GET", "/stats/cores").await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["cores"].as_array().unwrap().len(), 1);
        assert_eq!(v["cores"][0]["requests"], 7);
        assert_eq!(v["cores"][0]["connections_open"]["outbound"], 1);
        let p50 = v["cores"][0]["latency_us"]["p50"].as_u64().unwrap();
        assert!((4000..4100).contains(&p50), "{p50}");

        assert_eq!(get(addr, "GET", "/live").await.2, "live\n");
        let (status, _, body) = get(addr, "GET", "/ready").await;
        assert_eq!((status, body.as_str()), (200, "ready\n"));

        let (status, head, body) = get(addr, "GET", "/config").await;
        assert_eq!(status, 200);
        assert!(head.contains("application/json"), "{head}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["service"], "web");

        *state.config_json.borrow_mut() = serde_json::json!({"service": "reloaded"});
        let v: serde_json::Value =
            serde_json::from_str(&get(addr, "GET", "/config").await.2).unwrap();
        assert_eq!(v["service"], "reloaded");

        state.draining.set(true);
        let (status, _, body) = get(addr, "GET", "/ready").await;
        assert_eq!((status, body.as_str()), (503, "not ready\n"));
        state.draining.set(false);
        shard.ready.store(false, Ordering::Release);
        assert_eq!(get(addr, "GET", "/ready").await.0, 503);

        assert_eq!(get(addr, "GET", "/nope").await.0, 404);
        let (status, head, _) = get(addr, "POST", "/metrics").await;
        assert_eq!(status, 405);
        assert!(head.to_ascii_lowercase().contains("allow: get"), "{head}");

        server.abort();
    });
    // The aborted tasks (holding the shard senders) go with the LocalSet;
    // then the fake shard sees its channel close.
    drop(local);
    drop(state);
    drop(shard);
    thread.join().unwrap();
}

#[test]
fn unanswered_shard_is_skipped_after_timeout() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (shard, thread) = fake_shard(0);
    // A shard that takes the request but never answers.
    let (mute_tx, mute_rx) = async_channel::bounded::<ShardMsg>(4);
    let mute = ShardHandle {
        index: 1,
        tx: mute_tx,
        open_conns: Arc::new(AtomicUsize::new(0)),
        ready: Arc::new(AtomicBool::new(true)),
    };
    let state = AdminState {
        shards: vec![mute, shard],
        config_json: RefCell::new(serde_json::Value::Null),
        draining: Cell::new(false),
        certificate: RefCell::new(None),
    };
    let started = std::time::Instant::now();
    let snaps = rt.block_on(collect_snapshots(&state));
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].core, 0);
    let took = started.elapsed();
    assert!(
        took >= SNAPSHOT_TIMEOUT && took < 5 * SNAPSHOT_TIMEOUT,
        "{took:?}"
    );
    drop(state);
    drop(mute_rx);
    thread.join().unwrap();
}
