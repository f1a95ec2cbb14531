//! Response framing (RFC 9112 6.3), interim and switching responses, response
//! plans and errors.

use super::*;

#[test]
fn response_framing() {
    let cases: &[(&[u8], Method, Framing, bool)] = &[
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            Method::Get,
            Framing::Length(5),
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            Method::Head,
            Framing::None,
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::Head,
            Framing::None,
            true,
        ),
        (
            b"HTTP/1.1 204 No Content\r\n\r\n",
            Method::Get,
            Framing::None,
            true,
        ),
        (
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            Method::Get,
            Framing::None,
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::Post,
            Framing::Chunked,
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            Method::Get,
            Framing::Chunked,
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            Method::Get,
            Framing::UntilClose,
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\n\r\n",
            Method::Get,
            Framing::UntilClose,
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::Get,
            Framing::Chunked,
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Method::Get,
            Framing::Length(0),
            false,
        ),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n",
            Method::Get,
            Framing::Length(3),
            false,
        ),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n",
            Method::Get,
            Framing::Length(3),
            true,
        ),
        (
            b"HTTP/1.1 200 Connection established\r\n\r\n",
            Method::Connect,
            Framing::None,
            false,
        ),
        (
            b"HTTP/1.1 407 Auth\r\nContent-Length: 2\r\n\r\n",
            Method::Connect,
            Framing::Length(2),
            true,
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\n",
            Method::Post,
            Framing::None,
            true,
        ),
        (
            b"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\n",
            Method::Get,
            Framing::Length(1),
            true,
        ),
    ];
    for (s, m, framing, ka) in cases {
        let h = res(s, *m);
        assert_eq!(h.head_len, s.len());
        assert_eq!(h.framing, *framing, "{:?}", String::from_utf8_lossy(s));
        assert_eq!(h.keep_alive, *ka, "{:?}", String::from_utf8_lossy(s));
    }
}

#[test]
fn interim_and_switching() {
    let h = res(b"HTTP/1.1 100 Continue\r\n\r\n", Method::Put);
    assert!(h.interim && !h.switching);
    assert_eq!(h.status, 100);
    let h = res(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
        Method::Get,
    );
    assert!(h.interim);

    let s = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Accept: x\r\n\r\n";
    let h = res(s, Method::Get);
    assert!(h.switching && !h.interim && !h.keep_alive);
    assert_eq!(h.framing, Framing::None);
    assert_eq!(
        res_fwd(s, Method::Get, false, false),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x\r\n\
connection: upgrade\r\n\r\n"
    );
}

#[test]
fn interim_then_final_response_back_to_back() {
    let s: &[u8] =
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
    let h = res(s, Method::Post);
    assert!(h.interim);
    let h2 = res(&s[h.head_len..], Method::Post);
    assert_eq!(h2.status, 201);
    assert_eq!(h.head_len + h2.head_len, s.len());
}

#[test]
fn response_plan() {
    let s = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\
Keep-Alive: timeout=5\r\nUpgrade: h2c\r\nServer: s\r\n\r\nok";
    assert_eq!(
        res_fwd(s, Method::Get, false, false),
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: s\r\n\r\n"
    );
    assert_eq!(
        res_fwd(s, Method::Get, true, false),
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: s\r\nconnection: close\r\n\r\n"
    );
    assert_eq!(
        res_fwd(s, Method::Get, false, true),
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: s\r\nconnection: keep-alive\r\n\r\n"
    );
    // An unchanged response is a single segment.
    let s = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let h = res(s, Method::Get);
    let mut p = HeadPlan::default();
    h.plan_forward(s, false, false, &mut p);
    assert_eq!(p.segs, vec![Seg::Src(0..h.head_len)]);
}

#[test]
fn response_with_both_framings_loses_content_length() {
    let s = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n";
    assert_eq!(
        res_fwd(s, Method::Get, true, false),
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX: y\r\nconnection: close\r\n\r\n"
    );
}

#[test]
fn response_errors_are_502() {
    for s in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 1\n\n",
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: \x00\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"HTTP/1.1 600 High\r\n\r\n",
        b"\r\nHTTP/1.1 200 OK\r\n\r\n",
    ] {
        let e = res_err(s);
        assert_eq!(e.status, 502, "{:?}: {e}", String::from_utf8_lossy(s));
    }
    let limits = Limits {
        max_head_bytes: 32,
        max_request_line: 32,
        max_headers: 2,
    };
    let s = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    assert_eq!(
        parse_response(s, Method::Get, &limits).unwrap_err().status,
        502
    );
}

#[test]
fn response_prefixes_are_incomplete() {
    let s = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
    for n in 0..s.len() {
        assert_eq!(
            parse_response(&s[..n], Method::Get, &L),
            Ok(None),
            "prefix {n}"
        );
    }
}

#[test]
fn unchunked_plan_drops_transfer_encoding_and_closes() {
    let src = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-a: 1\r\nConnection: keep-alive\r\n\r\n";
    let r = parse_response(src, Method::Get, &Limits::default())
        .unwrap()
        .unwrap();
    let mut plan = HeadPlan::default();
    r.plan_forward_unchunked(src, &mut plan);
    assert_eq!(
        plan.to_vec(src),
        b"HTTP/1.1 200 OK\r\nx-a: 1\r\nconnection: close\r\n\r\n".to_vec()
    );
}

#[test]
fn a_proxy_error_field_is_found_while_parsing_case_insensitively() {
    let raw = b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nCoremesh-Error:  upstream connection refused \r\ncontent-length: 0\r\n\r\n";
    let r = parse_response(raw, Method::Get, &Limits::default())
        .unwrap()
        .unwrap();
    assert_eq!(
        r.proxy_error(raw),
        Some(&b"upstream connection refused"[..])
    );
    let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let r = parse_response(plain, Method::Get, &Limits::default())
        .unwrap()
        .unwrap();
    assert_eq!(r.proxy_error(plain), None);
}

#[test]
fn a_dropped_response_field_is_left_out_of_the_forwarded_head() {
    let s = b"HTTP/1.1 502 Bad Gateway\r\nCoremesh-Error: upstream connection refused\r\nContent-Length: 0\r\ncoremesh-error: again\r\n\r\n";
    let mut h = res(s, Method::Get);
    h.drop_proxy_error(s);
    let mut p = HeadPlan::default();
    h.plan_forward(s, false, false, &mut p);
    assert_eq!(
        String::from_utf8(p.to_vec(s)).unwrap(),
        "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"
    );
}
