//! The monoio backend's own code around its `unsafe` (and the `unsafe` it
//! replaced): the direct `sendmsg` of an `IoVecs` and the ring write of what
//! the socket did not take, the half-close, the duplicated descriptor, the
//! marked connect's borrowed descriptor, and the timeout future's pinned
//! fields. Each test drives a real socket on loopback; scripts/sanitize.sh
//! runs them under AddressSanitizer.

use super::*;
use crate::http1::{HeadPlan, Seg};
use std::io::{Read, Write};

/// Runs `f` on a fresh shard and waits for it.
fn on_shard<F, Fut>(f: F)
where
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    start_shard("monoio-test".into(), None, f)
        .unwrap()
        .join()
        .unwrap();
}

fn loopback_listener() -> (std::net::TcpListener, SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

async fn accept_one(l: std::net::TcpListener) -> TcpStream {
    let l = TcpListener::from_std(l).unwrap();
    let stop = Stop::new();
    let (s, peer) = l.accept(&stop.handle()).await.unwrap();
    assert!(peer.ip().is_loopback());
    s
}

#[test]
fn a_write_and_a_vectored_write_arrive_whole_and_in_order() {
    let (l, addr) = loopback_listener();
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    on_shard(move |_| async move {
        let mut s = accept_one(l).await;
        // write_all of a middle range: one direct send(2).
        let (res, _) = s
            .write_all(b"xxHTTP/1.1 200 OK\r\nyy".to_vec(), 2..19)
            .await;
        res.unwrap();
        // Head segments from `src` and `own`, then body bytes from `src`:
        // one direct sendmsg(2) of three iovecs.
        let src = b"GET /x HTTP/1.1\r\nbody".to_vec();
        let own = b"host: up\r\n\r\n".to_vec();
        let plan = HeadPlan {
            segs: vec![Seg::Src(0..17), Seg::Own(0..own.len())],
            ..HeadPlan::default()
        };
        let v = IoVecs::new(src, &plan, own, 17..21, Vec::new());
        let (res, v) = s.write_vectored(v).await;
        res.unwrap();
        assert_eq!(v.remaining(), 0);
        let (src, own, _) = v.into_parts();
        assert_eq!(
            src, b"GET /x HTTP/1.1\r\nbody",
            "the buffers come back unchanged"
        );
        assert_eq!(own, b"host: up\r\n\r\n");
    });
    assert_eq!(
        client.join().unwrap(),
        b"HTTP/1.1 200 OK\r\nGET /x HTTP/1.1\r\nhost: up\r\n\r\nbody"
    );
}

#[test]
fn a_vectored_write_larger_than_the_socket_buffer_finishes_through_the_ring() {
    // More than the loopback send and receive buffers hold, read only after
    // a pause: the direct sendmsg takes part, the ring (IoVecsBuf) the rest,
    // from an iovec advanced into the middle of a buffer.
    const N: usize = 6 << 20;
    let (l, addr) = loopback_listener();
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    on_shard(move |_| async move {
        let mut s = accept_one(l).await;
        let src: Vec<u8> = (0..N).map(|i| (i % 251) as u8).collect();
        let plan = HeadPlan {
            segs: vec![Seg::Own(0..3), Seg::Src(0..N / 2)],
            ..HeadPlan::default()
        };
        let v = IoVecs::new(src, &plan, b"own".to_vec(), N / 2..N, Vec::new());
        let (res, v) = s.write_vectored(v).await;
        res.unwrap();
        assert_eq!(v.remaining(), 0);
    });
    let got = client.join().unwrap();
    assert_eq!(got.len(), N + 3);
    assert_eq!(&got[..3], b"own");
    assert!(got[3..]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (i % 251) as u8));
}

#[test]
fn a_write_to_a_closed_peer_is_an_error_not_a_signal() {
    let (l, addr) = loopback_listener();
    let client = std::thread::spawn(move || {
        let s = std::net::TcpStream::connect(addr).unwrap();
        // Reset on close: unread bytes make the kernel answer with RST.
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    });
    on_shard(move |_| async move {
        let mut s = accept_one(l).await;
        client.join().unwrap();
        sleep(Duration::from_millis(50)).await;
        // MSG_NOSIGNAL: EPIPE/ECONNRESET comes back instead of SIGPIPE
        // ending the test process.
        let mut failed = false;
        for _ in 0..10 {
            let (res, _) = s.write_all(vec![b'x'; 1024], 0..1024).await;
            if res.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "writes to a reset peer kept succeeding");
    });
}

