use super::*;

#[test]
fn parses_the_listening_line() {
    let (q, a) = parse_listening("listening quic=127.0.0.1:40123 api=127.0.0.1:40124").unwrap();
    assert_eq!((q.port(), a.port()), (40123, 40124));
    assert!(parse_listening("operator credential: /x").is_none());
}
