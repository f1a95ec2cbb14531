//! The QUIC server proxies connect to (ALPN [`coremesh_api::wire::ALPN`]).
//!
//! TLS: control presents a certificate from its CA (leaf, intermediates,
//! anchor). Client certificates are optional at the TLS layer (a joining
//! proxy has none yet), but one that is presented must chain to the trust
//! bundle (the CA's anchor, or an extra root during a rotation); the service
//! a session may act for is read from its SPIFFE ID, never from what it
//! says.
//!
//! Each connection carries one bidirectional stream, opened by the proxy,
//! framed with [`coremesh_api::wire`] (length prefix, JSON, [`MAX_FRAME`]).
//!
//! Session lifecycle:
//!
//! ```text
//!             accept, TLS ──▶ no client cert ──▶ JOINING
//!                   │                              │ Join{token, csr}
//!                   │                              ├─▶ Joined{cert, ca, spiffe_id} ─▶ finish, close
//!                   │                              └─▶ Error{token_refused|bad_request} ─▶ close
//!                   ▼
//!             client cert ──▶ AWAIT_HELLO ──(10 s)──▶ close
//!                                 │ Hello (service == cert's, protocol ok)
//!                                 ▼
//!                                 │ (refused: a revoked certificate, an evicted node)
//!                             Welcome, Snapshot ──▶ ACTIVE
//!   ACTIVE, any order:  Ack/Nack ─▶ recorded;  Register ─▶ endpoint of the
//!                       cert's service;  Health ─▶ heartbeat;  Renew ─▶ Renewed;
//!                       Deregister ─▶ withdraw, push to all others, Deregistered;
//!                       control ─▶ Snapshot whenever this session's view changes;
//!                       its node evicted ─▶ control closes the session;
//!                       Features ─▶ tap-capable; Clock ─▶ its clock skew;
//!                       TapRecords ─▶ the tap's stream (tap.rs);
//!                       control ─▶ TapStart/TapStop (only if tap-capable).
//!   ACTIVE ──▶ CLOSED:  the proxy ends the stream or the connection drops (the
//!                       endpoint stays until its heartbeat expires), or a
//!                       malformed/out-of-order message (Error{bad_request}, then
//!                       close). Nothing a proxy sends can panic control.
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use coremesh_api::wire::{
    self, ControlMsg, ErrorCode, FrameDecoder, ProxyMsg, MAX_FRAME, PROTOCOL_VERSION,
};
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use tracing::{debug, info, warn, Instrument};

use crate::ca::{peer_identity, Ca, PeerIdentity};
use crate::hub::{Hub, JoinError, Published};
use crate::Error;

/// How long a new connection may take to open its stream and say its first
/// message.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the peer to read a last message before closing.
const LINGER: Duration = Duration::from_secs(2);

fn tls_err(e: &dyn std::fmt::Display) -> Error {
    Error::internal(format!("TLS setup: {e}"))
}

/// Control's TLS server configuration: its certificate chain for
/// `listen_ip`, optional client certificates verified against the trust
/// bundle, ALPN, TLS 1.3.
pub fn tls_config(ca: &Ca, listen_ip: IpAddr) -> Result<rustls::ServerConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for root in ca.roots() {
        roots.add(root).map_err(|e| tls_err(&e))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls_err(&e))?;
    let (chain, key) = ca.server_cert(listen_ip, SystemTime::now())?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls_err(&e))?;
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    Ok(tls)
}

