//! Chunked bodies (RFC 9112 7.1): extensions, trailers, byte-at-a-time feeding,
//! and every malformation.

use super::*;

#[test]
fn chunked_with_extensions_and_trailers_byte_by_byte() {
    let body = b"5;name=value;q=\"a b\"\r\nhello\r\n\
A ; x\r\n0123456789\r\n\
0;last\r\nX-Checksum: abc\r\nX-Other:\t v \r\n\r\n";
    let mut s = body.to_vec();
    s.extend_from_slice(b"GET / HTTP/1.1\r\n");
    assert_eq!(feed_all(&s), (Ok(body.len()), true));
    assert_eq!(feed_bytewise(&s), (Ok(body.len()), true));
    let mut d = ChunkedDecoder::new();
    d.feed(body).unwrap();
    assert_eq!(d.feed(b"more"), Ok(0));
}

#[test]
fn chunked_simple_and_partial() {
    let body = b"3\r\nabc\r\n0\r\n\r\n";
    for n in 0..body.len() {
        let (r, done) = feed_all(&body[..n]);
        assert_eq!((r, done), (Ok(n), false), "prefix {n}");
    }
    assert_eq!(feed_all(b"000\r\n\r\n"), (Ok(7), true));
    assert_eq!(feed_all(b"ffffffffffffffff\r\n"), (Ok(18), false));
    assert_eq!(
        feed_all(b"0000000000000001\r\nx\r\n0\r\n\r\n"),
        (Ok(26), true)
    );
}

#[test]
fn chunked_errors() {
    let bad: &[&[u8]] = &[
        b"\r\n",                    // no size
        b"g\r\n",                   // not hex
        b"-1\r\n",                  // sign
        b"0x5\r\n",                 // prefix
        b"00000000000000001\r\n",   // 17 digits
        b"3\nabc\r\n",              // bare LF after size
        b"3\rabc\r\n",              // bare CR
        b"3;a\nabc\r\n",            // bare LF after extension
        b"3 \r\nabc\r\n",           // whitespace then CRLF
        b"3;a\x01\r\nabc\r\n",      // control in extension
        b"3\r\nabcd\r\n",           // data longer than size
        b"3\r\nabc\n0\r\n\r\n",     // data followed by bare LF
        b"3\r\nabc\r0\r\n\r\n",     // data followed by bare CR
        b"0\r\n\n",                 // bare LF ending the body
        b"0\r\n\r0",                // bare CR ending the body
        b"0\r\nX: a\n\r\n",         // bare LF in trailer
        b"0\r\nX: a\r\n b\r\n\r\n", // obs-fold in trailer
        b"0\r\nX : a\r\n\r\n",      // whitespace before colon
        b"0\r\nX a\r\n\r\n",        // no colon
        b"0\r\n: a\r\n\r\n",        // empty name
        b"0\r\nX: a\x00\r\n\r\n",   // NUL in trailer value
    ];
    for b in bad {
        assert!(feed_all(b).0.is_err(), "{:?}", String::from_utf8_lossy(b));
        assert!(
            feed_bytewise(b).0.is_err(),
            "bytewise {:?}",
            String::from_utf8_lossy(b)
        );
    }
}

#[test]
fn chunked_error_is_sticky() {
    let mut d = ChunkedDecoder::new();
    let e = d.feed(b"z").unwrap_err();
    assert_eq!(e.status, 400);
    assert_eq!(d.feed(b"0\r\n\r\n"), Err(e));
    assert!(!d.is_done());
}

