//! The proxy's persisted control-plane state, in `[control] state_dir`:
//!
//! | file | what | written |
//! | --- | --- | --- |
//! | `key.pem` | the proxy's private key (PKCS#8, generated here, never sent) | at join and renewal |
//! | `cert.pem` | its certificate, signed by control's CA | at join and renewal |
//! | `ca.pem` | control's CA certificate, trusted from the join on | at join |
//! | `snapshot.json` | the last snapshot applied (the last good routes) | after each apply |
//!
//! The directory is created mode 0700 and every file mode 0600. Every file
//! is replaced atomically (write a temporary file, fsync, rename, fsync the
//! directory), so a crash leaves either the old or the new content.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use coremesh_api::snapshot::Snapshot;

pub const KEY_FILE: &str = "key.pem";
pub const CERT_FILE: &str = "cert.pem";
pub const CA_FILE: &str = "ca.pem";
pub const SNAPSHOT_FILE: &str = "snapshot.json";

/// The proxy's identity: its key, its certificate and the CA it trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
}

/// `[control] state_dir`.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens the directory, creating it (and its parents) mode 0700 when
    /// missing. An existing directory readable by others is used as is,
    /// with a warning: it is the operator's, not ours to chmod.
    pub fn open(dir: &Path) -> io::Result<StateDir> {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let mode = fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                "state_dir {} has mode {:o}; it holds the proxy's private key, 0700 is advised",
                dir.display(),
                mode & 0o777
            );
        }
        Ok(StateDir {
            dir: dir.to_owned(),
        })
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The stored identity; `None` when the proxy has not joined yet (no
    /// certificate). A certificate without its key or CA is an error that
    /// names the missing file.
    pub fn load_identity(&self) -> Result<Option<Identity>, StateError> {
        let Some(cert_pem) = self.read(CERT_FILE)? else {
            return Ok(None);
        };
        let need = |file: &str| {
            self.read(file)?.ok_or_else(|| StateError::Incomplete {
                cert: self.path(CERT_FILE),
                missing: self.path(file),
            })
        };
        Ok(Some(Identity {
            key_pem: need(KEY_FILE)?,
            cert_pem,
            ca_pem: need(CA_FILE)?,
        }))
    }

    /// Stores a new identity: CA and key first, the certificate last, since
    /// its presence is what says "joined".
    pub fn save_identity(&self, id: &Identity) -> io::Result<()> {
        write_atomic(&self.path(CA_FILE), id.ca_pem.as_bytes())?;
        self.save_renewed(&id.key_pem, &id.cert_pem)
    }

    /// Stores a renewed key and certificate (the CA stays). A crash between
    /// the two renames leaves a key that does not match the certificate;
    /// the client detects that when it loads them and joins again.
    pub fn save_renewed(&self, key_pem: &str, cert_pem: &str) -> io::Result<()> {
        write_atomic(&self.path(KEY_FILE), key_pem.as_bytes())?;
        write_atomic(&self.path(CERT_FILE), cert_pem.as_bytes())
    }

    /// Moves an unusable certificate aside (`cert.pem.invalid`) so that the
    /// next attempt joins with a token instead.
    pub fn discard_cert(&self) -> io::Result<()> {
        fs::rename(self.path(CERT_FILE), self.path("cert.pem.invalid"))
    }

    /// The last snapshot applied, if any. A file that is not a snapshot is
    /// an error (the caller logs it and starts without).
    pub fn load_snapshot(&self) -> Result<Option<Snapshot>, StateError> {
        let Some(text) = self.read(SNAPSHOT_FILE)? else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| StateError::Snapshot {
                path: self.path(SNAPSHOT_FILE),
                source,
            })
    }

    pub fn save_snapshot(&self, snap: &Snapshot) -> io::Result<()> {
        let json = serde_json::to_vec(snap).map_err(io::Error::other)?;
        write_atomic(&self.path(SNAPSHOT_FILE), &json)
    }

    fn read(&self, file: &str) -> Result<Option<String>, StateError> {
        let path = self.path(file);
        match fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Read { path, source }),
        }
    }
}

