//! A Rust QUIC client against the real coremesh-control: join with a
//! token, then a mutual-TLS session (Hello, Welcome, Snapshot, Ack,
//! Register, Health, Renew, Nack, Deregister), and the refusals: used,
//! revoked and unknown tokens, a certificate for one service acting as
//! another, malformed frames. Also what a session learns about access
//! control (its own service's AccessPolicy only, the mesh default, the trust
//! bundle), and control running on an operator's intermediate CA with an
//! extra root.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{temp_dir, Control, EXAMPLE};
use coremesh_api::snapshot::Snapshot;
use coremesh_api::wire::{self, ControlMsg, ErrorCode, FrameDecoder, ProxyMsg, PROTOCOL_VERSION};
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

struct Conn {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    dec: FrameDecoder,
}

/// A proxy identity: key and the certificate control signed for it.
#[derive(Debug)]
struct Identity {
    key: KeyPair,
    cert_pem: String,
}

/// The data directory's CA, which a test proxy trusts by default.
fn ca_pem(control: &Control) -> String {
    std::fs::read_to_string(control.data_dir().join("ca.pem")).unwrap()
}

impl Conn {
    async fn open(control: &Control, identity: Option<&Identity>) -> Conn {
        Conn::open_trusting(control, identity, &ca_pem(control)).await
    }

