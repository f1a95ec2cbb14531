//! The data directory: created at first start (mode 0700) with the CA
//! (`ca.pem`, `ca.key`; not when the operator supplies one), the operator
//! credential (`operator.credential`), the QUIC endpoint secret
//! (`quic-reset.key`), the store (`store.redb`) and the store's identity
//! (`store.id`, written when the store is created: see
//! [`crate::store::startup`]). Secret files are 0600 and written with
//! fsync before they are used, so a crash during first start leaves either
//! no file or a whole one (a partial one is refused on the next start).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::Error;

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const CREDENTIAL: &str = "operator.credential";
pub const STORE: &str = "store.redb";
/// The CA certificate the operator API's certificate chains to, written at
/// every start when control issues that certificate itself: what meshctl
/// pins (a remote operator copies it with the credential). Not written,
/// and removed, with an operator-supplied `--api-cert`.
pub const API_CA: &str = "api-ca.pem";
/// The identity of the store this directory was initialized with.
pub const STORE_ID: &str = "store.id";
/// The QUIC endpoint secret: stateless resets and connection IDs are
/// derived from it, so a restarted control recognizes the connection IDs
/// it issued before and resets those connections at once (see
/// [`crate::quic::endpoint_config`]).
pub const QUIC_RESET_KEY: &str = "quic-reset.key";
/// Bytes of a new QUIC endpoint secret (HMAC-SHA256 keys longer than its
/// 64-byte block are hashed first, so more would add nothing).
const QUIC_RESET_KEY_LEN: usize = 64;
/// The shortest secret accepted from the file: 256 bits.
const QUIC_RESET_KEY_MIN: usize = 32;

/// The data directory's files, loaded.
pub struct DataDir {
    pub path: PathBuf,
    /// The data directory's own CA (certificate PEM, key PEM); `None` when
    /// opened for an operator-supplied CA.
    pub ca: Option<(String, String)>,
    pub credential: String,
    /// The QUIC endpoint secret, at least 32 bytes.
    pub quic_reset_key: Vec<u8>,
    /// Paths of the files this start created (empty on later starts).
    pub created: Vec<PathBuf>,
    /// The directory was set up by an earlier start (its operator
    /// credential existed before this one): a missing store then means a
    /// lost store, not a first start.
    pub initialized: bool,
    /// The store identity recorded in `store.id`, if the file exists.
    pub store_id: Option<String>,
}

impl DataDir {
    pub fn store_path(&self) -> PathBuf {
        self.path.join(STORE)
    }

    /// Records `id` as this directory's store identity (`store.id`).
    pub fn record_store_id(&mut self, id: &str) -> Result<(), Error> {
        write_secret(&self.path.join(STORE_ID), &format!("{id}\n"))?;
        self.store_id = Some(id.to_string());
        Ok(())
    }
}

/// Reads `store.id` in `dir`: `None` when there is no such file.
pub fn read_store_id(dir: &Path) -> Result<Option<String>, Error> {
    let path = dir.join(STORE_ID);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::internal(format!(
                    "{}: not a store id (expected hex digits, found {:?})",
                    path.display(),
                    text.trim()
                )));
            }
            Ok(Some(id.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path, "read", e)),
    }
}

/// The data directory's own CA (`ca.pem`, `ca.key`) if both files exist,
/// read without creating one (for `--ca-in-store`, which stores it in etcd
/// or compares it with etcd's).
pub fn read_ca(dir: &Path) -> Result<Option<(String, String)>, Error> {
    let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    match (cert.exists(), key.exists()) {
        (true, true) => Ok(Some((read(&cert)?, read(&key)?))),
        (false, false) => Ok(None),
        _ => Err(Error::internal(format!(
            "{}: has only one of {CA_CERT} and {CA_KEY}; restore the other or remove both",
            dir.display()
        ))),
    }
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::internal(format!("{}: {what}: {e}", path.display()))
}

/// Writes a new file with mode 0600 (refusing to overwrite), fsynced, via
/// a temporary name so a crash never leaves a truncated file in place.
pub fn write_secret(path: &Path, contents: &str) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_err(&tmp, "create", e))?;
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err(&tmp, "write", e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, "rename", e))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|e| io_err(path, "read", e))
}

/// Opens `path`, creating the directory, credential and (with `own_ca`)
/// the CA on first start. Without `own_ca` the CA files are neither made
/// nor read: an existing one stays, for a later switch back or as the old
/// root of a rotation.
pub fn open(path: &Path, trust_domain: &str, own_ca: bool) -> Result<DataDir, Error> {
    let mut created = Vec::new();
    if !path.exists() {
        fs::create_dir_all(path).map_err(|e| io_err(path, "create directory", e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .map_err(|e| io_err(path, "chmod 0700", e))?;
        created.push(path.to_path_buf());
    }
    let cert_path = path.join(CA_CERT);
    let key_path = path.join(CA_KEY);
    match (cert_path.exists(), key_path.exists()) {
        _ if !own_ca => {}
        (true, true) => {}
        (false, false) => {
            let (cert, key) = crate::ca::create_ca(trust_domain, SystemTime::now())?;
            // Key first: a cert without its key would be useless.
            write_secret(&key_path, &key)?;
            write_secret(&cert_path, &cert)?;
            created.push(key_path.clone());
            created.push(cert_path.clone());
        }
        _ => {
            return Err(Error::internal(format!(
                "{}: has only one of {CA_CERT} and {CA_KEY}; restore the other or remove both to create a new CA (every proxy must then join again)",
                path.display()
            )))
        }
    }
    let cred_path = path.join(CREDENTIAL);
    let initialized = cred_path.exists();
    if !initialized {
        write_secret(&cred_path, &format!("{}\n", crate::tokens::random_hex(32)))?;
        created.push(cred_path.clone());
    }
    let credential = read(&cred_path)?.trim().to_string();
    if credential.is_empty() {
        return Err(Error::internal(format!(
            "{}: empty operator credential",
            cred_path.display()
        )));
    }
    let ca = if own_ca {
        Some((read(&cert_path)?, read(&key_path)?))
    } else {
        None
    };
    let reset_path = path.join(QUIC_RESET_KEY);
    if !reset_path.exists() {
        write_secret(
            &reset_path,
            &format!("{}\n", crate::tokens::random_hex(QUIC_RESET_KEY_LEN)),
        )?;
        created.push(reset_path.clone());
    }
    let quic_reset_key = parse_reset_key(&read(&reset_path)?).map_err(|why| {
        Error::internal(format!(
            "{}: {why}; remove it to create a new one (proxies connected before then reconnect by idle timeout)",
            reset_path.display()
        ))
    })?;
    Ok(DataDir {
        path: path.to_path_buf(),
        ca,
        credential,
        quic_reset_key,
        created,
        initialized,
        store_id: read_store_id(path)?,
    })
}

/// Why `quic-reset.key` cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum ResetKeyError {
    #[error("not a hex string")]
    NotHex,
    #[error("{0} bytes; at least {QUIC_RESET_KEY_MIN} are needed")]
    TooShort(usize),
}

/// The secret in `quic-reset.key`: hex, at least [`QUIC_RESET_KEY_MIN`] bytes.
fn parse_reset_key(text: &str) -> Result<Vec<u8>, ResetKeyError> {
    let hex = text.trim();
    if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ResetKeyError::NotHex);
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or_default())
        .collect();
    if bytes.len() < QUIC_RESET_KEY_MIN {
        return Err(ResetKeyError::TooShort(bytes.len()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests;