/// The QUIC server configuration: [`tls_config`] and the transport.
pub fn server_config(hub: &Hub, listen_ip: IpAddr) -> Result<quinn::ServerConfig, Error> {
    let tls = tls_config(&hub.ca(), listen_ip)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| tls_err(&e))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // Control's bound on a silent connection. The effective idle timeout
    // is the smaller of both ends' (RFC 9000 10.1): the proxy asks for 3 s
    // and sends keep-alives every 1 s, so a proxy session is dropped after
    // 3 s of silence either way; 45 s applies to clients that ask for
    // more (coremesh-bench fleet's simulated sessions).
    transport.max_idle_timeout(Some(
        Duration::from_secs(45)
            .try_into()
            .map_err(|e| tls_err(&e))?,
    ));
    transport.max_concurrent_uni_streams(0u32.into());
    transport.max_concurrent_bidi_streams(4u32.into());
    // Each connection keeps a transmit buffer as large as its largest
    // batch: with segmentation offload, up to dozens of datagrams (~14 KiB
    // per connection measured), which at 10,000 proxies is over 100 MiB.
    // Snapshots are a few datagrams; one datagram per send is plenty.
    transport.enable_segmentation_offload(false);
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Socket buffers asked for (the kernel caps them at net.core.rmem_max /
/// wmem_max): one socket carries every proxy's connection, and a push to
/// thousands of sessions, or thousands of them reconnecting at once, must
/// not overflow the default ~200 KiB and lose packets to retransmission.
const SOCKET_BUFFER: usize = 4 << 20;

/// The endpoint configuration, keyed by `secret` (the data dir's
/// `quic-reset.key`) so that it survives a restart.
///
/// A proxy whose control was killed keeps sending on its old connection.
/// With a fresh random key (quinn's default), the restarted control drops
/// those packets (their connection IDs fail its validation), and the proxy
/// only notices after its idle timeout (3 s, the proxy's). With the same key, the
/// new process recognizes the connection IDs it issued before and answers
/// with a stateless reset (RFC 9000 10.3) whose token the proxy was given
/// with that ID: the proxy drops the connection and reconnects at once.
///
/// Both derived keys are HMAC-SHA256 outputs of the secret under a label, so
/// the two uses never share key material.
pub fn endpoint_config(secret: &[u8]) -> quinn::EndpointConfig {
    let master = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let derive = |label: &[u8]| ring::hmac::sign(&master, label);
    let reset = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        derive(b"coremesh quic stateless reset").as_ref(),
    );
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&derive(b"coremesh quic connection id").as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    // quinn sends at most one reset per 20 ms by default: 50 a second, while
    // a fleet of 10,000 proxies sends ~3,000 keep-alives a second at control
    // after a restart, so most would still wait out their idle timeout. A
    // reset is always smaller than the packet that caused it (no
    // amplification), and only packets whose connection ID passes the
    // keyed validation above get one, so the cap can be much higher.
    config.min_reset_interval(Duration::from_micros(100));
    config
}

/// Binds the QUIC endpoint; `reset_key` is the data dir's `quic-reset.key`
/// ([`endpoint_config`]).
pub fn bind(hub: &Hub, addr: SocketAddr, reset_key: &[u8]) -> Result<quinn::Endpoint, Error> {
    let config = server_config(hub, addr.ip())?;
    let err = |e: &dyn std::fmt::Display| {
        Error::internal(format!("cannot listen on {addr} (QUIC/UDP): {e}"))
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(|e| err(&e))?;
    if addr.is_ipv6() {
        // As std's bind does: [::] accepts IPv4 too where the system allows.
        let _ = socket.set_only_v6(false);
    }
    for (what, set) in [
        ("receive", socket.set_recv_buffer_size(SOCKET_BUFFER)),
        ("send", socket.set_send_buffer_size(SOCKET_BUFFER)),
    ] {
        if let Err(e) = set {
            warn!("QUIC socket: cannot set the {what} buffer size: {e}");
        }
    }
    socket.bind(&addr.into()).map_err(|e| err(&e))?;
    let runtime = quinn::default_runtime().ok_or_else(|| err(&"no async runtime"))?;
    quinn::Endpoint::new(
        endpoint_config(reset_key),
        Some(config),
        socket.into(),
        runtime,
    )
    .map_err(|e| err(&e))
}

/// Accepts connections until the endpoint is closed.
pub async fn serve(endpoint: quinn::Endpoint, hub: Arc<Hub>) {
    while let Some(incoming) = endpoint.accept().await {
        let hub = hub.clone();
        let remote = incoming.remote_address();
        let span = tracing::info_span!("conn", %remote);
        tokio::spawn(
            async move {
                match incoming.await {
                    Ok(conn) => connection(conn, hub).await,
                    Err(e) => debug!("handshake failed: {e}"),
                }
            }
            .instrument(span),
        );
    }
}

/// How a stream ended.
enum End {
    /// The peer went away (or closed its side): nothing to tell it.
    Gone(String),
    /// We refuse: tell the peer why, then close.
    Refuse(ErrorCode, String),
}

fn bad_request(message: impl Into<String>) -> End {
    End::Refuse(ErrorCode::BadRequest, message.into())
}

struct Reader {
    recv: quinn::RecvStream,
    dec: FrameDecoder,
}

impl Reader {
    /// The next message; `Ok(None)` when the peer finished the stream.
    /// Cancel-safe: bytes are only consumed after `read` resolves.
    async fn next(&mut self) -> Result<Option<ProxyMsg>, End> {
        loop {
            match self.dec.next::<ProxyMsg>() {
                Ok(Some(msg)) => return Ok(Some(msg)),
                Ok(None) => {}
                Err(e) => return Err(bad_request(e.to_string())),
            }
            // No read buffer per connection: quinn hands over the bytes it
            // already holds.
            match self.recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => self.dec.push(&chunk.bytes),
                Ok(None) if self.dec.buffered() > 0 => {
                    return Err(bad_request("stream ended in the middle of a frame"))
                }
                Ok(None) => return Ok(None),
                Err(e) => return Err(End::Gone(e.to_string())),
            }
        }
    }
}

