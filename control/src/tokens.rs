//! Join tokens and other secrets control hands out: generation (from the
//! OS's CSPRNG through ring) and the mapping between stored records and the
//! API's views. Checking a presented token is [`crate::store::Store::consume_token`].

use coremesh_api::http::TokenInfo;
use coremesh_api::token::{sha256_hex, JoinToken};
use ring::rand::{SecureRandom, SystemRandom};

use crate::store::TokenRecord;

/// `n` random bytes as lowercase hex (2n characters).
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut bytes)
        // ring's SystemRandom reads getrandom(2); it fails only when the OS
        // has no entropy source at all, which no supported host lacks.
        .expect("the OS random number generator failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new token for `service`: the record to store and the whole token
/// string (shown to the operator once).
pub fn new_token(
    service: &str,
    ttl_secs: u64,
    uses: u32,
    ca_fingerprint: &str,
    now: u64,
) -> (TokenRecord, String) {
    let token = JoinToken {
        // 48 bits are plenty to name a token; 128 bits of secret prove it.
        id: random_hex(6),
        secret: random_hex(16),
        ca_fingerprint: ca_fingerprint.to_string(),
    };
    let record = TokenRecord {
        id: token.id.clone(),
        service: service.to_string(),
        secret_sha256: sha256_hex(token.secret.as_bytes()),
        created_at: now,
        expires_at: now.saturating_add(ttl_secs),
        uses_left: uses,
        revoked: false,
    };
    (record, token.to_string())
}

pub fn info(t: &TokenRecord) -> TokenInfo {
    TokenInfo {
        id: t.id.clone(),
        service: t.service.clone(),
        expires_at: t.expires_at,
        uses_left: t.uses_left,
        revoked: t.revoked,
    }
}

#[cfg(test)]
mod tests;
