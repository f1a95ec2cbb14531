//! Large bodies stream through the proxy with backpressure: 100 MiB each way,
//! generated on the fly and verified by length and checksum, while the
//! proxy's resident memory grows by less than 16 MiB.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coremesh_e2e::{pattern_checksum, Fnv64, Origin, Pattern, Proxy, ProxyBuilder};

const SIZE: u64 = 100 * 1024 * 1024;
const MAX_RSS_GROWTH_KIB: u64 = 16 * 1024;

/// Samples the proxy's RSS every 20 ms until dropped; keeps the peak.
struct RssWatch {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if let Some(kib) = rss_of(pid) {
                    p.fetch_max(kib, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssWatch {
            peak,
            stop,
            thread: Some(thread),
        }
    }
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::SeqCst)
    }
}

fn rss_of(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn warmed_up_proxy(api: &Origin) -> Proxy {
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .start();
    // Warm up: a few requests so pools and buffers exist before the baseline.
    let mut c = proxy.outbound_client();
    for _ in 0..5 {
        assert_eq!(c.get("api", "/bytes/200000").status, 200);
    }
    proxy
}

#[test]
fn upload_100_mib_streams_with_bounded_memory() {
    let api = Origin::start("api");
    let proxy = warmed_up_proxy(&api);
    let before = proxy.rss_kib();
    let watch = RssWatch::start(proxy.pid());

    let mut c = proxy.outbound_client();
    c.send(
        format!("POST /upload HTTP/1.1\r\nHost: api\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes(),
    );
    let mut pattern = Pattern::new(SIZE);
    let mut sum = Fnv64::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = pattern.fill(&mut buf);
        if n == 0 {
            break;
        }
        sum.update(&buf[..n]);
        c.stream().write_all(&buf[..n]).expect("upload write");
    }
    let r = c.read_response();
    let peak = watch.finish();

    assert_eq!(r.status, 200);
    let echo = r.json();
    assert_eq!(echo["body_len"], SIZE, "the upstream received every byte");
    assert_eq!(echo["body_sum"], sum.value(), "and in order");
    let growth = peak.saturating_sub(before);
    assert!(
        growth < MAX_RSS_GROWTH_KIB,
        "proxy RSS grew by {growth} KiB (from {before} to a peak of {peak} KiB) during a 100 MiB upload"
    );
}

#[test]
fn download_100_mib_streams_with_bounded_memory() {
    let api = Origin::start("api");
    let proxy = warmed_up_proxy(&api);
    let before = proxy.rss_kib();
    let watch = RssWatch::start(proxy.pid());

    let mut c = proxy.outbound_client();
    c.send(format!("GET /bytes/{SIZE} HTTP/1.1\r\nHost: api\r\n\r\n").as_bytes());
    let mut sum = Fnv64::new();
    let mut len = 0u64;
    let mut next_pause = 4 * 1024 * 1024u64;
    let r = c
        .read_response_streaming(&mut |piece| {
            sum.update(piece);
            len += piece.len() as u64;
            // A client slower than the origin: the proxy must apply
            // backpressure instead of buffering the difference.
            if len >= next_pause {
                next_pause += 4 * 1024 * 1024;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .expect("read the 100 MiB response");
    let peak = watch.finish();

    assert_eq!(r.status, 200);
    assert_eq!(len, SIZE, "every byte arrived");
    assert_eq!(sum.value(), pattern_checksum(SIZE), "in order");
    let growth = peak.saturating_sub(before);
    assert!(
        growth < MAX_RSS_GROWTH_KIB,
        "proxy RSS grew by {growth} KiB (from {before} to a peak of {peak} KiB) during a 100 MiB download"
    );

    // The connection is still good for another request.
    let r = c.get("api", "/after-download");
    assert_eq!(r.status, 200);
}

#[test]
fn chunked_upload_of_a_few_mib_arrives_intact() {
    let api = Origin::start("api");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .start();
    let total = 5 * 1024 * 1024 + 17;
    let mut c = proxy.outbound_client();
    c.send(b"POST /chunky HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut pattern = Pattern::new(total);
    let mut sum = Fnv64::new();
    // Odd chunk sizes, so chunk and buffer boundaries never line up.
    let mut buf = vec![0u8; 40_000];
    let mut size = 1usize;
    loop {
        let n = pattern.fill(&mut buf[..size.min(40_000)]);
        if n == 0 {
            break;
        }
        sum.update(&buf[..n]);
        let mut out = format!("{n:x}\r\n").into_bytes();
        out.extend_from_slice(&buf[..n]);
        out.extend_from_slice(b"\r\n");
        c.send(&out);
        size = size * 3 + 7;
        if size > 40_000 {
            size = 13;
        }
    }
    c.send(b"0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], total);
    assert_eq!(r.json()["body_sum"], sum.value());
}
