//! [`EtcdStore`]: the store on etcd v3, shared by several control
//! processes (`--store etcd://h1:2379,h2:2379,h3:2379`).
//!
//! Every key lives under one prefix (`--etcd-prefix`, default
//! `/coremesh/`); [`Keys`] names them and docs/etcd.md lists them. Values
//! are the same JSON records as [`super::RedbStore`]'s, so the two stores
//! hold the same thing.
//!
//! Every change is one etcd transaction guarded by a compare:
//! - a commit writes `versions/<N+1>` and `current = N+1` only if
//!   `current` is still `N` (and `versions/<N+1>` does not exist), so two
//!   controls committing at once never both win: the loser gets
//!   [`StoreError::Conflict`] with the version that won;
//! - a token consumed or revoked, and a node record changed, is read, and
//!   written back only if its `mod_revision` is still the one read (a key
//!   that did not exist: only if it still does not), retried on a race. So
//!   a one-time token is taken once however many controls present it.
//!
//! etcd commits a transaction once a majority of its members have it on
//! disk: what [`Store`] promises (durable before the method returns) holds
//! for the cluster. Without a majority, requests fail (no leader) or time
//! out after `--etcd-timeout`, and nothing is half-written: a transaction
//! is whole or absent. A timed-out commit may still land if the cluster
//! recovers before it is dropped; the error says to check the history.
//!
//! The trait is synchronous and control runs on tokio: the store owns a
//! small runtime of its own ([`EtcdStore::run`]) that drives the etcd
//! client, and a call blocks its caller on a channel until the answer
//! comes. Callers are already off the executor (`spawn_blocking`, or
//! start-up before serving), as the trait asks.
//!
//! Each member has its own client, and a request goes to the member that
//! answered last, then to the others while it certainly did not reach
//! etcd's log ([`Retry`]): a dead member costs a refused connection, an
//! election a few retries.
//!
//! The store watches `current` ([`Store::watch`]), so the hub adopts and
//! pushes what another control committed. By default the CA key is not in
//! etcd: each replica reads its CA from its data directory (or
//! `--ca-cert`/`--ca-key`); etcd keeps only the fingerprint of their root,
//! so a replica with another CA is refused ([`EtcdStore::agree_ca`]). With
//! `--ca-in-store` the CA is in etcd at `ca/current`, its key sealed with
//! the operator's key ([`super::ca_record`], `ca_store`).

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    TlsOptions, Txn, TxnOp, TxnOpResponse,
};

use super::{
    check_token, Consumed, Corruption, Issued, IssuedCert, NodeRecord, Store, StoreDump,
    StoreError, StoreIo, TokenRecord, TokenRefusal, VersionRecord,
};
use crate::config::Config;

/// Where the store is, from the command line (flattened into control's
/// arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// The store: `redb` (a file in --data-dir, for one control process) or
    /// `etcd://HOST:PORT,HOST:PORT,...` (etcd v3, shared by several;
    /// see docs/etcd.md). The port defaults to 2379.
    #[arg(long, default_value = "redb", value_name = "redb|etcd://HOST:PORT,...")]
    pub store: String,
    /// The etcd key prefix of the store: several meshes can share one etcd
    /// under different prefixes.
    #[arg(long, default_value = "/coremesh/", value_name = "PREFIX")]
    pub etcd_prefix: String,
    /// Speak TLS to etcd and trust this CA (PEM) for its certificates.
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// A client certificate (PEM) for etcd's --client-cert-auth; needs
    /// --etcd-key and --etcd-ca.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_key", "etcd_ca"])]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// How long one store operation may wait for etcd before it fails.
    #[arg(long, default_value = "5s", value_parser = crate::store::etcd::duration)]
    pub etcd_timeout: Duration,
    /// This control process's name among the replicas on the store: the
    /// value of the election keys it leads and the owner of the
    /// registrations it holds. Unique per replica; default HOSTNAME:API-PORT
    /// (HOSTNAME:pidPID when --api's port is 0).
    #[arg(long, value_name = "NAME")]
    pub replica_name: Option<String>,
}

fn duration(s: &str) -> Result<Duration, coremesh_api::resource::DurationError> {
    coremesh_api::resource::parse_duration(s)
}

impl EtcdArgs {
    /// `--replica-name`, or HOSTNAME:API-PORT (HOSTNAME:pidPID for an API
    /// on port 0, which is only known once bound).
    pub fn replica(&self, api_port: u16) -> String {
        if let Some(name) = &self.replica_name {
            return name.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string());
        default_replica(&host, api_port, std::process::id())
    }

    /// The etcd endpoints of `--store etcd://...`, or `None` for `redb`.
    pub fn etcd_endpoints(&self) -> Result<Option<Vec<String>>, EtcdError> {
        if self.store == "redb" {
            return Ok(None);
        }
        parse_url(&self.store).map(Some)
    }
}

/// The default replica name: `host:port`, or `host:pidPID` for port 0.
pub fn default_replica(host: &str, api_port: u16, pid: u32) -> String {
    if api_port == 0 {
        format!("{host}:pid{pid}")
    } else {
        format!("{host}:{api_port}")
    }
}

