//! Sessions driven against each other in memory (no sockets): handshakes,
//! data both ways, peer verification and closing.

use std::net::SocketAddr;
use std::sync::Arc;

use super::identity::{server_name, ShardTls, ALPN_HTTP1};
use super::testpki::Pki;
use super::{Identity, Session};

const TD: &str = "spiffe://mesh.test/service/";

fn shard(id: Identity) -> ShardTls {
    ShardTls::new(&Arc::new(id)).unwrap()
}

fn addr() -> SocketAddr {
    "127.0.0.1:4143".parse().unwrap()
}

/// Moves `from`'s pending ciphertext into `to`'s receive buffer.
fn transfer(from: &mut Session, to: &mut Session) -> usize {
    let tx = from.take_tx();
    let n = tx.len;
    let mut rx = to.take_rx();
    rx.extend_from_slice(&tx.buf[..n]);
    to.put_rx(rx);
    from.sent_tx(tx);
    n
}

/// Runs both handshakes to completion; `Err` is the first side's error.
fn handshake(c: &mut Session, s: &mut Session) -> Result<(), super::TlsError> {
    for _ in 0..10 {
        let cd = c.handshake()?;
        transfer(c, s);
        let sd = s.handshake()?;
        transfer(s, c);
        if cd && sd && !c.is_handshaking() && !s.is_handshaking() {
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

fn pair(client: &ShardTls, server: &ShardTls, service: &str) -> (Session, Session) {
    let c = Session::client_with_alpn(
        client.client.clone(),
        server_name(service, addr()).unwrap(),
        ALPN_HTTP1,
    )
    .unwrap();
    let s = Session::server(server.server.clone()).unwrap();
    (c, s)
}

fn read_all(s: &mut Session, cap: usize) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        let mut buf = Vec::with_capacity(cap);
        let d = s.decrypt(&mut buf).unwrap();
        got.extend_from_slice(&buf);
        if d.bytes == 0 {
            return got;
        }
    }
}

#[test]
fn handshake_then_data_both_ways_with_identities_known() {
    let pki = Pki::new("mesh");
    let web = shard(pki.identity(&format!("{TD}web")));
    let api = shard(pki.identity(&format!("{TD}api")));
    let (mut c, mut s) = pair(&web, &api, "api");
    handshake(&mut c, &mut s).unwrap();
    assert_eq!(c.alpn(), Some(ALPN_HTTP1));
    let peer = s.peer_certificates().unwrap()[0].clone();
    assert_eq!(
        super::identity::leaf_identity(&peer).unwrap().0,
        format!("{TD}web")
    );

    c.encrypt(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    transfer(&mut c, &mut s);
    assert_eq!(read_all(&mut s, 64), b"GET / HTTP/1.1\r\n\r\n");

    // 100 KB: several records, read back through small buffers (the rest of
    // a record waits in the overflow).
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    s.encrypt(&big).unwrap();
    transfer(&mut s, &mut c);
    assert_eq!(read_all(&mut c, 1000), big);
}

#[test]
fn a_partial_record_waits_for_the_rest() {
    let pki = Pki::new("mesh");
    let web = shard(pki.identity(&format!("{TD}web")));
    let api = shard(pki.identity(&format!("{TD}api")));
    let (mut c, mut s) = pair(&web, &api, "api");
    handshake(&mut c, &mut s).unwrap();
    c.encrypt(b"hello").unwrap();
    let tx = c.take_tx();
    let bytes = tx.buf[..tx.len].to_vec();
    for (i, b) in bytes.iter().enumerate() {
        let mut rx = s.take_rx();
        rx.push(*b);
        s.put_rx(rx);
        let mut out = Vec::with_capacity(64);
        let d = s.decrypt(&mut out).unwrap();
        if i + 1 < bytes.len() {
            assert_eq!(d.bytes, 0, "byte {i}");
            assert!(!s.has_buffered());
        } else {
            assert_eq!(out, b"hello");
        }
    }
}

#[test]
fn a_peer_with_another_services_certificate_is_refused_as_a_mismatch() {
    let pki = Pki::new("mesh");
    let web = shard(pki.identity(&format!("{TD}web")));
    let db = shard(pki.identity(&format!("{TD}db")));
    // web calls "api", but the address answers with db's certificate.
    let (mut c, mut s) = pair(&web, &db, "api");
    let e = handshake(&mut c, &mut s).unwrap_err();
    assert!(e.identity_mismatch, "{e}");
}

#[test]
fn the_inbound_side_refuses_a_foreign_ca_an_expired_certificate_and_another_trust_domain() {
    let pki = Pki::new("mesh");
    let api = shard(pki.identity(&format!("{TD}api")));

    let other = Pki::new("other");
    // The client trusts our CA (so it gets as far as sending its own
    // certificate) but holds one from another CA.
    let (cert, key) = other.leaf(&format!("{TD}web"));
    let foreign = shard(Identity::from_pem(&cert, &key, &[pki.ca_pem.as_str()], "t").unwrap());

    let (cert, key) = pki.leaf_valid(&format!("{TD}web"), -7200, -3600);
    let expired = shard(Identity::from_pem(&cert, &key, &[pki.ca_pem.as_str()], "t").unwrap());

    let (cert, key) = pki.leaf("spiffe://elsewhere.test/service/web");
    let mut id = Identity::from_pem(&cert, &key, &[pki.ca_pem.as_str()], "t").unwrap();
    // It accepts api's certificate, so only the server can refuse it.
    id.trust_domain = "mesh.test".into();
    let stranger = shard(id);

    for (what, client) in [
        ("foreign CA", foreign),
        ("expired", expired),
        ("trust domain", stranger),
    ] {
        let (mut c, mut s) = pair(&client, &api, "api");
        // TLS 1.3: the client finishes first; the server's verdict on the
        // client certificate comes as an alert.
        let res = handshake(&mut c, &mut s);
        assert!(res.is_err(), "{what}: accepted");
        assert!(!res.unwrap_err().identity_mismatch, "{what}");
    }
}

#[test]
fn close_notify_reads_as_end_of_stream() {
    let pki = Pki::new("mesh");
    let web = shard(pki.identity(&format!("{TD}web")));
    let api = shard(pki.identity(&format!("{TD}api")));
    let (mut c, mut s) = pair(&web, &api, "api");
    handshake(&mut c, &mut s).unwrap();
    c.encrypt(b"last words").unwrap();
    c.close_notify();
    transfer(&mut c, &mut s);
    let mut out = Vec::with_capacity(64);
    let d = s.decrypt(&mut out).unwrap();
    assert_eq!((d.bytes, &out[..]), (10, &b"last words"[..]));
    let d = s.decrypt(&mut out).unwrap();
    assert!(d.eof && d.bytes == 0);
}

#[test]
fn a_second_connection_resumes() {
    let pki = Pki::new("mesh");
    let web = shard(pki.identity(&format!("{TD}web")));
    let api = shard(pki.identity(&format!("{TD}api")));
    let (mut c, mut s) = pair(&web, &api, "api");
    handshake(&mut c, &mut s).unwrap();
    // The tickets come after the handshake; the client reads them.
    transfer(&mut s, &mut c);
    let _ = read_all(&mut c, 64);
    let (mut c, mut s) = pair(&web, &api, "api");
    handshake(&mut c, &mut s).unwrap();
    assert!(c.resumed() && s.resumed());
}

#[test]
fn a_dotted_service_name_is_compared_whole() {
    let pki = Pki::new("mesh");
    let web = shard(pki.identity(&format!("{TD}web")));
    let api = shard(pki.identity(&format!("{TD}api")));
    let dotted = shard(pki.identity(&format!("{TD}api.internal")));
    let (mut c, mut s) = pair(&web, &api, "api.internal");
    assert!(handshake(&mut c, &mut s).unwrap_err().identity_mismatch);
    let (mut c, mut s) = pair(&web, &dotted, "api.internal");
    handshake(&mut c, &mut s).unwrap();
}

#[test]
fn identity_errors_say_where_and_keep_the_cause() {
    use super::identity::{IdentityError, LeafError};
    use std::error::Error as _;

    let pki = Pki::new("mesh");
    let ca = pki.ca_pem.as_str();
    let (cert, key) = pki.leaf(&format!("{TD}web"));

    let e = Identity::from_pem(&cert, &key, &[""], "proxy.toml: [tls]").unwrap_err();
    assert!(matches!(e, IdentityError::NoRoots { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "proxy.toml: [tls]: CA: no certificate to trust"
    );

    let e = Identity::from_pem(&cert, "junk", &[ca], "t").unwrap_err();
    assert!(matches!(e, IdentityError::KeyPem { .. }), "{e:?}");
    assert!(
        e.to_string().starts_with("t: key: not a PEM private key: "),
        "{e}"
    );
    assert!(e.source().is_some(), "the PEM error is kept");

    let (other, other_key) = pki.leaf("https://web.mesh.test/");
    let e = Identity::from_pem(&other, &other_key, &[ca], "t").unwrap_err();
    assert!(
        matches!(
            e,
            IdentityError::Leaf {
                source: LeafError::NoSpiffeUri,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "t: certificate: no spiffe:// URI in subjectAltName"
    );
}

/// `id` refusing the certificates of `revoked` (their leaves' serials).
fn shard_revoking(id: Identity, revoked: &[&Identity]) -> ShardTls {
    let list: Vec<coremesh_api::snapshot::RevokedCert> = revoked
        .iter()
        .map(|r| coremesh_api::snapshot::RevokedCert {
            serial: coremesh_api::snapshot::serial_hex(
                &super::revoked::leaf_serial(&r.chain[0]).unwrap(),
            ),
            node: "evil".into(),
            not_after: u64::MAX,
        })
        .collect();
    let list = Arc::new(super::revoked::Revocations::from_list(&list));
    ShardTls::with_revoked(&Arc::new(id), &list).unwrap()
}

#[test]
fn the_inbound_side_refuses_a_caller_whose_certificate_is_revoked() {
    let pki = Pki::new("mesh");
    let evil_id = pki.identity(&format!("{TD}web"));
    let evil_again = pki.identity(&format!("{TD}web"));
    let api = shard_revoking(pki.identity(&format!("{TD}api")), &[&evil_id]);
    let evil = shard(evil_id);
    let (mut c, mut s) = pair(&evil, &api, "api");
    let e = handshake(&mut c, &mut s).unwrap_err();
    assert!(!e.identity_mismatch, "{e}");
    assert!(e.msg.to_lowercase().contains("revoked"), "{e}");
    // Another certificate of the same service (not revoked) still works.
    let good = shard(evil_again);
    let (mut c, mut s) = pair(&good, &api, "api");
    handshake(&mut c, &mut s).unwrap();
}

#[test]
fn the_outbound_side_refuses_a_server_whose_certificate_is_revoked() {
    let pki = Pki::new("mesh");
    let evil_id = pki.identity(&format!("{TD}api"));
    let web = shard_revoking(pki.identity(&format!("{TD}web")), &[&evil_id]);
    let evil = shard(evil_id);
    let (mut c, mut s) = pair(&web, &evil, "api");
    let e = handshake(&mut c, &mut s).unwrap_err();
    assert!(
        !e.identity_mismatch,
        "a revoked peer is no impersonation: {e}"
    );
    assert!(e.msg.to_lowercase().contains("revoked"), "{e}");
}

#[test]
fn a_new_revocation_list_ends_resumption_of_sessions_from_before() {
    let pki = Pki::new("mesh");
    let web_id = pki.identity(&format!("{TD}web"));
    let web_revoked = pki.identity(&format!("{TD}web"));
    // web_revoked is the same key and certificate as web's.
    let web_revoked = Identity {
        chain: web_id.chain.clone(),
        key: web_id.key.clone_key(),
        ..web_revoked
    };
    let web = shard(web_id);
    let api = Arc::new(pki.identity(&format!("{TD}api")));
    let api_before = ShardTls::new(&api).unwrap();
    let (mut c, mut s) = pair(&web, &api_before, "api");
    handshake(&mut c, &mut s).unwrap();
    transfer(&mut s, &mut c);
    let _ = read_all(&mut c, 64);
    // The list arrives: the shard's configurations are rebuilt with it,
    // and the ticket web holds is worth nothing there.
    let api_after = shard_revoking(api.clone_identity(), &[&web_revoked]);
    let (mut c, mut s) = pair(&web, &api_after, "api");
    let e = handshake(&mut c, &mut s).unwrap_err();
    assert!(e.msg.to_lowercase().contains("revoked"), "{e}");
}
