//! Requests that must be rejected before they reach the upstream, one rule per
//! test (RFC 9112 2.2, 3, 5, 6.1, 6.3; RFC 9110 7.2).

use super::*;

#[test]
fn rejects_content_length_with_transfer_encoding() {
    assert_rejected(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    );
}

#[test]
fn rejects_differing_content_length_fields() {
    assert_rejected(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        400,
    );
    // Identical repeated values are one value (RFC 9110 8.6).
    let h = req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n");
    assert_eq!(h.framing, Framing::Length(3));
}

#[test]
fn rejects_content_length_list_with_differing_values() {
    assert_rejected(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\n",
        400,
    );
    let h = req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3,3\r\n\r\n");
    assert_eq!(h.framing, Framing::Length(3));
}

#[test]
fn rejects_non_digit_content_length() {
    for v in ["+3", "-3", "3a", "0x3", "", "3 3", "3.0", "1e3"] {
        let s = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {v}\r\n\r\n");
        assert_rejected(s.as_bytes(), 400);
    }
}

#[test]
fn rejects_overflowing_content_length() {
    assert_rejected(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n",
        400,
    );
    let h = req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n");
    assert_eq!(h.framing, Framing::Length(u64::MAX));
}

#[test]
fn rejects_transfer_encoding_not_ending_in_chunked() {
    assert_rejected(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        400,
    );
    assert_rejected(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        400,
    );
    assert_rejected(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n",
        400,
    );
    assert_rejected(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
        400,
    );
    assert_rejected(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x=1\r\n\r\n",
        400,
    );
}

#[test]
fn rejects_chunked_twice() {
    assert_rejected(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        400,
    );
    assert_rejected(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    );
}

#[test]
fn rejects_transfer_encoding_in_http10() {
    assert_rejected(
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    );
}

