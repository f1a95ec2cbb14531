//! The CA shared through the etcd store, sealed with a key the operator
//! supplies (`--ca-in-store --ca-store-key FILE`; docs/etcd.md, "The CA in
//! etcd").
//!
//! etcd holds, under `<prefix>ca/current`, a [`CaRecord`]: the CA's
//! certificate chain (public), the fingerprint of its anchor, and its
//! private key sealed with AES-256-GCM under the operator's 256-bit
//! [`SealKey`]. The key never reaches etcd in plaintext, and a replica that
//! takes the CA from etcd keeps the opened key in memory only.
//!
//! Sealing: a random 96-bit nonce per seal (ring's `SystemRandom`), the
//! additional authenticated data binding the etcd key name and the store's
//! identity ([`aad`]), so a sealed key copied to another key or another
//! store does not open. The record names the operator key by a `kid` (a
//! hash of the key, not the key), so a replica given another key file says
//! so instead of "does not decrypt".
//!
//! This module is sans-I/O but for [`SealKey::read_file`] and
//! [`SealKey::write_new`]; etcd reads and writes are in
//! `store::etcd::ca_store`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes of the operator's key (AES-256).
pub const KEY_LEN: usize = 32;

/// Domain separation for the key id: a `kid` is never a hash of the bare
/// key, so it cannot be matched against another system's key hashes.
const KID_CONTEXT: &[u8] = b"coremesh ca-store-key kid v1\0";
/// Domain separation for the additional authenticated data.
const AAD_CONTEXT: &str = "coremesh sealed CA key v1";

/// Why the operator key or a sealed CA key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{}: {why}", path.display())]
    KeyFile { path: PathBuf, why: String },
    #[error("{}: the CA store key is readable by group or others (mode {mode:04o}); run `chmod 600 {}`: it opens the CA's private key", path.display(), path.display())]
    KeyFileOpen { path: PathBuf, mode: u32 },
    #[error("{}: already exists; `ca-store-key` never overwrites a key (every control of the store needs the same one)", path.display())]
    KeyFileExists { path: PathBuf },
    #[error("the CA in etcd at {key_name} was sealed with another key (kid {found}): pass the key file used by the other controls (--ca-store-key; this control's key file has kid {ours})")]
    WrongKey {
        key_name: String,
        found: String,
        ours: String,
    },
    #[error("the CA in etcd at {key_name} does not open with this control's key (kid {kid}): the sealed key was altered, or copied from another etcd key or another store; put the CA back from a backup")]
    Tampered { key_name: String, kid: String },
    #[error("the CA in etcd at {key_name} is not a sealed CA record: {why}")]
    BadRecord { key_name: String, why: String },
    #[error("AES-256-GCM refused the {KEY_LEN}-byte CA store key")]
    Cipher,
    #[error("no randomness from the operating system for {0}")]
    Random(&'static str),
}

/// The operator's key that seals the CA key in etcd. Its bytes are never
/// printed (`Debug` shows the kid only).
pub struct SealKey {
    key: [u8; KEY_LEN],
    kid: String,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealKey").field("kid", &self.kid).finish()
    }
}

impl SealKey {
    pub fn from_bytes(key: [u8; KEY_LEN]) -> SealKey {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(KID_CONTEXT);
        ctx.update(&key);
        let kid = hex(&ctx.finish().as_ref()[..8]);
        SealKey { key, kid }
    }

    /// A new random key.
    pub fn generate() -> Result<SealKey, SealError> {
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| SealError::Random("a CA store key"))?;
        Ok(SealKey::from_bytes(key))
    }

    /// The key in a file's text: 64 hex digits (surrounding whitespace
    /// ignored). `Err` says what is wrong, for [`SealError::KeyFile`].
    pub fn parse(text: &str) -> Result<SealKey, String> {
        let hex_text = text.trim();
        if hex_text.len() != 2 * KEY_LEN || !hex_text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "not a CA store key: expected {} hex digits (256 bits), found {} characters; make one with `coremesh-control ca-store-key FILE`",
                2 * KEY_LEN,
                hex_text.len()
            ));
        }
        let mut key = [0u8; KEY_LEN];
        for (i, b) in key.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex_text[2 * i..2 * i + 2], 16).unwrap_or_default();
        }
        Ok(SealKey::from_bytes(key))
    }

    /// Reads the key from `path`, refusing a file that group or others may
    /// read or write (as ssh refuses such a private key).
    pub fn read_file(path: &Path) -> Result<SealKey, SealError> {
        let meta = std::fs::metadata(path).map_err(|e| SealError::KeyFile {
            path: path.to_path_buf(),
            why: format!("cannot read it: {e}"),
        })?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SealError::KeyFileOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| SealError::KeyFile {
            path: path.to_path_buf(),
            why: format!("cannot read it: {e}"),
        })?;
        SealKey::parse(&text).map_err(|why| SealError::KeyFile {
            path: path.to_path_buf(),
            why,
        })
    }

    /// Writes a new random key to `path` (a new file, mode 0600, never
    /// overwriting one) and returns it.
    pub fn write_new(path: &Path) -> Result<SealKey, SealError> {
        let key = SealKey::generate()?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => SealError::KeyFileExists {
                    path: path.to_path_buf(),
                },
                _ => SealError::KeyFile {
                    path: path.to_path_buf(),
                    why: format!("cannot create it: {e}"),
                },
            })?;
        f.write_all(format!("{}\n", hex(&key.key)).as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| SealError::KeyFile {
                path: path.to_path_buf(),
                why: format!("cannot write it: {e}"),
            })?;
        Ok(key)
    }

    /// Names the key without revealing it: the first 64 bits of
    /// SHA-256(context || key), hex.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The AEAD key. ring refuses only a key of the wrong length, which
    /// the type rules out; the error is kept rather than a panic.
    fn aead(&self) -> Result<LessSafeKey, SealError> {
        UnboundKey::new(&AES_256_GCM, &self.key)
            .map(LessSafeKey::new)
            .map_err(|_| SealError::Cipher)
    }
}

