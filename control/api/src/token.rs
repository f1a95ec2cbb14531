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
mod tests;
