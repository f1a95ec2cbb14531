//! The control-plane client: one QUIC connection to coremesh-control, on the
//! agent thread (quinn over the tokio current-thread runtime).
//!
//! Lifecycle (`run` loops through it forever; every failure goes back to
//! `disconnected` after a backoff of 100-200 ms doubling to 5-10 s, with
//! jitter; each connect starts at the address after the one last connected
//! to, so a proxy whose control died tries the next listed control first):
//!
//! ```text
//! disconnected ──no certificate in state_dir──▶ joining
//!      │                                           │ token_file read, key + CSR made here,
//!      │                                           │ server verified by the token's CA
//!      │                                           │ fingerprint, Join ──▶ Joined
//!      │◀──────────────── key, cert, CA saved ─────┘
//!      │
//!      └──certificate──▶ connecting (mTLS, server verified by the stored CA)
//!                          │ Hello{service, node, version, calls} ──▶ Welcome
//!                          ▼
//!                        session: Register once (if [inbound]); Health every
//!                        heartbeat; each Snapshot compiled, prepared and
//!                        committed on every shard, persisted, then Ack (or
//!                        Nack with the reason); Renew at ~2/3 of the
//!                        certificate's life; Deregister on SIGTERM.
//!                          │ at exit (after the drain): close the connection,
//!                          ▼ so control shows the proxy as gone at once
//!                        closed (run returns)
//! ```
//!
//! A malformed or unexpected message ends the session (logged) and the client
//! reconnects; nothing here panics on input from the network.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coremesh_api::token::{JoinToken, TokenParseError};
use coremesh_api::wire::{self, ControlMsg, ErrorCode, FrameDecoder, FrameError, ProxyMsg};
use tokio::sync::{mpsc, oneshot};

use super::app_health::{Checker, HealthReport, LatestHealth};
use super::apply::Applier;
use super::state::{Identity, StateDir};
use super::tls::{
    self, CertInfo, CertParseError, CsrError, FingerprintVerifier, TlsSetupError, SERVER_NAME,
};
use crate::config::{ControlConfig, Target};

/// One connection attempt to one address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// From Hello (or Join) to control's first answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// A session that lasted this long resets the backoff: a failure right
/// after Welcome keeps backing off instead of reconnecting in a tight loop.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// When a renewal gets no answer (or an error), try again after this long.
const RENEW_RETRY: Duration = Duration::from_secs(60);
/// The shortest time between two successful renewals.
const MIN_RENEW_GAP: Duration = Duration::from_secs(1);
/// At exit, how long the closed connection may take to say so to control.
const CLOSE_LINGER: Duration = Duration::from_millis(200);
/// Heartbeats are never sent more often than this, whatever control asks.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// How often the proxy tells a control that asks for it its wall clock
/// (Clock), for `meshctl check`'s clock skew; also once per session start.
const CLOCK_EVERY: Duration = Duration::from_secs(30);
/// The optional features this proxy supports (wire::FEATURES).
const FEATURES: [&str; 2] = [wire::FEATURE_TAP, wire::FEATURE_CLOCK];
/// Edge summaries are never sent more often than this.
const MIN_EDGE_STATS: Duration = Duration::from_millis(500);

/// Everything the client starts with.
pub struct ControlSetup {
    pub config: ControlConfig,
    /// `[proxy] service`: who this proxy is.
    pub service: String,
    /// `[proxy] labels`, registered with the endpoint.
    pub labels: BTreeMap<String, String>,
    /// The bound `[inbound] listen` address; `None` without `[inbound]`
    /// (then nothing is registered).
    pub inbound: Option<SocketAddr>,
    pub state: StateDir,
    pub applier: Rc<Applier>,
    /// The app's health checker and its latest result; `None` without
    /// `[inbound]` (heartbeats then say healthy, "no inbound").
    pub health: Option<(Checker, LatestHealth)>,
    pub link: Rc<ControlLink>,
    /// The shards, whose edge counters go to control as summaries.
    pub admin: Rc<super::admin::AdminState>,
}

/// The agent's side of the session: deregistration on SIGTERM.
#[derive(Default)]
pub struct ControlLink {
    session: RefCell<Option<mpsc::UnboundedSender<SessionCmd>>>,
    leaving: Cell<bool>,
    /// Set at exit: no session is started any more.
    closed: Cell<bool>,
}

enum SessionCmd {
    Deregister(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

/// How a deregistration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deregistration {
    /// Control confirmed the endpoint is withdrawn everywhere.
    Confirmed,
    /// There was no session: nothing to withdraw from here.
    NotConnected,
    /// No confirmation in time (or the session ended meanwhile).
    Unconfirmed,
}

impl ControlLink {
    /// Withdraws this proxy's endpoint and waits (at most `timeout`) for
    /// control's confirmation that every other proxy has been told. From now
    /// on a reconnecting session does not register again.
    pub async fn deregister(&self, timeout: Duration) -> Deregistration {
        self.leaving.set(true);
        let Some(tx) = self.session.borrow().clone() else {
            return Deregistration::NotConnected;
        };
        let (reply, confirmed) = oneshot::channel();
        if tx.send(SessionCmd::Deregister(reply)).is_err() {
            return Deregistration::NotConnected;
        }
        match tokio::time::timeout(timeout, confirmed).await {
            Ok(Ok(())) => Deregistration::Confirmed,
            _ => Deregistration::Unconfirmed,
        }
    }