/// The `host:port` endpoints of an `etcd://h1:2379,h2:2379` URL (port
/// 2379 where none is given).
pub fn parse_url(url: &str) -> Result<Vec<String>, EtcdError> {
    let bad = |why: &str| EtcdError::BadUrl {
        url: url.to_string(),
        why: why.to_string(),
    };
    let Some(rest) = url.strip_prefix("etcd://") else {
        return Err(bad("expected `redb` or etcd://HOST:PORT,HOST:PORT,..."));
    };
    let rest = rest.trim_end_matches('/');
    let mut out = Vec::new();
    for host in rest.split(',') {
        if host.is_empty() {
            return Err(bad("an empty host (two commas, or none after etcd://)"));
        }
        if host.contains(['/', '@', '?', '#', ' ']) {
            return Err(bad(&format!(
                "{host:?} is not HOST or HOST:PORT (no paths, users or spaces)"
            )));
        }
        // `[::1]:2379`, `[::1]`, `h1:2379`, `h1`.
        let has_port = match host.rfind(']') {
            Some(end) => host[end..].contains(':'),
            None => host.contains(':'),
        };
        let with_port = if has_port {
            host.to_string()
        } else {
            format!("{host}:2379")
        };
        let port = with_port.rsplit(':').next().unwrap_or_default();
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad(&format!("{host:?}: the port is not 1 to 65535")));
        }
        out.push(with_port);
    }
    Ok(out)
}

/// The store's keys under its prefix. The layout (docs/etcd.md):
///
/// | key | value |
/// | --- | --- |
/// | `<prefix>store-id` | the store's identity (hex) |
/// | `<prefix>current` | the current version, decimal (absent: 0) |
/// | `<prefix>versions/<version, 20 digits>` | JSON [`VersionRecord`] |
/// | `<prefix>tokens/<id>` | JSON [`TokenRecord`] |
/// | `<prefix>nodes/<node>` | JSON [`NodeRecord`] |
/// | `<prefix>ca-fingerprint` | the fingerprint of the controls' CA root ([`EtcdStore::agree_ca`]) |
/// | `<prefix>ca/current` | with `--ca-in-store`: JSON [`super::ca_record::CaRecord`], the CA with its key sealed |
/// | `<prefix>ca/next`, `<prefix>ca/previous`, `<prefix>ca/rotation` | a root rotation under way ([`crate::ca_rotation`]) |
/// | `<prefix>election/<name>` | the replica leading election `name`, under its lease ([`super::election`]) |
/// | `<prefix>endpoints/<service>/<address>` | JSON [`super::registrations::EndpointRecord`], under the owning replica's lease |
///
/// Versions are zero-padded so that etcd's byte order is version order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

/// This control's CA is not the one the others on the store use
/// ([`EtcdStore::agree_ca`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this control's CA (root fingerprint {ours}) is not the CA of the other controls on this store (root fingerprint {recorded}, recorded in etcd at {key}), and its trust bundle does not include theirs: proxies joined through one would not trust the other. Copy ca.pem and ca.key from another control's data directory into this one's (or pass the same --ca-cert and --ca-key); to move every control to a new CA, rotate the root (README, \"Rotating the root\")")]
pub struct CaMismatch {
    pub ours: String,
    pub recorded: String,
    pub key: String,
}

/// What a key under the prefix is ([`Keys::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    StoreId,
    Current,
    Version(u64),
    Token(String),
    Node(String),
    /// `ca/<slot>`: a sealed CA ([`Keys::ca`]).
    Ca(String),
    /// The leader key of an election.
    Election(String),
    /// A shared registration: (service, address).
    Endpoint(String, std::net::SocketAddr),
    /// Not one of ours (a later control's, say): left alone.
    Other,
}

impl Keys {
    /// Keys under `prefix`, which gets a trailing `/` if it lacks one.
    pub fn new(prefix: &str) -> Result<Keys, EtcdError> {
        if prefix.is_empty() || prefix == "/" {
            return Err(EtcdError::BadPrefix(prefix.to_string()));
        }
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Keys { prefix })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn store_id(&self) -> String {
        format!("{}store-id", self.prefix)
    }

    pub fn current(&self) -> String {
        format!("{}current", self.prefix)
    }

    pub fn ca_fingerprint(&self) -> String {
        format!("{}ca-fingerprint", self.prefix)
    }

    /// `ca/<slot>`: the CA shared through the store, sealed
    /// ([`super::ca_record`]); `slot` is [`CA_CURRENT`].
    pub fn ca(&self, slot: &str) -> String {
        format!("{}ca/{slot}", self.prefix)
    }

    pub fn version(&self, version: u64) -> String {
        format!("{}versions/{version:020}", self.prefix)
    }

    pub fn token(&self, id: &str) -> String {
        format!("{}tokens/{id}", self.prefix)
    }

    pub fn node(&self, node: &str) -> String {
        format!("{}nodes/{node}", self.prefix)
    }

    pub fn election(&self, name: &str) -> String {
        format!("{}election/{name}", self.prefix)
    }

    /// `<prefix>endpoints/<service>/<address>`: a shared registration.
    pub fn endpoint(&self, service: &str, address: std::net::SocketAddr) -> String {
        format!("{}endpoints/{service}/{address}", self.prefix)
    }

    /// `<prefix>endpoints/`, the range of every registration.
    pub fn endpoints(&self) -> String {
        format!("{}endpoints/", self.prefix)
    }

