use super::*;

#[test]
fn serials_round_trip_without_leading_zeros() {
    assert_eq!(serial_hex(&[0x00, 0x7f, 0x0a, 0xff]), "7f0aff");
    assert_eq!(serial_hex(&[0x00, 0x00]), "");
    assert_eq!(serial_bytes("7f0aff"), Some(vec![0x7f, 0x0a, 0xff]));
    assert_eq!(serial_bytes("007F0AFF"), Some(vec![0x7f, 0x0a, 0xff]));
    assert_eq!(serial_bytes("7f0"), None);
    assert_eq!(serial_bytes("zz"), None);
}

#[test]
fn revoked_is_optional_on_the_wire() {
    let snap = Snapshot::default();
    let json = serde_json::to_string(&snap).unwrap();
    assert!(!json.contains("revoked"), "{json}");
    let with: Snapshot = serde_json::from_str(
        r#"{"version":1,"config_version":1,"services":[],
            "revoked":[{"serial":"7f","node":"evil","not_after":9}]}"#,
    )
    .unwrap();
    assert_eq!(
        with.revoked,
        vec![RevokedCert {
            serial: "7f".into(),
            node: "evil".into(),
            not_after: 9
        }]
    );
}
