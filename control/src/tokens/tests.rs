use super::*;
use crate::store::check_token;

#[test]
fn new_token_round_trips_and_checks() {
    let fp = "ab".repeat(32);
    let (rec, s) = new_token("api", 3600, 1, &fp, 1000);
    let parsed: JoinToken = s.parse().unwrap();
    assert_eq!(parsed.id, rec.id);
    assert_eq!(parsed.ca_fingerprint, fp);
    assert_eq!(rec.expires_at, 4600);
    assert!(!s.contains(&rec.secret_sha256));
    let presented = sha256_hex(parsed.secret.as_bytes());
    assert_eq!(check_token(&rec, &presented, 1001), Ok(()));
    assert_ne!(random_hex(16), random_hex(16));
}
