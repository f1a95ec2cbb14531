//! systemd integration: the sd_notify(3) messages coremesh-proxy and
//! coremesh-control send to `NOTIFY_SOCKET` (here a datagram socket the test
//! binds in a temp dir, standing in for systemd), and the shipped unit files
//! checked by `systemd-analyze verify`.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use coremesh_e2e::control::ControlBuilder;
use coremesh_e2e::util::{have_program, under_ci, wait_for, TempDir};
use coremesh_e2e::{Origin, ProxyBuilder};

/// The test's end of `NOTIFY_SOCKET`: every datagram is one message.
struct NotifySocket {
    _dir: TempDir,
    path: PathBuf,
    sock: UnixDatagram,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = TempDir::new("notify");
        let path = dir.path().join("notify.sock");
        let sock =
            UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        NotifySocket {
            _dir: dir,
            path,
            sock,
        }
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("utf-8 temp path")
    }

    /// The next message within `timeout`, if one arrives.
    fn next(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.sock.recv(&mut buf) {
                Ok(n) => return Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("recv on {}: {e}", self.path.display()),
            }
        }
        None
    }

    /// The next message that is not a watchdog ping, within `timeout`.
    fn next_state(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self.next(left)?;
            if m.trim() != "WATCHDOG=1" {
                return Some(m);
            }
        }
    }

    /// Waits for the next non-watchdog message and checks it holds `want`
    /// (one `KEY=VALUE` line each).
    fn expect(&self, want: &[&str], what: &str) -> String {
        let m = self
            .next_state(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no message {want:?} ({what}) within 10 s"));
        let lines: Vec<&str> = m.lines().collect();
        for w in want {
            assert!(lines.contains(w), "{what}: expected {want:?}, got {m:?}");
        }
        m
    }

    /// How many `WATCHDOG=1` pings arrive within `window`; fails on any
    /// other message.
    fn count_pings(&self, window: Duration) -> usize {
        let deadline = Instant::now() + window;
        let mut n = 0;
        while let Some(m) = self.next(deadline.saturating_duration_since(Instant::now())) {
            assert_eq!(m.trim(), "WATCHDOG=1", "only pings while running");
            n += 1;
        }
        n
    }
}

#[test]
fn proxy_tells_systemd_ready_reloading_ready_stopping() {
    let api = Origin::start("api");
    let notify = NotifySocket::bind();
    let mut proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .env("NOTIFY_SOCKET", notify.path())
        .start();

    notify.expect(&["READY=1"], "after start");
    // READY=1 means serving: every shard runs and the routes are in force.
    assert_eq!(proxy.admin_get("/ready").status, 200);
    let r = proxy.outbound_client().get("api", "/x");
    assert_eq!(r.status, 200, "a request right after READY=1");

    proxy.signal(libc::SIGHUP);
    let m = notify.expect(&["RELOADING=1"], "on SIGHUP");
    let usec = m
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {m:?}"));
    assert!(usec.parse::<u64>().is_ok_and(|u| u > 0), "{m:?}");
    notify.expect(&["READY=1"], "after the reload");
    assert!(
        proxy.log_text().contains("configuration reloaded"),
        "READY=1 follows the reload:\n{}",
        proxy.log_tail(20)
    );

    // A rejected reload still ends in READY=1 (systemd waits for it).
    proxy.write_config("this is not toml [");
    proxy.signal(libc::SIGHUP);
    notify.expect(&["RELOADING=1"], "on a second SIGHUP");
    notify.expect(&["READY=1"], "after the rejected reload");

    proxy.signal(libc::SIGTERM);
    notify.expect(&["STOPPING=1"], "on SIGTERM");
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("the proxy exits after draining");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        notify.next(Duration::from_millis(200)),
        None,
        "nothing after STOPPING=1"
    );
}

