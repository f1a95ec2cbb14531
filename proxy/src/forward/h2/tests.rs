use super::*;

#[test]
fn the_preface_is_http2_and_anything_else_http1() {
    assert_eq!(classify(PREFACE), Detect::Http2);
    let mut more = PREFACE.to_vec();
    more.extend_from_slice(b"\x00\x00\x12\x04");
    assert_eq!(classify(&more), Detect::Http2);
    assert_eq!(classify(b"PRI * HTTP/2"), Detect::NeedMore);
    assert_eq!(classify(b"P"), Detect::NeedMore);
    assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Detect::Http1);
    assert_eq!(classify(b"POST / HTTP/1.1\r\n"), Detect::Http1);
    assert_eq!(classify(b"PRI * HTTP/1.1\r\n"), Detect::Http1);
}
