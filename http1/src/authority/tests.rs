use super::*;

#[test]
fn splits() {
    assert_eq!(
        split_authority(b"a.example:8080"),
        Ok((&b"a.example"[..], Some(8080)))
    );
    assert_eq!(split_authority(b"a.example"), Ok((&b"a.example"[..], None)));
    assert_eq!(split_authority(b"a:"), Ok((&b"a"[..], None)));
    assert_eq!(split_authority(b"[::1]:443"), Ok((&b"::1"[..], Some(443))));
    assert_eq!(split_authority(b"[fe80::1]"), Ok((&b"fe80::1"[..], None)));
    assert_eq!(split_authority(b"a:65535"), Ok((&b"a"[..], Some(65535))));
}

#[test]
fn bad_ports_and_brackets() {
    for a in [
        &b"a:65536"[..],
        b"a:-1",
        b"a:8o",
        b"a:000080",
        b"a:1:2",
        b"::1",
        b"[::1",
        b"[::1]x",
        b"[::1]:x",
    ] {
        assert!(
            split_authority(a).is_err(),
            "{:?}",
            String::from_utf8_lossy(a)
        );
    }
}

#[test]
fn validates_hosts() {
    assert!(validate_authority(b"api.svc:80", false).is_ok());
    assert!(validate_authority(b"10.0.0.1", false).is_ok());
    assert!(validate_authority(b"[::1]:80", true).is_ok());
    assert!(validate_authority(b"a%2Db", false).is_ok());
    assert!(validate_authority(b"api", true).is_err());
    assert!(validate_authority(b"", false).is_err());
    assert!(validate_authority(b":80", false).is_err());
    assert!(validate_authority(b"user@api", false).is_err());
    assert!(validate_authority(b"a b", false).is_err());
    assert!(validate_authority(b"a/b", false).is_err());
    assert!(validate_authority(b"a%2", false).is_err());
    assert!(validate_authority(b"[a b]", false).is_err());
}