#[test]
fn chunked_line_bounds() {
    let mut ext = b"1;".to_vec();
    ext.extend(std::iter::repeat_n(b'a', 4096));
    ext.extend_from_slice(b"\r\nx\r\n");
    assert!(feed_all(&ext).0.is_err());
    let mut ok = b"1;".to_vec();
    ok.extend(std::iter::repeat_n(b'a', 4000));
    ok.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
    assert_eq!(feed_all(&ok), (Ok(ok.len()), true));

    let mut t = b"0\r\n".to_vec();
    for _ in 0..2000 {
        t.extend_from_slice(b"X-Long: 0123456789012345678901234567890123\r\n");
    }
    t.extend_from_slice(b"\r\n");
    assert!(feed_all(&t).0.is_err());
    assert!(feed_bytewise(&t).0.is_err());
}

#[test]
fn feed_with_reports_the_data_spans() {
    let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nx-t: 1\r\n\r\nNEXT";
    let mut d = ChunkedDecoder::new();
    let mut data = Vec::new();
    let used = d
        .feed_with(body, |r| data.extend_from_slice(&body[r]))
        .unwrap();
    assert_eq!(&body[used..], b"NEXT");
    assert_eq!(data, b"Wikipedia");
    // Byte by byte gives the same data.
    let mut d = ChunkedDecoder::new();
    let mut data = Vec::new();
    for i in 0..used {
        d.feed_with(&body[i..i + 1], |r| {
            data.extend_from_slice(&body[i..i + 1][r])
        })
        .unwrap();
    }
    assert!(d.is_done());
    assert_eq!(data, b"Wikipedia");
}

#[test]
fn keeping_trailers_reads_the_fields_back_however_the_body_is_split() {
    let body = b"4\r\nWiki\r\n0;last\r\nX-Checksum: abc\r\nx-other:\t v 1 \r\nEmpty:\r\n\r\nNEXT";
    let want: Vec<(&[u8], &[u8])> = vec![
        (b"X-Checksum", b"abc"),
        (b"x-other", b"v 1"),
        (b"Empty", b""),
    ];
    let mut d = ChunkedDecoder::keeping_trailers();
    let used = d.feed(body).unwrap();
    assert_eq!(&body[used..], b"NEXT");
    assert_eq!(d.trailers().collect::<Vec<_>>(), want);
    // Split at every offset: the same fields.
    for cut in 0..used {
        let mut d = ChunkedDecoder::keeping_trailers();
        let n = d.feed(&body[..cut]).unwrap();
        assert_eq!(n, cut);
        assert_eq!(d.trailers().count(), 0, "not done at {cut}");
        d.feed(&body[cut..used]).unwrap();
        assert!(d.is_done());
        assert_eq!(d.trailers().collect::<Vec<_>>(), want, "cut at {cut}");
    }
}

#[test]
fn trailers_are_kept_only_when_asked_and_only_when_present() {
    let body = b"0\r\nX-A: 1\r\n\r\n";
    let mut d = ChunkedDecoder::new();
    d.feed(body).unwrap();
    assert!(d.is_done());
    assert_eq!(d.trailers().count(), 0, "a relaying decoder keeps nothing");
    let mut d = ChunkedDecoder::keeping_trailers();
    d.feed(b"3\r\nabc\r\n0\r\n\r\n").unwrap();
    assert!(d.is_done());
    assert_eq!(d.trailers().count(), 0);
    let mut d = ChunkedDecoder::keeping_trailers();
    assert!(d.feed(b"0\r\nX-A: 1\r\nX B\r\n\r\n").is_err());
    assert_eq!(d.trailers().count(), 0, "a failed body has no trailers");
}

#[test]
fn prohibited_trailers_follow_rfc_9110_6_5_1() {
    for name in [
        "Content-Length",
        "transfer-encoding",
        "Trailer",
        "TE",
        "connection",
        "Keep-Alive",
        "proxy-connection",
        "upgrade",
        "Host",
        "authorization",
        "content-type",
        "expect",
    ] {
        assert!(is_prohibited_trailer(name.as_bytes()), "{name}");
    }
    for name in [
        "x-checksum",
        "grpc-status",
        "server-timing",
        "digest",
        "etag",
    ] {
        assert!(!is_prohibited_trailer(name.as_bytes()), "{name}");
    }
}
