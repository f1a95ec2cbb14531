use super::*;
use std::io::{Read, Write};

fn start(cfg: OriginConfig) -> (SocketAddr, Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let h = std::thread::spawn(move || serve(l, cfg, s).unwrap());
    (addr, stop, h)
}

/// A blocking client that keeps bytes past one response for the next
/// (pipelined responses can arrive in one read).
struct Client {
    s: std::net::TcpStream,
    buf: Vec<u8>,
    filled: usize,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            s,
            buf: vec![0u8; 65536],
            filled: 0,
        }
    }

    fn response(&mut self) -> (u16, bool) {
        let mut r = crate::http::ResponseReader::new();
        loop {
            let (used, step) = r.feed(&self.buf[..self.filled]).unwrap();
            self.buf.copy_within(used..self.filled, 0);
            self.filled -= used;
            if let crate::http::Step::Done(resp) = step {
                return (resp.status, resp.keep_alive);
            }
            let n = self.s.read(&mut self.buf[self.filled..]).unwrap();
            assert!(n > 0, "closed early");
            self.filled += n;
        }
    }
}

#[test]
fn serves_sizes_keep_alive_pipelined_and_close() {
    let (addr, stop, h) = start(OriginConfig {
        body_size: 10,
        delay: Duration::ZERO,
        instance: None,
    });
    let mut c = Client::new(addr);
    // Two pipelined requests, one with a body, then a close.
    c.s.write_all(
        b"POST /size/100000 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n",
    )
    .unwrap();
    assert_eq!(c.response(), (200, true));
    assert_eq!(c.response(), (200, true));
    c.s.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(c.response(), (200, false));
    let mut rest = Vec::new();
    c.s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty() && c.filled == 0);
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
}

#[test]
fn delay_holds_the_response() {
    let (addr, stop, h) = start(OriginConfig {
        body_size: 1,
        delay: Duration::from_millis(50),
        instance: Some("api-v1-a".into()),
    });
    let mut c = Client::new(addr);
    let t = std::time::Instant::now();
    c.s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(c.response().0, 200);
    assert!(t.elapsed() >= Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
}

#[test]
fn h2c_and_grpc_on_the_same_port() {
    use crate::load::http2::{probe, Mode};
    let (addr, stop, h) = start(OriginConfig {
        body_size: 10,
        delay: Duration::ZERO,
        instance: Some("api-v1-a".into()),
    });
    assert_eq!(
        probe(addr, "origin", "/size/300", Mode::Get).unwrap(),
        (200, None)
    );
    let call = Mode::Grpc { reply_size: 1000 };
    assert_eq!(probe(addr, "api", "/", call).unwrap(), (200, Some(0)));
    // HTTP/1.1 still works beside it.
    let mut c = Client::new(addr);
    c.s.write_all(b"POST /size/5 HTTP/1.1\r\nContent-Length: 2\r\n\r\nab")
        .unwrap();
    assert_eq!(c.response(), (200, true));
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
}

#[test]
fn preface_sniffing() {
    use http2::{sniff, Sniff, PREFACE};
    assert_eq!(sniff(b"PRI * HTTP/2"), Sniff::Undecided);
    assert_eq!(sniff(PREFACE), Sniff::Http2);
    assert_eq!(sniff(b"POST / HTTP/1.1\r\n"), Sniff::Http1);
    assert_eq!(sniff(b"G"), Sniff::Http1);
}

/// The same loop answers HTTP/1.1 on the Unix socket beside the TCP port;
/// a socket file left by an earlier run is replaced, anything else at the
/// path is refused, not deleted.
#[test]
fn serves_http1_on_a_unix_socket_too() {
    use std::os::unix::net::UnixStream as StdUnix;
    let dir =
        std::env::temp_dir().join(format!("coremesh-bench-origin-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("origin.sock");
    // A stale socket file: bound once, its listener dropped.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let unix = bind_unix(&path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o666, "any local user may connect");
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let cfg = OriginConfig {
        body_size: 10,
        delay: Duration::ZERO,
        instance: None,
    };
    let h = std::thread::spawn(move || serve_with_unix(l, Some(unix), cfg, st).unwrap());

    let mut s = StdUnix::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /size/5 HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(
        resp.split("\r\n\r\n").nth(1).map(str::len),
        Some(5),
        "{resp}"
    );
    // TCP still answers.
    let mut c = Client::new(addr);
    c.s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(c.response(), (200, true));
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();

    let file = dir.join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    let err = bind_unix(&file).expect_err("a regular file is not replaced");
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    std::fs::remove_dir_all(&dir).unwrap();
}
