//! The descriptor-level helpers every backend shares: shutdown(2) by raw
//! descriptor, the `MSG_PEEK` probes, the socket options set through a
//! borrowed descriptor, CPU pinning and the tunnel watchdog. Plain std
//! sockets on loopback; scripts/sanitize.sh runs them under
//! AddressSanitizer.

use super::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// A connected loopback pair: (client, accepted server side).
fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

#[test]
fn shutdown_socket_ends_both_directions_and_keeps_the_descriptor() {
    let (mut c, s) = pair();
    shutdown_socket(s.as_raw_fd());
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert!(got.is_empty(), "the peer reads EOF at once");
    // The descriptor is still open (only shut down): its options still read.
    assert!(s.local_addr().is_ok(), "getsockname(2) on it still works");
}

#[test]
fn a_closed_descriptor_is_not_a_crash() {
    // Raw-descriptor helpers get an error back from the kernel, nothing worse.
    let fd = {
        let (_c, s) = pair();
        s.as_raw_fd()
    };
    shutdown_socket(fd);
    assert!(stale(fd), "a descriptor that fails is unusable");
    let mut buf = [0u8; 4];
    assert_eq!(peek_fd(fd, &mut buf), 0);
}

#[test]
fn stale_tells_an_idle_connection_from_a_closed_or_chatty_one() {
    let (mut c, s) = pair();
    s.set_nonblocking(true).unwrap();
    assert!(!stale(s.as_raw_fd()), "idle and open");
    c.write_all(b"x").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(stale(s.as_raw_fd()), "bytes nobody asked for");
    // The probe consumed nothing.
    let mut one = [0u8; 1];
    (&s).read_exact(&mut one).unwrap();
    assert_eq!(&one, b"x");
    assert!(!stale(s.as_raw_fd()));
    drop(c);
    std::thread::sleep(Duration::from_millis(20));
    assert!(stale(s.as_raw_fd()), "the peer closed");
}

#[test]
fn peek_fd_shows_waiting_bytes_and_leaves_them() {
    let (mut c, s) = pair();
    let mut buf = [0u8; 16];
    assert_eq!(peek_fd(s.as_raw_fd(), &mut buf), 0, "nothing yet");
    assert_eq!(peek_fd(s.as_raw_fd(), &mut []), 0);
    c.write_all(b"GET / HTTP/1.1").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let mut small = [0u8; 3];
    assert_eq!(peek_fd(s.as_raw_fd(), &mut small), 3);
    assert_eq!(&small, b"GET");
    let n = peek_fd(s.as_raw_fd(), &mut buf);
    assert_eq!(&buf[..n], b"GET / HTTP/1.1");
    let mut all = [0u8; 14];
    (&s).read_exact(&mut all).unwrap();
    assert_eq!(
        &all, b"GET / HTTP/1.1",
        "peeking took nothing off the socket"
    );
}

#[test]
fn watch_peer_and_peer_patience_set_the_options_on_that_socket() {
    let (c, _s) = pair();
    let sock = socket2::SockRef::from(&c);
    watch_peer(c.as_raw_fd());
    assert!(sock.keepalive().unwrap());
    assert_eq!(sock.keepalive_time().unwrap(), PEER_KEEPALIVE);
    assert_eq!(sock.keepalive_interval().unwrap(), PEER_KEEPALIVE);
    assert_eq!(sock.keepalive_retries().unwrap(), 2);
    assert_eq!(sock.tcp_user_timeout().unwrap(), Some(PEER_DEAD_AFTER));
    peer_patience(c.as_raw_fd(), true);
    assert_eq!(sock.tcp_user_timeout().unwrap(), None);
    assert!(sock.keepalive().unwrap(), "the keepalive stays");
    peer_patience(c.as_raw_fd(), false);
    assert_eq!(sock.tcp_user_timeout().unwrap(), Some(PEER_DEAD_AFTER));
}

#[test]
fn pinning_a_thread_leaves_it_one_allowed_cpu() {
    use nix::sched::{sched_getaffinity, CpuSet};
    let mask = || {
        let set = sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
        (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap())
            .collect::<Vec<_>>()
    };
    let cpu = *mask().last().unwrap();
    let mask = std::thread::spawn(move || {
        pin_current_thread(cpu).unwrap();
        mask()
    })
    .join()
    .unwrap();
    assert_eq!(mask, [cpu]);
    let err = std::thread::spawn(|| pin_current_thread(1 << 20).unwrap_err())
        .join()
        .unwrap();
    assert!(err.to_string().contains("CPU 1048576"), "{err}");
}

#[test]
fn the_watchdog_shuts_an_idle_tunnel_down() {
    let (mut c1, s1) = pair();
    let (mut c2, s2) = pair();
    let last = std::rc::Rc::new(std::cell::Cell::new(std::time::Instant::now()));
    let done = std::rc::Rc::new(std::cell::Cell::new(0u8));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let d = done.clone();
    rt.block_on(async move {
        let dog = tunnel_watchdog(
            [s1.as_raw_fd(), s2.as_raw_fd()],
            Duration::from_millis(40),
            last,
            d.clone(),
            tokio::time::sleep,
        );
        // The pipes this stands for end once their sockets are shut down.
        let pipes = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            d.set(2);
        };
        tokio::join!(dog, pipes);
    });
    assert_eq!(done.get(), 2);
    let mut got = Vec::new();
    c1.read_to_end(&mut got).unwrap();
    c2.read_to_end(&mut got).unwrap();
    assert!(got.is_empty(), "both peers read EOF");
}