    /// What `key` (a full key) is; `None` when it is not under the prefix.
    pub fn parse(&self, key: &[u8]) -> Option<Key> {
        let rest = key.strip_prefix(self.prefix.as_bytes())?;
        let rest = std::str::from_utf8(rest).ok()?;
        Some(match rest {
            "store-id" => Key::StoreId,
            "current" => Key::Current,
            _ => {
                if let Some(v) = rest.strip_prefix("versions/") {
                    match v.parse::<u64>() {
                        Ok(n) if v.len() == 20 => Key::Version(n),
                        _ => Key::Other,
                    }
                } else if let Some(id) = rest.strip_prefix("tokens/") {
                    Key::Token(id.to_string())
                } else if let Some(node) = rest.strip_prefix("nodes/") {
                    Key::Node(node.to_string())
                } else if let Some(slot) = rest.strip_prefix("ca/") {
                    Key::Ca(slot.to_string())
                } else if let Some(name) = rest.strip_prefix("election/") {
                    Key::Election(name.to_string())
                } else if let Some(e) = rest.strip_prefix("endpoints/") {
                    match parse_endpoint(e) {
                        Some((service, address)) => Key::Endpoint(service, address),
                        None => Key::Other,
                    }
                } else {
                    Key::Other
                }
            }
        })
    }
}

/// The (service, address) of an `endpoints/` key's rest.
pub fn parse_endpoint(rest: &str) -> Option<(String, std::net::SocketAddr)> {
    let (service, address) = rest.rsplit_once('/')?;
    if service.is_empty() {
        return None;
    }
    Some((service.to_string(), address.parse().ok()?))
}

/// Why the etcd store failed: what, where (the endpoints), and what to
/// check.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("--store {url}: {why}")]
    BadUrl { url: String, why: String },
    #[error("--etcd-prefix {0:?}: a prefix other than \"\" or \"/\" is needed (the default is /coremesh/)")]
    BadPrefix(String),
    #[error("{path}: {why}")]
    TlsFile { path: PathBuf, why: String },
    #[error("etcd at {endpoints}: {what} failed: {source}{}", hint(.source))]
    Request {
        endpoints: String,
        what: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd at {endpoints}: {what}: no answer within {}s; is a majority of the etcd members up? Nothing is half-written, but a change that timed out may still land if etcd recovers: check `meshctl history` before applying again", after.as_secs_f64())]
    Timeout {
        endpoints: String,
        what: &'static str,
        after: Duration,
    },
    #[error("etcd store: {0}")]
    Gone(&'static str),
    #[error("cannot start the etcd client's threads: {0}")]
    Runtime(#[source] std::io::Error),
}

/// What to check, after an etcd client error.
fn hint(e: &etcd_client::Error) -> &'static str {
    match e {
        etcd_client::Error::GRpcStatus(s) if timed_out(s) || s.message().contains("timed out") => {
            " (no answer in time: is a majority of the etcd members up? A change that timed out may still land if etcd recovers: check `meshctl history` before applying again)"
        }
        etcd_client::Error::GRpcStatus(s) => {
            let m = s.message();
            if m.contains("no leader") || m.contains("leader changed") {
                " (is a majority of the etcd members up? Without one etcd takes no change, and nothing was applied)"
            } else if s.code() == tonic::Code::Unavailable {
                " (is etcd running at these addresses, and reachable?)"
            } else {
                ""
            }
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            " (is etcd running at these addresses, and reachable?)"
        }
        _ => "",
    }
}

pub(super) fn io(e: EtcdError) -> StoreError {
    StoreError::Io(StoreIo::Etcd(Box::new(e)))
}

fn corrupt(what: &'static str, source: serde_json::Error) -> StoreError {
    StoreError::Corrupt(Corruption::Undecodable { what, source })
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Io(StoreIo::Encode(e)))
}

/// The decimal `current` value.
pub fn parse_current(key: &str, value: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| {
            StoreError::Corrupt(Corruption::BadKey {
                key: key.to_string(),
                why: format!(
                    "holds {:?}, not a version number",
                    String::from_utf8_lossy(value)
                ),
            })
        })
}

/// How many times a read-compare-write of a token or node record is
/// tried while other controls keep changing the same key.
const CAS_TRIES: usize = 32;

/// What the async half holds: a client per endpoint (cheap to clone) and
/// the layout.
///
/// One client per endpoint rather than one balanced over all: the balanced
/// channel keeps sending requests to a member that is down (each fails
/// with a connect error), so the store picks the endpoint itself, sticking
/// to the last one that answered and moving on when one cannot take the
/// request ([`retryable`]).
#[derive(Clone)]
pub(crate) struct Inner {
    clients: Arc<Vec<Client>>,
    /// Index into `clients` of the endpoint that answered last.
    preferred: Arc<AtomicUsize>,
    keys: Keys,
    endpoints: String,
    /// How long [`Inner::call`] keeps trying (`--etcd-timeout`).
    patience: Duration,
    /// This replica's lease and name, once [`EtcdStore::start_session`]
    /// ran.
    session: Option<Arc<Session>>,
}

/// Which failed requests [`Inner::call`] tries again (on the next
/// endpoint, and again until `--etcd-timeout` has passed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Only requests that certainly did not reach etcd's log: the
    /// connection failed, or the member has no leader (the client requires
    /// one, so such a member refuses before it proposes anything). For
    /// writes that must not happen twice (a token's use).
    Unsent,
    /// Also requests whose outcome is unknown ("leader changed", "request
    /// timed out": the change may still be committed). For reads, and for
    /// writes that are safe to repeat (a put of the same value, a commit
    /// whose guard fails on a second try, and is then recognized).
    Any,
}

