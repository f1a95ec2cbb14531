//! Join tokens: `cmjt1.<id>.<secret>.<ca-sha256-hex>`.
//!
//! The id names the token in control's store (`meshctl token list/revoke`);
//! the secret proves possession (control stores only its SHA-256); the CA
//! fingerprint lets the proxy verify control's certificate before it sends
//! anything, as kubeadm's join does.

/// A parsed join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    pub secret: String,
    /// SHA-256 of the CA certificate's DER, lowercase hex.
    pub ca_fingerprint: String,
}

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// The token's first part; the digit is the format version.
pub const TOKEN_PREFIX: &str = "cmjt1";

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}.{}",
            self.id, self.secret, self.ca_fingerprint
        )
    }
}

/// Why a string is not a join token. The messages never echo the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenParseError {
    #[error("not a coremesh join token: it must start with `{TOKEN_PREFIX}.`")]
    WrongPrefix,
    #[error("a join token has 4 parts separated by '.' (cmjt1.<id>.<secret>.<ca-sha256>), this one has {0}")]
    WrongParts(usize),
    #[error("the token id is empty or has characters other than A-Z a-z 0-9 _ -")]
    BadId,
    #[error("the token secret is empty or has characters other than A-Z a-z 0-9 _ -")]
    BadSecret,
    #[error("the CA fingerprint must be 64 hex characters (SHA-256), found {0} characters")]
    FingerprintLength(usize),
    #[error("the CA fingerprint has a character that is not hex")]
    FingerprintNotHex,
}

impl FromStr for JoinToken {
    type Err = TokenParseError;

    /// Parses `cmjt1.<id>.<secret>.<ca-sha256-hex>`; surrounding whitespace
    /// (a token file's newline) is ignored, the fingerprint is lowercased.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.trim().split('.').collect();
        if parts[0] != TOKEN_PREFIX {
            return Err(TokenParseError::WrongPrefix);
        }
        let [_, id, secret, fp] = parts[..] else {
            return Err(TokenParseError::WrongParts(parts.len()));
        };
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        };
        if !part_ok(id) {
            return Err(TokenParseError::BadId);
        }
        if !part_ok(secret) {
            return Err(TokenParseError::BadSecret);
        }
        if !fp.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(TokenParseError::FingerprintNotHex);
        }
        if fp.len() != 64 {
            return Err(TokenParseError::FingerprintLength(fp.len()));
        }
        Ok(JoinToken {
            id: id.to_string(),
            secret: secret.to_string(),
            ca_fingerprint: fp.to_ascii_lowercase(),
        })
    }
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// The fingerprint a token carries: SHA-256 of the CA certificate's DER,
/// lowercase hex (64 characters).
pub fn fingerprint_hex(der: &[u8]) -> String {
    sha256_hex(der)
}

#[cfg(test)]
mod tests {
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
}