    /// Closes the session for good (at exit, after the drain), waiting at
    /// most `timeout` for the close to go out: control then lists this proxy
    /// as disconnected at once, instead of after the connection's idle
    /// timeout.
    pub async fn close(&self, timeout: Duration) {
        self.closed.set(true);
        let Some(tx) = self.session.borrow().clone() else {
            return;
        };
        let (reply, done) = oneshot::channel();
        if tx.send(SessionCmd::Close(reply)).is_ok() {
            let _ = tokio::time::timeout(timeout, done).await;
        }
    }

    /// Whether a session is up (Welcome received, not ended since).
    #[cfg(test)]
    pub fn connected(&self) -> bool {
        self.session.borrow().is_some()
    }
}

/// Why an attempt failed. `Logged` failures have already said why, at the
/// right level (a refused token, a CA mismatch).
enum Failure {
    Logged,
    Error(SessionError),
}

impl From<SessionError> for Failure {
    fn from(e: SessionError) -> Self {
        Failure::Error(e)
    }
}

impl From<TlsSetupError> for Failure {
    fn from(e: TlsSetupError) -> Self {
        Failure::Error(e.into())
    }
}

impl From<CsrError> for Failure {
    fn from(e: CsrError) -> Self {
        Failure::Error(e.into())
    }
}

impl From<StreamError> for Failure {
    fn from(e: StreamError) -> Self {
        Failure::Error(e.into())
    }
}

/// Why a join or a session with control failed (logged, then the client
/// reconnects after a backoff).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A file of the state directory (its error names the file).
    #[error(transparent)]
    State(#[from] super::state::StateError),
    #[error("{}: {source}", path.display())]
    StoredCert {
        path: PathBuf,
        #[source]
        source: CertParseError,
    },
    #[error(
        "{} {problem}; put a new join token in token_file and remove it to join again",
        path.display()
    )]
    StaleCert { path: PathBuf, problem: CertProblem },
    #[error("{}: {source}", path.display())]
    DiscardCert {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} holds no certificate and [control] token_file is not set: \
         create a token with `meshctl token create --service {service}` and set token_file",
        dir.display()
    )]
    NoToken { dir: PathBuf, service: String },
    #[error("token_file {}: {source}", path.display())]
    TokenRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token_file {}: {source}", path.display())]
    TokenParse {
        path: PathBuf,
        #[source]
        source: TokenParseError,
    },
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error("cannot open a UDP socket: {0}")]
    UdpSocket(#[source] std::io::Error),
    /// Every address failed; each failure is kept, in the order tried.
    #[error("cannot reach control: {}", join_attempts(.0))]
    Unreachable(Vec<AttemptError>),
    #[error("{addr}: cannot open a stream: {source}")]
    OpenStream {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error("cannot encode a message: {0}")]
    Encode(#[source] FrameError),
    #[error("cannot send to control: {0}")]
    Send(#[source] quinn::WriteError),
    #[error("the stream reader stopped")]
    ReaderStopped,
    #[error("no answer from control within {0:?}")]
    NoAnswer(Duration),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("control refused the join ({code:?}): {message}")]
    JoinRefused { code: ErrorCode, message: String },
    #[error("control refused the session ({code:?}): {message}")]
    SessionRefused { code: ErrorCode, message: String },
    #[error("expected {expected}, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("control issued identity {spiffe_id}, not one for service {service}")]
    WrongIdentity { spiffe_id: String, service: String },
    #[error("the CA control sent: {0}")]
    BadCa(#[source] CertParseError),
    #[error("the certificate control sent: {0}")]
    BadCert(#[source] CertParseError),
    #[error("the certificate control sent is not for the key in our CSR")]
    CertKeyMismatch,
    #[error("cannot save the new certificate: {0}")]
    SaveIdentity(#[source] std::io::Error),
    #[error("Renewed without a renewal request")]
    UnrequestedRenewal,
    #[error("control ended the session ({code:?}): {message}")]
    Ended { code: ErrorCode, message: String },
    #[error("unexpected {0} in a session")]
    UnexpectedInSession(&'static str),
}

/// What is wrong with the certificate in state_dir.
#[derive(Debug, thiserror::Error)]
pub enum CertProblem {
    #[error("does not match key.pem")]
    KeyMismatch,
    #[error("expired {0} s ago")]
    Expired(i64),
}

/// One address of control that could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("{addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectError,
    },
    #[error("{addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error("{addr}: no answer within {limit:?}")]
    Timeout { addr: SocketAddr, limit: Duration },
    /// A host name that does not resolve and never did (a name that did
    /// keeps its last good addresses).
    #[error("{name}: the name does not resolve")]
    Unresolved { name: crate::config::HostPort },
}

fn join_attempts(attempts: &[AttemptError]) -> String {
    attempts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why the stream reader stopped: the last item it sends.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("bad frame from control: {0}")]
    BadFrame(#[source] FrameError),
    #[error(
        "control closed the stream{}",
        if *mid_frame { " in the middle of a frame" } else { "" }
    )]
    Closed { mid_frame: bool },
    /// Says how: "reset by peer" is a restarted control (its stateless
    /// reset), "timed out" one that stopped answering.
    #[error("connection to control lost: {}", lost_reason(.0))]
    Lost(#[source] quinn::ReadError),
}

/// A lost connection's own reason rather than quinn's "connection lost".
fn lost_reason(e: &quinn::ReadError) -> String {
    match e {
        quinn::ReadError::ConnectionLost(c) => c.to_string(),
        other => other.to_string(),
    }
}

/// Why a renewed certificate was not taken (logged; the renewal is retried).
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error(transparent)]
    Cert(#[from] CertParseError),
    #[error("the renewed certificate is not for the key in our CSR")]
    KeyMismatch,
    #[error("cannot save it: {0}")]
    Save(#[source] std::io::Error),
}

/// Applies the persisted snapshot (the last good routes) so a proxy
/// restarted while control is down serves them. Returns its version.
pub async fn restore(state: &StateDir, applier: &Applier) -> Option<u64> {
    let snap = match state.load_snapshot() {
        Ok(Some(s)) => s,
        Ok(None) => return None,
        Err(e) => {
            tracing::error!("ignoring the persisted snapshot: {e}");
            return None;
        }
    };
    match applier.apply(&snap, false).await {
        Ok(()) => {
            tracing::info!(
                "serving the last good snapshot (version {}, config version {}) from {} until control answers",
                snap.version,
                snap.config_version,
                state.dir().display()
            );
            Some(snap.version)
        }
        Err(reason) => {
            tracing::error!(
                "the persisted snapshot version {} cannot be applied: {reason}; config versions below {} of its store are still refused",
                snap.version,
                snap.config_version
            );
            applier.hold_lineage(&snap);
            None
        }
    }
}

/// Runs the client until the proxy leaves (SIGTERM) or closes; the agent
/// drops the task at exit.
pub async fn run(setup: ControlSetup) {
    let client = Client {
        setup,
        names: super::names::Names::default(),
        identity: RefCell::new(None),
        summaries: RefCell::new(crate::stats::edge::SummaryState::default()),
        start: Cell::new(0),
    };
    let mut backoff = Backoff::new();
    loop {
        // Leaving (SIGTERM) while disconnected: no new session, whose
        // heartbeats would keep the endpoint alive at control.
        if client.setup.link.closed.get() || client.setup.link.leaving.get() {
            return;
        }
        let started = tokio::time::Instant::now();
        let result = match client.identity() {
            Ok(Some(id)) => client.session(&id).await,
            Ok(None) => match client.join().await {
                // Straight on to the session with the new certificate.
                Ok(()) => continue,
                Err(e) => Err(e),
            },
            Err(e) => Err(Failure::Error(e)),
        };
        client.setup.applier.set_connected(false);
        if client.setup.link.closed.get() || client.setup.link.leaving.get() {
            // Stopping: the session ended because this proxy is leaving.
            tracing::info!("control session closed; the proxy is stopping");
            return;
        }
        if started.elapsed() >= STABLE_SESSION {
            backoff.reset();
        }
        let wait = backoff.next(random_unit());
        match result {
            Ok(()) => tracing::info!("control session ended; reconnecting in {wait:?}"),
            Err(Failure::Error(e)) => tracing::warn!("control: {e}; retrying in {wait:?}"),
            Err(Failure::Logged) => tracing::info!("retrying control in {wait:?}"),
        }
        tokio::time::sleep(wait).await;
    }
}

struct Client {
    setup: ControlSetup,
    /// Control's host names, resolved at each connect.
    names: super::names::Names,
    /// The identity in use (loaded from state_dir, replaced on renewal).
    identity: RefCell<Option<Identity>>,
    /// The edge totals last reported to control.
    summaries: RefCell<crate::stats::edge::SummaryState>,
    /// Where in the resolved address list the next connect starts: the
    /// address after the last one connected to. A session ends when its
    /// control died, restarted or dropped it; the next control listed is
    /// the best bet, and trying the dead one first would cost a whole
    /// CONNECT_TIMEOUT before the failover.
    start: Cell<usize>,
}

impl Client {
    fn cfg(&self) -> &ControlConfig {
        &self.setup.config
    }

    /// The identity to connect with; `None`: join first. A certificate that
    /// expired, or whose key does not match, is moved aside when a token
    /// file exists to join again with.
    fn identity(&self) -> Result<Option<Identity>, SessionError> {
        if let Some(id) = self.identity.borrow().clone() {
            return Ok(Some(id));
        }
        let Some(id) = self
            .setup
            .state
            .load_identity()
            .map_err(SessionError::State)?
        else {
            return Ok(None);
        };
        let cert = self.setup.state.path(super::state::CERT_FILE);
        let info = match CertInfo::parse(&id.cert_pem) {
            Ok(info) => info,
            Err(source) => return Err(SessionError::StoredCert { path: cert, source }),
        };
        let problem = if !info.matches_key(&id.key_pem) {
            Some(CertProblem::KeyMismatch)
        } else if info.not_after <= unix_now() {
            Some(CertProblem::Expired(unix_now() - info.not_after))
        } else {
            None
        };
        if let Some(problem) = problem {
            let token = self.cfg().token_file.as_ref().filter(|p| p.exists());
            let Some(token) = token else {
                return Err(SessionError::StaleCert {
                    path: cert,
                    problem,
                });
            };
            tracing::warn!(
                "{} {problem}; joining again with {}",
                cert.display(),
                token.display()
            );
            if let Err(source) = self.setup.state.discard_cert() {
                return Err(SessionError::DiscardCert { path: cert, source });
            }
            return Ok(None);
        }
        *self.identity.borrow_mut() = Some(id.clone());
        self.setup.applier.set_identity(&id);
        Ok(Some(id))
    }

    /// Tries each address in order, from [`Client::start`] round the list;
    /// the first that completes a handshake wins. Also returns its index in
    /// the list.
    async fn connect(
        &self,
        cfg: &quinn::ClientConfig,
    ) -> Result<(quinn::Endpoint, quinn::Connection, SocketAddr, usize), SessionError> {
        let mut errors = Vec::new();
        let mut addrs = Vec::new();
        for target in &self.cfg().addresses {
            match target {
                Target::Addr(a) => addrs.push(*a),
                Target::Name(n) => {
                    let found = self.names.resolve("[control] address", n).await;
                    if found.is_empty() {
                        errors.push(AttemptError::Unresolved { name: n.clone() });
                    }
                    addrs.extend(found);
                }
            }
        }
        let first = failover_order(self.start.get(), addrs.len());
        for (i, addr) in addrs
            .iter()
            .copied()
            .enumerate()
            .cycle()
            .skip(first)
            .take(addrs.len())
        {
            let bind: SocketAddr = if addr.is_ipv6() {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            };
            let endpoint = quinn::Endpoint::client(bind).map_err(SessionError::UdpSocket)?;
            let connecting = match endpoint.connect_with(cfg.clone(), addr, SERVER_NAME) {
                Ok(c) => c,
                Err(source) => {
                    errors.push(AttemptError::Connect { addr, source });
                    continue;
                }
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                Ok(Ok(conn)) => return Ok((endpoint, conn, addr, i)),
                Ok(Err(source)) => errors.push(AttemptError::Handshake { addr, source }),
                Err(_) => errors.push(AttemptError::Timeout {
                    addr,
                    limit: CONNECT_TIMEOUT,
                }),
            }
        }
        Err(SessionError::Unreachable(errors))
    }

    /// Joins with the token: verifies the server by the token's CA
    /// fingerprint before sending anything, sends a CSR for a key made here,
    /// saves what comes back.
    async fn join(&self) -> Result<(), Failure> {
        let Some(token_file) = &self.cfg().token_file else {
            return Err(SessionError::NoToken {
                dir: self.setup.state.dir().to_path_buf(),
                service: self.setup.service.clone(),
            }
            .into());
        };
        let text =
            std::fs::read_to_string(token_file).map_err(|source| SessionError::TokenRead {
                path: token_file.clone(),
                source,
            })?;
        let token: JoinToken = text
            .trim()
            .parse()
            .map_err(|source| SessionError::TokenParse {
                path: token_file.clone(),
                source,
            })?;
        let verifier = Arc::new(FingerprintVerifier::new(&token.ca_fingerprint));
        let mismatch = verifier.mismatch_flag();
        let cfg = tls::join_config(verifier)?;
        let (_endpoint, conn, addr, _) = match self.connect(&cfg).await {
            Ok(c) => c,
            Err(_) if mismatch.load(Ordering::Relaxed) => {
                tracing::error!(
                    token_file = %token_file.display(),
                    "control's CA does not match the join token's fingerprint; refusing to join"
                );
                return Err(Failure::Logged);
            }
            Err(e) => return Err(e.into()),
        };
        let (key_pem, csr_pem) = tls::key_and_csr(&self.setup.service)?;
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|source| SessionError::OpenStream { addr, source })?;
        let (tx, mut msgs) = mpsc::unbounded_channel();
        let _reader = AbortOnDrop(tokio::task::spawn_local(read_frames(recv, tx)));
        write(
            &mut send,
            &ProxyMsg::Join {
                protocol: wire::PROTOCOL_VERSION,
                token: token.to_string(),
                csr_pem,
                node: self.cfg().node.clone(),
            },
        )
        .await?;
        let (cert_pem, ca_pem, spiffe_id) = match next(&mut msgs, ANSWER_TIMEOUT).await? {
            ControlMsg::Joined {
                cert_pem,
                ca_pem,
                spiffe_id,
            } => (cert_pem, ca_pem, spiffe_id),
            ControlMsg::Error {
                code: ErrorCode::TokenRefused,
                message,
            } => {
                tracing::error!(
                    token_file = %token_file.display(),
                    "control refused the join token: {message}; create a new one with \
                     `meshctl token create --service {}` and put it in the token file",
                    self.setup.service
                );
                return Err(Failure::Logged);
            }
            ControlMsg::Error { code, message } => {
                return Err(SessionError::JoinRefused { code, message }.into())
            }
            other => {
                return Err(SessionError::Unexpected {
                    expected: "Joined",
                    got: msg_kind(&other),
                }
                .into())
            }
        };
        conn.close(0u32.into(), b"joined");
        let suffix = format!("/service/{}", self.setup.service);
        if !spiffe_id.ends_with(&suffix) {
            return Err(SessionError::WrongIdentity {
                spiffe_id,
                service: self.setup.service.clone(),
            }
            .into());
        }
        // The CA to trust from now on must be the one the token pinned.
        let ca = CertInfo::parse(&ca_pem).map_err(SessionError::BadCa)?;
        if coremesh_api::token::fingerprint_hex(&ca.der) != token.ca_fingerprint {
            tracing::error!(
                "control's CA does not match the join token's fingerprint; refusing to join"
            );
            return Err(Failure::Logged);
        }
        let cert = CertInfo::parse(&cert_pem).map_err(SessionError::BadCert)?;
        if !cert.matches_key(&key_pem) {
            return Err(SessionError::CertKeyMismatch.into());
        }
        let id = Identity {
            key_pem,
            cert_pem,
            ca_pem,
        };
        self.setup
            .state
            .save_identity(&id)
            .map_err(SessionError::SaveIdentity)?;
        tracing::info!(
            "joined control at {addr} as {spiffe_id}; certificate saved in {}",
            self.setup.state.dir().display()
        );
        self.setup.applier.set_identity(&id);
        *self.identity.borrow_mut() = Some(id);
        Ok(())
    }

    /// One session over mutual TLS, until it fails.
    async fn session(&self, id: &Identity) -> Result<(), Failure> {
        let cfg = tls::session_config(&id.key_pem, &id.cert_pem, &id.ca_pem)?;
        let (endpoint, conn, addr, at) = self.connect(&cfg).await?;
        // Whatever ends this session, the next one tries the next address
        // first. (A join does not move it: the session after it tries the
        // addresses in the same order.)
        self.start.set(at + 1);
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|source| SessionError::OpenStream { addr, source })?;
        let (tx, mut msgs) = mpsc::unbounded_channel();
        let _reader = AbortOnDrop(tokio::task::spawn_local(read_frames(recv, tx)));
        let applied = self.setup.applier.applied();
        let (heartbeat, features, edge_every) = self
            .hello(&mut send, &mut msgs, applied.as_ref().map(|a| a.version))
            .await?;
        tracing::info!(
            "connected to control at {addr} (service {}, running version {})",
            self.setup.service,
            applied.map_or("none".to_string(), |a| a.version.to_string())
        );
        let (cmd_tx, mut cmds) = mpsc::unbounded_channel();
        *self.setup.link.session.borrow_mut() = Some(cmd_tx);
        let _up = SessionUp(self);
        self.setup.applier.set_connected(true);

        if self.setup.link.leaving.get() {
            // SIGTERM came while this session was being set up (so
            // `deregister` found none): the endpoint an earlier session
            // registered is still listed at control; withdraw it here.
            if self.setup.inbound.is_some() {
                write(&mut send, &ProxyMsg::Deregister).await?;
            }
        } else {
            if let Some(address) = self.register_address(&conn) {
                write(
                    &mut send,
                    &ProxyMsg::Register {
                        address,
                        labels: self.setup.labels.clone(),
                    },
                )
                .await?;
                if wire::loopback_from_afar(address, conn.remote_address()) {
                    // Sent all the same, so `meshctl status` shows why.
                    tracing::warn!(
                        "not registered: control at {} refuses {address}, a loopback address \
                         that proxies on other hosts cannot reach; set [control] advertise",
                        conn.remote_address()
                    );
                } else {
                    tracing::info!(
                        "registered {address} as an endpoint of {}",
                        self.setup.service
                    );
                }
            }
        }

        // Optional features: only those control said it knows.
        let features: Vec<String> = FEATURES
            .iter()
            .filter(|f| features.iter().any(|g| g == *f))
            .map(|f| f.to_string())
            .collect();
        if !features.is_empty() {
            write(
                &mut send,
                &ProxyMsg::Features {
                    features: features.clone(),
                },
            )
            .await?;
        }
        let clock = features.iter().any(|f| f == wire::FEATURE_CLOCK);
        let mut clock_at = tokio::time::Instant::now();
        let mut tapper = super::tap::Tapper::new(self.setup.applier.shards().to_vec());

        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Edge summaries, when control takes them. What was counted while
        // there was no session is not sent: it would all land in one of
        // control's 10 s steps.
        let mut edge_tick = edge_every.map(|every| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut edges_since = tokio::time::Instant::now();
        if edge_tick.is_some() {
            self.edge_summaries().await;
            // An empty one says this proxy sends them: control then counts
            // its calls from these, not from the callees' reports.
            write(
                &mut send,
                &ProxyMsg::EdgeStats {
                    interval_ms: 0,
                    edges: Vec::new(),
                },
            )
            .await?;
        }
        let mut renew_at = self.renew_deadline(&id.cert_pem, false);
        let mut pending_key: Option<String> = None;
        let mut deregistering: Option<oneshot::Sender<()>> = None;
        loop {
            tokio::select! {
                m = msgs.recv() => match m.ok_or(SessionError::ReaderStopped)?? {
                    ControlMsg::Snapshot(snap) => {
                        let reply = self.apply(&snap).await;
                        write(&mut send, &reply).await?;
                    }
                    ControlMsg::Renewed { cert_pem } => {
                        let Some(key_pem) = pending_key.take() else {
                            return Err(SessionError::UnrequestedRenewal.into());
                        };
                        match self.renewed(key_pem, cert_pem) {
                            // At most one renewal per MIN_RENEW_GAP, whatever
                            // the clocks say.
                            Ok(cert_pem) => {
                                renew_at = self
                                    .renew_deadline(&cert_pem, true)
                                    .max(tokio::time::Instant::now() + MIN_RENEW_GAP)
                            }
                            Err(e) => {
                                tracing::error!("certificate renewal failed: {e}; retrying in {RENEW_RETRY:?}");
                                renew_at = tokio::time::Instant::now() + RENEW_RETRY;
                            }
                        }
                    }
                    ControlMsg::Deregistered => {
                        if let Some(reply) = deregistering.take() {
                            let _ = reply.send(());
                        }
                    }
                    ControlMsg::Error { code, message } if pending_key.is_some() => {
                        // The only request in flight that control answers
                        // with an error mid-session is the renewal.
                        pending_key = None;
                        tracing::error!(
                            "control refused the certificate renewal ({code:?}): {message}; retrying in {RENEW_RETRY:?}"
                        );
                        renew_at = tokio::time::Instant::now() + RENEW_RETRY;
                    }
                    ControlMsg::Error { code, message } => {
                        return Err(SessionError::Ended { code, message }.into());
                    }
                    ControlMsg::TapStart { tap, path_prefix, max_rps, ttl_ms } => {
                        tapper.start(tap, path_prefix, max_rps, Duration::from_millis(ttl_ms));
                    }
                    ControlMsg::TapStop { tap } => tapper.stop(tap),
                    other => {
                        return Err(SessionError::UnexpectedInSession(msg_kind(&other)).into());
                    }
                },
                _ = async { edge_tick.as_mut()?.tick().await; Some(()) }, if edge_tick.is_some() => {
                    let edges = self.edge_summaries().await;
                    let now = tokio::time::Instant::now();
                    let interval_ms = now.duration_since(edges_since).as_millis() as u64;
                    edges_since = now;
                    if !edges.is_empty() {
                        write(&mut send, &ProxyMsg::EdgeStats { interval_ms, edges }).await?;
                    }
                }
                _ = tick.tick() => {
                    let report = self.health().await;
                    write(&mut send, &ProxyMsg::Health {
                        healthy: report.healthy,
                        detail: report.detail,
                    }).await?;
                    if clock && tokio::time::Instant::now() >= clock_at {
                        clock_at = tokio::time::Instant::now() + CLOCK_EVERY;
                        let unix_ms = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64);
                        write(&mut send, &ProxyMsg::Clock { unix_ms }).await?;
                    }
                    for msg in tapper.dropped_reports() {
                        write(&mut send, &msg).await?;
                    }
                }
                batch = tapper.batch() => {
                    for msg in batch {
                        write(&mut send, &msg).await?;
                    }
                }
                _ = sleep_until_some(tapper.next_expiry()) => {
                    tapper.expire(tokio::time::Instant::now());
                }
                _ = tokio::time::sleep_until(renew_at) => {
                    if pending_key.is_some() {
                        tracing::warn!("no answer to the certificate renewal; asking again");
                    }
                    let (key_pem, csr_pem) = tls::key_and_csr(&self.setup.service)?;
                    write(&mut send, &ProxyMsg::Renew { csr_pem }).await?;
                    tracing::info!("renewing the certificate");
                    pending_key = Some(key_pem);
                    renew_at = tokio::time::Instant::now() + RENEW_RETRY;
                }
                Some(cmd) = cmds.recv() => match cmd {
                    SessionCmd::Deregister(reply) => {
                        write(&mut send, &ProxyMsg::Deregister).await?;
                        tracing::info!("deregistering from control");
                        deregistering = Some(reply);
                    }
                    SessionCmd::Close(reply) => {
                        conn.close(0u32.into(), b"proxy exiting");
                        // The close is sent by the endpoint's driver; give
                        // it a moment before the process exits.
                        let _ = tokio::time::timeout(CLOSE_LINGER, endpoint.wait_idle()).await;
                        tracing::info!("closed the control session");
                        let _ = reply.send(());
                        return Ok(());
                    }
                },
            }
        }
    }

    /// The edges' counts since the last call (cores merged).
    async fn edge_summaries(&self) -> Vec<coremesh_api::wire::EdgeSummary> {
        let snaps = super::admin::collect_snapshots(&self.setup.admin).await;
        self.summaries
            .borrow_mut()
            .delta(snaps.iter().map(|s| &s.edges))
    }

    /// Says hello (service, node, the version running, the services called)
    /// and waits for the welcome; returns the heartbeat interval, the
    /// optional features control knows and, when control takes edge
    /// summaries, how often to send them.
    async fn hello(
        &self,
        send: &mut quinn::SendStream,
        msgs: &mut mpsc::UnboundedReceiver<Result<ControlMsg, StreamError>>,
        running: Option<u64>,
    ) -> Result<(Duration, Vec<String>, Option<Duration>), Failure> {
        let hello = ProxyMsg::Hello {
            protocol: wire::PROTOCOL_VERSION,
            service: self.setup.service.clone(),
            node: self.cfg().node.clone(),
            version: running,
            calls: self.cfg().calls.clone(),
            compression: vec![wire::ZSTD.to_string()],
        };
        write(send, &hello).await?;
        match next(msgs, ANSWER_TIMEOUT).await? {
            ControlMsg::Welcome {
                heartbeat_interval_ms,
                features,
                edge_stats_interval_ms,
                ..
            } => Ok((
                Duration::from_millis(heartbeat_interval_ms).max(MIN_HEARTBEAT),
                features,
                edge_stats_interval_ms.map(|ms| Duration::from_millis(ms).max(MIN_EDGE_STATS)),
            )),
            ControlMsg::Error { code, message } => {
                Err(SessionError::SessionRefused { code, message }.into())
            }
            other => Err(SessionError::Unexpected {
                expected: "Welcome",
                got: msg_kind(&other),
            }
            .into()),
        }
    }

    /// Applies a snapshot from control; the answer to send back.
    async fn apply(&self, snap: &coremesh_api::snapshot::Snapshot) -> ProxyMsg {
        let version = snap.version;
        match self.setup.applier.apply(snap, true).await {
            Ok(()) => {
                tracing::info!(
                    "applied snapshot version {version} (config version {})",
                    snap.config_version
                );
                ProxyMsg::Ack { version }
            }
            Err(nack) => {
                tracing::warn!("refused snapshot version {version}: {nack}");
                ProxyMsg::Nack {
                    version,
                    reason: nack.to_string(),
                }
            }
        }
    }

    /// Checks and stores a renewed certificate; returns it.
    fn renewed(&self, key_pem: String, cert_pem: String) -> Result<String, RenewError> {
        let info = CertInfo::parse(&cert_pem)?;
        if !info.matches_key(&key_pem) {
            return Err(RenewError::KeyMismatch);
        }
        self.setup
            .state
            .save_renewed(&key_pem, &cert_pem)
            .map_err(RenewError::Save)?;
        let mut id = self.identity.borrow_mut();
        if let Some(id) = id.as_mut() {
            id.key_pem = key_pem;
            id.cert_pem = cert_pem.clone();
            self.setup.applier.set_identity(id);
        }
        tracing::info!(
            "certificate renewed; valid until {} (unix time), used from the next connection",
            info.not_after
        );
        Ok(cert_pem)
    }

    /// When to renew `cert_pem` (now, if the point has passed or the
    /// certificate cannot be read). A `fresh` certificate (just received)
    /// counts its life from now rather than from its notBefore, which control
    /// backdates by minutes for clock skew: with a short lifetime (minutes,
    /// seconds in tests) two thirds from notBefore would already be past.
    fn renew_deadline(&self, cert_pem: &str, fresh: bool) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        let Ok(mut info) = CertInfo::parse(cert_pem) else {
            return now;
        };
        if fresh {
            info.not_before = info.not_before.max(unix_now());
        }
        let jitter = random_unit() * 2.0 - 1.0;
        let wait = u64::try_from(info.renew_at(jitter) - unix_now()).unwrap_or(0);
        now + Duration::from_secs(wait)
    }

    /// `advertise`, else the bound inbound address, its wildcard IP replaced
    /// by the local IP of the connection to control (the one peers are most
    /// likely to reach).
    fn register_address(&self, conn: &quinn::Connection) -> Option<SocketAddr> {
        if let Some(a) = self.cfg().advertise {
            return Some(a);
        }
        let bound = self.setup.inbound?;
        if !bound.ip().is_unspecified() {
            return Some(bound);
        }
        match conn.local_ip() {
            Some(ip) if !ip.is_unspecified() => Some(SocketAddr::new(ip, bound.port())),
            _ => {
                tracing::error!(
                    "[inbound] listen is {bound} and the local IP towards control is unknown: \
                     set [control] advertise; not registering"
                );
                None
            }
        }
    }

    /// The latest health check (a fresh one if none has finished yet).
    async fn health(&self) -> HealthReport {
        let Some((checker, latest)) = &self.setup.health else {
            return HealthReport {
                healthy: true,
                detail: "no inbound".into(),
            };
        };
        if let Some(r) = latest.borrow().clone() {
            return r;
        }
        let r = checker.check().await;
        *latest.borrow_mut() = Some(r.clone());
        r
    }
}