    /// Verifies control against `roots_pem`; presents the whole chain.
    async fn open_trusting(
        control: &Control,
        identity: Option<&Identity>,
        roots_pem: &str,
    ) -> Conn {
        let mut roots = rustls::RootCertStore::empty();
        for root in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
            roots.add(root.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots);
        let mut tls = match identity {
            None => builder.with_no_client_auth(),
            Some(id) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                        .collect::<Result<Vec<_>, _>>()
                        .unwrap(),
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key.serialize_der())),
                )
                .unwrap(),
        };
        tls.alpn_protocols = vec![wire::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let conn = endpoint
            .connect(control.quic, "localhost")
            .unwrap()
            .await
            .expect("QUIC handshake with control");
        let (send, recv) = conn.open_bi().await.unwrap();
        Conn {
            _endpoint: endpoint,
            conn,
            send,
            recv,
            dec: FrameDecoder::new(wire::MAX_FRAME),
        }
    }

    async fn send(&mut self, msg: &ProxyMsg) {
        let mut buf = Vec::new();
        wire::encode(msg, &mut buf).unwrap();
        self.send.write_all(&buf).await.unwrap();
    }

    /// The next message, or None when the stream ended; panics after 5 s.
    async fn recv(&mut self) -> Option<ControlMsg> {
        let fut = async {
            let mut buf = vec![0u8; 65536];
            loop {
                if let Some(m) = self.dec.next::<ControlMsg>().unwrap() {
                    return Some(m);
                }
                match self.recv.read(&mut buf).await {
                    Ok(Some(n)) => self.dec.push(&buf[..n]),
                    Ok(None) | Err(_) => return None,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .expect("control answered within 5 s")
    }

    /// The next message that is not a snapshot.
    async fn recv_other(&mut self) -> Option<ControlMsg> {
        loop {
            match self.recv().await {
                Some(ControlMsg::Snapshot(_)) => continue,
                other => return other,
            }
        }
    }

    async fn snapshot(&mut self) -> Snapshot {
        match self.recv().await {
            Some(ControlMsg::Snapshot(s)) => s,
            other => panic!("expected a snapshot, got {other:?}"),
        }
    }
}

fn csr(key: &KeyPair) -> String {
    CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(key)
        .unwrap()
        .pem()
        .unwrap()
}

async fn join(control: &Control, token: &str) -> Result<(Identity, String), (ErrorCode, String)> {
    join_trusting(control, token, &ca_pem(control))
        .await
        .map(|(id, spiffe, _)| (id, spiffe))
}

/// A join verifying control against `roots_pem`; also the CA PEM control
/// sent.
async fn join_trusting(
    control: &Control,
    token: &str,
    roots_pem: &str,
) -> Result<(Identity, String, String), (ErrorCode, String)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut c = Conn::open_trusting(control, None, roots_pem).await;
    c.send(&ProxyMsg::Join {
        protocol: PROTOCOL_VERSION,
        token: token.to_string(),
        csr_pem: csr(&key),
        node: "test-node".into(),
    })
    .await;
    match c.recv().await {
        Some(ControlMsg::Joined {
            cert_pem,
            ca_pem,
            spiffe_id,
        }) => {
            assert!(ca_pem.contains("BEGIN CERTIFICATE"));
            Ok((Identity { key, cert_pem }, spiffe_id, ca_pem))
        }
        Some(ControlMsg::Error { code, message }) => Err((code, message)),
        other => panic!("unexpected answer to join: {other:?}"),
    }
}

/// A token for `service`, which these tests define (if at all) after the
/// proxy joins: hence `--allow-undefined`.
fn token(control: &Control, service: &str) -> String {
    control
        .ok(&["token", "create", "--service", service, "--allow-undefined"])
        .trim()
        .to_string()
}

fn hello(service: &str, node: &str) -> ProxyMsg {
    ProxyMsg::Hello {
        protocol: PROTOCOL_VERSION,
        service: service.into(),
        node: node.into(),
        version: None,
        calls: None,
        compression: Vec::new(),
    }
}

async fn session(control: &Control, id: &Identity, service: &str, node: &str) -> (Conn, Snapshot) {
    session_trusting(control, id, service, node, &ca_pem(control)).await
}

async fn session_trusting(
    control: &Control,
    id: &Identity,
    service: &str,
    node: &str,
    roots_pem: &str,
) -> (Conn, Snapshot) {
    let mut c = Conn::open_trusting(control, Some(id), roots_pem).await;
    c.send(&hello(service, node)).await;
    match c.recv().await {
        Some(ControlMsg::Welcome {
            protocol,
            heartbeat_interval_ms,
            compression,
            ..
        }) => {
            assert_eq!(protocol, PROTOCOL_VERSION);
            assert_eq!(heartbeat_interval_ms, 5000);
            assert_eq!(compression, None, "the Hello asked for none");
        }
        other => panic!("expected welcome, got {other:?}"),
    }
    let snap = c.snapshot().await;
    (c, snap)
}

fn proxies(control: &Control) -> serde_json::Value {
    serde_json::from_str(&control.ok(&["get", "proxies", "-o", "json"])).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_session_and_refusals() {
    let dir = temp_dir("quic");
    std::fs::create_dir_all(&dir).unwrap();
    let control = Control::start(&dir, &["--grace", "0s"]);
    let out = control.meshctl_stdin(&["apply", "-f", "-"], Some(EXAMPLE));
    assert!(out.status.success());

    // Join: the certificate carries the service's SPIFFE ID.
    let api_token = token(&control, "api");
    let (api, spiffe) = join(&control, &api_token).await.expect("join");
    assert_eq!(spiffe, "spiffe://coremesh.local/service/api");
    let der = CertificateDer::from_pem_slice(api.cert_pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(
        format!("{:?}", san.value.general_names).contains("spiffe://coremesh.local/service/api")
    );

    // A used, a revoked and an unknown token are refused, and say why.
    let (code, msg) = join(&control, &api_token).await.unwrap_err();
    assert_eq!(code, ErrorCode::TokenRefused);
    assert!(msg.contains("used up"), "{msg}");
    let revoked = token(&control, "api");
    control.ok(&["token", "revoke", revoked.split('.').nth(1).unwrap()]);
    let (code, msg) = join(&control, &revoked).await.unwrap_err();
    assert_eq!(code, ErrorCode::TokenRefused);
    assert!(msg.contains("revoked"), "{msg}");
    let mut forged: Vec<&str> = api_token.split('.').collect();
    forged[2] = "guessedsecret";
    let (code, msg) = join(&control, &forged.join(".")).await.unwrap_err();
    assert_eq!(
        (code, msg.contains("unknown")),
        (ErrorCode::TokenRefused, true),
        "{msg}"
    );

    // A session: Welcome, then a snapshot of the applied config.
    let (mut api_conn, snap) = session(&control, &api, "api", "node-a").await;
    assert_eq!(snap.config_version, 1);
    assert_eq!(snap.services.len(), 1);
    assert_eq!(snap.services[0].name, "api");
    assert_eq!(snap.routes.len(), 1);
    api_conn
        .send(&ProxyMsg::Ack {
            version: snap.version,
        })
        .await;
    api_conn
        .send(&ProxyMsg::Register {
            address: "127.0.0.1:9000".parse().unwrap(),
            labels: [("version".to_string(), "v1".to_string())].into(),
        })
        .await;
    api_conn
        .send(&ProxyMsg::Health {
            healthy: true,
            detail: String::new(),
        })
        .await;
    // Its own registration changes its view: a newer snapshot with the endpoint.
    let snap2 = api_conn.snapshot().await;
    assert!(snap2.version > snap.version);
    assert_eq!(snap2.services[0].endpoints.len(), 1);
    api_conn
        .send(&ProxyMsg::Ack {
            version: snap2.version,
        })
        .await;

    // Renewal over the same session.
    let key2 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    api_conn
        .send(&ProxyMsg::Renew {
            csr_pem: csr(&key2),
        })
        .await;
    match api_conn.recv().await {
        Some(ControlMsg::Renewed { cert_pem }) => assert!(cert_pem.contains("BEGIN CERTIFICATE")),
        other => panic!("expected renewed, got {other:?}"),
    }

    // A certificate for db cannot say Hello as api.
    let (db, _) = join(&control, &token(&control, "db")).await.unwrap();
    let mut bad = Conn::open(&control, Some(&db)).await;
    bad.send(&hello("api", "node-b")).await;
    match bad.recv().await {
        Some(ControlMsg::Error { code, message }) => {
            assert_eq!(code, ErrorCode::Forbidden, "{message}");
        }
        other => panic!("expected forbidden, got {other:?}"),
    }

    // db's session sees api's endpoint (db is not a configured Service,
    // its proxy sees every service).
    let (mut db_conn, db_snap) = session(&control, &db, "db", "node-b").await;
    let api_eps = &db_snap
        .services
        .iter()
        .find(|s| s.name == "api")
        .unwrap()
        .endpoints;
    assert_eq!(api_eps.len(), 1);
    assert_eq!(api_eps[0].labels["version"], "v1");
    db_conn
        .send(&ProxyMsg::Nack {
            version: db_snap.version,
            reason: "route api-canary: unsupported".into(),
        })
        .await;

    // Deregister: api is told once the withdrawal is out, and db gets a
    // snapshot without the endpoint.
    api_conn.send(&ProxyMsg::Deregister).await;
    loop {
        match api_conn.recv().await {
            Some(ControlMsg::Deregistered) => break,
            Some(ControlMsg::Snapshot(_)) => continue,
            other => panic!("expected deregistered, got {other:?}"),
        }
    }
    let db_snap2 = db_conn.snapshot().await;
    assert!(db_snap2.version > db_snap.version);
    assert!(db_snap2
        .services
        .iter()
        .find(|s| s.name == "api")
        .unwrap()
        .endpoints
        .is_empty());

    // Status: the ACKed version, the NACK reason, the certificate expiry.
    let ps = proxies(&control);
    let api_status = ps
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["service"] == "api")
        .unwrap();
    assert_eq!(api_status["applied_version"], snap2.version);
    assert_eq!(api_status["applied_config_version"], 1);
    assert!(api_status["cert_expiry"].as_u64().unwrap() > 0);
    let db_status = ps
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["service"] == "db")
        .unwrap();
    assert!(
        db_status["nack"].as_str().unwrap().contains("unsupported"),
        "{db_status}"
    );
    let status = control.ok(&["status"]);
    assert!(
        status.contains("NACK") && status.contains("unsupported"),
        "{status}"
    );

    // A malformed frame: BadRequest, and the stream is closed. Control lives.
    db_conn
        .send
        .write_all(&[0, 0, 0, 3, b'{', b'x', b'}'])
        .await
        .unwrap();
    match db_conn.recv().await {
        Some(ControlMsg::Error { code, .. }) => assert_eq!(code, ErrorCode::BadRequest),
        other => panic!("expected bad request, got {other:?}"),
    }
    assert_eq!(db_conn.recv().await, None);
    // Out of order: a second Hello.
    api_conn.send(&hello("api", "node-a")).await;
    match api_conn.recv_other().await {
        Some(ControlMsg::Error { code, .. }) => assert_eq!(code, ErrorCode::BadRequest),
        other => panic!("expected bad request, got {other:?}"),
    }
    // A joining connection that sends Hello without a certificate.
    let mut anon = Conn::open(&control, None).await;
    anon.send(&hello("api", "x")).await;
    assert!(matches!(
        anon.recv().await,
        Some(ControlMsg::Error {
            code: ErrorCode::Forbidden,
            ..
        })
    ));
    // Still serving.
    let (_again, snap3) = session(&control, &api, "api", "node-a").await;
    assert!(snap3.version > db_snap2.version);
    drop(api_conn.conn);
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}

fn endpoints(control: &Control) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&control.ok(&["get", "endpoints", "-o", "json"])).unwrap();
    v.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_connection_keeps_endpoint_until_heartbeat_expiry() {
    let dir = temp_dir("expiry");
    std::fs::create_dir_all(&dir).unwrap();
    let control = Control::start(&dir, &["--grace", "1s", "--heartbeat-timeout", "1s"]);
    let (api, _) = join(&control, &token(&control, "api")).await.unwrap();
    let (mut c, _) = session(&control, &api, "api", "node-a").await;
    c.send(&ProxyMsg::Register {
        address: "127.0.0.1:9100".parse().unwrap(),
        labels: Default::default(),
    })
    .await;
    c.send(&ProxyMsg::Health {
        healthy: true,
        detail: String::new(),
    })
    .await;
    let _ = c.snapshot().await;
    c.conn.close(0u32.into(), b"bye");
    drop(c);
    // The connection is gone, the endpoint is not.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(endpoints(&control).len(), 1);
    let ps = proxies(&control);
    assert_eq!(ps[0]["connected"], false);
    // Missed heartbeats remove it (timeout 1 s, checked every 0.5 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !endpoints(&control).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "endpoint never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_proxy_is_held_during_grace() {
    let dir = temp_dir("grace");
    std::fs::create_dir_all(&dir).unwrap();
    let control = Control::start(&dir, &["--grace", "2s"]);
    let (api, _) = join(&control, &token(&control, "api")).await.unwrap();
    let mut c = Conn::open(&control, Some(&api)).await;
    // It runs a snapshot from before control restarted.
    c.send(&ProxyMsg::Hello {
        protocol: PROTOCOL_VERSION,
        service: "api".into(),
        node: "node-a".into(),
        version: Some(7),
        calls: None,
        compression: Vec::new(),
    })
    .await;
    assert!(matches!(c.recv().await, Some(ControlMsg::Welcome { .. })));
    let started = std::time::Instant::now();
    let snap = c.snapshot().await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "no snapshot before the grace period ends"
    );
    assert!(snap.version > 7);
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A proxy that lists zstd in its Hello gets its snapshots compressed (and
/// told so in the Welcome); one that does not, as an older proxy would,
/// gets the same snapshots plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_compressed_only_for_proxies_that_ask() {
    let dir = temp_dir("zstd");
    std::fs::create_dir_all(&dir).unwrap();
    let control = Control::start(&dir, &["--grace", "0s"]);
    // 30 services with routes: a snapshot of several KiB.
    let mut yaml = String::new();
    for i in 0..30 {
        yaml.push_str(&format!(
            "kind: Service\nname: svc-{i:02}\n---\nkind: Route\nname: svc-{i:02}-route\n\
             service: svc-{i:02}\nrules:\n  - match: {{ pathPrefix: /v{i} }}\n    \
             backends: [ {{ subset: {{ version: v1 }} }} ]\n---\n"
        ));
    }
    let out = control.meshctl_stdin(&["apply", "-f", "-"], Some(&yaml));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (id, _) = join(&control, &token(&control, "svc-00")).await.unwrap();

    let (mut plain, plain_snap) = session(&control, &id, "svc-00", "node-plain").await;
    assert_eq!(plain.dec.compressed_frames(), 0);
    assert_eq!(plain_snap.routes.len(), 30);

    let mut packed = Conn::open(&control, Some(&id)).await;
    packed
        .send(&ProxyMsg::Hello {
            protocol: PROTOCOL_VERSION,
            service: "svc-00".into(),
            node: "node-packed".into(),
            version: None,
            calls: None,
            compression: vec!["brotli".into(), wire::ZSTD.into()],
        })
        .await;
    match packed.recv().await {
        Some(ControlMsg::Welcome { compression, .. }) => {
            assert_eq!(compression.as_deref(), Some(wire::ZSTD))
        }
        other => panic!("expected welcome, got {other:?}"),
    }
    let packed_snap = packed.snapshot().await;
    assert_eq!(packed.dec.compressed_frames(), 1);
    assert_eq!(packed_snap.routes, plain_snap.routes);
    assert_eq!(packed_snap.services, plain_snap.services);
    assert_eq!(packed_snap.trust_bundle, plain_snap.trust_bundle);

    // A change reaches both, each in its own form.
    let changed = yaml.replace("pathPrefix: /v0 ", "pathPrefix: /zero ");
    let out = control.meshctl_stdin(&["apply", "-f", "-"], Some(&changed));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a, b) = (plain.snapshot().await, packed.snapshot().await);
    assert_eq!(a.config_version, b.config_version);
    assert_eq!(a.routes, b.routes);
    assert_eq!(
        (
            plain.dec.compressed_frames(),
            packed.dec.compressed_frames()
        ),
        (0, 2)
    );
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}

