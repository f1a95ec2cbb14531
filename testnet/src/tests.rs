use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use super::*;

#[test]
fn owner_pid_reads_only_our_names() {
    assert_eq!(owner_pid("cmt123n0-web"), Some(123));
    assert_eq!(owner_pid("cmt77probe"), Some(77));
    assert_eq!(owner_pid("cmtx-web"), None);
    assert_eq!(owner_pid("cmt12-web"), None);
    assert_eq!(owner_pid("other"), None);
}

#[test]
fn bad_names_are_refused_before_anything_is_created() {
    for names in [&["a", "a"][..], &["Web"], &[""], &["hub"]] {
        assert!(matches!(Net::new(names), Err(NetError::BadName(_))));
    }
}

/// Needs root; without it the test says so and passes (the e2e suite's
/// netns tests are the ones that fail in CI when namespaces are missing).
#[test]
fn hosts_reach_each_other_and_a_link_down_cuts_one_off() {
    if let Err(e) = available() {
        eprintln!("skipped: {e}");
        return;
    }
    let net = Net::new(&["a", "b"]).unwrap();
    let (a, b) = (net.host("a"), net.host("b"));
    assert_eq!(a.addr().to_string(), "10.77.0.2");
    let listener = b.enter(|| TcpListener::bind(SocketAddr::new(b.addr(), 0)).unwrap());
    let to = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"hello").unwrap();
    });
    let mut c = a.enter(|| TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap());
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hello");
    server.join().unwrap();

    b.link_down().unwrap();
    assert!(a
        .enter(|| TcpStream::connect_timeout(&to, Duration::from_millis(500)))
        .is_err());
    b.link_up().unwrap();
    let out = a
        .command("ip")
        .args(["-o", "addr", "show", "eth0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.77.0.2/24"));
    let names: Vec<String> = net.hosts().iter().map(|h| h.netns().to_string()).collect();
    drop(net);
    for n in names {
        assert!(
            !Path::new(&format!("/run/netns/{n}")).exists(),
            "{n} left behind"
        );
    }
}
