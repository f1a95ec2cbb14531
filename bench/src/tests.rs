use super::*;

#[test]
fn durations() {
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
    assert!(parse_duration("3 days").is_err());
    assert!(parse_duration("s").is_err());
}

#[test]
fn error_chains_name_every_cause() {
    let e = parse_duration("1.2.3s").unwrap_err();
    assert_eq!(
        error_chain(&e),
        "\"1.2.3s\" is not a duration (examples: 30s, 500ms, 2m): invalid float literal"
    );
    let e = parse_duration("3 days").unwrap_err();
    assert_eq!(
        error_chain(&e),
        "\"3 days\": unknown unit \" days\" (use ms, s, m or h)"
    );
}
