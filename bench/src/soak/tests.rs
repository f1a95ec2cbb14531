use super::attribution::{attribute, Fault, FaultKind, Protocol, Request};
use super::resources::{close_wait_inodes, fit, trends, Sample, Series};

const S: u64 = 1_000_000_000;

fn req(protocol: Protocol, from_s: u64, to_s: u64, failure: Option<&'static str>) -> Request {
    Request {
        protocol,
        intended: from_s * S,
        done: to_s * S,
        failure,
    }
}

fn fault(kind: FaultKind, target: &str, start_s: u64, restored_s: u64) -> Fault {
    Fault {
        kind,
        target: target.into(),
        start: start_s * S,
        restored: restored_s * S,
    }
}

#[test]
fn a_failure_in_a_kill_window_on_its_way_is_explained() {
    let faults = [fault(FaultKind::AppKill, "api-v2", 10, 12)];
    let reqs = [
        req(Protocol::Grpc, 9, 11, Some("5xx")),
        // Within the grace after the app came back.
        req(Protocol::Grpc, 15, 15, Some("5xx")),
        req(Protocol::Grpc, 20, 20, None),
    ];
    let a = attribute(&reqs, &faults, 5 * S, 0);
    let t = &a.tallies[&Protocol::Grpc];
    assert_eq!((t.sent, t.succeeded, t.failed, t.unexplained), (3, 1, 2, 0));
    assert_eq!(t.by_fault["app-kill api-v2"], 2);
    assert_eq!(t.by_cause["5xx"], 2);
}

#[test]
fn a_failure_after_the_grace_or_off_its_way_is_unexplained() {
    let faults = [fault(FaultKind::AppKill, "db", 10, 12)];
    let reqs = [
        // db is not on the way of gRPC calls.
        req(Protocol::Grpc, 11, 11, Some("5xx")),
        // After the grace.
        req(Protocol::Tcp, 18, 18, Some("closed")),
        req(Protocol::Tcp, 11, 11, Some("closed")),
    ];
    let a = attribute(&reqs, &faults, 5 * S, 0);
    assert_eq!(a.tallies[&Protocol::Grpc].unexplained, 1);
    assert_eq!(a.tallies[&Protocol::Tcp].unexplained, 1);
    assert_eq!(a.tallies[&Protocol::Tcp].by_fault["app-kill db"], 1);
    assert_eq!(a.unexplained.len(), 2);
    assert_eq!(a.unexplained[0].during, vec!["app-kill db".to_string()]);
}

#[test]
fn reloads_and_control_restarts_explain_nothing() {
    let faults = [
        fault(FaultKind::Sighup, "web", 10, 10),
        fault(FaultKind::ControlRestart, "control", 10, 12),
    ];
    let a = attribute(
        &[req(Protocol::Http1, 10, 11, Some("connect"))],
        &faults,
        5 * S,
        0,
    );
    let t = &a.tallies[&Protocol::Http1];
    assert_eq!(t.unexplained, 1);
    assert!(t.by_fault.is_empty());
}

#[test]
fn only_gets_are_idempotent() {
    assert!(Protocol::Http1.idempotent() && Protocol::H2.idempotent());
    assert!(!Protocol::Grpc.idempotent() && !Protocol::Tcp.idempotent());
    assert!(Protocol::Tcp.passes("db") && !Protocol::Tcp.passes("api-v2"));
    assert!(Protocol::H2.passes("web") && Protocol::H2.passes("api-v1-a"));
}

#[test]
fn fit_finds_the_slope_of_a_line() {
    let pts: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 * i as f64 + 7.0)).collect();
    let (slope, mean) = fit(&pts).unwrap();
    assert!((slope - 3.0).abs() < 1e-9);
    assert!((mean - (3.0 * 4.5 + 7.0)).abs() < 1e-9);
    assert_eq!(fit(&[(1.0, 2.0)]), None);
    assert_eq!(fit(&[(1.0, 2.0), (1.0, 3.0)]), None);
}

