use super::*;

#[test]
fn grpc_content_types() {
    assert!(is_grpc(Some(b"application/grpc")));
    assert!(is_grpc(Some(b"application/grpc+proto")));
    assert!(is_grpc(Some(b"Application/GRPC;charset=utf-8")));
    assert!(is_grpc(Some(b"application/grpc-web")));
    assert!(!is_grpc(Some(b"application/grpcx")));
    assert!(!is_grpc(Some(b"application/json")));
    assert!(!is_grpc(None));
}

#[test]
fn timeouts_parse_every_unit() {
    assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_timeout(b"2M"), Some(Duration::from_secs(120)));
    assert_eq!(parse_timeout(b"3S"), Some(Duration::from_secs(3)));
    assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
    assert_eq!(parse_timeout(b"7u"), Some(Duration::from_micros(7)));
    assert_eq!(
        parse_timeout(b"99999999n"),
        Some(Duration::from_nanos(99_999_999))
    );
}

#[test]
fn malformed_timeouts_are_none() {
    for bad in [
        &b""[..],
        b"S",
        b"10",
        b"10s",
        b"123456789m",
        b"-1S",
        b"1.5S",
        b" 1S",
    ] {
        assert_eq!(
            parse_timeout(bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn formatted_timeouts_round_trip_without_growing() {
    for d in [
        Duration::from_nanos(1),
        Duration::from_micros(1500),
        Duration::from_millis(250),
        Duration::from_secs(3),
        Duration::from_secs(86_400 * 400),
    ] {
        let s = format_timeout(d);
        let back = parse_timeout(s.as_bytes()).expect("well-formed");
        // Rounded up to the unit: never less than asked, within one unit.
        assert!(back >= d, "{d:?} -> {s} -> {back:?}");
        assert!(s.len() <= 9, "{s}");
    }
    assert_eq!(format_timeout(Duration::ZERO), "1n");
    assert_eq!(format_timeout(Duration::from_millis(250)), "250000u");
    assert_eq!(format_timeout(Duration::from_secs(1000)), "1000000m");
}

#[test]
fn local_answers_map_to_grpc_statuses() {
    use crate::error::{Answer, ErrorKind};
    let cases = [
        (Answer::Error(ErrorKind::NoRoute), Code::Unavailable),
        (
            Answer::Error(ErrorKind::NoHealthyEndpoints),
            Code::Unavailable,
        ),
        (Answer::Error(ErrorKind::ConnectFailed), Code::Unavailable),
        (Answer::Error(ErrorKind::ConnectTimeout), Code::Unavailable),
        (
            Answer::Error(ErrorKind::UpstreamTimeout),
            Code::DeadlineExceeded,
        ),
        (Answer::TotalTimeout, Code::DeadlineExceeded),
        (Answer::Denied { policy: "p" }, Code::PermissionDenied),
        (
            Answer::Error(ErrorKind::RateLimited),
            Code::ResourceExhausted,
        ),
        (Answer::Fault { status: 503 }, Code::Unavailable),
        (Answer::Fault { status: 401 }, Code::Unauthenticated),
        (Answer::Fault { status: 418 }, Code::Unknown),
    ];
    for (answer, code) in cases {
        assert_eq!(answer_code(&answer), code, "{answer:?}");
    }
}

#[test]
fn messages_are_percent_encoded() {
    assert_eq!(encode_message("no route"), "no route");
    assert_eq!(encode_message("100% é\n"), "100%25 %C3%A9%0A");
}

#[test]
fn retryable_conditions_by_status() {
    assert_eq!(retry_condition(b"14"), Some("unavailable"));
    assert_eq!(retry_condition(b"4"), Some("deadline-exceeded"));
    assert_eq!(retry_condition(b"0"), None);
    assert_eq!(retry_condition(b"5"), None);
}