/// Marks the session up for the agent while it lives.
struct SessionUp<'a>(&'a Client);

impl Drop for SessionUp<'_> {
    fn drop(&mut self) {
        self.0.setup.link.session.borrow_mut().take();
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn write(send: &mut quinn::SendStream, msg: &ProxyMsg) -> Result<(), SessionError> {
    let mut buf = Vec::new();
    wire::encode(msg, &mut buf).map_err(SessionError::Encode)?;
    send.write_all(&buf).await.map_err(SessionError::Send)
}

/// The next message, within `timeout`.
async fn next(
    msgs: &mut mpsc::UnboundedReceiver<Result<ControlMsg, StreamError>>,
    timeout: Duration,
) -> Result<ControlMsg, SessionError> {
    match tokio::time::timeout(timeout, msgs.recv()).await {
        Ok(Some(m)) => Ok(m?),
        Ok(None) => Err(SessionError::ReaderStopped),
        Err(_) => Err(SessionError::NoAnswer(timeout)),
    }
}

/// Decodes frames from control until the stream ends or a frame is bad; the
/// last item is always an `Err` saying why it stopped.
async fn read_frames(
    mut recv: quinn::RecvStream,
    tx: mpsc::UnboundedSender<Result<ControlMsg, StreamError>>,
) {
    let mut decoder = FrameDecoder::new(wire::MAX_FRAME);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        loop {
            match decoder.next::<ControlMsg>() {
                Ok(Some(m)) => {
                    if tx.send(Ok(m)).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(StreamError::BadFrame(e)));
                    return;
                }
            }
        }
        match recv.read(&mut buf).await {
            Ok(Some(n)) => decoder.push(&buf[..n]),
            Ok(None) => {
                let _ = tx.send(Err(StreamError::Closed {
                    mid_frame: decoder.buffered() > 0,
                }));
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(StreamError::Lost(e)));
                return;
            }
        }
    }
}

