//! Host names in the config, resolved here on the agent thread (tokio's
//! resolver, which runs getaddrinfo on its blocking pool), never on a
//! shard: the shards get configs whose endpoint lists are plain addresses,
//! so the request path is the same whether an endpoint was written as an
//! IP or as a name.
//!
//! `[[services]]` names are resolved at start (before the shards accept)
//! and every [`REFRESH`]; control's addresses each time the proxy
//! connects. A failed resolution keeps the name's last good addresses and
//! logs a warning, so a DNS outage never empties a service.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{Config, HostPort};

/// How often `[[services]]` names are resolved again.
pub const REFRESH: Duration = Duration::from_secs(30);
/// How long one resolution may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The last good addresses of every name resolved so far.
#[derive(Debug, Default)]
pub struct Names {
    last: RefCell<HashMap<HostPort, Vec<SocketAddr>>>,
}

/// Why a name did not resolve.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{0}")]
    Lookup(#[source] std::io::Error),
    #[error("no addresses")]
    Empty,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// `name`'s addresses, sorted, without repeats.
pub async fn lookup(name: &HostPort) -> Result<Vec<SocketAddr>, ResolveError> {
    let found = tokio::time::timeout(
        RESOLVE_TIMEOUT,
        tokio::net::lookup_host((name.host.as_str(), name.port)),
    )
    .await
    .map_err(|_| ResolveError::Timeout(RESOLVE_TIMEOUT))?
    .map_err(ResolveError::Lookup)?;
    let mut addrs: Vec<SocketAddr> = found.collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(ResolveError::Empty);
    }
    Ok(addrs)
}

impl Names {
    /// `name`'s addresses now; on failure the last good ones (empty if it
    /// never resolved), with a warning that says which `what` it is.
    pub async fn resolve(&self, what: &str, name: &HostPort) -> Vec<SocketAddr> {
        match lookup(name).await {
            Ok(addrs) => {
                let before = self.last.borrow_mut().insert(name.clone(), addrs.clone());
                if before.as_ref() != Some(&addrs) {
                    tracing::info!(%name, ?addrs, "{what}: resolved");
                }
                addrs
            }
            Err(e) => {
                let kept = self.cached(name);
                tracing::warn!(
                    %name,
                    kept = ?kept,
                    "{what}: cannot resolve {name}: {e}; keeping its last good addresses"
                );
                kept
            }
        }
    }

    /// The last good addresses of `name` (empty if it never resolved).
    pub fn cached(&self, name: &HostPort) -> Vec<SocketAddr> {
        self.last.borrow().get(name).cloned().unwrap_or_default()
    }

    /// `cfg` with each `[[services]]` name's last good addresses added to
    /// its endpoints: what a reload installs at once, before the names are
    /// resolved again.
    pub fn with_cached(&self, cfg: &Config) -> Config {
        let mut out = cfg.clone();
        for s in &mut out.services {
            for n in &s.names {
                add(&mut s.endpoints, self.cached(n));
            }
        }
        out
    }

    /// `cfg` (as loaded) with every `[[services]]` name resolved now and
    /// added to its endpoints.
    pub async fn resolved(&self, cfg: &Config) -> Config {
        let mut out = cfg.clone();
        for s in &mut out.services {
            let what = format!("[[services]] {}", s.name);
            for n in &s.names {
                add(&mut s.endpoints, self.resolve(&what, n).await);
            }
        }
        out
    }
}

/// Ticks every [`REFRESH`], the first one a period from now (the names
/// were just resolved at start).
pub fn refresh_timer() -> tokio::time::Interval {
    tokio::time::interval_at(tokio::time::Instant::now() + REFRESH, REFRESH)
}

/// Whether `cfg` has any `[[services]]` names to resolve.
pub fn has_names(cfg: &Config) -> bool {
    cfg.services.iter().any(|s| !s.names.is_empty())
}

fn add(endpoints: &mut Vec<SocketAddr>, addrs: Vec<SocketAddr>) {
    for a in addrs {
        if !endpoints.contains(&a) {
            endpoints.push(a);
        }
    }
}

#[cfg(test)]
mod tests;