/// Whether a request that failed with `e` may be sent again under `retry`.
pub fn retryable(e: &etcd_client::Error, retry: Retry) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) if timed_out(s) => retry == Retry::Any,
        etcd_client::Error::GRpcStatus(s) => {
            let m = s.message();
            let unknown = m.contains("timed out") || m.contains("leader changed");
            s.code() == tonic::Code::Unavailable && (retry == Retry::Any || !unknown)
        }
        _ => false,
    }
}

/// Whether the client gave up waiting (`--etcd-timeout` per request): the
/// request may or may not have been applied.
fn timed_out(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
    ) && s.message().contains("imeout")
}

/// How much an error says about why etcd cannot take a request, to pick
/// the one to report when every member failed: "no leader" (the majority is
/// gone) over a timeout (a member that has not noticed yet) over a refused
/// connection (that member is down).
fn telling(e: &etcd_client::Error) -> u8 {
    match e {
        e if no_leader(e) => 3,
        etcd_client::Error::GRpcStatus(s) if timed_out(s) || s.message().contains("timed out") => 2,
        _ => 1,
    }
}

/// Whether `e` says the member has no leader (etcd lost its majority).
fn no_leader(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("no leader"))
}

pub struct EtcdStore {
    inner: Inner,
    /// Empty until the identity is read or made ([`EtcdStore::adopt_id`]).
    id: String,
    timeout: Duration,
    /// Drives the etcd client; `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime's
        // context: let its threads go in the background instead.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The TLS options from --etcd-ca, --etcd-cert, --etcd-key.
fn tls_options(args: &EtcdArgs) -> Result<Option<TlsOptions>, EtcdError> {
    let Some(ca) = &args.etcd_ca else {
        return Ok(None);
    };
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| EtcdError::TlsFile {
            path: path.clone(),
            why: format!("cannot read it: {e}"),
        })
    };
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let (Some(cert), Some(key)) = (&args.etcd_cert, &args.etcd_key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

impl EtcdStore {
    /// Connects to the etcd of `endpoints` (from [`parse_url`]) and reads
    /// the store's identity (empty when etcd holds no store under the
    /// prefix yet). Fails when etcd does not answer.
    pub fn connect(endpoints: &[String], args: &EtcdArgs) -> Result<EtcdStore, StoreError> {
        let keys = Keys::new(&args.etcd_prefix).map_err(io)?;
        let tls = tls_options(args).map_err(io)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let urls: Vec<String> = endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        let shown = endpoints.join(",");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-store")
            .enable_all()
            .build()
            .map_err(|e| io(EtcdError::Runtime(e)))?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(args.etcd_timeout)
            .with_timeout(args.etcd_timeout)
            // Fail at once on a member without a leader rather than wait.
            .with_require_leader(true)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        if let Some(tls) = tls {
            options = options.with_tls(tls);
        }
        // Not `rt.block_on`: the caller may be inside control's runtime,
        // where blocking on another runtime panics. Connecting is lazy:
        // a member that is down now is tried again on each request.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let after = args.etcd_timeout;
        rt.spawn(async move {
            let connect = async {
                let mut clients = Vec::with_capacity(urls.len());
                for url in urls {
                    clients.push(Client::connect([url], Some(options.clone())).await?);
                }
                Ok::<_, etcd_client::Error>(clients)
            };
            let _ = tx.send(tokio::time::timeout(after, connect).await);
        });
        let clients = rx
            .recv()
            .map_err(|_| io(EtcdError::Gone("its runtime stopped")))?
            .map_err(|_| {
                io(EtcdError::Timeout {
                    endpoints: shown.clone(),
                    what: "connecting",
                    after,
                })
            })?
            .map_err(|source| {
                io(EtcdError::Request {
                    endpoints: shown.clone(),
                    what: "connecting",
                    source,
                })
            })?;
        let mut store = EtcdStore {
            inner: Inner {
                clients: Arc::new(clients),
                preferred: Arc::new(AtomicUsize::new(0)),
                patience: args.etcd_timeout,
                keys,
                endpoints: shown,
                session: None,
            },
            id: String::new(),
            timeout: args.etcd_timeout,
            rt: Some(rt),
        };
        store.id = store.read_id()?.unwrap_or_default();
        Ok(store)
    }

    /// The endpoints, as messages show them.
    pub fn endpoints(&self) -> &str {
        &self.inner.endpoints
    }

    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// The async half, for work on the store's runtime.
    pub(crate) fn inner(&self) -> Inner {
        self.inner.clone()
    }

    /// Spawns `fut` on the store's runtime; its abort handle (`None` once
    /// the store is shutting down).
    pub fn spawn_handle<F>(&self, fut: F) -> Option<tokio::task::AbortHandle>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.rt.as_ref().map(|rt| rt.spawn(fut).abort_handle())
    }

    /// Runs `f` on the store's runtime and waits for it, at most
    /// `--etcd-timeout` (plus a margin for a retried compare).
    pub(super) fn run<T, F>(
        &self,
        what: &'static str,
        f: impl FnOnce(Inner) -> F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let Some(rt) = &self.rt else {
            return Err(io(EtcdError::Gone("shut down")));
        };
        let fut = f(self.inner.clone());
        let after = self.timeout * 2;
        let endpoints = self.inner.endpoints.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let out = match tokio::time::timeout(after, fut).await {
                Ok(r) => r,
                Err(_) => Err(io(EtcdError::Timeout {
                    endpoints,
                    what,
                    after,
                })),
            };
            let _ = tx.send(out);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(io(EtcdError::Gone("its runtime stopped"))))
    }

    /// The identity etcd holds under the prefix, if any.
    pub fn read_id(&self) -> Result<Option<String>, StoreError> {
        self.run("reading the store identity", |inner| async move {
            let key = inner.keys.store_id();
            let kv = inner.get_one(&key, "reading the store identity").await?;
            Ok(kv.map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
        })
    }

    /// Checks that this control issues from the CA the other controls on
    /// the store use. etcd keeps the fingerprint of a control's CA root
    /// (`ca-fingerprint`; never a key): the first control records its
    /// own. A control whose trust bundle (`trusted`: its root's fingerprint
    /// first, then `--extra-roots`') includes the recorded one agrees (and
    /// records its own root, so a root rotation moves the record along);
    /// one that does not is refused: [`CaMismatch`] says which.
    pub fn agree_ca(&self, trusted: &[String]) -> Result<Result<(), CaMismatch>, StoreError> {
        let Some(ours) = trusted.first().cloned() else {
            return Ok(Ok(()));
        };
        let trusted = trusted.to_vec();
        self.run("checking the CA", move |inner| async move {
            let key = inner.keys.ca_fingerprint();
            for _ in 0..CAS_TRIES {
                let (recorded, rev) =
                    match inner.get_one(&key, "reading the CA fingerprint").await? {
                        Some(kv) => (
                            Some(String::from_utf8_lossy(kv.value()).into_owned()),
                            kv.mod_revision(),
                        ),
                        None => (None, 0),
                    };
                match recorded {
                    Some(r) if r == ours => return Ok(Ok(())),
                    Some(r) if !trusted.contains(&r) => {
                        return Ok(Err(CaMismatch {
                            ours,
                            recorded: r,
                            key,
                        }))
                    }
                    _ => {}
                }
                if inner
                    .write_if_unchanged(
                        &key,
                        rev,
                        Some(ours.clone().into_bytes()),
                        "recording the CA fingerprint",
                    )
                    .await?
                {
                    return Ok(Ok(()));
                }
            }
            Err(inner.raced("recording the CA fingerprint"))
        })
    }

    /// Makes `id` the store's identity if etcd has none yet; returns the
    /// one etcd holds after (another control's, if it was first).
    pub fn create_id(&mut self, id: &str) -> Result<String, StoreError> {
        let id_owned = id.to_string();
        let held = self.run("creating the store identity", |inner| async move {
            let key = inner.keys.store_id();
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), id_owned.clone(), None)])
                .or_else([TxnOp::get(key.clone(), None)]);
            let resp = inner
                .txn(txn, "creating the store identity", Retry::Any)
                .await?;
            if resp.succeeded() {
                return Ok(id_owned);
            }
            Ok(first_get(&resp)
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                .unwrap_or(id_owned))
        })?;
        self.id = held.clone();
        Ok(held)
    }
}

