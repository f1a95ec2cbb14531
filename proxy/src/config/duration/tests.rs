use super::*;

#[test]
fn parses_each_unit() {
    assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse("0s"), Ok(Duration::ZERO));
}

#[test]
fn rejects_everything_else() {
    for bad in [
        "", "10", "s", "1.5s", "+1s", "-1s", " 1s", "1 s", "1S", "1d", "1sec", "1h30m",
    ] {
        assert!(parse(bad).is_err(), "{bad:?} was accepted");
    }
    assert_eq!(parse("99999999999999999999h"), Err("is too large"));
    assert_eq!(parse("18446744073709551615h"), Err("is too large"));
}

#[test]
fn formats_with_the_largest_exact_unit() {
    assert_eq!(format(Duration::from_millis(500)), "500ms");
    assert_eq!(format(Duration::from_millis(1500)), "1500ms");
    assert_eq!(format(Duration::from_secs(10)), "10s");
    assert_eq!(format(Duration::from_secs(90)), "90s");
    assert_eq!(format(Duration::from_secs(120)), "2m");
    assert_eq!(format(Duration::from_secs(7200)), "2h");
    assert_eq!(format(Duration::ZERO), "0s");
    for text in ["250ms", "10s", "2m", "24h"] {
        assert_eq!(format(parse(text).unwrap()), text);
    }
}
