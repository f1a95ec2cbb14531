use super::*;
use crate::http1::{HeadPlan, Seg};
use std::io::{Read, Write};
use std::sync::mpsc;

/// Runs `f` on a fresh shard and waits for it.
fn on_shard<F, Fut>(f: F)
where
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    start_shard("glommio-test".into(), None, f)
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

#[test]
fn echoes_and_writes_vectored() {
    let (l, addr) = loopback_listener();
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"hello").unwrap();
        let mut echo = [0u8; 5];
        s.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"hello");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        rest
    });
    on_shard(move |desc| async move {
        assert!(desc.starts_with("io_uring"), "{desc}");
        let l = TcpListener::from_std(l).unwrap();
        let stop = Stop::new();
        let (mut s, peer) = l.accept(&stop.handle()).await.unwrap();
        assert!(peer.ip().is_loopback());
        assert!(s.peer_addr().unwrap().ip().is_loopback());
        s.set_nodelay();

        // Read until the 5 bytes are in: appends after what is there.
        let mut buf = Vec::with_capacity(64);
        while buf.len() < 5 {
            let (res, b) = s.read(buf).await;
            assert!(res.unwrap() > 0);
            buf = b;
        }
        assert_eq!(buf, b"hello");
        let (res, buf) = s.write_all(buf, 0..5).await;
        res.unwrap();

        // Head segments from `src` and `own`, then body bytes from `src`.
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
        drop((s, buf));
    });
    assert_eq!(
        client.join().unwrap(),
        b"GET /x HTTP/1.1\r\nhost: up\r\n\r\nbody"
    );
}

#[test]
fn large_vectored_write_survives_a_full_socket_buffer() {
    // Enough to fill the socket buffers so the EAGAIN path runs.
    const N: usize = 8 << 20;
    let (l, addr) = loopback_listener();
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    on_shard(move |_| async move {
        let l = TcpListener::from_std(l).unwrap();
        let stop = Stop::new();
        let (mut s, _) = l.accept(&stop.handle()).await.unwrap();
        let src: Vec<u8> = (0..N).map(|i| (i % 251) as u8).collect();
        let own = b"own".to_vec();
        let plan = HeadPlan {
            segs: vec![Seg::Own(0..3), Seg::Src(0..N / 2)],
            ..HeadPlan::default()
        };
        let v = IoVecs::new(src, &plan, own, N / 2..N, Vec::new());
        let (res, _) = s.write_vectored(v).await;
        res.unwrap();
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
fn stop_fails_a_pending_accept() {
    let (l, _addr) = loopback_listener();
    on_shard(move |_| async move {
        let l = TcpListener::from_std(l).unwrap();
        let stop = Stop::new();
        let h = stop.handle();
        spawn_local(async move {
            sleep(Duration::from_millis(50)).await;
            stop.stop();
        });
        let started = Instant::now();
        let res = timeout(Duration::from_secs(5), l.accept(&h)).await;
        let err = res.expect("stop did not end the accept").err().unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::ECANCELED));
        assert!(started.elapsed() < Duration::from_secs(2));
        // Later accepts fail at once too.
        assert!(l.accept(&h).await.is_err());
    });
}

#[test]
fn cross_thread_wakeup_reaches_a_parked_shard() {
    let (tx, rx) = async_channel::unbounded::<Instant>();
    let (done_tx, done_rx) = mpsc::channel();
    let shard = start_shard("glommio-test".into(), None, move |_| async move {
        for _ in 0..3 {
            let sent = rx.recv().await.unwrap();
            done_tx.send(sent.elapsed()).unwrap();
        }
    })
    .unwrap();
    for _ in 0..3 {
        // Let the shard park before each send.
        std::thread::sleep(Duration::from_millis(100));
        tx.send_blocking(Instant::now()).unwrap();
        let lag = done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("shard was not woken");
        assert!(lag < Duration::from_millis(500), "woken after {lag:?}");
    }
    shard.join().unwrap();
}

#[test]
fn linger_readable_timeout_and_connect() {
    let (l, addr) = loopback_listener();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        go_rx.recv().unwrap();
        s.write_all(b"late").unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
    });
    on_shard(move |_| async move {
        let l = TcpListener::from_std(l).unwrap();
        let stop = Stop::new();
        let (mut s, _) = l.accept(&stop.handle()).await.unwrap();
        // Nothing sent yet: the linger gives the buffer back untouched.
        let buf = Vec::with_capacity(32);
        let buf = match s
            .read_linger(buf, Instant::now() + Duration::from_millis(30))
            .await
        {
            Linger::Idle(b) => b,
            Linger::Read(res, _) => panic!("unexpected read: {res:?}"),
        };
        assert!(buf.is_empty() && buf.capacity() >= 32);
        assert!(timeout(Duration::from_millis(30), s.readable())
            .await
            .is_err());
        go_tx.send(()).unwrap();
        timeout(Duration::from_secs(5), s.readable())
            .await
            .unwrap()
            .unwrap();
        match s
            .read_linger(buf, Instant::now() + Duration::from_secs(5))
            .await
        {
            Linger::Read(Ok(4), b) => assert_eq!(b, b"late"),
            Linger::Read(res, _) => panic!("unexpected read: {res:?}"),
            Linger::Idle(_) => panic!("data did not arrive"),
        }
        drop(s);

        // A refused connect is an error, not a hang.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        assert!(TcpStream::connect(dead_addr, Duration::from_secs(2))
            .await
            .is_err());
    });
    client.join().unwrap();
}

