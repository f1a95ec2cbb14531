//! Resource exhaustion (issue 20, item 4): out of file descriptors, every
//! listener refuses new connections without spinning the CPU, logs once per
//! interval, counts it by listener, and serves again when descriptors come
//! back; over its buffer budget, the proxy sheds requests with 503
//! `coremesh-error: buffer budget exhausted` and keeps serving.
//!
//! ```text
//!  clients ──▶ proxy [outbound] [inbound] [admin] (RLIMIT_NOFILE lowered) ──▶ api
//!  clients ──▶ proxy [outbound] unix:SOCKET (RLIMIT_NOFILE lowered) ──▶ api
//!  uploads ──▶ proxy [limits] buffer_budget = 192 KiB ──▶ api
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use coremesh_e2e::util::{wait_for, TempDir};
use coremesh_e2e::{Origin, Proxy, ProxyBuilder};

/// Sets the running process's soft RLIMIT_NOFILE to `n` (the hard limit
/// stays, so it can be raised again).
fn set_nofile(pid: u32, n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) on a child this test spawned, reading its limit
    // into a valid struct.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut lim,
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    lim.rlim_cur = n.min(lim.rlim_max);
    // SAFETY: as above, setting it from a valid struct.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// The descriptors `pid` has open.
fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64
}

/// CPU time (user + system) `pid` has used, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 here.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// The share of one core `pid` uses over `window`.
fn cpu_share(pid: u32, window: Duration) -> f64 {
    let before = cpu_seconds(pid);
    std::thread::sleep(window);
    (cpu_seconds(pid) - before) / window.as_secs_f64()
}

