use super::*;

fn feed_all(r: &mut ResponseReader, data: &[u8], step: usize) -> (usize, Option<Response>) {
    // Feeds `data` `step` bytes at a time, as a socket might deliver it,
    // keeping unconsumed bytes like the connection buffer does.
    let mut pending: Vec<u8> = Vec::new();
    let mut total = 0;
    for piece in data.chunks(step) {
        pending.extend_from_slice(piece);
        let (used, s) = r.feed(&pending).unwrap();
        total += used;
        pending.drain(..used);
        if let Step::Done(resp) = s {
            return (total, Some(resp));
        }
    }
    (total, None)
}

#[test]
fn content_length_response_in_any_split() {
    let msg = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    for step in 1..=msg.len() {
        let mut r = ResponseReader::new();
        let (used, resp) = feed_all(&mut r, msg, step);
        assert_eq!(used, msg.len(), "step {step}");
        assert_eq!(
            resp,
            Some(Response {
                status: 200,
                keep_alive: true
            })
        );
        assert!(!r.in_progress());
    }
}

#[test]
fn chunked_response_with_extension_and_trailer() {
    let msg = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
                5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
    for step in 1..=msg.len() {
        let mut r = ResponseReader::new();
        let (used, resp) = feed_all(&mut r, msg, step);
        assert_eq!(used, msg.len(), "step {step}");
        assert_eq!(resp.unwrap().status, 201);
    }
}

#[test]
fn leaves_bytes_after_the_response() {
    let msg = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1";
    let mut r = ResponseReader::new();
    let (used, s) = r.feed(msg).unwrap();
    assert_eq!(used, msg.len() - 8);
    assert!(matches!(s, Step::Done(_)));
}

#[test]
fn connection_close_and_until_close() {
    let mut r = ResponseReader::new();
    let (_, s) = r
        .feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    assert_eq!(
        s,
        Step::Done(Response {
            status: 200,
            keep_alive: false
        })
    );
    let (used, s) = r.feed(b"HTTP/1.0 200 OK\r\n\r\nbody...").unwrap();
    assert_eq!((used, s), (26, Step::More));
    assert_eq!(
        r.feed_eof(),
        Ok(Response {
            status: 200,
            keep_alive: false
        })
    );
}

#[test]
fn skips_interim_and_bodyless_statuses() {
    let mut r = ResponseReader::new();
    let msg =
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n";
    let (used, s) = r.feed(msg).unwrap();
    assert_eq!(used, msg.len());
    assert_eq!(
        s,
        Step::Done(Response {
            status: 304,
            keep_alive: true
        })
    );
}

#[test]
fn rejects_garbage() {
    let mut r = ResponseReader::new();
    assert_eq!(r.feed(b"SSH-2.0-OpenSSH\r\n\r\n"), Err(FrameError::BadHead));
    let mut r = ResponseReader::new();
    assert_eq!(
        r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        Err(FrameError::BadLength)
    );
    let mut r = ResponseReader::new();
    assert_eq!(
        r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        Err(FrameError::BadChunk)
    );
    let mut r = ResponseReader::new();
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    assert_eq!(r.feed_eof(), Err(FrameError::Truncated));
}

#[test]
fn request_builder_and_origin_parser_agree() {
    let req = build_request(
        "/size/16384",
        "origin",
        &[("X-A".into(), "1".into())],
        3,
        false,
    );
    let h = parse_request_head(&req).unwrap().unwrap();
    assert_eq!(h.head_len, req.len() - 3);
    assert_eq!(h.body_len, 3);
    assert!(h.keep_alive);
    assert_eq!(h.size, Some(16384));
    assert!(req.starts_with(b"POST /size/16384 HTTP/1.1\r\nHost: origin\r\n"));

    let req = build_request("/", "x", &[("host".into(), "api".into())], 0, true);
    assert_eq!(
        req,
        b"GET / HTTP/1.1\r\nhost: api\r\nConnection: close\r\n\r\n"
    );
    let h = parse_request_head(&req).unwrap().unwrap();
    assert!(!h.keep_alive);
    assert_eq!(h.size, None);

    let h = parse_request_head(b"GET http://o:1/size/7?x HTTP/1.1\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(h.size, Some(7));
}

#[test]
fn response_builder_round_trips() {
    let resp = build_response(1000, true);
    let mut r = ResponseReader::new();
    let (used, s) = r.feed(&resp).unwrap();
    assert_eq!(used, resp.len());
    assert_eq!(
        s,
        Step::Done(Response {
            status: 200,
            keep_alive: false
        })
    );
}

#[test]
fn the_instance_header_is_kept_by_the_reader() {
    let resp = build_response_from(5, false, Some("api-v1-a"));
    assert!(String::from_utf8_lossy(&resp).contains("\r\nx-instance: api-v1-a\r\n"));
    let mut r = ResponseReader::new();
    let (used, step) = r.feed(&resp).unwrap();
    assert_eq!(used, resp.len());
    assert!(matches!(step, Step::Done(_)));
    assert_eq!(r.instance().unwrap().as_bytes(), b"api-v1-a");
    // A response without one (a proxy's own answer) names none.
    let (_, step) = r.feed(&build_response(0, false)).unwrap();
    assert!(matches!(step, Step::Done(_)));
    assert_eq!(r.instance(), None);
    assert!(Tag::new(&[b'x'; Tag::MAX + 1]).is_none());
}