#[test]
fn a_byte_taken_by_a_readiness_wait_comes_back_first() {
    let (l, addr) = loopback_listener();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        go_rx.recv().unwrap();
        s.write_all(b"a").unwrap();
        go_rx.recv().unwrap();
        s.write_all(b"bc").unwrap();
    });
    on_shard(move |_| async move {
        let l = TcpListener::from_std(l).unwrap();
        let stop = Stop::new();
        let (mut s, _) = l.accept(&stop.handle()).await.unwrap();
        // A cancelled wait takes nothing.
        assert!(timeout(Duration::from_millis(20), s.readable())
            .await
            .is_err());
        go_tx.send(()).unwrap();
        timeout(Duration::from_secs(5), s.readable())
            .await
            .unwrap()
            .unwrap();
        // Readable again at once, whether or not the byte was stashed.
        s.readable().await.unwrap();
        let (res, b) = s.read(Vec::with_capacity(1)).await;
        assert_eq!((res.unwrap(), &b[..]), (1, &b"a"[..]));
        go_tx.send(()).unwrap();
        let mut b = Vec::with_capacity(8);
        while b.len() < 2 {
            let (res, back) = s.read(b).await;
            assert!(res.unwrap() > 0);
            b = back;
        }
        assert_eq!(b, b"bc");
        let (res, _) = s.read(b).await;
        assert_eq!(res.unwrap(), 0, "EOF");
    });
    client.join().unwrap();
}

#[test]
fn tunnel_relays_both_ways() {
    let (front, front_addr) = loopback_listener();
    let (back, back_addr) = loopback_listener();
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(front_addr).unwrap();
        s.write_all(b"ping").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let upstream = std::thread::spawn(move || {
        let (mut s, _) = loop {
            match back.accept() {
                Ok(x) => break x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        };
        s.set_nonblocking(false).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(b"pong!").unwrap();
        got
    });
    on_shard(move |_| async move {
        let front = TcpListener::from_std(front).unwrap();
        let stop = Stop::new();
        let (a, _) = front.accept(&stop.handle()).await.unwrap();
        let b = TcpStream::connect(back_addr, Duration::from_secs(2))
            .await
            .unwrap();
        let bufs = (Vec::with_capacity(16), Vec::with_capacity(16));
        let (ab, ba) = TcpStream::tunnel(a, b, bufs, Duration::from_secs(5)).await;
        assert_eq!((ab, ba), (4, 5));
    });
    assert_eq!(upstream.join().unwrap(), b"ping");
    assert_eq!(client.join().unwrap(), b"pong!");
}