/// The first key-value of the first Get in a transaction's answer.
fn first_get(resp: &etcd_client::TxnResponse) -> Option<KeyValue> {
    resp.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    })
}

impl Inner {
    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The client of the endpoint that answered last (for watches).
    pub(crate) fn client(&self) -> Client {
        let i = self.preferred.load(Ordering::Relaxed) % self.clients.len();
        self.clients[i].clone()
    }

    fn fail(&self, what: &'static str) -> impl FnOnce(etcd_client::Error) -> StoreError + '_ {
        move |source| {
            io(EtcdError::Request {
                endpoints: self.endpoints.clone(),
                what,
                source,
            })
        }
    }

    /// Runs `f` with the client of the preferred endpoint, then of the
    /// others in turn while the failure is [`retryable`] under `retry`, in
    /// rounds 200 ms apart until `patience` has passed (an election after
    /// a member is lost takes about a second). The most [`telling`] error
    /// of the tries.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        what: &'static str,
        retry: Retry,
        f: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.clients.len();
        let deadline = tokio::time::Instant::now() + self.patience;
        let pause = Duration::from_millis(200);
        let mut worst: Option<etcd_client::Error> = None;
        loop {
            let start = self.preferred.load(Ordering::Relaxed);
            for k in 0..n {
                let i = (start + k) % n;
                match f(self.clients[i].clone()).await {
                    Ok(v) => {
                        if k > 0 {
                            self.preferred.store(i, Ordering::Relaxed);
                        }
                        return Ok(v);
                    }
                    Err(e) if retryable(&e, retry) => {
                        if worst.as_ref().is_none_or(|w| telling(&e) >= telling(w)) {
                            worst = Some(e);
                        }
                    }
                    Err(e) => return Err(self.fail(what)(e)),
                }
            }
            if tokio::time::Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        Err(self.fail(what)(worst.unwrap_or_else(|| {
            etcd_client::Error::InvalidArgs("no endpoints".into())
        })))
    }

    async fn get_one(&self, key: &str, what: &'static str) -> Result<Option<KeyValue>, StoreError> {
        let resp = self
            .call(what, Retry::Any, |c| async move {
                c.kv_client().get(key, None).await
            })
            .await?;
        Ok(resp.kvs().first().cloned())
    }

    pub(crate) async fn txn(
        &self,
        txn: Txn,
        what: &'static str,
        retry: Retry,
    ) -> Result<etcd_client::TxnResponse, StoreError> {
        self.call(what, retry, |c| {
            let txn = txn.clone();
            async move { c.kv_client().txn(txn).await }
        })
        .await
    }

    /// Every key under the prefix, at one revision.
    async fn all(&self) -> Result<Vec<KeyValue>, StoreError> {
        self.range("", "reading the store").await
    }

    /// Every key under `<prefix><sub>`.
    async fn range(&self, sub: &str, what: &'static str) -> Result<Vec<KeyValue>, StoreError> {
        let key = format!("{}{sub}", self.keys.prefix());
        let resp = self
            .call(what, Retry::Any, |c| {
                let key = key.clone();
                async move {
                    // History grows without bound; tonic's default 4 MiB
                    // answer limit would cut a long one off.
                    c.kv_client()
                        .max_decoding_message_size(usize::MAX)
                        .get(key, Some(GetOptions::new().with_prefix()))
                        .await
                }
            })
            .await?;
        Ok(resp.kvs().to_vec())
    }

    async fn current_version(&self) -> Result<u64, StoreError> {
        let key = self.keys.current();
        match self.get_one(&key, "reading the current version").await? {
            Some(kv) => parse_current(&key, kv.value()),
            None => Ok(0),
        }
    }

    async fn version_record(&self, version: u64) -> Result<Option<VersionRecord>, StoreError> {
        let key = self.keys.version(version);
        match self.get_one(&key, "reading a version").await? {
            Some(kv) => serde_json::from_slice(kv.value())
                .map(Some)
                .map_err(|e| corrupt("version", e)),
            None => Ok(None),
        }
    }

    async fn current_record(&self) -> Result<(u64, Config, String), StoreError> {
        let version = self.current_version().await?;
        if version == 0 {
            let config = Config::default();
            let digest = crate::config::digest(&config);
            return Ok((0, config, digest));
        }
        // Versions are never rewritten, so reading it after `current` is
        // consistent.
        let rec = self
            .version_record(version)
            .await?
            .ok_or(StoreError::Corrupt(Corruption::MissingVersion(version)))?;
        let digest = if rec.digest.is_empty() {
            crate::config::digest(&rec.config)
        } else {
            rec.digest
        };
        Ok((version, rec.config, digest))
    }

    async fn commit(
        &self,
        expected: u64,
        config: Config,
        summary: String,
        at: u64,
    ) -> Result<u64, StoreError> {
        let version = expected + 1;
        let current = self.keys.current();
        let rec = VersionRecord {
            version,
            at,
            summary,
            digest: crate::config::digest(&config),
            config,
        };
        let guard = if expected == 0 {
            Compare::create_revision(current.clone(), CompareOp::Equal, 0)
        } else {
            Compare::value(current.clone(), CompareOp::Equal, expected.to_string())
        };
        let txn = Txn::new()
            .when([
                guard,
                Compare::create_revision(self.keys.version(version), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(self.keys.version(version), to_json(&rec)?, None),
                TxnOp::put(current.clone(), version.to_string(), None),
            ])
            .or_else([TxnOp::get(current.clone(), None)]);
        let resp = self.txn(txn, "committing a version", Retry::Any).await?;
        if resp.succeeded() {
            return Ok(version);
        }
        let found = match first_get(&resp) {
            Some(kv) => parse_current(&current, kv.value())?,
            None => 0,
        };
        // A try whose answer was lost (an election) may have committed
        // before this one failed its guard: then the version is ours.
        if found == version && self.version_record(version).await?.as_ref() == Some(&rec) {
            return Ok(version);
        }
        Err(StoreError::Conflict { expected, found })
    }

    /// Reads the JSON record at `key` with its `mod_revision` (0: absent).
    async fn read_record<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        what: &'static str,
    ) -> Result<(Option<T>, i64), StoreError> {
        match self.get_one(key, what).await? {
            Some(kv) => {
                let rec = serde_json::from_slice(kv.value()).map_err(|e| corrupt(what, e))?;
                Ok((Some(rec), kv.mod_revision()))
            }
            None => Ok((None, 0)),
        }
    }

    /// Writes `value` at `key` (deletes it for `None`) if the key's
    /// `mod_revision` is still `read` (0: if it still does not exist).
    /// False when another writer came first.
    async fn write_if_unchanged(
        &self,
        key: &str,
        read: i64,
        value: Option<Vec<u8>>,
        what: &'static str,
    ) -> Result<bool, StoreError> {
        let guard = if read == 0 {
            Compare::create_revision(key, CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key, CompareOp::Equal, read)
        };
        let op = match value {
            Some(v) => TxnOp::put(key, v, None),
            None => TxnOp::delete(key, None),
        };
        let resp = self
            .txn(Txn::new().when([guard]).and_then([op]), what, Retry::Unsent)
            .await?;
        Ok(resp.succeeded())
    }

    fn raced(&self, what: &'static str) -> StoreError {
        io(EtcdError::Request {
            endpoints: self.endpoints.clone(),
            what,
            source: etcd_client::Error::InvalidArgs(format!(
                "the key changed under each of {CAS_TRIES} tries"
            )),
        })
    }

    /// Reads the record at `key`, lets `change` decide what to write, and
    /// writes it only if nobody changed the key meanwhile (else again from
    /// the read, up to [`CAS_TRIES`] times). `what`: the record, for errors.
    async fn update_record<R, T>(
        &self,
        key: &str,
        what: &'static str,
        mut change: impl FnMut(Option<R>) -> Update<R, T>,
    ) -> Result<T, StoreError>
    where
        R: serde::Serialize + serde::de::DeserializeOwned,
    {
        for _ in 0..CAS_TRIES {
            let (rec, rev) = self.read_record::<R>(key, what).await?;
            let (value, out) = match change(rec) {
                Update::Keep(out) => return Ok(out),
                Update::Write(value, out) => (value, out),
            };
            let value = value.as_ref().map(to_json).transpose()?;
            // Deleting what does not exist: nothing to write.
            if value.is_none() && rev == 0 {
                return Ok(out);
            }
            if self.write_if_unchanged(key, rev, value, what).await? {
                return Ok(out);
            }
        }
        Err(self.raced(what))
    }

    async fn consume_token(
        &self,
        id: String,
        secret_sha256: String,
        now: u64,
    ) -> Result<Consumed, StoreError> {
        let key = self.keys.token(&id);
        self.update_record(&key, "consuming a token", |t: Option<TokenRecord>| {
            let Some(mut t) = t else {
                return Update::Keep(Consumed::Refused(TokenRefusal::Unknown));
            };
            if let Err(why) = check_token(&t, &secret_sha256, now) {
                return Update::Keep(Consumed::Refused(why));
            }
            t.uses_left -= 1;
            Update::Write(Some(t.clone()), Consumed::Ok(t))
        })
        .await
    }

    async fn revoke_token(&self, id: String) -> Result<bool, StoreError> {
        let key = self.keys.token(&id);
        self.update_record(&key, "revoking a token", |t: Option<TokenRecord>| {
            let Some(mut t) = t else {
                return Update::Keep(false);
            };
            t.revoked = true;
            Update::Write(Some(t), true)
        })
        .await
    }

    /// Reads `node`'s record (a new one if it has none), lets `change`
    /// edit it and writes it back if nobody changed it meanwhile (else
    /// again from the read); a record left saying nothing is deleted.
    async fn update_node<T>(
        &self,
        node: String,
        now: u64,
        change: impl Fn(&mut NodeRecord) -> T,
    ) -> Result<(T, NodeRecord), StoreError> {
        let key = self.keys.node(&node);
        self.update_record(&key, "writing a node record", |r: Option<NodeRecord>| {
            let mut r = r.unwrap_or_else(|| NodeRecord::new(&node));
            r.prune(now);
            let out = change(&mut r);
            let value = (!r.is_empty()).then(|| r.clone());
            Update::Write(value, (out, r))
        })
        .await
    }
}

/// What [`Inner::update_record`]'s edit decided: leave the record as it
/// is, or write it (`None`: delete it); either way with the answer.
enum Update<R, T> {
    Keep(T),
    Write(Option<R>, T),
}

/// A dump from every (key, value) under the prefix (read at one
/// revision).
pub fn dump_from<'a>(
    keys: &Keys,
    store_id: &str,
    kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<StoreDump, StoreError> {
    let mut dump = StoreDump {
        store_id: store_id.to_string(),
        current: 0,
        versions: Vec::new(),
        tokens: Vec::new(),
        nodes: Vec::new(),
    };
    for (key, value) in kvs {
        match keys.parse(key) {
            Some(Key::Current) => {
                dump.current = parse_current(&keys.current(), value)?;
            }
            Some(Key::Version(_)) => dump
                .versions
                .push(serde_json::from_slice(value).map_err(|e| corrupt("version", e))?),
            Some(Key::Token(_)) => dump
                .tokens
                .push(serde_json::from_slice(value).map_err(|e| corrupt("token", e))?),
            Some(Key::Node(_)) => dump
                .nodes
                .push(serde_json::from_slice(value).map_err(|e| corrupt("node", e))?),
            Some(Key::StoreId)
            | Some(Key::Ca(_))
            | Some(Key::Election(_))
            | Some(Key::Endpoint(..))
            | Some(Key::Other)
            | None => {}
        }
    }
    dump.versions.sort_by_key(|v: &VersionRecord| v.version);
    Ok(dump)
}

impl Store for EtcdStore {
    fn id(&self) -> &str {
        &self.id
    }

