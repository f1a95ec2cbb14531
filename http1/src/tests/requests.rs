//! Request heads: fields, forms, keep-alive, upgrade, and their forwarding
//! plans.

use super::*;

#[test]
fn parses_a_simple_get() {
    let s = b"GET /a/b?c=d HTTP/1.1\r\nHost: api.svc:8080 \r\nAccept: */*\r\n\r\n";
    let h = req(s);
    assert_eq!(h.head_len, s.len());
    assert_eq!(h.method, Method::Get);
    assert_eq!(h.version, Version::Http11);
    assert_eq!(h.target_form, TargetForm::Origin);
    assert_eq!(span(s, &h.target), "/a/b?c=d");
    assert_eq!(span(s, &h.path), "/a/b?c=d");
    assert_eq!(span(s, h.authority.as_ref().unwrap()), "api.svc:8080");
    assert_eq!(h.framing, Framing::None);
    assert!(h.keep_alive && !h.expect_continue && !h.upgrade);
}

#[test]
fn unchanged_request_is_one_segment() {
    let s = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
    let h = req(s);
    assert_eq!(h.framing, Framing::Length(3));
    let mut p = HeadPlan::default();
    h.plan_forward(s, b"", &mut p);
    assert_eq!(p.segs, vec![Seg::Src(0..h.head_len)]);
    assert!(p.own.is_empty());

    // With extra fields: the head, the extra bytes, the blank line.
    h.plan_forward(s, b"x-coremesh-id: 7\r\n", &mut p);
    assert_eq!(
        p.segs,
        vec![
            Seg::Src(0..h.head_len - 2),
            Seg::Own(0..18),
            Seg::Src(h.head_len - 2..h.head_len)
        ]
    );
    assert_eq!(
        p.to_vec(s),
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nx-coremesh-id: 7\r\n\r\n".to_vec()
    );
}

#[test]
fn plan_is_reused_without_growing() {
    let s = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x\r\nX: 1\r\n\r\n";
    let h = req(s);
    let mut p = HeadPlan::default();
    h.plan_forward(s, b"a: b\r\n", &mut p);
    let (c1, c2) = (p.segs.capacity(), p.own.capacity());
    for _ in 0..100 {
        h.plan_forward(s, b"a: b\r\n", &mut p);
    }
    assert_eq!((p.segs.capacity(), p.own.capacity()), (c1, c2));
}

#[test]
fn pipelined_requests_back_to_back() {
    let s: &[u8] = b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
GET /2 HTTP/1.1\r\nHost: a\r\n\r\n\
PUT /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
DELETE /4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let mut off = 0;
    let mut seen = Vec::new();
    while off < s.len() {
        let buf = &s[off..];
        let h = req(buf);
        seen.push((h.method, span(buf, &h.path)));
        off += h.head_len;
        match h.framing {
            Framing::None => {}
            Framing::Length(n) => off += n as usize,
            Framing::Chunked => {
                let mut d = ChunkedDecoder::new();
                off += d.feed(&s[off..]).unwrap();
                assert!(d.is_done());
            }
            Framing::UntilClose => unreachable!(),
        }
        if !h.keep_alive {
            break;
        }
    }
    assert_eq!(off, s.len());
    assert_eq!(
        seen,
        vec![
            (Method::Post, "/1".into()),
            (Method::Get, "/2".into()),
            (Method::Put, "/3".into()),
            (Method::Delete, "/4".into()),
        ]
    );
}

#[test]
fn incomplete_heads_need_more() {
    let s = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    for n in 0..s.len() {
        assert_eq!(parse_request(&s[..n], &L), Ok(None), "prefix {n}");
    }
}

#[test]
fn leading_empty_lines_are_skipped_and_not_forwarded() {
    let s = b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let h = req(s);
    assert_eq!(h.head_len, s.len());
    let mut p = HeadPlan::default();
    h.plan_forward(s, b"", &mut p);
    assert_eq!(p.segs, vec![Seg::Src(4..s.len())]);
}

#[test]
fn absolute_form_is_rewritten_to_origin_form() {
    let s = b"GET http://api.svc:8080/a/b?c HTTP/1.1\r\nHost: api.svc:8080\r\nAccept: */*\r\n\r\n";
    let h = req(s);
    assert_eq!(h.target_form, TargetForm::Absolute);
    assert_eq!(span(s, h.authority.as_ref().unwrap()), "api.svc:8080");
    assert_eq!(span(s, &h.path), "/a/b?c");
    assert_eq!(
        fwd(s, b""),
        "GET /a/b?c HTTP/1.1\r\nAccept: */*\r\nhost: api.svc:8080\r\n\r\n"
    );
}

#[test]
fn absolute_form_replaces_a_different_host() {
    // RFC 9112 3.2.2: the target's authority wins over the Host field.
    let s = b"GET http://real/x HTTP/1.1\r\nHost: spoofed\r\n\r\n";
    let h = req(s);
    assert_eq!(span(s, h.authority.as_ref().unwrap()), "real");
    assert_eq!(fwd(s, b""), "GET /x HTTP/1.1\r\nhost: real\r\n\r\n");
}

