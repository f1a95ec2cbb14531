use super::*;

fn name(host: &str, port: u16) -> Target {
    Target::Name(HostPort {
        host: host.into(),
        port,
    })
}

#[test]
fn literals_and_names() {
    assert_eq!(
        parse_target("10.0.0.5:80"),
        Ok(Target::Addr("10.0.0.5:80".parse().unwrap()))
    );
    assert_eq!(
        parse_target("[::1]:7443"),
        Ok(Target::Addr("[::1]:7443".parse().unwrap()))
    );
    assert_eq!(parse_target("localhost:9000"), Ok(name("localhost", 9000)));
    assert_eq!(
        parse_target("Control.Example.:7443"),
        Ok(name("control.example", 7443))
    );
    assert_eq!(
        parse_target("db_1.internal:5432"),
        Ok(name("db_1.internal", 5432))
    );
}

#[test]
fn refusals() {
    for (text, want) in [
        ("localhost", TargetError::Shape),
        ("localhost:http", TargetError::Shape),
        ("::1:80", TargetError::Shape),
        ("10.0.0.5:0", TargetError::PortZero),
        ("localhost:0", TargetError::PortZero),
        ("bad host:80", TargetError::BadHost),
        (":80", TargetError::BadHost),
        ("-a.example:80", TargetError::BadHost),
        ("a..example:80", TargetError::BadHost),
        ("10.0.0.256:80", TargetError::BadHost),
    ] {
        assert_eq!(parse_target(text), Err(want.clone()), "{text}");
    }
}

#[test]
fn shown_as_written_and_loopback() {
    assert_eq!(name("localhost", 1).to_string(), "localhost:1");
    assert!(name("localhost", 1).is_loopback());
    assert!(!name("control.example", 1).is_loopback());
    assert!(Target::Addr("127.0.0.1:1".parse().unwrap()).is_loopback());
}
