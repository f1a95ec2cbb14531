use super::*;

#[test]
fn parses_plain_and_chunked() {
    let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
    let r = parse_response(
        b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    .unwrap();
    assert_eq!((r.status, r.body.as_slice()), (400, &b"abcde"[..]));
    assert_eq!(
        parse_response(b"garbage").unwrap_err(),
        ResponseError::NoHead
    );
    assert_eq!(
        parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").unwrap_err(),
        ResponseError::BadChunkSize { text: "zz".into() }
    );
    assert!(matches!(
        parse_response(b"HTTP/1.1 200 \xff\r\n\r\n").unwrap_err(),
        ResponseError::HeadNotUtf8(_)
    ));
}

#[test]
fn urls() {
    let authority = |url: &str| Client::new(url, "x", None).map(|c| c.targets[0].authority.clone());
    assert_eq!(
        authority("http://127.0.0.1:7080/").unwrap(),
        "127.0.0.1:7080"
    );
    assert_eq!(authority("http://localhost").unwrap(), "localhost:80");
    assert_eq!(authority("http://[::1]:7080").unwrap(), "[::1]:7080");
    assert_eq!(authority("http://[::1]").unwrap(), "[::1]:80");
    assert!(authority("ftp://x:1").is_err());
    assert!(authority("http://x:1/v1").is_err());
    assert!(matches!(
        Client::new("https://x:1", "x", None),
        Err(ClientError::NoCa { .. })
    ));
    assert!(matches!(
        Client::new("https://x:1", "x", Some(Path::new("/nonexistent/ca.pem"))),
        Err(ClientError::BadCa { .. })
    ));
}

#[test]
fn presented_names_read_as_typed() {
    assert_eq!(bare_name("DnsName(\"localhost\")"), "localhost");
    assert_eq!(bare_name("IpAddress(10.0.0.5)"), "10.0.0.5");
    assert_eq!(bare_name("control.example"), "control.example");
}

#[test]
fn streamed_lines_arrive_whole_however_the_bytes_are_cut() {
    let body = b"{\"a\":1}\n{\"b\":2}\n";
    let chunked = b"8\r\n{\"a\":1}\n\r\n8\r\n{\"b\":2}\n\r\n0\r\n\r\n";
    for (framed, is_chunked) in [(&chunked[..], true), (&body[..], false)] {
        for cut in 1..framed.len() {
            let mut lines = Lines::new(is_chunked);
            let mut got = Vec::new();
            let mut each = |l: &[u8]| {
                got.push(String::from_utf8(l.to_vec()).unwrap());
                true
            };
            for piece in framed.chunks(cut) {
                lines.push(piece, &mut each).unwrap();
            }
            assert_eq!(got, ["{\"a\":1}", "{\"b\":2}"], "cut every {cut} bytes");
        }
    }
    // Stopping early.
    let mut lines = Lines::new(false);
    let mut n = 0;
    let more = lines
        .push(body, &mut |_| {
            n += 1;
            false
        })
        .unwrap();
    assert_eq!((more, n), (false, 1));
}

/// A one-connection-at-a-time HTTP server on loopback answering `status`
/// to every request; counts the requests it read.
fn answering(status: u16) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match conn.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            count.fetch_add(1, Ordering::SeqCst);
            let body = format!("{{\"status\":{status}}}");
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, served)
}

/// A loopback URL where nothing listens (connection refused).
fn refused() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

#[test]
fn several_urls_are_tried_in_order_until_one_accepts() {
    use std::sync::atomic::Ordering;
    assert_eq!(try_order(0, 3).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(try_order(2, 3).collect::<Vec<_>>(), vec![2, 0, 1]);
    assert_eq!(try_order(0, 1).collect::<Vec<_>>(), vec![0]);

    // The first is down: the second answers, and later requests go
    // straight to it.
    let (live, served) = answering(200);
    let c = Client::with_urls(&[refused(), live.clone()], "x", None).unwrap();
    assert_eq!(c.get("/v1/history").unwrap().status, 200);
    assert_eq!(c.first.get(), 1);
    assert_eq!(c.get("/v1/history").unwrap().status, 200);
    assert_eq!(served.load(Ordering::SeqCst), 2);

    // An error answered by a live replica is final: the next one is not
    // asked.
    let (failing, failed) = answering(500);
    let (other, asked) = answering(200);
    let c = Client::with_urls(&[failing, other], "x", None).unwrap();
    assert_eq!(c.get("/v1/history").unwrap().status, 500);
    assert_eq!(failed.load(Ordering::SeqCst), 1);
    assert_eq!(asked.load(Ordering::SeqCst), 0);

    // None up: an error that names every address tried.
    let (a, b) = (refused(), refused());
    let e = Client::with_urls(&[a.clone(), b.clone()], "x", None)
        .unwrap()
        .get("/")
        .err()
        .unwrap();
    let text = e.to_string();
    assert!(matches!(e, ClientError::NoneReachable { .. }), "{text}");
    for url in [a, b] {
        assert!(text.contains(url.trim_start_matches("http://")), "{text}");
    }
    // One URL: the error it always gave.
    assert!(matches!(
        Client::with_urls(&[refused()], "x", None).unwrap().get("/"),
        Err(ClientError::Unreachable { .. })
    ));
    // No URL at all.
    assert!(matches!(
        Client::with_urls(&[] as &[&str], "x", None),
        Err(ClientError::BadUrl(_))
    ));
}