fn msg_kind(m: &ControlMsg) -> &'static str {
    match m {
        ControlMsg::Joined { .. } => "Joined",
        ControlMsg::Welcome { .. } => "Welcome",
        ControlMsg::Snapshot(_) => "Snapshot",
        ControlMsg::Renewed { .. } => "Renewed",
        ControlMsg::Deregistered => "Deregistered",
        ControlMsg::Error { .. } => "Error",
        ControlMsg::TapStart { .. } => "TapStart",
        ControlMsg::TapStop { .. } => "TapStop",
    }
}

/// Sleeps until `at`; never completes for `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A number in [0, 1) for jitter. Not cryptographic: std's per-process
/// random hash keys, mixed with the clock, are enough to spread proxies.
pub fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Where a connect over `len` addresses starts: `start` (the one after the
/// address last connected to) wrapped round the list, which may have
/// changed length since (names resolve anew at each connect).
fn failover_order(start: usize, len: usize) -> usize {
    start.checked_rem(len).unwrap_or(0)
}

/// Reconnection delays: steps of 200 ms doubling up to 10 s, each delay
/// drawn from the upper half of its step ("equal jitter": 100-200 ms,
/// 200-400 ms, ... 5-10 s), so a fleet that lost control at the same moment
/// does not come back at the same moment, and one that cannot reach any
/// control waits 5-10 s between tries.
#[derive(Debug)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub const MIN: Duration = Duration::from_millis(100);
    pub const MAX: Duration = Duration::from_secs(10);

    pub fn new() -> Backoff {
        Backoff { attempt: 0 }
    }

    /// The next delay; `r` in [0, 1) picks where in the step.
    pub fn next(&mut self, r: f64) -> Duration {
        let step = Self::MIN
            .saturating_mul(2u32 << self.attempt.min(16))
            .min(Self::MAX);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        (half + half.mul_f64(r.clamp(0.0, 1.0))).clamp(Self::MIN, Self::MAX)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests;