const ACCESS: &str = r#"
kind: Service
name: api
---
kind: Service
name: web
---
kind: AccessPolicy
name: api-access
service: api
default: deny
rules:
  - from: [web]
    methods: [GET, POST]
    pathPrefix: /v1/
---
kind: MeshConfig
name: mesh
defaultAccess: deny
"#;

/// Whether a snapshot arrives within `wait`.
async fn snapshot_within(c: &mut Conn, wait: Duration) -> Option<Snapshot> {
    let fut = async {
        let mut buf = vec![0u8; 65536];
        loop {
            if let Some(m) = c.dec.next::<ControlMsg>().unwrap() {
                match m {
                    ControlMsg::Snapshot(s) => return s,
                    other => panic!("expected a snapshot, got {other:?}"),
                }
            }
            match c.recv.read(&mut buf).await {
                Ok(Some(n)) => c.dec.push(&buf[..n]),
                Ok(None) | Err(_) => panic!("stream ended"),
            }
        }
    };
    tokio::time::timeout(wait, fut).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_proxy_gets_only_its_own_access_policy() {
    let dir = temp_dir("access");
    std::fs::create_dir_all(&dir).unwrap();
    let control = Control::start(&dir, &["--grace", "0s"]);
    let out = control.meshctl_stdin(&["apply", "-f", "-"], Some(ACCESS));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = ca_pem(&control);

    let (api, _) = join(&control, &token(&control, "api")).await.unwrap();
    let (web, _) = join(&control, &token(&control, "web")).await.unwrap();
    let (mut api_conn, api_snap) = session(&control, &api, "api", "node-a").await;
    let (mut web_conn, web_snap) = session(&control, &web, "web", "node-b").await;
    let policy = api_snap.access_policy.as_ref().expect("api's own policy");
    assert_eq!(policy.name, "api-access");
    assert_eq!(policy.rules[0].from, ["web"]);
    assert_eq!(
        web_snap.access_policy, None,
        "web must not see api's policy"
    );
    for s in [&api_snap, &web_snap] {
        assert_eq!(s.default_access, coremesh_api::resource::Access::Deny);
        assert_eq!(s.trust_bundle.len(), 1);
        assert_eq!(
            CertificateDer::from_pem_slice(s.trust_bundle[0].as_bytes()).unwrap(),
            CertificateDer::from_pem_slice(ca.as_bytes()).unwrap()
        );
    }

    // A change to api's policy reaches api; web's view did not change, so
    // web is sent nothing.
    let looser = ACCESS.replace("default: deny", "default: allow");
    assert!(control
        .meshctl_stdin(&["apply", "-f", "-"], Some(&looser))
        .status
        .success());
    let s = snapshot_within(&mut api_conn, Duration::from_secs(5))
        .await
        .expect("api gets its new policy");
    assert_eq!(
        s.access_policy.unwrap().default,
        coremesh_api::resource::Access::Allow
    );
    assert!(snapshot_within(&mut web_conn, Duration::from_millis(700))
        .await
        .is_none());

    // The mesh default reaches everyone.
    assert!(control
        .ok(&["delete", "meshconfig", "mesh"])
        .contains("meshconfig/mesh"));
    for c in [&mut api_conn, &mut web_conn] {
        let s = snapshot_within(c, Duration::from_secs(5)).await.unwrap();
        assert_eq!(s.default_access, coremesh_api::resource::Access::Allow);
    }

    // meshctl lists and deletes them.
    let table = control.ok(&["get", "accesspolicies"]);
    assert!(
        table.contains("AccessPolicy") && table.contains("service api, 1 rule(s), default allow"),
        "{table}"
    );
    assert!(control
        .ok(&["get", "meshconfig"])
        .contains("no MeshConfig applied"));
    let yaml = control.ok(&["get", "accesspolicy", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: AccessPolicy") && yaml.contains("pathPrefix: /v1/"),
        "{yaml}"
    );
    let out = control.meshctl(&["delete", "service", "api"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("accesspolicy/api-access"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    control.ok(&["delete", "accesspolicy", "api-access"]);
    let s = snapshot_within(&mut api_conn, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(s.access_policy, None);
    let history = control.ok(&["history"]);
    assert!(
        history.contains("delete accesspolicy/api-access"),
        "{history}"
    );
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A root and an intermediate it issued: (root PEM, intermediate PEM,
/// intermediate key PEM).
fn operator_pki(name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, DnType, IsCa, Issuer, KeyUsagePurpose};
    let ca = |cn: &str, path_len: u8| {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    };
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let root_params = ca(&format!("{name} root"), 1);
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = Issuer::new(root_params, root_key);
    let int_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let int = ca(&format!("{name} intermediate"), 0)
        .signed_by(&int_key, &issuer)
        .unwrap();
    (root.pem(), int.pem(), int_key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_intermediate_ca_with_an_extra_root() {
    let dir = temp_dir("operator-ca");
    std::fs::create_dir_all(&dir).unwrap();
    let (root, int, int_key) = operator_pki("operator");
    let (other_root, _, _) = operator_pki("next");
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let ca_cert = file("ca.pem", &format!("{int}{root}"));
    let ca_key = file("ca.key", &int_key);
    let extra = file("next-root.pem", &other_root);

    // A file that is not a CA is refused at start, naming it.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_coremesh-control"))
        .arg("--data-dir")
        .arg(dir.join("bad-data"))
        .args(["--ca-cert", &ca_key, "--ca-key", &ca_key])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains(&format!("{ca_key}: holds no certificate")),
        "{stderr}"
    );

    let control = Control::start(
        &dir,
        &[
            "--grace",
            "0s",
            "--ca-cert",
            &ca_cert,
            "--ca-key",
            &ca_key,
            "--extra-roots",
            &extra,
        ],
    );
    assert!(!control.data_dir().join("ca.pem").exists());
    assert!(control
        .meshctl_stdin(&["apply", "-f", "-"], Some(ACCESS))
        .status
        .success());
    // The token pins the root; a proxy trusting only the root joins.
    let token = token(&control, "api");
    let root_der = CertificateDer::from_pem_slice(root.as_bytes()).unwrap();
    assert!(token.ends_with(&coremesh_api::token::fingerprint_hex(&root_der)));
    let (api, _, ca_sent) = join_trusting(&control, &token, &root).await.unwrap();
    let sent: Vec<_> = CertificateDer::pem_slice_iter(ca_sent.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let other_der = CertificateDer::from_pem_slice(other_root.as_bytes()).unwrap();
    assert_eq!(sent, [root_der.clone(), other_der.clone()], "anchor first");
    // Its certificate comes with the intermediate, and a session presenting
    // that chain is accepted.
    let chain: Vec<_> = CertificateDer::pem_slice_iter(api.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(
        chain[1],
        CertificateDer::from_pem_slice(int.as_bytes()).unwrap()
    );
    let (_conn, snap) = session_trusting(&control, &api, "api", "node-a", &root).await;
    let bundle: Vec<_> = snap
        .trust_bundle
        .iter()
        .map(|p| CertificateDer::from_pem_slice(p.as_bytes()).unwrap())
        .collect();
    assert_eq!(bundle, [root_der, other_der]);
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The next message within `wait` that is not a snapshot; `None` if none
/// came.
async fn other_within(c: &mut Conn, wait: Duration) -> Option<ControlMsg> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = vec![0u8; 65536];
    loop {
        while let Some(m) = c.dec.next::<ControlMsg>().unwrap() {
            if !matches!(m, ControlMsg::Snapshot(_)) {
                return Some(m);
            }
        }
        match tokio::time::timeout_at(deadline, c.recv.read(&mut buf)).await {
            Ok(Ok(Some(n))) => c.dec.push(&buf[..n]),
            _ => return None,
        }
    }
}

/// `meshctl tap` through control: only proxies that said they know taps
/// (Features) are sent TapStart (an older proxy would fail to parse it);
/// their records reach meshctl; when meshctl exits the tap stops on the
/// proxies. And a proxy's Clock gives its skew to `meshctl check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_reaches_only_proxies_that_know_it_and_stops_with_meshctl() {
    use std::io::BufRead;
    let dir = temp_dir("tap");
    std::fs::create_dir_all(&dir).unwrap();
    let control = Control::start(&dir, &["--grace", "0s"]);
    assert!(control
        .meshctl_stdin(&["apply", "-f", "-"], Some(EXAMPLE))
        .status
        .success());
    let (old_id, _) = join(&control, &token(&control, "api")).await.unwrap();
    let (new_id, _) = join(&control, &token(&control, "api")).await.unwrap();
    let (mut old, _) = session(&control, &old_id, "api", "node-old").await;
    let (mut new, _) = session(&control, &new_id, "api", "node-new").await;
    new.send(&ProxyMsg::Features {
        features: vec!["tap".into(), "clock".into()],
    })
    .await;
    let ahead = 5_000;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    new.send(&ProxyMsg::Clock {
        unix_ms: now_ms + ahead,
    })
    .await;

    let mut tap = control.meshctl_spawn(&["tap", "api", "--path", "/users", "-o", "json"]);
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = tap.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let id = match other_within(&mut new, Duration::from_secs(10)).await {
        Some(ControlMsg::TapStart {
            tap,
            path_prefix,
            max_rps,
            ttl_ms,
        }) => {
            assert_eq!(
                (path_prefix.as_deref(), max_rps, ttl_ms),
                (Some("/users"), 100, 15_000)
            );
            tap
        }
        other => panic!("the tap-capable proxy should get TapStart, got {other:?}"),
    };
    assert_eq!(
        other_within(&mut old, Duration::from_secs(1)).await,
        None,
        "a proxy that did not say it knows taps is sent nothing about them"
    );
    let record = wire::TapRecord {
        at_ms: now_ms,
        direction: "inbound".into(),
        caller: Some("spiffe://coremesh.local/service/web".into()),
        service: "api".into(),
        method: "GET".into(),
        authority: "api".into(),
        path: "/users/1".into(),
        status: 200,
        latency_us: 900,
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
    };
    new.send(&ProxyMsg::TapRecords {
        tap: id,
        records: vec![record],
        dropped: 0,
    })
    .await;
    let line = lines
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|e| {
            let _ = tap.kill();
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut tap.stderr.take().unwrap(), &mut err);
            panic!("meshctl prints the record ({e}); its stderr:\n{err}")
        });
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (&v["node"], &v["path"], &v["status"], &v["caller"]),
        (
            // The node its certificate names.
            &serde_json::json!("test-node"),
            &serde_json::json!("/users/1"),
            &serde_json::json!(200),
            &serde_json::json!("spiffe://coremesh.local/service/web")
        ),
        "{line}"
    );

    // The clock skew: the new proxy is 5 s ahead, the old one's unknown.
    let ps = proxies(&control);
    let mut skews: Vec<Option<i64>> = ps
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["clock_skew_ms"].as_i64())
        .collect();
    skews.sort();
    assert_eq!(skews.len(), 2, "{ps:#}");
    assert_eq!(skews[0], None, "{ps:#}");
    let ms = skews[1].unwrap();
    assert!((4_000..=5_500).contains(&ms), "skew {ms}");
    let out = control.meshctl(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("FAIL")
            && l.contains("proxy api on test-node")
            && l.contains("ahead of control's")),
        "{text}"
    );
    assert!(text.contains("fix: run time synchronization"), "{text}");

    // meshctl goes away: the tap stops on the proxy.
    let _ = tap.kill();
    let _ = tap.wait();
    match other_within(&mut new, Duration::from_secs(10)).await {
        Some(ControlMsg::TapStop { tap }) => assert_eq!(tap, id),
        other => panic!("expected TapStop after meshctl exited, got {other:?}"),
    }
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}