#[test]
fn an_upgrade_hands_the_main_pid_to_the_successor_instead_of_stopping() {
    let api = Origin::start("api");
    let notify = NotifySocket::bind();
    let dir = TempDir::new("upgrade-notify");
    let socket = dir.path().join("web.sock");
    let mut old = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .proxy_key(
            "upgrade_socket",
            &format!("{:?}", socket.display().to_string()),
        )
        .proxy_key("drain_timeout", "\"2s\"")
        .env("NOTIFY_SOCKET", notify.path())
        .start();
    notify.expect(&["READY=1"], "after start");

    // The successor inherits NOTIFY_SOCKET, as a process started in the
    // unit would; its own READY=1 and the old one's MAINPID= may come in
    // either order.
    let mut new = old.upgrade(&socket);
    let want_pid = format!("MAINPID={}", new.pid());
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = notify
            .next_state(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("after the upgrade, only {got:?} within 10 s"));
        got.push(m);
    }
    assert!(
        got.iter().any(|m| m.lines().any(|l| l == want_pid)),
        "the old proxy names its successor ({want_pid}): {got:?}"
    );
    assert!(
        got.iter().any(|m| m.lines().any(|l| l == "READY=1")),
        "the successor is ready: {got:?}"
    );
    let status = old
        .wait_exit(Duration::from_secs(15))
        .expect("the old proxy exits after its drain");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        notify.next_state(Duration::from_millis(300)),
        None,
        "no STOPPING=1 from a proxy that handed over"
    );
    assert_eq!(new.outbound_client().get("api", "/x").status, 200);

    new.signal(libc::SIGTERM);
    notify.expect(&["STOPPING=1"], "the successor on SIGTERM");
    assert_eq!(
        new.wait_exit(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn proxy_pings_the_watchdog_while_its_shards_answer() {
    let api = Origin::start("api");
    let notify = NotifySocket::bind();
    // 1 s: a ping every 500 ms, two shards asked (250 ms to answer) before
    // each. The bounds leave room for a machine loaded by other tests.
    let mut proxy = ProxyBuilder::new("web")
        .cores(2)
        .outbound()
        .service("api", &[api.addr()])
        .env("NOTIFY_SOCKET", notify.path())
        .env("WATCHDOG_USEC", "1000000")
        .start();
    notify.expect(&["READY=1"], "after start");
    let pings = notify.count_pings(Duration::from_secs(3));
    assert!(
        (3..=8).contains(&pings),
        "about one ping per 500 ms over 3 s, got {pings}"
    );
    proxy.signal(libc::SIGTERM);
    notify.expect(&["STOPPING=1"], "on SIGTERM");
    assert_eq!(
        proxy
            .wait_exit(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn proxy_without_notify_socket_sends_nothing_and_serves() {
    // No NOTIFY_SOCKET: the watchdog variable alone changes nothing.
    let api = Origin::start("api");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .env("WATCHDOG_USEC", "1000000")
        .start();
    assert_eq!(proxy.outbound_client().get("api", "/x").status, 200);
    assert!(
        !proxy.log_text().contains("systemd"),
        "{}",
        proxy.log_tail(20)
    );
}

#[test]
fn control_tells_systemd_ready_watchdog_stopping() {
    let notify = NotifySocket::bind();
    let mut control = ControlBuilder::new()
        .env("NOTIFY_SOCKET", notify.path())
        .env("WATCHDOG_USEC", "1000000")
        .start();
    notify.expect(&["READY=1"], "once listening");
    // READY=1 means the API answers.
    control.meshctl(&["status"]).ok();
    let pings = notify.count_pings(Duration::from_secs(3));
    assert!(
        (3..=8).contains(&pings),
        "about one ping per 500 ms over 3 s, got {pings}"
    );
    control.signal(libc::SIGTERM);
    notify.expect(&["STOPPING=1"], "on SIGTERM");
    let exited = wait_for(Duration::from_secs(10), || {
        (!control.is_running()).then_some(())
    });
    assert!(exited.is_some(), "control exits after SIGTERM");
}

/// The repository's `packaging/systemd` directory.
fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/systemd")
        .canonicalize()
        .expect("packaging/systemd exists")
}

#[test]
fn unit_files_pass_systemd_analyze_verify() {
    if !have_program("systemd-analyze") {
        assert!(
            !under_ci(),
            "systemd-analyze is missing under CI (scripts/install-deps.sh installs it)"
        );
        eprintln!("SKIPPED unit_files_pass_systemd_analyze_verify: systemd-analyze not installed");
        return;
    }
    // verify wants the ExecStart programs to exist: a copy of each unit
    // points at the binaries this suite built, the rest is as shipped.
    let scratch = TempDir::new("units");
    let bins = [
        ("/usr/bin/coremesh-proxy", coremesh_e2e::proxy::proxy_bin()),
        (
            "/usr/bin/coremesh-control",
            coremesh_e2e::control::control_bin(),
        ),
    ];
    let mut units = Vec::new();
    for entry in std::fs::read_dir(units_dir()).expect("read packaging/systemd") {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if !name.ends_with(".service") {
            continue;
        }
        let mut text = std::fs::read_to_string(&path).expect("read unit");
        for (shipped, built) in &bins {
            text = text.replace(shipped, built.to_str().expect("utf-8 path"));
        }
        // A template is verified as one of its instances.
        let name = name.replace("@.service", "@api.service");
        units.push(scratch.write(&name, text));
    }
    assert_eq!(units.len(), 2, "two units shipped: {units:?}");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Lines about other units on this machine (its own /etc and /lib
    // units, read along with ours) are not ours to judge.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("coremesh")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}