    fn etcd(&self) -> Option<&EtcdStore> {
        Some(self)
    }

    fn dump(&self) -> Result<StoreDump, StoreError> {
        let id = self.id.clone();
        let dump = self.run("reading the store", |inner| async move {
            let kvs = inner.all().await?;
            dump_from(
                &inner.keys,
                &id,
                kvs.iter().map(|kv| (kv.key(), kv.value())),
            )
        })?;
        dump.check().map_err(|e| StoreError::Corrupt(e.into()))?;
        Ok(dump)
    }

    fn current(&self) -> Result<(u64, Config), StoreError> {
        let (version, config, _) = self.current_record()?;
        Ok((version, config))
    }

    fn current_digest(&self) -> Result<String, StoreError> {
        Ok(self.current_record()?.2)
    }

    fn current_record(&self) -> Result<(u64, Config, String), StoreError> {
        self.run("reading the current version", |inner| async move {
            inner.current_record().await
        })
    }

    fn watch(&self, on_change: Box<dyn Fn() + Send + Sync>) {
        let Some(rt) = &self.rt else {
            return;
        };
        let inner = self.inner.clone();
        rt.spawn(async move {
            let key = inner.keys.current();
            // Warn once per outage, not once per retry.
            let mut failing = false;
            let mut turn = 0;
            loop {
                // Another member on each try, from the preferred one.
                let n = inner.clients.len();
                let i = (inner.preferred.load(Ordering::Relaxed) + turn) % n;
                turn += 1;
                let mut client = inner.clients[i].clone();
                match client.watch(key.clone(), None).await {
                    Ok((_watcher, mut stream)) => {
                        if failing {
                            tracing::info!(endpoints = %inner.endpoints, "watching the store again");
                            failing = false;
                        }
                        // Whatever was committed while no watch ran.
                        on_change();
                        loop {
                            match stream.message().await {
                                Ok(Some(resp)) if resp.canceled() => break,
                                Ok(Some(resp)) => {
                                    if !resp.events().is_empty() {
                                        on_change();
                                    }
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    tracing::warn!(endpoints = %inner.endpoints, "the watch on the store ended: {e}{}", hint(&e));
                                    failing = true;
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(endpoints = %inner.endpoints, "cannot watch the store: {e}{}; retrying every second (changes made through other controls reach this one's proxies once it can)", hint(&e));
                            failing = true;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    fn commit(
        &self,
        expected: u64,
        config: &Config,
        summary: &str,
        at: u64,
    ) -> Result<u64, StoreError> {
        let (config, summary) = (config.clone(), summary.to_string());
        self.run("committing a version", move |inner| async move {
            inner.commit(expected, config, summary, at).await
        })
    }

    fn history(&self) -> Result<Vec<VersionRecord>, StoreError> {
        self.run("reading the history", |inner| async move {
            let kvs = inner.range("versions/", "reading the history").await?;
            let mut out: Vec<VersionRecord> = Vec::with_capacity(kvs.len());
            for kv in &kvs {
                if let Some(Key::Version(_)) = inner.keys.parse(kv.key()) {
                    out.push(
                        serde_json::from_slice(kv.value()).map_err(|e| corrupt("version", e))?,
                    );
                }
            }
            out.sort_by_key(|v| v.version);
            Ok(out)
        })
    }

    fn config_at(&self, version: u64) -> Result<Option<Config>, StoreError> {
        if version == 0 {
            return Ok(Some(Config::default()));
        }
        self.run("reading a version", move |inner| async move {
            Ok(inner.version_record(version).await?.map(|r| r.config))
        })
    }

    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        let key = self.inner.keys.token(&token.id);
        let value = to_json(token)?;
        self.run("writing a token", |inner| async move {
            inner
                .call("writing a token", Retry::Any, |c| {
                    let (key, value) = (key.clone(), value.clone());
                    async move { c.kv_client().put(key, value, None).await }
                })
                .await?;
            Ok(())
        })
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.run("reading the tokens", |inner| async move {
            let kvs = inner.range("tokens/", "reading the tokens").await?;
            kvs.iter()
                .map(|kv| serde_json::from_slice(kv.value()).map_err(|e| corrupt("token", e)))
                .collect()
        })
    }

    fn consume_token(
        &self,
        id: &str,
        secret_sha256: &str,
        now: u64,
    ) -> Result<Consumed, StoreError> {
        let (id, secret) = (id.to_string(), secret_sha256.to_string());
        self.run("consuming a token", move |inner| async move {
            inner.consume_token(id, secret, now).await
        })
    }

    fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.run("revoking a token", move |inner| async move {
            inner.revoke_token(id).await
        })
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.run("reading the nodes", |inner| async move {
            let kvs = inner.range("nodes/", "reading the nodes").await?;
            kvs.iter()
                .map(|kv| serde_json::from_slice(kv.value()).map_err(|e| corrupt("node", e)))
                .collect()
        })
    }

    fn record_issued(&self, node: &str, cert: &IssuedCert, now: u64) -> Result<Issued, StoreError> {
        let (node, cert) = (node.to_string(), cert.clone());
        self.run("recording a certificate", move |inner| async move {
            let (issued, _) = inner
                .update_node(node, now, |r| match r.evicted_at {
                    Some(at) => Issued::Evicted(at),
                    None => {
                        r.issued.push(cert.clone());
                        Issued::Recorded
                    }
                })
                .await?;
            Ok(issued)
        })
    }

    fn evict_node(&self, node: &str, now: u64) -> Result<NodeRecord, StoreError> {
        let node = node.to_string();
        self.run("evicting a node", move |inner| async move {
            let ((), rec) = inner
                .update_node(node, now, |r| {
                    r.evicted_at.get_or_insert(now);
                    let issued = std::mem::take(&mut r.issued);
                    r.revoked.extend(issued);
                })
                .await?;
            Ok(rec)
        })
    }

    fn readmit_node(&self, node: &str, now: u64) -> Result<Option<NodeRecord>, StoreError> {
        let node = node.to_string();
        self.run("readmitting a node", move |inner| async move {
            let (was, rec) = inner
                .update_node(node, now, |r| r.evicted_at.take().is_some())
                .await?;
            Ok(was.then_some(rec))
        })
    }
}

mod ca_store;
pub use self::ca_store::{unchanged, CaSlots, Slot, CA_CURRENT, CA_NEXT, CA_PREVIOUS, CA_REQUEST};
mod session;
pub use self::session::{LeaseHook, Session, StoreHealth};

#[cfg(test)]
mod tests;
