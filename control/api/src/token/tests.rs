use super::*;

fn token() -> JoinToken {
    JoinToken {
        id: "k3x_9".into(),
        secret: "s3cr-et_".into(),
        ca_fingerprint: fingerprint_hex(b"ca der"),
    }
}

#[test]
fn fingerprint_is_sha256() {
    assert_eq!(
        fingerprint_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn display_and_parse_round_trip() {
    let t = token();
    let s = t.to_string();
    assert_eq!(s, format!("cmjt1.k3x_9.s3cr-et_.{}", t.ca_fingerprint));
    assert_eq!(s.parse::<JoinToken>(), Ok(t.clone()));
    assert_eq!(format!("  {s}\n").parse::<JoinToken>(), Ok(t.clone()));
    let upper = format!("cmjt1.k3x_9.s3cr-et_.{}", t.ca_fingerprint.to_uppercase());
    assert_eq!(upper.parse::<JoinToken>(), Ok(t));
}

#[test]
fn parse_errors() {
    let fp = fingerprint_hex(b"ca der");
    let parse = |s: &str| s.parse::<JoinToken>().unwrap_err();
    assert_eq!(
        parse(&format!("cmjt2.a.b.{fp}")),
        TokenParseError::WrongPrefix
    );
    assert_eq!(parse(""), TokenParseError::WrongPrefix);
    assert_eq!(parse("cmjt1.a.b"), TokenParseError::WrongParts(3));
    assert_eq!(
        parse(&format!("cmjt1.a.b.c.{fp}")),
        TokenParseError::WrongParts(5)
    );
    assert_eq!(parse(&format!("cmjt1..b.{fp}")), TokenParseError::BadId);
    assert_eq!(parse(&format!("cmjt1.a b.c.{fp}")), TokenParseError::BadId);
    assert_eq!(parse(&format!("cmjt1.a..{fp}")), TokenParseError::BadSecret);
    assert_eq!(
        parse(&format!("cmjt1.a.b/c.{fp}")),
        TokenParseError::BadSecret
    );
    assert_eq!(
        parse("cmjt1.a.b.abc"),
        TokenParseError::FingerprintLength(3)
    );
    assert_eq!(
        parse(&format!("cmjt1.a.b.{fp}00")),
        TokenParseError::FingerprintLength(66)
    );
    assert_eq!(
        parse(&format!("cmjt1.a.b.{}", "g".repeat(64))),
        TokenParseError::FingerprintNotHex
    );
    let secret_free = parse("cmjt1.a.hunter2.xyz").to_string();
    assert!(!secret_free.contains("hunter2"), "{secret_free}");
}