fn series(process: &str, from_s: u64, to_s: u64, rss: impl Fn(f64) -> f64) -> Series {
    Series {
        process: process.into(),
        pid: 1,
        samples: (from_s..=to_s)
            .map(|t| Sample {
                t_s: t as f64,
                rss_bytes: rss(t as f64) as u64,
                fds: 20,
                sockets: 10,
                close_wait: 0,
            })
            .collect(),
    }
}

#[test]
fn flat_rss_passes_and_a_leak_fails() {
    const MB: f64 = 1e6;
    let flat = series("web proxy", 0, 600, |_| 10.0 * MB);
    // 10 % over ten minutes: far above 2 %.
    let leak = series("leaky", 0, 600, |t| 10.0 * MB + t * MB / 600.0);
    // Grows only during the warm-up.
    let warm = series(
        "warm",
        0,
        600,
        |t| if t < 60.0 { t * MB } else { 60.0 * MB },
    );
    let ts = trends(&[flat, leak, warm], 60.0, 600.0);
    let ok = |p: &str, m: &str| {
        ts.iter()
            .find(|t| t.process == p && t.measure == m)
            .unwrap()
            .ok
    };
    assert!(ok("web proxy", "rss") && ok("web proxy", "files"));
    assert!(!ok("leaky", "rss"));
    assert!(ok("leaky", "files") && ok("leaky", "close-wait"));
    assert!(ok("warm", "rss"));
}

#[test]
fn a_short_lived_series_is_not_judged() {
    // Restarted half way: covers less than 80 % of the window.
    let s = series("api-v2 proxy", 300, 600, |t| t * 1e6);
    assert!(trends(&[s], 60.0, 600.0).is_empty());
}

#[test]
fn a_restarted_process_warms_up_from_its_start() {
    // Restarted at 20 s, grows for its first minute, then flat: judged
    // from 80 s (covering 520 of the 540 s window).
    let s = series("api-v2 proxy", 20, 600, |t| {
        if t < 80.0 {
            t * 1e6
        } else {
            80e6
        }
    });
    let ts = trends(&[s], 60.0, 600.0);
    assert_eq!(ts.len(), 3);
    assert!(ts.iter().all(|t| t.ok), "{ts:?}");
}

#[test]
fn a_short_window_is_reported_but_not_judged() {
    // 10 % over two and a half minutes.
    let s = series("web proxy", 0, 180, |t| 10e6 + t * 1e6 / 180.0);
    let ts = trends(&[s], 30.0, 180.0);
    let rss = ts.iter().find(|t| t.measure == "rss").unwrap();
    assert!(!rss.judged && rss.ok && rss.rise > 0.5e6);
}

#[test]
fn socket_churn_is_no_leak_but_forgotten_sockets_and_files_are() {
    let mut churn = series("web proxy", 0, 600, |_| 10e6);
    for x in &mut churn.samples {
        // Keep-alive connections come and go: 10 to 70 sockets.
        x.sockets = 10 + (x.t_s as u64 * 7) % 60;
        x.fds = x.sockets + 11;
    }
    let mut forgot = series("forgetful", 0, 600, |_| 10e6);
    for x in &mut forgot.samples {
        x.close_wait = x.t_s as u64 / 60;
        x.sockets = 10 + x.close_wait;
        x.fds = x.sockets + 10;
    }
    let mut files = series("files", 0, 600, |_| 10e6);
    for x in &mut files.samples {
        x.fds = x.sockets + 10 + x.t_s as u64 / 60;
    }
    let ts = trends(&[churn, forgot, files], 60.0, 600.0);
    let ok = |p: &str, m: &str| {
        ts.iter()
            .find(|t| t.process == p && t.measure == m)
            .unwrap()
            .ok
    };
    assert!(ok("web proxy", "files") && ok("web proxy", "close-wait"));
    assert!(!ok("forgetful", "close-wait") && ok("forgetful", "files"));
    assert!(!ok("files", "files"));
}

#[test]
fn close_wait_sockets_are_read_from_the_tcp_table() {
    let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:A1B2 08 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:A1B3 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0000000000000000 20 4 30 10 -1
";
    assert_eq!(close_wait_inodes(table), vec![2222]);
}