#[test]
fn shutdown_write_sends_eof_and_reading_goes_on() {
    let (l, addr) = loopback_listener();
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let mut got = Vec::new();
        // EOF arrives while the socket stays open for the other direction.
        s.read_to_end(&mut got).unwrap();
        s.write_all(b"after eof").unwrap();
        got
    });
    on_shard(move |_| async move {
        let mut s = accept_one(l).await;
        let (res, _) = s.write_all(b"bye".to_vec(), 0..3).await;
        res.unwrap();
        s.shutdown_write();
        let mut buf = Vec::with_capacity(64);
        while buf.len() < 9 {
            let (res, b) = s.read(buf).await;
            assert!(res.unwrap() > 0, "EOF before the client's bytes");
            buf = b;
        }
        assert_eq!(buf, b"after eof");
    });
    assert_eq!(client.join().unwrap(), b"bye");
}

#[test]
fn a_clone_is_the_same_socket_and_outlives_the_original() {
    let (l, addr) = loopback_listener();
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"ping").unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    on_shard(move |_| async move {
        let mut s = accept_one(l).await;
        let mut clone = s.try_clone().unwrap();
        assert_ne!(clone.raw_fd(), s.raw_fd(), "a duplicated descriptor");
        let mut buf = Vec::with_capacity(16);
        while buf.len() < 4 {
            let (res, b) = s.read(buf).await;
            assert!(res.unwrap() > 0);
            buf = b;
        }
        assert_eq!(buf, b"ping");
        // The original closes; the clone still writes to the same peer.
        drop(s);
        let (res, _) = clone.write_all(b"pong".to_vec(), 0..4).await;
        res.unwrap();
    });
    assert_eq!(client.join().unwrap(), b"pong");
}

#[test]
fn a_marked_connect_reports_the_connect_result_read_from_the_socket() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SO_MARK needs CAP_NET_ADMIN; not run as a non-root user");
        return;
    }
    let (l, addr) = loopback_listener();
    // A port nobody listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    on_shard(move |_| async move {
        let s = TcpStream::connect_marked(addr, 0x2a).await.unwrap();
        assert_eq!(s.local_addr().unwrap().ip(), addr.ip());
        let err = TcpStream::connect_marked(closed, 0x2a)
            .await
            .expect_err("nobody listens there");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        drop(l);
    });
}

/// A future that is pending `n` times (waking itself), then ready.
struct PendingTimes(u32);

impl Future for PendingTimes {
    type Output = u32;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<u32> {
        if self.0 == 0 {
            return std::task::Poll::Ready(7);
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

#[test]
fn a_timeout_returns_what_finishes_in_time_and_elapses_on_what_does_not() {
    on_shard(|_| async {
        // Ready on the first poll: no timer is made.
        let t = timeout(Duration::from_secs(5), async { 1 });
        assert!(t.sleep.is_none());
        assert_eq!(t.await, Ok(1));
        // Pending first: the timer is made in place (pinned) and polled
        // again on each wake-up until the value is ready.
        assert_eq!(
            timeout(Duration::from_secs(5), PendingTimes(3)).await,
            Ok(7)
        );
        // Never ready: the timer fires.
        let never = std::future::pending::<()>();
        assert_eq!(
            timeout(Duration::from_millis(20), never).await,
            Err(Elapsed)
        );
        // A deadline already passed: a value ready on the first poll still
        // wins; one that has to wait does not.
        let past = Instant::now() - Duration::from_millis(1);
        assert_eq!(timeout_at(past, async { 1 }).await, Ok(1));
        assert_eq!(timeout_at(past, PendingTimes(1)).await, Err(Elapsed));
        // A future that borrows from its own (pinned) state across awaits.
        let borrowing = async {
            let v = [1u8, 2, 3];
            let r = &v;
            sleep(Duration::from_millis(5)).await;
            r.iter().map(|&b| b as u32).sum::<u32>()
        };
        assert_eq!(timeout(Duration::from_secs(5), borrowing).await, Ok(6));
    });
}
