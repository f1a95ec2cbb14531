use super::*;

#[test]
fn first_start_creates_private_files_and_second_reuses_them() {
    let dir = std::env::temp_dir().join(format!(
        "coremesh-datadir-{}-{}",
        std::process::id(),
        crate::unix_millis(SystemTime::now())
    ));
    let d = open(&dir, "coremesh.local", true).unwrap();
    assert_eq!(d.created.len(), 5);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for f in [CA_KEY, CA_CERT, CREDENTIAL, QUIC_RESET_KEY] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    let again = open(&dir, "coremesh.local", true).unwrap();
    assert!(again.created.is_empty());
    assert_eq!(again.credential, d.credential);
    assert_eq!(again.ca, d.ca);
    assert_eq!(d.quic_reset_key.len(), QUIC_RESET_KEY_LEN);
    assert_eq!(again.quic_reset_key, d.quic_reset_key);
    // With an operator's CA, the directory's own is left alone.
    let operator = open(&dir, "coremesh.local", false).unwrap();
    assert!(operator.ca.is_none());
    assert!(dir.join(CA_CERT).exists());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_operator_ca_means_no_ca_in_the_directory() {
    let dir = std::env::temp_dir().join(format!(
        "coremesh-datadir-op-{}-{}",
        std::process::id(),
        crate::unix_millis(SystemTime::now())
    ));
    let d = open(&dir, "coremesh.local", false).unwrap();
    assert!(d.ca.is_none());
    assert!(!dir.join(CA_CERT).exists() && !dir.join(CA_KEY).exists());
    assert_eq!(d.created.len(), 3, "{:?}", d.created);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reset_key_must_be_long_enough_hex() {
    assert_eq!(
        parse_reset_key(&format!("{}\n", "ab".repeat(32))).unwrap(),
        [0xab; 32]
    );
    assert!(parse_reset_key(&"ab".repeat(31))
        .unwrap_err()
        .to_string()
        .contains("31 bytes"));
    assert!(parse_reset_key("xyz").is_err());
    assert!(parse_reset_key("abc").is_err());
}
