//! Getting the proxy's identity to the shards: from control (the joined or
//! renewed certificate, trusted roots from the join and from each
//! snapshot's trust bundle) or from `[tls]` files (static mode, re-read on
//! every SIGHUP). Each is checked here, on the agent thread, before any
//! shard sees it; a bad one is logged and the previous one stays in force.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use crate::agent::admin::AdminState;
use crate::config::Config;
use crate::msg::{ShardHandle, ShardMsg};
use crate::tls::identity::IdentityError;
use crate::tls::Identity;

/// Sends `id` to every shard and shows its expiry on `/metrics`.
pub fn broadcast(shards: &[ShardHandle], admin: Option<&Rc<AdminState>>, id: Identity) {
    if let Some(a) = admin {
        *a.certificate.borrow_mut() = Some((id.spiffe_id.clone(), id.not_after));
    }
    tracing::info!(
        spiffe_id = %id.spiffe_id,
        not_after = id.not_after,
        roots = id.roots.len(),
        "identity in use for mutual TLS"
    );
    let id = Arc::new(id);
    for h in shards {
        let _ = h.tx.try_send(ShardMsg::Identity(id.clone()));
    }
}

/// Why the `[tls]` files do not give an identity to use. `config` is the
/// configuration file whose `[tls]` section names them.
#[derive(Debug, thiserror::Error)]
pub enum StaticIdentityError {
    #[error("{}: [tls]: cannot read {}: {source}", config.display(), file.display())]
    Read {
        config: PathBuf,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(
        "{}: [tls]: {}: the certificate expired {ago} s ago",
        config.display(),
        cert.display()
    )]
    Expired {
        config: PathBuf,
        cert: PathBuf,
        /// Seconds since its notAfter.
        ago: i64,
    },
}

/// Reads the `[tls]` files of `cfg`, if it has that section.
pub fn load_static(cfg: &Config) -> Option<Result<Identity, StaticIdentityError>> {
    let t = cfg.tls.as_ref()?;
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| StaticIdentityError::Read {
            config: cfg.source.clone(),
            file: p.to_path_buf(),
            source,
        })
    };
    Some((|| {
        let cert = read(&t.cert)?;
        let key = read(&t.key)?;
        let ca = read(&t.ca)?;
        let what = format!("{}: [tls]", cfg.source.display());
        let id = Identity::from_pem(&cert, &key, &[ca.as_str()], &what)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if id.not_after <= now {
            return Err(StaticIdentityError::Expired {
                config: cfg.source.clone(),
                cert: t.cert.clone(),
                ago: now - id.not_after,
            });
        }
        Ok(id)
    })())
}