/// A file of the state directory that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} exists but {} is missing; remove {} to join again with a token", cert.display(), missing.display(), cert.display())]
    Incomplete { cert: PathBuf, missing: PathBuf },
    #[error("{}: {source}", path.display())]
    Snapshot {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Replaces `path` with `bytes`: a temporary file beside it (mode 0600),
/// fsync, rename over `path`, fsync the directory (so the rename itself is
/// durable). Readers see the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{}: not a file path", path.display())))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // `mode` only applies when the file is created; a stale temporary
        // file from a crash keeps its mode, so set it explicitly.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
    }
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use coremesh_api::snapshot::{Endpoint, ServiceEndpoints};

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "coremesh-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&p);
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn snapshot(version: u64) -> Snapshot {
        Snapshot {
            version,
            config_version: 3,
            services: vec![ServiceEndpoints {
                name: "api".into(),
                port: None,
                addresses: Vec::new(),
                protocol: Default::default(),
                endpoints: vec![Endpoint {
                    address: "10.0.0.1:4143".parse().unwrap(),
                    labels: [("version".to_string(), "v1".to_string())].into(),
                    node: "n1".into(),
                    healthy: true,
                }],
            }],
            routes: vec![],
            ..Snapshot::default()
        }
    }

    #[test]
    fn creates_the_directory_private() {
        let t = TempDir::new("state");
        let dir = t.0.join("nested/state");
        let s = StateDir::open(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert!(matches!(s.load_identity(), Ok(None)));
        assert!(matches!(s.load_snapshot(), Ok(None)));
        // Opening again is fine.
        StateDir::open(&dir).unwrap();
    }

    #[test]
    fn identity_round_trip_with_private_files() {
        let t = TempDir::new("state");
        let s = StateDir::open(&t.0).unwrap();
        let id = Identity {
            key_pem: "KEY".into(),
            cert_pem: "CERT".into(),
            ca_pem: "CA".into(),
        };
        s.save_identity(&id).unwrap();
        assert_eq!(s.load_identity().unwrap(), Some(id));
        for f in [KEY_FILE, CERT_FILE, CA_FILE] {
            assert_eq!(mode(&s.path(f)), 0o600, "{f}");
        }
        s.save_renewed("KEY2", "CERT2").unwrap();
        let id = s.load_identity().unwrap().unwrap();
        assert_eq!(
            (id.key_pem.as_str(), id.cert_pem.as_str()),
            ("KEY2", "CERT2")
        );
        fs::remove_file(s.path(KEY_FILE)).unwrap();
        let e = s.load_identity().unwrap_err().to_string();
        assert!(e.contains("key.pem is missing"), "{e}");
        s.discard_cert().unwrap();
        assert!(matches!(s.load_identity(), Ok(None)));
    }

    #[test]
    fn snapshot_round_trip() {
        let t = TempDir::new("state");
        let s = StateDir::open(&t.0).unwrap();
        s.save_snapshot(&snapshot(7)).unwrap();
        assert_eq!(s.load_snapshot().unwrap(), Some(snapshot(7)));
        assert_eq!(mode(&s.path(SNAPSHOT_FILE)), 0o600);
        s.save_snapshot(&snapshot(8)).unwrap();
        assert_eq!(s.load_snapshot().unwrap().unwrap().version, 8);
        fs::write(s.path(SNAPSHOT_FILE), "{not json").unwrap();
        assert!(s
            .load_snapshot()
            .unwrap_err()
            .to_string()
            .contains("snapshot.json"));
    }

    #[test]
    fn atomic_write_replaces_whole_and_leaves_no_temporary() {
        let t = TempDir::new("state");
        let s = StateDir::open(&t.0).unwrap();
        let p = s.path("f");
        write_atomic(&p, &vec![b'a'; 100_000]).unwrap();
        write_atomic(&p, b"short").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"short");
        // A stale temporary file (a crash mid-write) is overwritten, and the
        // result is still private.
        let stale = s.path(&format!("g.tmp.{}", std::process::id()));
        fs::write(&stale, "junk").unwrap();
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&s.path("g"), b"new").unwrap();
        assert_eq!(mode(&s.path("g")), 0o600);
        let names: Vec<_> = fs::read_dir(&t.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp.")), "{names:?}");
        // A failed write leaves the old file in place.
        assert!(write_atomic(&t.0.join("missing-dir/f"), b"x").is_err());
    }
}