struct Writer {
    send: quinn::SendStream,
    buf: Vec<u8>,
    /// The proxy decodes compressed frames (it said so in its Hello).
    compressed: bool,
}

impl Writer {
    async fn send(&mut self, msg: &ControlMsg) -> Result<(), End> {
        self.buf.clear();
        wire::encode(msg, &mut self.buf)
            .map_err(|e| End::Refuse(ErrorCode::Internal, format!("cannot encode reply: {e}")))?;
        let sent = self.send.write_all(&self.buf).await;
        // Replies are small and rare; do not keep a buffer per connection.
        self.buf = Vec::new();
        sent.map_err(|e| End::Gone(e.to_string()))
    }

    /// Sends a snapshot encoded once by the hub for every session it goes to.
    async fn send_published(&mut self, published: &Published) -> Result<(), End> {
        let frame = published
            .frame_for(self.compressed)
            .map_err(|e| End::Refuse(ErrorCode::Internal, format!("cannot encode reply: {e}")))?;
        self.send
            .write_all(frame)
            .await
            .map_err(|e| End::Gone(e.to_string()))
    }

    /// Finishes the stream and gives the peer a moment to read it all.
    async fn finish(mut self) {
        if self.send.finish().is_ok() {
            let _ = tokio::time::timeout(LINGER, self.send.stopped()).await;
        }
    }
}

async fn connection(conn: quinn::Connection, hub: Arc<Hub>) {
    let peer_cert: Option<CertificateDer<'static>> = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.into_iter().next());
    let (send, recv) = match tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, conn.accept_bi()).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            debug!("connection ended before a stream: {e}");
            return;
        }
        Err(_) => {
            warn!("no stream within {FIRST_MESSAGE_TIMEOUT:?}; closing");
            conn.close(0u32.into(), b"timeout");
            return;
        }
    };
    let mut reader = Reader {
        recv,
        dec: FrameDecoder::new(MAX_FRAME),
    };
    let mut writer = Writer {
        send,
        buf: Vec::new(),
        compressed: false,
    };
    let ended = match peer_cert {
        None => join(&mut reader, &mut writer, &hub).await,
        Some(cert) => match peer_identity(&cert, hub.ca().trust_domain()) {
            Ok(id) => {
                let remote = conn.remote_address();
                session(&mut reader, &mut writer, &hub, id, remote).await
            }
            Err(e) => Err(End::Refuse(ErrorCode::Forbidden, e.to_string())),
        },
    };
    match ended {
        Ok(()) => {}
        Err(End::Gone(why)) => debug!("peer went away: {why}"),
        Err(End::Refuse(code, message)) => {
            warn!(?code, "closing stream: {message}");
            let _ = writer.send(&ControlMsg::Error { code, message }).await;
        }
    }
    writer.finish().await;
    conn.close(0u32.into(), b"done");
}

async fn first_message(reader: &mut Reader) -> Result<ProxyMsg, End> {
    match tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, reader.next()).await {
        Ok(Ok(Some(msg))) => Ok(msg),
        Ok(Ok(None)) => Err(End::Gone("stream finished before the first message".into())),
        Ok(Err(end)) => Err(end),
        Err(_) => Err(bad_request(format!(
            "no first message within {FIRST_MESSAGE_TIMEOUT:?}"
        ))),
    }
}

fn check_protocol(protocol: u32) -> Result<(), End> {
    if protocol == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(bad_request(format!(
            "protocol version {protocol} is not supported; control speaks {PROTOCOL_VERSION}"
        )))
    }
}

