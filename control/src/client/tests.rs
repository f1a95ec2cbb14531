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
    assert_eq!(
        Client::new("http://127.0.0.1:7080/", "x")
            .unwrap()
            .authority,
        "127.0.0.1:7080"
    );
    assert_eq!(
        Client::new("http://localhost", "x").unwrap().authority,
        "localhost:80"
    );
    assert!(Client::new("https://x:1", "x").is_err());
    assert!(Client::new("http://x:1/v1", "x").is_err());
}