/// One GET over a fresh TCP connection: its status, or the error.
fn get(addr: SocketAddr, host: &str) -> Result<u16, String> {
    let mut c = coremesh_e2e::Client::try_connect(addr).map_err(|e| e.to_string())?;
    c.set_read_timeout(Duration::from_secs(5));
    c.try_send(format!("GET /x HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes())
        .and_then(|_| c.try_read_response())
        .map(|r| r.status)
        .map_err(|e| e.to_string())
}

/// The sum of `coremesh_accept_failures_total` for `listener`, out of
/// descriptors.
fn descriptor_failures(proxy: &Proxy, listener: &str) -> f64 {
    proxy.metrics().sum(
        "coremesh_accept_failures_total",
        &[("listener", listener), ("reason", "descriptors")],
    )
}

/// Holds the descriptors at the limit for longer than one log interval
/// (5 s), checking that the proxy does not spin meanwhile; returns the
/// accept-failure log lines of that time.
fn at_the_limit(proxy: &Proxy, connect: &mut dyn FnMut() -> bool) -> Vec<String> {
    let pid = proxy.pid();
    set_nofile(pid, open_fds(pid) + 2);
    let started = Instant::now();
    let held = (0..30).filter(|_| connect()).count();
    assert!(held > 5, "the kernel queues connections past the limit");
    // Every accept fails now and the connections stay queued: a proxy that
    // retried at once would use a whole core.
    std::thread::sleep(Duration::from_millis(500));
    let share = cpu_share(pid, Duration::from_secs(2));
    assert!(
        share < 0.5,
        "at the descriptor limit the proxy used {:.0}% of a core",
        share * 100.0
    );
    // Past one interval: a second line, with the failures left out since.
    let second = proxy.wait_for_log(0, Duration::from_secs(15), |l| {
        l.contains("accept failed") && l.contains("suppressed=") && !l.contains("suppressed=0")
    });
    let lines: Vec<String> = proxy
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("accept failed"))
        .collect();
    assert!(
        second.is_some(),
        "a later line should count the failures left out:\n{}",
        lines.join("\n")
    );
    assert!(
        lines.iter().all(|l| l.contains("Too many open files")),
        "the reason is in the line:\n{}",
        lines.join("\n")
    );
    // One line per interval and call site (the shard's accept loop, the
    // agent's acceptor, the admin endpoint), not one per failure.
    let intervals = started.elapsed().as_secs() / 5 + 1;
    assert!(
        lines.len() as u64 <= 3 * intervals,
        "{} lines in {} intervals:\n{}",
        lines.len(),
        intervals,
        lines.join("\n")
    );
    lines
}

#[test]
fn at_the_descriptor_limit_every_tcp_listener_refuses_without_spinning_and_recovers() {
    let api = Origin::start("api");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .inbound(api.addr())
        .start();
    let (outbound, inbound, admin) = (proxy.outbound(), proxy.inbound(), proxy.admin());
    assert_eq!(get(outbound, "api"), Ok(200));
    assert_eq!(get(inbound, "web"), Ok(200));

    let mut held: Vec<TcpStream> = Vec::new();
    let mut turn = 0;
    let lines = at_the_limit(&proxy, &mut || {
        // Round the listeners: each gets connections that cannot be accepted.
        turn += 1;
        let addr = [outbound, inbound, admin][turn % 3];
        TcpStream::connect(addr).map(|s| held.push(s)).is_ok()
    });
    // The shard's listeners share one call site, so one line per interval
    // names whichever failed first; the admin endpoint has its own.
    for site in [" listener: ", "admin: accept failed"] {
        assert!(
            lines.iter().any(|l| l.contains(site)),
            "a line from {site:?}:\n{}",
            lines.join("\n")
        );
    }

    // Descriptors come back: every listener serves again, without a restart.
    drop(held);
    set_nofile(proxy.pid(), 1024);
    for (addr, host) in [(outbound, "api"), (inbound, "web")] {
        let mut status = Err(String::new());
        let ok = wait_for(Duration::from_secs(10), || {
            status = get(addr, host);
            (status == Ok(200)).then_some(())
        });
        assert!(ok.is_some(), "{addr} should serve again, got {status:?}");
    }
    // Every failure is counted, by listener (the admin endpoint answers
    // this scrape, so it recovered too).
    for listener in ["outbound", "inbound", "admin"] {
        let n = descriptor_failures(&proxy, listener);
        assert!(
            n >= 1.0,
            "coremesh_accept_failures_total{{listener=\"{listener}\"}}: {n}"
        );
    }
    assert!(proxy.admin_get("/ready").status == 200);
}

#[test]
fn at_the_descriptor_limit_a_unix_socket_listener_refuses_without_spinning_and_recovers() {
    let dir = TempDir::new("exhaust-unix");
    let socket = dir.path().join("out.sock");
    let api = Origin::start("api");
    let proxy = ProxyBuilder::new("web")
        .outbound_at(&format!("unix:{}", socket.display()))
        .service("api", &[api.addr()])
        .start();
    let unix_get = || -> Option<String> {
        let mut s = UnixStream::connect(&socket).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /x HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n")
            .ok()?;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        text.lines().next().map(str::to_string)
    };
    let ok = |line: &Option<String>| line.as_deref().is_some_and(|l| l.contains(" 200 "));
    assert!(ok(&unix_get()), "{:?}", unix_get());

    let mut held: Vec<UnixStream> = Vec::new();
    let lines = at_the_limit(&proxy, &mut || {
        UnixStream::connect(&socket).map(|s| held.push(s)).is_ok()
    });
    assert!(
        lines.iter().any(|l| l.contains("outbound listener")),
        "{}",
        lines.join("\n")
    );

    drop(held);
    set_nofile(proxy.pid(), 1024);
    let mut last = None;
    let served = wait_for(Duration::from_secs(10), || {
        last = unix_get();
        ok(&last).then_some(())
    });
    assert!(
        served.is_some(),
        "the socket should serve again, got {last:?}"
    );
    assert!(descriptor_failures(&proxy, "outbound") >= 1.0);
}

/// Starts an upload of `len` body bytes to `api` through `proxy` and sends
/// its first `first` bytes; the rest never comes, so it stays in flight.
fn start_upload(proxy: &Proxy, len: usize, first: usize) -> coremesh_e2e::Client {
    let mut c = proxy.outbound_client();
    let head = format!("POST /upload HTTP/1.1\r\nhost: api\r\ncontent-length: {len}\r\n\r\n");
    let _ = c.try_send(head.as_bytes());
    let _ = c.try_send(&vec![b'x'; first]);
    c
}

#[test]
fn over_the_buffer_budget_uploads_are_shed_with_503_and_small_requests_are_served_after() {
    let api = Origin::start("api");
    // 192 KiB: about two uploads' buffers (a head buffer, a response
    // buffer and a 64 KiB body buffer each).
    let budget = 192 * 1024;
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .limit("buffer_budget", budget)
        .start();
    assert_eq!(get(proxy.outbound(), "api"), Ok(200));

    let mut uploads: Vec<coremesh_e2e::Client> = Vec::new();
    for _ in 0..12 {
        uploads.push(start_upload(&proxy, 10 << 20, 256 * 1024));
        // One at a time, so the first ones are admitted and hold their
        // buffers while the later ones arrive.
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut shed = 0;
    let mut in_flight = 0;
    for c in &mut uploads {
        c.set_read_timeout(Duration::from_secs(2));
        match c.try_read_response() {
            Ok(r) => {
                assert_eq!(r.status, 503, "{r:?}");
                assert_eq!(
                    r.header("coremesh-error"),
                    Some("buffer budget exhausted"),
                    "{r:?}"
                );
                shed += 1;
            }
            // Admitted: the upload is still waiting for its body.
            Err(_) => in_flight += 1,
        }
    }
    assert!(
        shed >= 6,
        "{shed} of 12 uploads shed, {in_flight} in flight"
    );
    assert!(in_flight >= 1, "some uploads are admitted ({shed} shed)");
    let m = proxy.metrics();
    let refused = m.sum(
        "coremesh_buffer_budget_refused_total",
        &[("what", "request")],
    );
    assert!(refused >= shed as f64, "refused {refused}, shed {shed}");
    let leased = m.sum("coremesh_buffer_budget_bytes", &[("state", "leased")]);
    assert!(
        leased <= budget as f64,
        "the shards lease {leased} of a {budget} budget"
    );
    assert!(
        proxy.log_text().contains("buffer budget exhausted"),
        "the shedding is logged"
    );

    // The uploads end: their buffers come back, and small requests pass.
    drop(uploads);
    let mut status = Err(String::new());
    let served = wait_for(Duration::from_secs(10), || {
        status = get(proxy.outbound(), "api");
        (status == Ok(200)).then_some(())
    });
    assert!(
        served.is_some(),
        "small requests pass again, got {status:?}"
    );
    for _ in 0..20 {
        assert_eq!(get(proxy.outbound(), "api"), Ok(200));
    }
    let mut proxy = proxy;
    assert!(proxy.try_exit_status().is_none(), "the proxy stays up");
}
