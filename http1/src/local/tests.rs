use super::*;

#[test]
fn error_response_bytes() {
    let mut out = Vec::new();
    write_error_response(400, "bad request line", true, &mut out);
    assert_eq!(
        out,
        b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\n\
          coremesh-error: bad request line\r\ncontent-length: 27\r\n\
          connection: close\r\n\r\ncoremesh: bad request line\n"
            .to_vec()
    );
    assert_eq!(b"coremesh: bad request line\n".len(), 27);

    out.clear();
    write_error_response(502, "x", false, &mut out);
    let s = String::from_utf8(out).unwrap();
    assert!(s.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
    assert!(!s.contains("connection"));
    assert!(s.ends_with("content-length: 12\r\n\r\ncoremesh: x\n"));
}

#[test]
fn error_text_cannot_split_the_response() {
    let mut out = Vec::new();
    write_error_response(503, "a\r\nset-cookie: x", false, &mut out);
    let s = String::from_utf8(out).unwrap();
    assert!(s.contains("coremesh-error: a  set-cookie: x\r\n"));
    assert_eq!(s.matches("\r\n").count(), 5);
}

#[test]
fn reason_phrases() {
    assert_eq!(reason_phrase(200), "OK");
    assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
    assert_eq!(reason_phrase(502), "Bad Gateway");
    assert_eq!(reason_phrase(599), "Server Error");
    assert_eq!(reason_phrase(42), "Unknown");
}
