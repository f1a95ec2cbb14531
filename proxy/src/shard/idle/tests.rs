use super::*;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::time::Duration;

#[test]
fn expired_connections_are_shut_down_and_guards_clean_up() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    let set = IdleConns::new();
    let now = Instant::now();
    {
        let _g = set.enter(s.as_raw_fd(), now + Duration::from_secs(60));
        assert_eq!(set.len(), 1);
        assert_eq!(set.expire(now), 0);
    }
    assert_eq!(set.len(), 0, "the guard removed its entry");
    let g = set.enter(s.as_raw_fd(), now);
    assert_eq!(set.expire(now), 1);
    drop(g);
    assert_eq!(set.len(), 0);
    // The peer sees the connection end.
    let mut b = [0u8; 1];
    assert_eq!(c.read(&mut b).unwrap(), 0);
    let _g = set.enter(s.as_raw_fd(), now + Duration::from_secs(60));
    assert_eq!(set.close_all(), 1);
}
