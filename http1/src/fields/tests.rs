use super::*;

#[test]
fn content_length_values() {
    assert_eq!(parse_content_length(b"0"), Ok(0));
    assert_eq!(parse_content_length(b"42"), Ok(42));
    assert_eq!(parse_content_length(b"42, 42"), Ok(42));
    assert_eq!(parse_content_length(b"18446744073709551615"), Ok(u64::MAX));
    assert_eq!(
        parse_content_length(b"18446744073709551616"),
        Err(CL_INVALID)
    );
    assert_eq!(parse_content_length(b"42, 43"), Err(CL_CONFLICT));
    for bad in [
        &b""[..],
        b"+1",
        b"-1",
        b"1 2",
        b"0x10",
        b"1,",
        b",1",
        b"1.0",
    ] {
        assert_eq!(parse_content_length(bad), Err(CL_INVALID), "{bad:?}");
    }
}

#[test]
fn classify_names() {
    assert_eq!(classify(b"Content-Length"), Kind::ContentLength);
    assert_eq!(classify(b"TRANSFER-ENCODING"), Kind::TransferEncoding);
    assert_eq!(classify(b"te"), Kind::Te);
    assert_eq!(classify(b"Keep-Alive"), Kind::KeepAlive);
    assert_eq!(classify(b"Connection"), Kind::Connection);
    assert_eq!(classify(b"x-host"), Kind::Other);
}
