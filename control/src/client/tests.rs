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
    let authority = |url: &str| Client::new(url, "x", None).map(|c| c.authority);
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
