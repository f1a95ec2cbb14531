use super::*;

#[test]
fn chunked_bodies() {
    assert_eq!(
        dechunk(b"3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n").unwrap(),
        b"abcd"
    );
    assert_eq!(dechunk(b"3\r\nab"), Err(ChunkError::Short));
    assert_eq!(dechunk(b"3"), Err(ChunkError::NoLineEnd));
    assert!(matches!(
        dechunk(b"zz\r\n"),
        Err(ChunkError::BadSize { text, .. }) if text == "zz"
    ));
}
