//! The control client against a tiny in-test control server (quinn + rcgen)
//! that speaks the wire protocol: join, session, apply, NACK, renewal,
//! deregistration, malformed frames, and a CA that does not match the token.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use coremesh_api::snapshot::Snapshot;
use coremesh_api::token::JoinToken;
use coremesh_api::wire::{self, ControlMsg, ErrorCode, FrameDecoder, ProxyMsg};
use quinn::crypto::rustls::QuicServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::sync::mpsc;

use super::*;
use crate::agent::app_health::HealthReport;
use crate::agent::apply::Applier;
use crate::agent::state::tests::TempDir;
use crate::agent::state::{StateDir, CERT_FILE, KEY_FILE, SNAPSHOT_FILE};
use crate::agent::tls::tests::TestPki;
use crate::config::HealthConfig;
use crate::msg::{ShardHandle, ShardMsg};

/// What the server sends a session: a message, or raw bytes (to test
/// malformed frames).
enum Out {
    Msg(Box<ControlMsg>),
    Raw(Vec<u8>),
}

/// A message the server received, and whether its connection presented a
/// client certificate.
#[derive(Debug)]
struct Seen {
    mtls: bool,
    msg: ProxyMsg,
}

struct TestControl {
    addr: SocketAddr,
    pki: Rc<TestPki>,
    seen: mpsc::UnboundedReceiver<Seen>,
    /// Received but not yet expected.
    backlog: Vec<Seen>,
    /// The outbox of the latest session (set on Hello).
    session: Rc<RefCell<Option<mpsc::UnboundedSender<Out>>>>,
    refuse_tokens: Rc<Cell<bool>>,
    _endpoint: quinn::Endpoint,
}

/// Validity of the certificates the server issues: seconds relative to now.
#[derive(Clone, Copy)]
struct Validity {
    from: i64,
    until: i64,
}

impl TestControl {
    /// Must be called inside a `LocalSet`. The certificate issued at join is
    /// `join_validity`; renewals get a day.
    fn start(pki: TestPki, join_validity: Validity) -> TestControl {
        let pki = Rc::new(pki);
        let provider = super::tls::provider();
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .unwrap();
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())
            .unwrap();
        tls.alpn_protocols = vec![wire::ALPN.to_vec()];
        let cfg =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
        let endpoint = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let session = Rc::new(RefCell::new(None));
        let refuse_tokens = Rc::new(Cell::new(false));
        let ep = endpoint.clone();
        let (p, s, r) = (pki.clone(), session.clone(), refuse_tokens.clone());
        tokio::task::spawn_local(async move {
            while let Some(incoming) = ep.accept().await {
                let (p, s, r, tx) = (p.clone(), s.clone(), r.clone(), seen_tx.clone());
                tokio::task::spawn_local(async move {
                    // A handshake the client aborts (CA mismatch) just ends here.
                    if let Ok(conn) = incoming.await {
                        serve(conn, p, s, r, tx, join_validity).await;
                    }
                });
            }
        });
        TestControl {
            addr,
            pki,
            seen,
            backlog: Vec::new(),
            session,
            refuse_tokens,
            _endpoint: endpoint,
        }
    }

    fn token(&self) -> String {
        JoinToken {
            id: "tok1".into(),
            secret: "s3cret".into(),
            ca_fingerprint: self.pki.fingerprint(),
        }
        .to_string()
    }

    /// The first message, earlier or within 5 s, that matches. Messages
    /// passed over stay for later calls: heartbeats and renewals interleave
    /// with everything else in no fixed order.
    async fn expect(&mut self, what: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                Ok(Some(s)) if pred(&s) => return s,
                Ok(Some(s)) => self.backlog.push(s),
                Ok(None) => panic!("server gone while waiting for {what}"),
                Err(_) => panic!("no {what} within 5 s; got {:?}", self.backlog),
            }
        }
    }

    fn push(&self, out: Out) {
        let s = self.session.borrow();
        let tx = s.as_ref().expect("a session is up");
        assert!(tx.send(out).is_ok(), "session writer gone");
    }
}

fn sign(pki: &TestPki, csr_pem: &str, v: Validity) -> String {
    let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
    let now = time::OffsetDateTime::now_utc();
    csr.params.not_before = now + time::Duration::seconds(v.from);
    csr.params.not_after = now + time::Duration::seconds(v.until);
    csr.params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://test.local/service/web".try_into().unwrap(),
    )];
    csr.signed_by(&pki.issuer).unwrap().pem()
}

