use super::*;

#[test]
fn urls() {
    let (host, addr, path) = parse_url("http://127.0.0.1:4140/a?b").unwrap();
    assert_eq!(
        (host.as_str(), addr.port(), path.as_str()),
        ("127.0.0.1:4140", 4140, "/a?b")
    );
    let (_, addr, path) = parse_url("http://127.0.0.1").unwrap();
    assert_eq!((addr.port(), path.as_str()), (80, "/"));
    assert!(parse_url("https://x/").is_err());
}

#[test]
fn error_descriptions() {
    assert_eq!(Errors::default().describe(), "none");
    let e = Errors {
        connect: 3,
        status_5xx: 1,
        ..Default::default()
    };
    assert_eq!(e.describe(), "connect 3, 5xx 1");
    assert_eq!(e.total(), 4);
}