/// The additional authenticated data of a sealed key: where it is (the
/// etcd key) and in which store, so it opens only there.
pub fn aad(key_name: &str, store_id: &str) -> Vec<u8> {
    format!("{AAD_CONTEXT}\0{key_name}\0{store_id}").into_bytes()
}

/// A CA in etcd: what `<prefix>ca/current` (and, during a rotation,
/// `ca/next`, `ca/previous`) holds, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaRecord {
    /// The chain: the issuing CA first, then its issuers up to the anchor
    /// (PEM; public).
    pub cert_pem: String,
    /// base64 of nonce (12 bytes) || AES-256-GCM ciphertext and tag of the
    /// issuing CA's PKCS#8 PEM key.
    pub sealed_key: String,
    /// SHA-256 of the anchor, as join tokens carry it.
    pub fingerprint: String,
    /// [`SealKey::kid`] of the key it was sealed with.
    pub kid: String,
}

impl CaRecord {
    /// Seals `key_pem` with `key` for the etcd key `key_name` of store
    /// `store_id`.
    pub fn seal(
        key: &SealKey,
        key_name: &str,
        store_id: &str,
        cert_pem: &str,
        key_pem: &str,
        fingerprint: &str,
    ) -> Result<CaRecord, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random("a nonce"))?;
        let mut in_out = key_pem.as_bytes().to_vec();
        key.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(key_name, store_id)),
                &mut in_out,
            )
            .map_err(|_| SealError::BadRecord {
                key_name: key_name.to_string(),
                why: "the CA key is too long to seal".into(),
            })?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&in_out);
        Ok(CaRecord {
            cert_pem: cert_pem.to_string(),
            sealed_key: base64::engine::general_purpose::STANDARD.encode(sealed),
            fingerprint: fingerprint.to_string(),
            kid: key.kid().to_string(),
        })
    }

    /// The CA's private key (PEM), opened with `key`, if this record is at
    /// `key_name` in store `store_id` and nobody altered it.
    pub fn open(&self, key: &SealKey, key_name: &str, store_id: &str) -> Result<String, SealError> {
        if self.kid != key.kid() {
            return Err(SealError::WrongKey {
                key_name: key_name.to_string(),
                found: self.kid.clone(),
                ours: key.kid().to_string(),
            });
        }
        let bad = |why: &str| SealError::BadRecord {
            key_name: key_name.to_string(),
            why: why.to_string(),
        };
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(self.sealed_key.as_bytes())
            .map_err(|e| bad(&format!("sealed_key is not base64: {e}")))?;
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(bad("sealed_key is too short to hold a nonce and a tag"));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let mut nonce_bytes = [0u8; NONCE_LEN];
        nonce_bytes.copy_from_slice(nonce);
        let mut in_out = ciphertext.to_vec();
        let plain = key
            .aead()?
            .open_in_place(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad(key_name, store_id)),
                &mut in_out,
            )
            .map_err(|_| SealError::Tampered {
                key_name: key_name.to_string(),
                kid: key.kid().to_string(),
            })?;
        String::from_utf8(plain.to_vec()).map_err(|_| bad("the opened key is not text (PEM)"))
    }

    /// The record as etcd stores it.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The record at `key_name`, from etcd's value.
    pub fn from_json(key_name: &str, value: &[u8]) -> Result<CaRecord, SealError> {
        serde_json::from_slice(value).map_err(|e| SealError::BadRecord {
            key_name: key_name.to_string(),
            why: e.to_string(),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";
    const NAME: &str = "/coremesh/ca/current";
    const STORE: &str = "0123abcd";

    fn sealed(key: &SealKey) -> CaRecord {
        CaRecord::seal(key, NAME, STORE, "CERT", KEY_PEM, "ff00").expect("seal")
    }

    #[test]
    fn seal_then_open_gives_the_key_back_and_never_holds_it_in_the_clear() {
        let key = SealKey::generate().expect("key");
        let rec = sealed(&key);
        assert_eq!(rec.open(&key, NAME, STORE).expect("open"), KEY_PEM);
        let json = String::from_utf8(rec.to_json()).expect("UTF-8");
        assert!(!json.contains("PRIVATE KEY"), "{json}");
        assert!(!json.contains("MIGHAgEAMBMG"), "{json}");
        assert_eq!(
            CaRecord::from_json(NAME, json.as_bytes()).expect("json"),
            rec
        );
        // A new nonce per seal.
        assert_ne!(sealed(&key).sealed_key, rec.sealed_key);
    }

    #[test]
    fn another_key_is_named_by_its_kid() {
        let rec = sealed(&SealKey::generate().expect("key"));
        let other = SealKey::generate().expect("key");
        let e = rec.open(&other, NAME, STORE).expect_err("wrong key");
        assert!(matches!(e, SealError::WrongKey { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!(
                "the CA in etcd at {NAME} was sealed with another key (kid {})",
                rec.kid
            )) && msg.contains("pass the key file used by the other controls"),
            "{msg}"
        );
    }

    #[test]
    fn another_key_with_a_forged_kid_does_not_open() {
        let rec = sealed(&SealKey::generate().expect("key"));
        let other = SealKey::generate().expect("key");
        let forged = CaRecord {
            kid: other.kid().to_string(),
            ..rec
        };
        let e = forged.open(&other, NAME, STORE).expect_err("wrong key");
        assert!(matches!(e, SealError::Tampered { .. }), "{e}");
    }

    #[test]
    fn a_tampered_ciphertext_does_not_open() {
        let key = SealKey::generate().expect("key");
        let rec = sealed(&key);
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(&rec.sealed_key)
            .expect("base64");
        let last = raw.len() - 20;
        raw[last] ^= 1;
        let tampered = CaRecord {
            sealed_key: base64::engine::general_purpose::STANDARD.encode(raw),
            ..rec.clone()
        };
        let e = tampered.open(&key, NAME, STORE).expect_err("tampered");
        assert!(matches!(e, SealError::Tampered { .. }), "{e}");
        let short = CaRecord {
            sealed_key: "AAAA".into(),
            ..rec
        };
        let e = short.open(&key, NAME, STORE).expect_err("short");
        assert!(matches!(e, SealError::BadRecord { .. }), "{e}");
    }

    #[test]
    fn the_aad_binds_the_etcd_key_and_the_store() {
        let key = SealKey::generate().expect("key");
        let rec = sealed(&key);
        for (name, store) in [("/coremesh/ca/next", STORE), (NAME, "another")] {
            let e = rec.open(&key, name, store).expect_err("wrong AAD");
            assert!(
                matches!(e, SealError::Tampered { .. }),
                "{name} {store}: {e}"
            );
        }
    }

    #[test]
    fn key_files_are_written_0600_read_back_and_refused_when_open_to_others() {
        let dir = std::env::temp_dir().join(format!(
            "coremesh-ca-store-key-{}-{}",
            std::process::id(),
            crate::tokens::random_hex(4)
        ));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("ca-store.key");
        let key = SealKey::write_new(&path).expect("write");
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(SealKey::read_file(&path).expect("read").kid(), key.kid());
        let e = SealKey::write_new(&path).expect_err("exists");
        assert!(matches!(e, SealError::KeyFileExists { .. }), "{e}");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .expect("chmod");
        let e = SealKey::read_file(&path).expect_err("group-readable");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::remove_dir_all(&dir).expect("rm");
    }

    #[test]
    fn key_text_must_be_64_hex_digits() {
        assert!(SealKey::parse(&"ab".repeat(32)).is_ok());
        assert!(SealKey::parse(&format!("  {}\n", "AB".repeat(32))).is_ok());
        assert!(SealKey::parse(&"ab".repeat(31)).is_err());
        assert!(SealKey::parse(&"zz".repeat(32)).is_err());
        let a = SealKey::parse(&"01".repeat(32)).expect("key");
        let b = SealKey::parse(&"02".repeat(32)).expect("key");
        assert_ne!(a.kid(), b.kid());
        assert_eq!(a.kid().len(), 16);
        assert!(!format!("{a:?}").contains("0101"));
    }
}