async fn serve(
    conn: quinn::Connection,
    pki: Rc<TestPki>,
    session: Rc<RefCell<Option<mpsc::UnboundedSender<Out>>>>,
    refuse_tokens: Rc<Cell<bool>>,
    seen: mpsc::UnboundedSender<Seen>,
    join_validity: Validity,
) {
    let mtls = conn.peer_identity().is_some();
    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
        return;
    };
    let (out, mut outbox) = mpsc::unbounded_channel::<Out>();
    tokio::task::spawn_local(async move {
        while let Some(o) = outbox.recv().await {
            let bytes = match o {
                Out::Msg(m) => {
                    let mut b = Vec::new();
                    wire::encode(&*m, &mut b).unwrap();
                    b
                }
                Out::Raw(b) => b,
            };
            if send.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut dec = FrameDecoder::new(wire::MAX_FRAME);
    let mut buf = vec![0u8; 65536];
    loop {
        match recv.read(&mut buf).await {
            Ok(Some(n)) => dec.push(&buf[..n]),
            _ => return,
        }
        while let Ok(Some(msg)) = dec.next::<ProxyMsg>() {
            let reply = match &msg {
                ProxyMsg::Join { .. } if refuse_tokens.get() => Some(ControlMsg::Error {
                    code: ErrorCode::TokenRefused,
                    message: "token tok1 has been used".into(),
                }),
                ProxyMsg::Join { csr_pem, .. } => Some(ControlMsg::Joined {
                    cert_pem: sign(&pki, csr_pem, join_validity),
                    ca_pem: pki.ca_pem.clone(),
                    spiffe_id: "spiffe://test.local/service/web".into(),
                }),
                ProxyMsg::Hello { .. } => {
                    *session.borrow_mut() = Some(out.clone());
                    Some(ControlMsg::Welcome {
                        protocol: wire::PROTOCOL_VERSION,
                        heartbeat_interval_ms: 100,
                        compression: None,
                        features: Vec::new(),
                        edge_stats_interval_ms: None,
                    })
                }
                ProxyMsg::Renew { csr_pem } => Some(ControlMsg::Renewed {
                    cert_pem: sign(
                        &pki,
                        csr_pem,
                        Validity {
                            from: -60,
                            until: 86_400,
                        },
                    ),
                }),
                ProxyMsg::Deregister => Some(ControlMsg::Deregistered),
                _ => None,
            };
            let _ = seen.send(Seen { mtls, msg });
            if let Some(r) = reply {
                let _ = out.send(Out::Msg(Box::new(r)));
            }
        }
    }
}

/// Fake shards: each answers Prepare and records what it got.
fn shards(n: usize) -> (Vec<ShardHandle>, Rc<RefCell<Vec<String>>>) {
    let log = Rc::new(RefCell::new(Vec::new()));
    let handles = (0..n)
        .map(|index| {
            let (tx, rx) = async_channel::unbounded();
            let log = log.clone();
            tokio::task::spawn_local(async move {
                while let Ok(m) = rx.recv().await {
                    match m {
                        ShardMsg::Prepare(t, reply) => {
                            log.borrow_mut()
                                .push(format!("{index} prepare {}", t.version));
                            let _ = reply.send(());
                        }
                        ShardMsg::Commit(v) => log.borrow_mut().push(format!("{index} commit {v}")),
                        _ => {}
                    }
                }
            });
            ShardHandle {
                index,
                tx,
                open_conns: Arc::new(AtomicUsize::new(0)),
                ready: Arc::new(AtomicBool::new(true)),
            }
        })
        .collect();
    (handles, log)
}

fn snapshot(version: u64, route_service: &str) -> Snapshot {
    serde_json::from_value(serde_json::json!({
        "version": version,
        "config_version": 2,
        "services": [{
            "name": "api",
            "endpoints": [
                {"address": "10.0.0.1:4143", "labels": {"version": "v1"}},
                {"address": "10.0.0.2:4143", "labels": {"version": "v2"}},
            ],
        }],
        "routes": [{
            "name": "api-split",
            "service": route_service,
            "rules": [{"backends": [
                {"subset": {"version": "v1"}, "weight": 90},
                {"subset": {"version": "v2"}, "weight": 10},
            ]}],
        }],
    }))
    .unwrap()
}

struct Proxy {
    applier: Rc<Applier>,
    link: Rc<ControlLink>,
    task: tokio::task::JoinHandle<()>,
}

fn config(
    control: &TestControl,
    dir: &TempDir,
    token_file: Option<std::path::PathBuf>,
) -> ControlConfig {
    ControlConfig {
        addresses: vec![crate::config::Target::Addr(control.addr)],
        token_file,
        state_dir: dir.0.join("state"),
        node: "n1".into(),
        advertise: None,
        calls: Some(vec!["api".into()]),
        allow_store_change: false,
        health: HealthConfig::default(),
    }
}

/// Starts the client as the agent does: restore, then run.
async fn start_proxy(cfg: ControlConfig, shards: Vec<ShardHandle>) -> Proxy {
    let state = StateDir::open(&cfg.state_dir).unwrap();
    let shards_for_admin = shards.clone();
    let applier = Rc::new(Applier::new(shards, Some(state.clone()), None));
    restore(&state, &applier).await;
    let latest = LatestHealth::default();
    *latest.borrow_mut() = Some(HealthReport {
        healthy: true,
        detail: "HTTP 200".into(),
    });
    let checker = Checker {
        app: crate::config::AppAddr::Tcp("127.0.0.1:1".parse().unwrap()),
        config: cfg.health.clone(),
    };
    let link = Rc::new(ControlLink::default());
    let admin = Rc::new(crate::agent::admin::AdminState {
        shards: shards_for_admin,
        config_json: RefCell::new(serde_json::Value::Null),
        draining: std::cell::Cell::new(false),
        certificate: RefCell::new(None),
    });
    let task = tokio::task::spawn_local(run(ControlSetup {
        config: cfg,
        service: "web".into(),
        labels: [("zone".to_string(), "a".to_string())].into(),
        inbound: Some("127.0.0.1:4143".parse().unwrap()),
        state,
        applier: applier.clone(),
        health: Some((checker, latest)),
        link: link.clone(),
        admin,
    }));
    Proxy {
        applier,
        link,
        task,
    }
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "current_thread")]
async fn join_subscribe_apply_nack_renew_deregister_restart() {
    let local = tokio::task::LocalSet::new();
    local.run_until(session_scenario()).await;
}

async fn session_scenario() {
    // The join certificate is already past two thirds of its life, so the
    // session renews it at once.
    let mut control = TestControl::start(
        TestPki::new("control"),
        Validity {
            from: -120,
            until: 30,
        },
    );
    let dir = TempDir::new("control");
    std::fs::create_dir_all(&dir.0).unwrap();
    let token_file = dir.0.join("web.token");
    std::fs::write(&token_file, format!("{}\n", control.token())).unwrap();
    let cfg = config(&control, &dir, Some(token_file.clone()));
    let state_dir = cfg.state_dir.clone();
    let (handles, log) = shards(2);

    // A refused token is retried (the operator may replace it).
    control.refuse_tokens.set(true);
    let proxy = start_proxy(cfg.clone(), handles.clone()).await;
    let s = control
        .expect("a Join", |s| matches!(s.msg, ProxyMsg::Join { .. }))
        .await;
    let ProxyMsg::Join {
        token,
        node,
        csr_pem,
        protocol,
    } = s.msg
    else {
        unreachable!()
    };
    assert!(!s.mtls);
    assert_eq!(
        (token.as_str(), node.as_str()),
        (control.token().as_str(), "n1")
    );
    assert_eq!(protocol, wire::PROTOCOL_VERSION);
    assert!(csr_pem.contains("CERTIFICATE REQUEST"));
    assert!(!state_dir.join(CERT_FILE).exists());
    control.refuse_tokens.set(false);
    control
        .expect("a second Join", |s| matches!(s.msg, ProxyMsg::Join { .. }))
        .await;

    // Joined: the identity is saved privately, and the session uses it.
    let s = control
        .expect("a Hello", |s| matches!(s.msg, ProxyMsg::Hello { .. }))
        .await;
    assert!(s.mtls, "the session presents the client certificate");
    assert_eq!(
        s.msg,
        ProxyMsg::Hello {
            protocol: wire::PROTOCOL_VERSION,
            service: "web".into(),
            node: "n1".into(),
            version: None,
            calls: Some(vec!["api".into()]),
            compression: vec![wire::ZSTD.into()],
        }
    );
    assert_eq!(mode(&state_dir), 0o700);
    for f in [CERT_FILE, KEY_FILE, "ca.pem"] {
        assert_eq!(mode(&state_dir.join(f)), 0o600, "{f}");
    }
    let first_cert = std::fs::read_to_string(state_dir.join(CERT_FILE)).unwrap();
    let s = control
        .expect("a Register", |s| matches!(s.msg, ProxyMsg::Register { .. }))
        .await;
    assert_eq!(
        s.msg,
        ProxyMsg::Register {
            address: "127.0.0.1:4143".parse().unwrap(),
            labels: [("zone".to_string(), "a".to_string())].into(),
        }
    );
    let s = control
        .expect("a Health", |s| matches!(s.msg, ProxyMsg::Health { .. }))
        .await;
    assert_eq!(
        s.msg,
        ProxyMsg::Health {
            healthy: true,
            detail: "HTTP 200".into()
        }
    );

    // Renewal at two thirds of the life: a new key and certificate, saved.
    control
        .expect("a Renew", |s| matches!(s.msg, ProxyMsg::Renew { .. }))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(state_dir.join(CERT_FILE)).unwrap() == first_cert {
        assert!(
            tokio::time::Instant::now() < deadline,
            "renewed certificate not saved"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mode(&state_dir.join(CERT_FILE)), 0o600);
    let renewed =
        super::tls::CertInfo::parse(&std::fs::read_to_string(state_dir.join(CERT_FILE)).unwrap())
            .unwrap();
    assert!(renewed.matches_key(&std::fs::read_to_string(state_dir.join(KEY_FILE)).unwrap()));

    // A valid snapshot: prepared on every shard, then committed, persisted, ACKed.
    control.push(Out::Msg(Box::new(ControlMsg::Snapshot(snapshot(5, "api")))));
    control
        .expect("Ack 5", |s| s.msg == ProxyMsg::Ack { version: 5 })
        .await;
    // Commits are sent before the Ack; let the fake shards read them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while log
        .borrow()
        .iter()
        .filter(|l| l.contains("commit 5"))
        .count()
        < 2
    {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", log.borrow());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    {
        let log = log.borrow();
        for i in 0..2 {
            let p = log.iter().position(|l| *l == format!("{i} prepare 5"));
            let c = log.iter().position(|l| *l == format!("{i} commit 5"));
            assert!(p.is_some() && c.is_some(), "{log:?}");
        }
        // Every prepare before any commit: all cores switch together.
        let last_prepare = log.iter().rposition(|l| l.contains("prepare")).unwrap();
        let first_commit = log.iter().position(|l| l.contains("commit")).unwrap();
        assert!(last_prepare < first_commit, "{log:?}");
    }
    assert_eq!(proxy.applier.applied().map(|a| a.version), Some(5));
    assert_eq!(proxy.applier.status_json()["config_version"], 2);
    let saved = StateDir::open(&state_dir)
        .unwrap()
        .load_snapshot()
        .unwrap()
        .unwrap();
    assert_eq!(saved, snapshot(5, "api"));
    assert_eq!(mode(&state_dir.join(SNAPSHOT_FILE)), 0o600);

    // An invalid snapshot (a route for a service it does not list): NACK
    // with the reason; no shard sees it; the persisted one stays.
    control.push(Out::Msg(Box::new(ControlMsg::Snapshot(snapshot(
        6, "missing",
    )))));
    let s = control
        .expect("Nack 6", |s| {
            matches!(s.msg, ProxyMsg::Nack { version: 6, .. })
        })
        .await;
    let ProxyMsg::Nack { reason, .. } = s.msg else {
        unreachable!()
    };
    assert!(reason.contains("missing"), "{reason}");
    assert!(
        !log.borrow().iter().any(|l| l.ends_with(" 6")),
        "{:?}",
        log.borrow()
    );
    assert_eq!(proxy.applier.applied().map(|a| a.version), Some(5));
    assert_eq!(proxy.applier.status_json()["last_nack"]["version"], 6);
    let saved = StateDir::open(&state_dir)
        .unwrap()
        .load_snapshot()
        .unwrap()
        .unwrap();
    assert_eq!(saved.version, 5);

    // A malformed frame ends the session; the client reconnects (no join).
    control.push(Out::Raw(b"\x00\x00\x00\x05{{{{{".to_vec()));
    let s = control
        .expect("a new Hello", |s| matches!(s.msg, ProxyMsg::Hello { .. }))
        .await;
    assert!(s.mtls);
    let ProxyMsg::Hello { version, .. } = s.msg else {
        unreachable!()
    };
    assert_eq!(version, Some(5));

    // SIGTERM: Deregister, confirmed, once the new session is up (its
    // Welcome read). A Health alone does not say so: one the old session
    // sent may still sit in the backlog.
    control
        .expect("a Health", |s| matches!(s.msg, ProxyMsg::Health { .. }))
        .await;
    let up_by = tokio::time::Instant::now() + Duration::from_secs(5);
    while !proxy.link.connected() {
        assert!(
            tokio::time::Instant::now() < up_by,
            "the session after the malformed frame never came up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        proxy.link.deregister(Duration::from_secs(5)).await,
        Deregistration::Confirmed
    );
    control
        .expect("a Deregister", |s| s.msg == ProxyMsg::Deregister)
        .await;
    proxy.task.abort();
    let _ = proxy.task.await;

    // Restart without a token: the stored certificate and snapshot are used.
    let (handles, log) = shards(1);
    let proxy = start_proxy(config(&control, &dir, None), handles).await;
    assert_eq!(
        proxy.applier.applied().map(|a| a.version),
        Some(5),
        "restored before connecting"
    );
    // The commit is in the shard's inbox; let the fake shard read it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !log.borrow().contains(&"0 commit 5".to_string()) {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", log.borrow());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = control
        .expect("a Hello after restart", |s| {
            matches!(s.msg, ProxyMsg::Hello { .. } | ProxyMsg::Join { .. })
        })
        .await;
    assert!(
        s.mtls
            && matches!(
                s.msg,
                ProxyMsg::Hello {
                    version: Some(5),
                    ..
                }
            ),
        "{s:?}"
    );
    proxy.task.abort();
    let _ = proxy.task.await;
    // Without a session there is nothing to deregister from.
    assert_eq!(
        proxy.link.deregister(Duration::from_secs(1)).await,
        Deregistration::NotConnected
    );
    // This control's Welcome did not ask for edge summaries (as an older
    // control's does not): the proxy sent none, which such a control would
    // refuse as an unknown message.
    while let Ok(s) = control.seen.try_recv() {
        control.backlog.push(s);
    }
    assert!(
        !control
            .backlog
            .iter()
            .any(|s| matches!(s.msg, ProxyMsg::EdgeStats { .. })),
        "{:?}",
        control.backlog
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_token_for_another_ca_sends_nothing() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let mut control = TestControl::start(
                TestPki::new("control"),
                Validity {
                    from: -60,
                    until: 86_400,
                },
            );
            let impostor_fp = TestPki::new("other").fingerprint();
            let dir = TempDir::new("control");
            std::fs::create_dir_all(&dir.0).unwrap();
            let token_file = dir.0.join("web.token");
            let token = JoinToken {
                id: "tok1".into(),
                secret: "s3cret".into(),
                ca_fingerprint: impostor_fp,
            };
            std::fs::write(&token_file, token.to_string()).unwrap();
            let cfg = config(&control, &dir, Some(token_file));
            let state_dir = cfg.state_dir.clone();
            let (handles, _log) = shards(1);
            let proxy = start_proxy(cfg, handles).await;
            // Several attempts fit in this window (backoff starts at 100 ms).
            let got = tokio::time::timeout(Duration::from_millis(1500), control.seen.recv()).await;
            assert!(got.is_err(), "the server received {got:?}");
            assert!(!state_dir.join(CERT_FILE).exists());
            proxy.task.abort();
        })
        .await;
}

#[test]
fn backoff_stays_within_bounds_and_grows() {
    let mut b = Backoff::new();
    let mut prev_max = Duration::ZERO;
    for i in 0..40 {
        for r in [0.0, 0.5, 0.999_999] {
            let mut probe = Backoff { attempt: b.attempt };
            let d = probe.next(r);
            assert!(d >= Backoff::MIN && d <= Backoff::MAX, "attempt {i}: {d:?}");
        }
        let d = b.next(0.999_999);
        assert!(
            d >= prev_max || d >= Backoff::MAX - Duration::from_millis(1),
            "attempt {i}"
        );
        prev_max = d;
    }
    assert!(prev_max > Duration::from_secs(9));
    assert_eq!(b.next(1.0), Backoff::MAX);
    b.reset();
    // Jittered from the first step on: 100-200 ms, then 200-400 ms.
    assert_eq!(b.next(0.0), Backoff::MIN);
    assert_eq!(b.next(0.0), Duration::from_millis(200));
    b.reset();
    assert_eq!(b.next(0.5), Duration::from_millis(150));
    // Never below 5 s once at the top, so a fleet with no control left
    // does not hammer the network.
    let mut top = Backoff { attempt: 30 };
    assert_eq!(top.next(0.0), Backoff::MAX / 2);
    for _ in 0..1000 {
        let r = random_unit();
        assert!((0.0..1.0).contains(&r));
    }
}

#[test]
fn a_connect_starts_after_the_address_last_connected_to() {
    // Connected to the first of three: the next connect starts at the second.
    assert_eq!(failover_order(1, 3), 1);
    // Connected to the last: round to the first.
    assert_eq!(failover_order(3, 3), 0);
    // A name resolved to fewer addresses since: still within the list.
    assert_eq!(failover_order(5, 2), 1);
    assert_eq!(failover_order(4, 0), 0);
    // One address: always that one.
    assert_eq!(failover_order(1, 1), 0);
}