#[test]
fn rejects_bare_cr() {
    assert_rejected(b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400);
    assert_rejected(b"GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected(b"GET / HTTP/1.1\r\nHost: a\r\n\r\r\n", 400);
}

#[test]
fn rejects_bare_lf() {
    assert_rejected(b"GET / HTTP/1.1\nHost: a\n\n", 400);
    assert_rejected(b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400);
    assert_rejected(b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400);
    assert_rejected(b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    // Detected as soon as it is seen, not only once the head is complete.
    assert_rejected(b"GET / HTTP/1.1\nHo", 400);
}

#[test]
fn rejects_obs_fold() {
    assert_rejected(b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n", 400);
    assert_rejected(b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\tc\r\n\r\n", 400);
    // RFC 9112 2.2: whitespace between the start line and the first field.
    assert_rejected(b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400);
}

#[test]
fn rejects_whitespace_before_colon() {
    assert_rejected(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400);
    assert_rejected(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length\t: 3\r\n\r\n",
        400,
    );
}

#[test]
fn rejects_invalid_field_names() {
    for n in [
        &b"X Y"[..],
        b"X\x01",
        b"X\"",
        b"(x)",
        b"",
        b"X\x7f",
        b"\xc3\xa9",
    ] {
        let mut s = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        s.extend_from_slice(n);
        s.extend_from_slice(b": v\r\n\r\n");
        assert_rejected(&s, 400);
    }
}

#[test]
fn rejects_invalid_field_values() {
    for v in [&b"a\x00b"[..], b"a\x01", b"\x7f", b"a\x1bb"] {
        let mut s = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        s.extend_from_slice(v);
        s.extend_from_slice(b"\r\n\r\n");
        assert_rejected(&s, 400);
    }
    // obs-text and HTAB are allowed.
    req(b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\tok\r\n\r\n");
}

#[test]
fn rejects_unsupported_versions() {
    assert_rejected(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505);
    assert_rejected(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505);
    assert_rejected(b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505);
    assert_rejected(b"GET / HTTP/3\r\nHost: a\r\n\r\n", 505);
    assert_rejected(b"GET / HTTX/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected(b"GET / http/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected(b"GET /\r\n\r\n", 400);
}

#[test]
fn rejects_malformed_request_lines() {
    assert_rejected(b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected(b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400);
    assert_rejected(b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected(b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected(b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected(b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

#[test]
fn rejects_http11_without_host() {
    assert_rejected(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400);
    // Even with an absolute-form target (RFC 9112 3.2).
    assert_rejected(b"GET http://a/ HTTP/1.1\r\n\r\n", 400);
}

#[test]
fn rejects_more_than_one_host() {
    assert_rejected(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400);
    assert_rejected(b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400);
}

#[test]
fn rejects_invalid_host_values() {
    for v in ["", "a b", "a/b", "user@a", "a:99999", "a:x", "[::1"] {
        let s = format!("GET / HTTP/1.1\r\nHost: {v}\r\n\r\n");
        assert_rejected(s.as_bytes(), 400);
    }
}

#[test]
fn rejects_connect_without_authority_form() {
    assert_rejected(b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected(b"CONNECT http://a:443/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected(b"CONNECT a HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected(b"CONNECT * HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

#[test]
fn rejects_absolute_form_with_other_schemes() {
    assert_rejected(b"GET https://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected(b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected(b"GET http:/a HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected(b"GET http:///a HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected(b"GET http://u:p@a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

#[test]
fn rejects_long_request_line_with_414() {
    let limits = Limits {
        max_head_bytes: 8192,
        max_request_line: 32,
        max_headers: 8,
    };
    // "GET /<n a> HTTP/1.1\r\n" is 16 + n bytes: 32 fits exactly.
    let ok = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(16));
    assert!(parse_request(ok.as_bytes(), &limits).unwrap().is_some());
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(17));
    for n in 0..=long.len() {
        let r = parse_request(&long.as_bytes()[..n], &limits);
        if n < 32 {
            assert_eq!(r, Ok(None), "prefix {n}");
        } else {
            assert_eq!(r.unwrap_err().status, 414, "prefix {n}");
        }
    }
}

#[test]
fn rejects_large_head_with_431() {
    let limits = Limits {
        max_head_bytes: 64,
        max_request_line: 64,
        max_headers: 8,
    };
    let s = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "b".repeat(60));
    for n in 0..=s.len() {
        let r = parse_request(&s.as_bytes()[..n], &limits);
        if n < 64 {
            assert_eq!(r, Ok(None), "prefix {n}");
        } else {
            assert_eq!(r.unwrap_err().status, 431, "prefix {n}");
        }
    }
    // Exactly at the limit is fine.
    let s = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "b".repeat(64 - 32)
    );
    assert_eq!(s.len(), 64);
    assert!(parse_request(s.as_bytes(), &limits).unwrap().is_some());
}

#[test]
fn rejects_too_many_fields_with_431() {
    let limits = Limits {
        max_head_bytes: 8192,
        max_request_line: 64,
        max_headers: 4,
    };
    let ok = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    assert!(parse_request(ok, &limits).unwrap().is_some());
    let s = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
    assert_eq!(parse_request(s, &limits).unwrap_err().status, 431);
}

#[test]
fn header_cap_is_512() {
    let limits = Limits {
        max_head_bytes: 1 << 20,
        max_request_line: 64,
        max_headers: 100_000,
    };
    // Host (line 0), X-1..X-510, then Connection naming X-510 as line 511:
    // the last bits of the drop mask.
    let mut s = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 1..=510 {
        s.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    let kept = s.len() - b"X-510: v\r\n".len();
    s.extend_from_slice(b"Connection: x-510\r\n\r\n");
    let h = parse_request(&s, &limits).unwrap().unwrap();
    let mut p = HeadPlan::default();
    h.plan_forward(&s, b"", &mut p);
    let mut want = s[..kept].to_vec();
    want.extend_from_slice(b"\r\n");
    assert_eq!(p.to_vec(&s), want);

    // 513 fields: over the cap whatever max_headers says.
    let mut s = s[..s.len() - 2].to_vec();
    s.extend_from_slice(b"Y: 1\r\n\r\n");
    assert_eq!(parse_request(&s, &limits).unwrap_err().status, 431);
}

#[test]
fn parse_error_displays_its_reason() {
    let e = req_err(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(e.to_string(), e.reason);
}
