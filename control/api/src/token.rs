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
