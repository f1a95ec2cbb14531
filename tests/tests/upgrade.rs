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

/// Sets the flag when dropped: a helper thread stops even when the test
/// panics first.
struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

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
    let _stop_prober = StopOnDrop(stop.clone());
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
    // What a client library does now and then with any server that closes
    // idle keep-alive connections; more would be this proxy's doing.
    assert!(retried * 200 <= outcomes.len(), "{retried} resends");
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

#[test]
fn an_upgraded_sidecar_keeps_its_endpoint_and_identity_from_control() {
    use coremesh_e2e::{ControlBuilder, MeshProxy};
    let dir = TempDir::new("upgrade-mesh");
    let socket = dir.path().join("api.sock");
    // A short start-up grace: a session that says it runs a snapshot is held
    // (no new snapshot) until control's grace period ends.
    let control = ControlBuilder::new().grace("1s").start();
    let version = control.apply("kind: Service\nname: api\n---\nkind: Service\nname: web\n");
    let app = Origin::start("api");
    let api_member = control.member("api", "api-1");
    let mut api = upgradable(ProxyBuilder::new("api").inbound(app.addr()), &socket)
        .control(&control.section(&api_member))
        .start();
    let web_member = control.member("web", "web-1");
    let web = ProxyBuilder::new("web")
        .outbound()
        .control(&control.section(&web_member).calls(&["api"]))
        .start();
    control.wait_converged(2, 1, version, Duration::from_secs(20));
    let endpoints = control.endpoint_addrs("api");

    let load = OpenLoad::start(LoadSpec {
        netns: None,
        target: web.outbound(),
        authority: "api".into(),
        path: "/".into(),
        per_second: 200.0,
        workers: 16,
        retry_stale: true,
    });
    std::thread::sleep(Duration::from_millis(500));
    let new = upgrade(&mut api, &socket);
    let old = std::mem::replace(&mut api, new);
    // The old session closed without deregistering; the new one registered
    // the same address: control never lost the endpoint.
    assert!(
        !old.log_text().contains("deregistered"),
        "{}",
        old.log_tail(20)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(control.endpoint_addrs("api"), endpoints);
    let outcomes = load.stop();
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.ok()).collect();
    assert!(failed.is_empty(), "{failed:?}\n{}", api.log_tail(20));
    // The new process serves with the certificate it found in state_dir
    // (no second join) and has its own session.
    assert!(
        !api.log_text().contains("joined control"),
        "{}",
        api.log_tail(20)
    );
    control.wait_converged(2, 1, version, Duration::from_secs(20));
}

/// Kills a process the harness does not own (a successor a proxy started).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a pid this test read from the proxy's log.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

#[test]
fn sigusr2_makes_the_proxy_start_its_own_successor() {
    let dir = TempDir::new("upgrade-usr2");
    let socket = dir.path().join("api.sock");
    let app = Origin::start("api");
    let mut api = upgradable(ProxyBuilder::new("api").inbound(app.addr()), &socket).start();
    let addr = api.inbound();
    let load = OpenLoad::start(LoadSpec {
        netns: None,
        target: addr,
        authority: "api".into(),
        path: "/".into(),
        per_second: 500.0,
        workers: 8,
        retry_stale: true,
    });
    std::thread::sleep(Duration::from_millis(300));
    api.signal(libc::SIGUSR2);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = api.try_exit_status() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "{}", api.log_tail(20));
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    // The successor logs into the same stderr it inherited.
    let log = api.log_text();
    let pid: i32 = log
        .lines()
        .find_map(|l| {
            l.split("pid ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
                .filter(|_| l.contains("took over the listeners"))
        })
        .unwrap_or_else(|| panic!("no hand-over line:\n{log}"));
    let _successor = KillOnDrop(pid);
    assert!(log.contains("SIGUSR2: started pid"), "{log}");
    std::thread::sleep(Duration::from_millis(300));
    let outcomes = load.stop();
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.ok()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    // The successor serves on the same port.
    let r = coremesh_e2e::Client::connect(addr).get("api", "/after");
    assert_eq!(r.status, 200);
    assert!(api
        .log_text()
        .contains("serving; the previous process drains and exits"));
}
