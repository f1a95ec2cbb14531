//! The lingering close's raw-descriptor probes: FIONREAD through ioctl(2)
//! (the one `unsafe` here) and the discarding read. scripts/sanitize.sh
//! runs them under AddressSanitizer.

use super::*;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

#[test]
fn unread_bytes_counts_what_waits_and_discard_takes_it_all() {
    let (mut c, s) = pair();
    s.set_nonblocking(true).unwrap();
    assert_eq!(unread_bytes(s.as_raw_fd()), 0);
    assert!(discard_queued(s.as_raw_fd()), "open, nothing queued");
    // More than one pass of the 16 KiB sink.
    c.write_all(&vec![b'u'; 40_000]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(unread_bytes(s.as_raw_fd()), 40_000);
    assert!(discard_queued(s.as_raw_fd()), "the client may send more");
    assert_eq!(unread_bytes(s.as_raw_fd()), 0);
    c.write_all(b"last").unwrap();
    drop(c);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(!discard_queued(s.as_raw_fd()), "the client closed");
}

#[test]
fn a_descriptor_that_is_not_a_socket_reads_as_nothing_queued() {
    let f = std::fs::File::open("/dev/null").unwrap();
    assert_eq!(unread_bytes(f.as_raw_fd()), 0);
    assert_eq!(unread_bytes(-1), 0);
    assert!(!discard_queued(-1), "a failing descriptor is done");
}