/// JOINING: one Join, one answer.
async fn join(reader: &mut Reader, writer: &mut Writer, hub: &Arc<Hub>) -> Result<(), End> {
    let (token, csr_pem, node) = match first_message(reader).await? {
        ProxyMsg::Join {
            protocol,
            token,
            csr_pem,
            node,
        } => {
            check_protocol(protocol)?;
            (token, csr_pem, node)
        }
        ProxyMsg::Hello { .. } => {
            return Err(End::Refuse(
                ErrorCode::Forbidden,
                "a session needs a client certificate; join with a token first".into(),
            ))
        }
        other => {
            return Err(bad_request(format!(
                "expected join (no client certificate), got {}",
                msg_name(&other)
            )))
        }
    };
    let h = hub.clone();
    let joining = node.clone();
    let joined = tokio::task::spawn_blocking(move || h.join_blocking(&token, &csr_pem, &joining))
        .await
        .map_err(|e| End::Refuse(ErrorCode::Internal, format!("join task failed: {e}")))?;
    match joined {
        Ok(j) => {
            info!(%node, service = %j.service, expires = j.cert.not_after, "proxy joined");
            writer
                .send(&ControlMsg::Joined {
                    cert_pem: j.cert.cert_pem,
                    // Anchor first: the proxy checks it against the
                    // token's fingerprint.
                    ca_pem: hub.ca().trust_bundle_pem(),
                    spiffe_id: j.spiffe_id,
                })
                .await
        }
        Err(JoinError::Token(m)) => Err(End::Refuse(ErrorCode::TokenRefused, m)),
        Err(JoinError::Evicted(m)) => Err(End::Refuse(ErrorCode::Forbidden, m)),
        Err(JoinError::BadRequest(m)) => Err(bad_request(m)),
        Err(JoinError::Internal(m)) => Err(End::Refuse(ErrorCode::Internal, m)),
    }
}

/// Removes the session from the hub however the session task ends.
struct SessionGuard<'a> {
    hub: &'a Hub,
    id: crate::registry::ProxyId,
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        self.hub.close_session(self.id);
    }
}

/// AWAIT_HELLO, then ACTIVE until the stream ends.
async fn session(
    reader: &mut Reader,
    writer: &mut Writer,
    hub: &Arc<Hub>,
    peer: PeerIdentity,
    remote: SocketAddr,
) -> Result<(), End> {
    let (node, version, calls, compression) = match first_message(reader).await? {
        ProxyMsg::Hello {
            protocol,
            service,
            node,
            version,
            calls,
            compression,
        } => {
            check_protocol(protocol)?;
            if service != peer.service {
                return Err(End::Refuse(
                    ErrorCode::Forbidden,
                    format!(
                        "this certificate is for service {:?} ({}); it cannot act as {service:?}",
                        peer.service, peer.spiffe_id
                    ),
                ));
            }
            (node, version, calls, compression)
        }
        other => {
            return Err(bad_request(format!(
                "expected hello first, got {}",
                msg_name(&other)
            )))
        }
    };
    let node = hub
        .admit_session(&peer, &node)
        .map_err(|e| End::Refuse(ErrorCode::Forbidden, e.message))?;
    let service = peer.service;
    let (id, first, mut snapshots) =
        hub.open_session(&service, &node, calls, version, peer.not_after);
    let _guard = SessionGuard { hub, id };
    let mut taps = hub.taps().attach(id, &service, &node);
    info!(%service, %node, proxy = id, "session started");
    writer.compressed = compression.iter().any(|c| c == wire::ZSTD);
    writer
        .send(&ControlMsg::Welcome {
            protocol: PROTOCOL_VERSION,
            heartbeat_interval_ms: hub.options().heartbeat_interval.as_millis() as u64,
            compression: writer.compressed.then(|| wire::ZSTD.to_string()),
            features: wire::FEATURES.map(String::from).to_vec(),
            edge_stats_interval_ms: Some(crate::fleet::SUMMARY_INTERVAL.as_millis() as u64),
        })
        .await?;
    if let Some(first) = first {
        writer.send_published(&first).await?;
    }
    // Set by the session's first EdgeStats.
    let mut reporting: Option<crate::fleet::Reporting<'_>> = None;
    loop {
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    info!(%service, %node, "session closed by control: its node was evicted");
                    return Err(End::Gone("session closed by control".into()));
                }
                let snapshot = snapshots.borrow_and_update().clone();
                if let Some(s) = snapshot {
                    writer.send_published(&s).await?;
                }
            }
            Some(tap) = taps.recv() => writer.send(&tap).await?,
            msg = reader.next() => {
                let Some(msg) = msg? else {
                    info!(%service, %node, "session ended by the proxy");
                    return Ok(());
                };
                if let ProxyMsg::EdgeStats { edges, .. } = &msg {
                    if reporting.is_none() {
                        reporting = Some(hub.fleet().reporting(&service));
                    }
                    debug!(%service, edges = edges.len(), "edge summary");
                    hub.fleet().record(&service, edges);
                    continue;
                }
                let who = Who { id, service: &service, node: &node, remote };
                handle(msg, hub, &who, writer).await?;
            }
        }
    }
}

