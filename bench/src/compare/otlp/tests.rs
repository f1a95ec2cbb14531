use super::*;

fn exchange(c: &mut TcpStream, req: &[u8]) -> String {
    c.write_all(req).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        head.push_str(&line);
        if line == "\r\n" {
            return head;
        }
    }
}

#[test]
fn counts_exports_and_answers_each_with_an_empty_200() {
    let sink = OtlpSink::start(Vec::new()).unwrap();
    assert!(sink.url().starts_with("http://127.0.0.1:"));
    let addr = sink.url()["http://".len()..].parse::<SocketAddr>().unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    let head = exchange(
        &mut c,
        b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\ncontent-length: 5\r\n\r\nhello",
    );
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.contains("content-length: 0"), "{head}");
    // Keep-alive: a chunked export on the same connection.
    let head = exchange(
        &mut c,
        b"POST /v1/traces HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let head = exchange(&mut c, b"GET /v1/metrics HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    let counts = sink.counts();
    assert_eq!(counts.requests.load(Ordering::Relaxed), 2);
    assert_eq!(counts.bytes.load(Ordering::Relaxed), 12);
    assert_eq!(counts.rejected.load(Ordering::Relaxed), 1);
}
