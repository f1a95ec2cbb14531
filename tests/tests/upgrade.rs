//! Upgrades that drop nothing (issue 18, item 5): a new binary takes the
//! listening sockets over from the running proxy (`--upgrade-from`, the
//! running one's `[proxy] upgrade_socket`), which drains and exits.
//!
//! ```text
//!  open-loop GETs ──▶ web proxy [outbound, 2 shards] ══mTLS══▶ api proxy [inbound, 1 shard] ──▶ origin
//!                      upgraded 5 times                         upgraded 5 times, alternately
//! ```
//!
//! The client behaves as HTTP client libraries do: a GET whose reused
//! keep-alive connection the server closed is sent once more on a new
//! connection (those are counted and printed). Anything else that fails,
//! a refused connection included, fails the test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use coremesh_e2e::openload::{LoadSpec, OpenLoad};
use coremesh_e2e::pki::Pki;
use coremesh_e2e::util::TempDir;
use coremesh_e2e::{Origin, Proxy, ProxyBuilder};

fn upgradable(b: ProxyBuilder, socket: &std::path::Path) -> ProxyBuilder {
    b.proxy_key(
        "upgrade_socket",
        &format!("{:?}", socket.display().to_string()),
    )
    .proxy_key("drain_timeout", "\"3s\"")
}

/// Starts `next` from `old`, checks `old` drained and exited 0, returns the
/// new one.
fn upgrade(old: &mut Proxy, socket: &std::path::Path) -> Proxy {
    let new = old.upgrade(socket);
    assert_ne!(new.pid(), old.pid());
    let status = old.wait_exit(Duration::from_secs(15));
    let status =
        status.unwrap_or_else(|| panic!("the old proxy did not exit:\n{}", old.log_tail(20)));
    assert!(status.success(), "{status}\n{}", old.log_tail(20));
    assert!(
        old.log_text().contains("took over the listeners; draining"),
        "{}",
        old.log_tail(20)
    );
    new
}

#[test]
fn ten_upgrades_under_load_fail_no_request_and_refuse_no_connection() {
    let dir = TempDir::new("upgrade");
    let pki = Pki::new("mesh");
    let app = Origin::start("api");
    let sockets: Vec<PathBuf> = ["api", "web"]
        .iter()
        .map(|s| dir.path().join(format!("{s}.sock")))
        .collect();

    let files = pki.files(dir.path(), "api", "api");
    let mut api = upgradable(ProxyBuilder::new("api").inbound(app.addr()), &sockets[0])
        .extra(&files.toml())
        .start();
    let files = pki.files(dir.path(), "web", "web");
    let mut web = upgradable(ProxyBuilder::new("web").outbound().cores(2), &sockets[1])
        .service("api", &[api.inbound()])
        .extra(&files.toml())
        .start();
    let (api_addr, web_addr): (SocketAddr, SocketAddr) = (api.inbound(), web.outbound());

    let load = OpenLoad::start(LoadSpec {
        netns: None,
        target: web_addr,
        authority: "api".into(),
        path: "/".into(),
        per_second: 2000.0,
        workers: 64,
        retry_stale: true,
    });
    // Bare connects to the api's port all along: none may be refused.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stop.clone();
    let prober = std::thread::spawn(move || {
        let (mut ok, mut refused) = (0, Vec::new());
        let t0 = std::time::Instant::now();
        while !st.load(std::sync::atomic::Ordering::SeqCst) {
            match std::net::TcpStream::connect(api_addr) {
                Ok(_) => ok += 1,
                Err(e) => refused.push(format!("{:?} {e}", t0.elapsed())),
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        (ok, refused)
    });
    std::thread::sleep(Duration::from_secs(1));
    let mut retired = Vec::new();
    for i in 0..10 {
        if i % 2 == 0 {
            let new = upgrade(&mut api, &sockets[0]);
            retired.push(std::mem::replace(&mut api, new));
            assert_eq!(api.inbound(), api_addr);
        } else {
            let new = upgrade(&mut web, &sockets[1]);
            retired.push(std::mem::replace(&mut web, new));
            assert_eq!(web.outbound(), web_addr);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(1));
    let outcomes = load.stop();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, refused) = prober.join().unwrap();
    eprintln!("{ok} connects to api's inbound port while it was upgraded");
    assert!(refused.is_empty(), "connections refused: {refused:?}");
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.ok()).collect();
    let retried = outcomes.iter().filter(|o| o.stale_retry).count();
    eprintln!(
        "{} requests over ten upgrades: {} failed, {retried} resent on a new connection after a keep-alive close",
        outcomes.len(),
        failed.len()
    );
    if !failed.is_empty() {
        // What each process said, old ones included.
        for p in retired.iter().chain([&api, &web]) {
            let warn: Vec<String> = p
                .log_lines()
                .into_iter()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .collect();
            eprintln!("pid {}: {warn:#?}", p.pid());
        }
    }
    assert!(outcomes.len() > 15_000, "{}", outcomes.len());
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // The last binaries serve.
    for p in [&api, &web] {
        let m = p.metrics();
        assert!(
            m.sum("coremesh_requests_total", &[]) > 0.0,
            "pid {} served nothing",
            p.pid()
        );
    }
}