/// Whose session a message came on.
#[derive(Clone, Copy)]
struct Who<'a> {
    id: crate::registry::ProxyId,
    service: &'a str,
    node: &'a str,
    remote: SocketAddr,
}

async fn handle(
    msg: ProxyMsg,
    hub: &Arc<Hub>,
    who: &Who<'_>,
    writer: &mut Writer,
) -> Result<(), End> {
    let Who {
        id,
        service,
        node,
        remote,
    } = *who;
    match msg {
        ProxyMsg::Ack { version } => hub.ack(id, version),
        ProxyMsg::Nack { version, reason } => {
            warn!(%service, version, %reason, "proxy refused a snapshot (NACK)");
            hub.nack(id, version, &reason);
        }
        ProxyMsg::Register { address, labels } => {
            if address.port() == 0 || address.ip().is_unspecified() {
                return Err(bad_request(format!(
                    "register: {address} is not an address other proxies can reach"
                )));
            }
            if let Some(problem) = crate::registry::registration_problem(address, remote) {
                // Not registered; the session goes on (the proxy still gets
                // its policy and can call others).
                warn!(%service, %address, %remote, "{problem}");
                hub.problem(id, problem);
                return Ok(());
            }
            info!(%service, %address, ?labels, "endpoint registered");
            hub.register(id, address, labels);
        }
        ProxyMsg::Health { healthy, detail } => {
            if !healthy {
                debug!(%service, %detail, "app reported unhealthy");
            }
            hub.health(id, healthy);
        }
        ProxyMsg::Renew { csr_pem } => {
            let (h, s, n) = (hub.clone(), service.to_string(), node.to_string());
            let signed =
                tokio::task::spawn_blocking(move || h.renew_blocking(id, &s, &n, &csr_pem))
                    .await
                    .map_err(|e| {
                        End::Refuse(ErrorCode::Internal, format!("renew task failed: {e}"))
                    })?
                    .map_err(|e| {
                        warn!(%service, %node, "renewal refused: {}", e.message);
                        let code = match (e.kind, hub.evicted(node)) {
                            (crate::ErrorKind::Internal, _) => ErrorCode::Internal,
                            (_, true) => ErrorCode::Forbidden,
                            (_, false) => ErrorCode::BadRequest,
                        };
                        End::Refuse(code, format!("renew: {}", e.message))
                    })?;
            info!(%service, expires = signed.not_after, "certificate renewed");
            writer
                .send(&ControlMsg::Renewed {
                    cert_pem: signed.cert_pem,
                })
                .await?;
        }
        ProxyMsg::Features { features } => hub.taps().features(id, &features),
        ProxyMsg::Clock { unix_ms } => hub.clock(id, unix_ms),
        ProxyMsg::TapRecords {
            tap,
            records,
            dropped,
        } => hub.taps().records(id, tap, records, dropped),
        // Taken by the session loop.
        ProxyMsg::EdgeStats { .. } => {}
        ProxyMsg::Deregister => {
            info!(%service, "endpoint deregistered");
            hub.deregister(id);
            writer.send(&ControlMsg::Deregistered).await?;
        }
        other @ (ProxyMsg::Hello { .. } | ProxyMsg::Join { .. }) => {
            return Err(bad_request(format!(
                "{} is only valid as the first message",
                msg_name(&other)
            )))
        }
    }
    Ok(())
}

fn msg_name(m: &ProxyMsg) -> &'static str {
    match m {
        ProxyMsg::Join { .. } => "join",
        ProxyMsg::Hello { .. } => "hello",
        ProxyMsg::Ack { .. } => "ack",
        ProxyMsg::Nack { .. } => "nack",
        ProxyMsg::Register { .. } => "register",
        ProxyMsg::Health { .. } => "health",
        ProxyMsg::Deregister => "deregister",
        ProxyMsg::Renew { .. } => "renew",
        ProxyMsg::Features { .. } => "features",
        ProxyMsg::Clock { .. } => "clock",
        ProxyMsg::TapRecords { .. } => "tap_records",
        ProxyMsg::EdgeStats { .. } => "edge_stats",
    }
}