#[test]
fn absolute_form_http10_without_host_gets_one() {
    let s = b"GET http://api HTTP/1.0\r\nUser-Agent: t\r\n\r\n";
    let h = req(s);
    assert_eq!(h.version, Version::Http10);
    assert!(h.path.is_empty());
    assert_eq!(
        fwd(s, b"x: y\r\n"),
        "GET / HTTP/1.0\r\nUser-Agent: t\r\nhost: api\r\nx: y\r\n\r\n"
    );
    let s = b"GET HTTP://api?q=1 HTTP/1.0\r\n\r\n";
    assert_eq!(fwd(s, b""), "GET /?q=1 HTTP/1.0\r\nhost: api\r\n\r\n");
}

#[test]
fn http10_origin_form_without_host_has_no_authority() {
    let s = b"GET / HTTP/1.0\r\n\r\n";
    let h = req(s);
    assert_eq!(h.authority, None);
    assert!(!h.keep_alive);
    assert_eq!(fwd(s, b""), "GET / HTTP/1.0\r\n\r\n");
}

#[test]
fn hop_by_hop_fields_are_removed() {
    let s = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Trace\r\nX-Trace: 1\r\n\
Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\n\
Accept: */*\r\nx-trace: 2\r\nX-Traced: 3\r\n\r\n";
    let h = req(s);
    assert!(h.keep_alive && !h.upgrade);
    assert_eq!(
        fwd(s, b""),
        "GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nX-Traced: 3\r\n\r\n"
    );
}

#[test]
fn connection_cannot_strip_framing_or_host() {
    // Dropping Content-Length would let the body smuggle a second request.
    let s =
        b"POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length, host, transfer-encoding\r\n\
Content-Length: 4\r\n\r\nGET ";
    let h = req(s);
    assert_eq!(h.framing, Framing::Length(4));
    assert_eq!(
        fwd(s, b""),
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n"
    );
}

#[test]
fn upgrade_keeps_upgrade_and_adds_connection() {
    let s = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Key: k\r\n\r\n";
    let h = req(s);
    assert!(h.upgrade);
    assert_eq!(
        fwd(s, b""),
        "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\
connection: upgrade\r\n\r\n"
    );
    // Without the connection option, or in HTTP/1.0, Upgrade is dropped.
    let s = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n";
    assert!(!req(s).upgrade);
    assert_eq!(fwd(s, b""), "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let s = b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert!(!req(s).upgrade);
    assert_eq!(fwd(s, b""), "GET / HTTP/1.0\r\n\r\n");
    // Connection: upgrade without an Upgrade field is no upgrade.
    assert!(!req(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n").upgrade);
}

#[test]
fn keep_alive_by_version() {
    assert!(req(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive);
    assert!(!req(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
    assert!(!req(b"GET / HTTP/1.1\r\nHost: a\r\nconnection: foo, CLOSE\r\n\r\n").keep_alive);
    assert!(!req(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
    let s = b"GET / HTTP/1.0\r\nHost: a\r\nConnection: Keep-Alive\r\n\r\n";
    let h = req(s);
    assert!(h.keep_alive);
    assert_eq!(fwd(s, b""), "GET / HTTP/1.0\r\nHost: a\r\n\r\n");
    assert!(
        !req(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n").keep_alive
    );
}

#[test]
fn expect_continue() {
    let h = req(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n");
    assert!(h.expect_continue);
    assert!(!req(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: x\r\n\r\n").expect_continue);
}

#[test]
fn chunked_request_framing() {
    let h = req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n");
    assert_eq!(h.framing, Framing::Chunked);
    let h = req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(h.framing, Framing::Chunked);
}

#[test]
fn connect_and_asterisk_forms() {
    let s = b"CONNECT api.svc:443 HTTP/1.1\r\nHost: api.svc:443\r\n\r\n";
    let h = req(s);
    assert_eq!(h.target_form, TargetForm::Authority);
    assert_eq!(span(s, h.authority.as_ref().unwrap()), "api.svc:443");
    assert!(h.path.is_empty());
    assert_eq!(fwd(s, b""), String::from_utf8_lossy(s));

    let s = b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n";
    let h = req(s);
    assert_eq!(h.target_form, TargetForm::Asterisk);
    assert_eq!(span(s, &h.path), "*");
}

#[test]
fn methods() {
    for (m, want, idem) in [
        ("GET", Method::Get, true),
        ("HEAD", Method::Head, true),
        ("POST", Method::Post, false),
        ("PUT", Method::Put, true),
        ("DELETE", Method::Delete, true),
        ("OPTIONS", Method::Options, true),
        ("TRACE", Method::Trace, true),
        ("PATCH", Method::Patch, false),
        ("PROPFIND", Method::Other, false),
        ("get", Method::Other, false),
    ] {
        let s = format!("{m} / HTTP/1.1\r\nHost: a\r\n\r\n");
        let h = req(s.as_bytes());
        assert_eq!(h.method, want);
        assert_eq!(h.method.is_idempotent(), idem, "{m}");
    }
    assert!(!Method::Connect.is_idempotent());
}

#[test]
fn header_lookup_is_case_insensitive_and_trimmed() {
    let src = b"GET / HTTP/1.1\r\nHost: api\r\nX-Canary:  true \r\nx-other: 1\r\n\r\n";
    let h = parse_request(src, &Limits::default()).unwrap().unwrap();
    assert_eq!(h.header(src, "x-canary"), Some(&b"true"[..]));
    assert_eq!(h.header(src, "HOST"), Some(&b"api"[..]));
    assert_eq!(h.header(src, "missing"), None);
}
