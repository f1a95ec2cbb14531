//! The operator API over TLS 1.3.
//!
//! The API carries the operator credential (a bearer token), so on any
//! network it must be encrypted and meshctl must know it talks to control.
//! By default control issues itself a server certificate from the mesh CA
//! at every start (SANs: `localhost`, the API's listen IP, the loopback
//! addresses when it listens on all of them, and every `--api-san`), and
//! writes the CA certificate it chains to as `<data-dir>/api-ca.pem`, which
//! meshctl pins (see `meshctl --help`: `--ca`, or `api-ca.pem` beside the
//! credential). An operator may bring their own certificate instead
//! (`--api-cert`, `--api-key`); meshctl then needs `--ca`.
//!
//! `--api-plaintext` keeps plain HTTP for old scripts, on a loopback
//! address only: there the credential never crosses a network.
//!
//! axum's own `serve` takes plain TCP only, so [`serve`] accepts, runs the
//! TLS handshake (tokio-rustls) and drives the same router per connection
//! with hyper.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::ca::Ca;
use crate::datadir;

/// How long a client may take to finish the TLS handshake, and to send a
/// request head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The API's TLS flags of `coremesh-control`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ApiTlsArgs {
    /// Another name (DNS name or IP address) in the API's certificate, for
    /// meshctl on other hosts to reach control by (`--api
    /// https://NAME:PORT`); repeatable. `localhost` and the listen IP are
    /// always in it.
    #[arg(long = "api-san", value_name = "NAME")]
    pub api_san: Vec<String>,
    /// Serve the API with this certificate (PEM: the leaf, then its
    /// intermediates) instead of one issued by the mesh CA. meshctl then
    /// needs `--ca` with the CA that issued it. Needs --api-key.
    #[arg(long = "api-cert", value_name = "FILE", requires = "api_key")]
    pub api_cert: Option<PathBuf>,
    /// The private key (PEM) of --api-cert.
    #[arg(long = "api-key", value_name = "FILE", requires = "api_cert")]
    pub api_key: Option<PathBuf>,
    /// Serve plain HTTP instead of TLS (meshctl `--api http://...`), for
    /// old scripts. Refused unless --api is a loopback address.
    #[arg(long = "api-plaintext", conflicts_with_all = ["api_cert", "api_san"])]
    pub api_plaintext: bool,
}

/// Why the API's TLS could not be set up; each names the flag or file.
#[derive(Debug, thiserror::Error)]
pub enum ApiTlsError {
    #[error("--api-plaintext would send the operator credential in clear over a network: it is allowed on a loopback address only, not on {0} (drop --api-plaintext to serve TLS)")]
    PlaintextNotLoopback(SocketAddr),
    #[error("--api-san {0:?}: not a DNS name or an IP address")]
    BadSan(String),
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a PEM certificate chain: {reason}")]
    BadCert { path: PathBuf, reason: String },
    #[error("{path}: no PEM private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("--api-cert {cert} with --api-key {key}: {reason}")]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("issuing the API certificate: {0}")]
    Issue(#[source] crate::Error),
    #[error("{path}: cannot write the API's CA for meshctl: {source}")]
    WriteCa {
        path: PathBuf,
        #[source]
        source: crate::Error,
    },
}

impl From<ApiTlsError> for crate::Error {
    fn from(e: ApiTlsError) -> Self {
        crate::Error::rejected(e.to_string()).caused_by(e)
    }
}

/// The names in the API's certificate: `localhost`, the listen IP (both
/// loopback addresses instead when it is unspecified, so meshctl on the
/// host reaches `https://127.0.0.1:PORT`), then `extra` in order, without
/// repeats. Each must be a name a client can ask for.
pub fn api_names(listen: SocketAddr, extra: &[String]) -> Result<Vec<String>, ApiTlsError> {
    let mut names = vec!["localhost".to_string()];
    if listen.ip().is_unspecified() {
        names.push(Ipv4Addr::LOCALHOST.to_string());
        names.push(Ipv6Addr::LOCALHOST.to_string());
    } else {
        names.push(listen.ip().to_string());
    }
    for name in extra {
        let name = name.trim();
        let ok = name.parse::<IpAddr>().is_ok()
            || (!name.is_empty() && ServerName::try_from(name).is_ok());
        if !ok {
            return Err(ApiTlsError::BadSan(name.to_string()));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// The acceptor for the API, or `None` for `--api-plaintext`. With the
/// mesh CA's certificate it writes `<data-dir>/api-ca.pem` (the CA meshctl
/// pins); otherwise it removes a stale one, so meshctl never pins a CA
/// that no longer issues the API's certificate.
pub fn acceptor(
    args: &ApiTlsArgs,
    ca: &Ca,
    listen: SocketAddr,
    data_dir: &Path,
    now: SystemTime,
) -> Result<Option<TlsAcceptor>, ApiTlsError> {
    let ca_file = data_dir.join(datadir::API_CA);
    if args.api_plaintext {
        if !listen.ip().is_loopback() {
            return Err(ApiTlsError::PlaintextNotLoopback(listen));
        }
        let _ = std::fs::remove_file(&ca_file);
        return Ok(None);
    }
    let (chain, key) = match (&args.api_cert, &args.api_key) {
        (Some(cert), Some(key)) => {
            let loaded = load_operator_cert(cert, key)?;
            let _ = std::fs::remove_file(&ca_file);
            loaded
        }
        _ => {
            let names = api_names(listen, &args.api_san)?;
            let issued = ca.server_cert_for(names, now).map_err(ApiTlsError::Issue)?;
            datadir::write_secret(&ca_file, ca.cert_pem()).map_err(|source| {
                ApiTlsError::WriteCa {
                    path: ca_file.clone(),
                    source,
                }
            })?;
            issued
        }
    };
    let unusable = |reason: String| ApiTlsError::Unusable {
        cert: args.api_cert.clone().unwrap_or_default(),
        key: args.api_key.clone().unwrap_or_default(),
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| unusable(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| unusable(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// The operator's certificate chain and key, checked to be PEM.
fn load_operator_cert(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ApiTlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| ApiTlsError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiTlsError::BadCert {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(ApiTlsError::BadCert {
            path: cert.to_path_buf(),
            reason: "no certificate in it".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| ApiTlsError::BadKey {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok((chain, key_der))
}

/// Serves `app` on `listener` until `shutdown` completes: over TLS with
/// `tls`, plain HTTP/1.1 without. Then stops accepting and waits up to
/// [`DRAIN_TIMEOUT`] for requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, mostly: wait instead of spinning.
                    tracing::warn!("API: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let Some(tls) = tls else {
                return serve_connection(tcp, app, watcher).await;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                Ok(Ok(stream)) => serve_connection(stream, app, watcher).await,
                Ok(Err(e)) => tracing::debug!(%peer, "API: TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(%peer, "API: TLS handshake timed out"),
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("API: requests still running after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
}

async fn serve_connection<S>(
    stream: S,
    app: axum::Router,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!("API connection: {e}");
    }
}

#[cfg(test)]
mod tests;
