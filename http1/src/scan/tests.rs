use super::*;

const L: Limits = Limits {
    max_head_bytes: 1024,
    max_request_line: 64,
    max_headers: 16,
};

#[test]
fn find_line_byte_matches_naive() {
    let mut s = vec![b'a'; 40];
    assert_eq!(find_line_byte(&s), None);
    for i in 0..40 {
        for c in [b'\r', b'\n'] {
            s[i] = c;
            assert_eq!(find_line_byte(&s), Some(i));
            // A later match must not shadow the first.
            s[39] = b'\n';
            assert_eq!(find_line_byte(&s), Some(i));
            s[39] = b'a';
            s[i] = b'a';
        }
    }
    // Bytes that differ from CR/LF by one bit, and 0x80+ bytes.
    let s = [0x0c, 0x0e, 0x0b, 0x8d, 0x8a, 0xff, 0x00, 0x01, b'\n'];
    assert_eq!(find_line_byte(&s), Some(8));
}

#[test]
fn scan_finds_bounds() {
    let b = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nrest";
    let h = scan_head(b, &L).unwrap().unwrap();
    assert_eq!((h.start, h.line_end, h.head_len), (2, 16, 29));
}

#[test]
fn scan_prefixes_are_incomplete() {
    let b = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    for n in 0..b.len() {
        assert_eq!(scan_head(&b[..n], &L), Ok(None), "prefix {n}");
    }
}

#[test]
fn mask_bits() {
    let mut m = LineMask::default();
    assert!(!m.any());
    m.set(0);
    m.set(511);
    assert!(m.get(0) && m.get(511) && !m.get(64));
    assert!(m.any());
}

#[test]
fn list_and_trim() {
    let v: Vec<&[u8]> = list_elements(b" a ,\tb,, c\t").collect();
    assert_eq!(v, vec![&b"a"[..], b"b", b"", b"c"]);
}
