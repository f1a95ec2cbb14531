use super::*;

#[test]
fn numbers() {
    assert_eq!(short_number(1_234_567.0), "1.2M");
    assert_eq!(short_number(45_000.0), "45k");
    assert_eq!(short_number(250.0), "250");
    assert_eq!(short_number(12.46), "12.5");
}
