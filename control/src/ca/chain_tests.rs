//! Operator CAs: loading and checking the files, chains through an
//! intermediate (issued certificates and control's TLS server verify up to
//! the root), and the trust bundle of a rotation.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use super::*;

const TD: &str = "coremesh.local";
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// A CA certificate (PEM), its key (PKCS#8 PEM) and an issuer for it.
struct TestCa {
    pem: String,
    der: CertificateDer<'static>,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params(cn: &str, path_len: u8, from: SystemTime, to: SystemTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = from.into();
    p.not_after = to.into();
    p
}

/// A self-signed root valid from `from` to `to`.
fn root_valid(cn: &str, from: SystemTime, to: SystemTime) -> TestCa {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = ca_params(cn, 1, from, to);
    let cert = params.self_signed(&key).unwrap();
    TestCa {
        pem: cert.pem(),
        der: cert.der().clone(),
        key_pem: key.serialize_pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A root valid from an hour ago for a year.
fn a_root(cn: &str) -> TestCa {
    let now = SystemTime::now();
    root_valid(cn, now - HOUR, now + 365 * DAY)
}

/// An intermediate CA issued by `parent`.
fn intermediate(cn: &str, parent: &TestCa) -> TestCa {
    let now = SystemTime::now();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = ca_params(cn, 0, now - HOUR, now + 90 * DAY);
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &parent.issuer).unwrap();
    TestCa {
        pem: cert.pem(),
        der: cert.der().clone(),
        key_pem: key.serialize_pem(),
        issuer: Issuer::new(params, key),
    }
}

fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, Error> {
    Ca::from_pem(
        "/etc/ca/ca.pem",
        cert_pem,
        "/etc/ca/ca.key",
        key_pem,
        TD,
        SystemTime::now(),
    )
}

/// A proxy's key and the chain `ca` issued it for `service`.
fn issue(ca: &Ca, service: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let signed = ca
        .sign(
            Ca::parse_csr(&csr).unwrap(),
            service,
            "host-1",
            DEFAULT_CERT_LIFETIME,
            SystemTime::now(),
        )
        .unwrap();
    let chain = CertificateDer::pem_slice_iter(signed.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    (chain, key)
}

/// Verifies a client chain as a peer proxy would: roots only.
fn verify_client(roots: &[CertificateDer<'static>], chain: &[CertificateDer<'static>]) -> bool {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let v = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .unwrap();
    v.verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .is_ok()
}

fn err(r: Result<Ca, Error>) -> String {
    match r {
        Ok(_) => panic!("loaded"),
        Err(e) => e.message,
    }
}

#[test]
fn pem_encoding_round_trips() {
    for len in 0..12 {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let pem = pem_of(&bytes);
        let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(back.as_ref(), bytes.as_slice(), "{len}: {pem}");
    }
    let r = a_root("root");
    assert_eq!(pem_of(&r.der), r.pem.replace("\r\n", "\n"));
}

#[test]
fn generated_ca_is_its_own_anchor() {
    let (cert, key) = create_ca(TD, SystemTime::now()).unwrap();
    let ca = Ca::load(&cert, &key, TD).unwrap();
    assert!(ca.intermediates().is_empty());
    assert_eq!(ca.trust_bundle().len(), 1);
    assert_eq!(
        ca.fingerprint(),
        coremesh_api::token::fingerprint_hex(ca.cert_der())
    );
    let (chain, _) = issue(&ca, "api");
    assert_eq!(chain.len(), 1, "a leaf alone");
    assert!(verify_client(&ca.roots(), &chain));
}

#[test]
fn intermediate_chains_verify_up_to_the_root() {
    let root = a_root("operator root");
    let int = intermediate("mesh intermediate", &root);
    let file = format!("{}{}", int.pem, root.pem);
    let ca = load(&file, &int.key_pem).unwrap();

    // Proxies trust the root; tokens pin it.
    assert_eq!(ca.roots(), std::slice::from_ref(&root.der));
    assert_eq!(
        ca.fingerprint(),
        coremesh_api::token::fingerprint_hex(&root.der)
    );
    assert_eq!(ca.trust_bundle_pem(), pem_of(&root.der));
    assert_eq!(ca.intermediates(), std::slice::from_ref(&int.der));

    // Issued: leaf + intermediate, which verifies against the root alone,
    // and would not without the intermediate.
    let (chain, _) = issue(&ca, "api");
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], int.der);
    assert!(verify_client(&ca.roots(), &chain));
    assert!(!verify_client(&ca.roots(), &chain[..1]));
    let id = peer_identity(&chain[0], TD).unwrap();
    assert_eq!(id.spiffe_id, "spiffe://coremesh.local/service/api");

    // The leaf names the intermediate's key identifier.
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let (_, int_cert) = x509_parser::parse_x509_certificate(&int.der).unwrap();
    let aki = leaf
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        });
    let ski = int_cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        });
    assert!(ski.is_some());
    assert_eq!(aki, ski);

    // Control's server chain: leaf, intermediate, root (for the join's
    // fingerprint check), and a TLS client trusting the root verifies it.
    let (server, _) = ca
        .server_cert("127.0.0.1".parse().unwrap(), SystemTime::now())
        .unwrap();
    assert_eq!(server.len(), 3);
    assert_eq!(server[1..], [int.der.clone(), root.der.clone()]);
    let mut store = RootCertStore::empty();
    store.add(root.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let v = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .unwrap();
    v.verify_server_cert(
        &server[0],
        &server[1..],
        &ServerName::try_from("coremesh-control").unwrap(),
        &[],
        UnixTime::now(),
    )
    .unwrap();
}

#[test]
fn intermediate_alone_is_the_anchor() {
    let root = a_root("operator root");
    let int = intermediate("mesh intermediate", &root);
    let ca = load(&int.pem, &int.key_pem).unwrap();
    assert_eq!(ca.roots(), std::slice::from_ref(&int.der));
    assert!(ca.intermediates().is_empty());
    let (chain, _) = issue(&ca, "api");
    assert_eq!(chain.len(), 1);
    assert!(verify_client(&ca.roots(), &chain));
}

#[test]
fn issued_certificates_end_with_the_ca() {
    let now = SystemTime::now();
    let short = root_valid("short-lived root", now - HOUR, now + HOUR);
    let ca = load(&short.pem, &short.key_pem).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let signed = ca
        .sign(Ca::parse_csr(&csr).unwrap(), "api", "host-1", DAY, now)
        .unwrap();
    assert_eq!(signed.not_after, ca.not_after());
    assert!(signed.not_after <= crate::unix_secs(now + HOUR));
}

#[test]
fn bad_ca_files_are_refused_naming_the_file() {
    let root = a_root("operator root");
    let int = intermediate("mesh intermediate", &root);

    let e = err(load("", &root.key_pem));
    assert_eq!(
        e,
        "/etc/ca/ca.pem: holds no certificate (expected PEM \"BEGIN CERTIFICATE\")"
    );
    let e = err(load(&root.key_pem, &root.key_pem));
    assert!(e.starts_with("/etc/ca/ca.pem: holds no certificate"), "{e}");

    // A leaf is not a CA.
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf = CertificateParams::new(vec!["api.example".to_string()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "api leaf");
    let leaf = leaf.self_signed(&key).unwrap();
    let e = err(load(&leaf.pem(), &key.serialize_pem()));
    assert_eq!(
        e,
        "/etc/ca/ca.pem: the certificate (CN=api leaf) is not a CA certificate (no basicConstraints CA:TRUE)"
    );

    // Expired, and not yet valid.
    let now = SystemTime::now();
    let old = root_valid("old root", now - 10 * DAY, now - DAY);
    let e = err(load(&old.pem, &old.key_pem));
    assert!(
        e.starts_with("/etc/ca/ca.pem: the certificate (CN=old root) expired on "),
        "{e}"
    );
    assert!(e.ends_with(" UTC"), "{e}");
    let future = root_valid("future root", now + DAY, now + 10 * DAY);
    let e = err(load(&future.pem, &future.key_pem));
    assert!(e.contains("(CN=future root) is not valid before "), "{e}");

    // The key of another CA.
    let other = a_root("other root");
    let e = err(load(&root.pem, &other.key_pem));
    assert_eq!(
        e,
        "/etc/ca/ca.key: this key does not match the CA certificate in /etc/ca/ca.pem (CN=operator root); give the private key of the first certificate in the file"
    );
    // The root's key with an intermediate first: the key must be the
    // intermediate's.
    let e = err(load(&format!("{}{}", int.pem, root.pem), &root.key_pem));
    assert!(
        e.starts_with("/etc/ca/ca.key: this key does not match"),
        "{e}"
    );
    let e = err(load(&root.pem, "not a key"));
    assert!(e.starts_with("/etc/ca/ca.key: no PEM private key"), "{e}");

    // Out of order: the root first.
    let e = err(load(&format!("{}{}", root.pem, int.pem), &root.key_pem));
    assert_eq!(
        e,
        "/etc/ca/ca.pem: certificate 1 (CN=operator root) was not issued by certificate 2 (CN=mesh intermediate); list the issuing CA first, then each issuer up to the root"
    );
    // An unrelated second certificate.
    let e = err(load(&format!("{}{}", int.pem, other.pem), &int.key_pem));
    assert!(
        e.contains("was not issued by certificate 2 (CN=other root)"),
        "{e}"
    );
    // An expired certificate further up is named with its position.
    let e = err(load(&format!("{}{}", int.pem, old.pem), &int.key_pem));
    assert!(
        e.starts_with("/etc/ca/ca.pem: certificate 2 of 2 (CN=old root) expired on"),
        "{e}"
    );
}

#[test]
fn load_files_reads_and_names_paths() {
    let dir = std::env::temp_dir().join(format!(
        "coremesh-ca-{}-{}",
        std::process::id(),
        crate::unix_millis(SystemTime::now())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let root = a_root("operator root");
    let cert = dir.join("ca.pem");
    let key = dir.join("ca.key");
    std::fs::write(&cert, &root.pem).unwrap();
    std::fs::write(&key, &root.key_pem).unwrap();
    let mut ca = Ca::load_files(&cert, &key, TD).unwrap();
    assert_eq!(ca.roots(), std::slice::from_ref(&root.der));

    let missing = dir.join("nope.pem");
    let e = match Ca::load_files(&missing, &key, TD) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.message,
    };
    assert!(
        e.starts_with(&format!("{}: cannot read: ", missing.display())),
        "{e}"
    );

    let extra = dir.join("new-root.pem");
    let new_root = a_root("new root");
    std::fs::write(&extra, &new_root.pem).unwrap();
    assert_eq!(
        ca.add_extra_roots_file(&extra, SystemTime::now()).unwrap(),
        1
    );
    assert_eq!(ca.roots(), [root.der.clone(), new_root.der.clone()]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn extra_roots_join_the_trust_bundle() {
    let old = a_root("old root");
    let new = a_root("new root");
    let mut ca = load(&new.pem, &new.key_pem).unwrap();
    let now = SystemTime::now();
    // Duplicates (and the anchor itself) are added once.
    let file = format!("{}{}{}", old.pem, new.pem, old.pem);
    assert_eq!(ca.add_extra_roots("old.pem", &file, now).unwrap(), 1);
    assert_eq!(ca.roots(), [new.der.clone(), old.der.clone()]);
    assert_eq!(
        ca.trust_bundle(),
        [pem_of(&new.der), pem_of(&old.der)],
        "anchor first"
    );
    assert_eq!(
        ca.trust_bundle_pem(),
        format!("{}{}", pem_of(&new.der), pem_of(&old.der))
    );
    // The anchor (and tokens) stay the new root.
    assert_eq!(
        ca.fingerprint(),
        coremesh_api::token::fingerprint_hex(&new.der)
    );

    // A proxy still holding a certificate from the old CA is verified.
    let old_ca = load(&old.pem, &old.key_pem).unwrap();
    let (chain, _) = issue(&old_ca, "web");
    assert!(verify_client(&ca.roots(), &chain));
    assert!(!verify_client(&ca.roots()[..1], &chain));

    let expired = root_valid("expired root", now - 10 * DAY, now - DAY);
    let e = ca.add_extra_roots("x.pem", &expired.pem, now).unwrap_err();
    assert!(
        e.message
            .starts_with("x.pem: the certificate (CN=expired root) expired on"),
        "{e}"
    );
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = CertificateParams::new(vec!["x".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let e = ca
        .add_extra_roots("x.pem", &format!("{}{}", old.pem, leaf.pem()), now)
        .unwrap_err();
    assert!(e.message.starts_with("x.pem: certificate 2 of 2"), "{e}");
    assert!(
        e.message
            .ends_with("is not a CA certificate (no basicConstraints CA:TRUE)"),
        "{e}"
    );
    let e = ca.add_extra_roots("x.pem", "", now).unwrap_err();
    assert!(e.message.contains("holds no certificate"), "{e}");
    assert_eq!(ca.roots().len(), 2, "nothing added on error");
}

/// Drives a TLS handshake in memory; the first error either side sees.
fn handshake(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
) -> Result<(), rustls::Error> {
    let mut c = rustls::ClientConnection::new(
        Arc::new(client),
        ServerName::try_from("coremesh-control").unwrap(),
    )?;
    let mut s = rustls::ServerConnection::new(Arc::new(server))?;
    for _ in 0..10 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets()?;
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(());
        }
    }
    Err(rustls::Error::General("handshake did not finish".into()))
}

/// A proxy's client configuration: trusts `roots`, presents `chain`.
fn proxy_client(
    roots: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> rustls::ClientConfig {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(store)
        .with_client_auth_cert(chain, key)
        .unwrap();
    c.alpn_protocols = vec![coremesh_api::wire::ALPN.to_vec()];
    c
}

#[test]
fn control_tls_with_an_intermediate_and_during_a_rotation() {
    let ip = "127.0.0.1".parse().unwrap();
    let root = a_root("operator root");
    let int = intermediate("mesh intermediate", &root);
    let ca = load(&format!("{}{}", int.pem, root.pem), &int.key_pem).unwrap();

    // A proxy with an issued chain, trusting the root only.
    let (chain, key) = issue(&ca, "api");
    let server = crate::quic::tls_config(&ca, ip).unwrap();
    handshake(
        server,
        proxy_client(&ca.roots(), chain.clone(), key.clone_key()),
    )
    .unwrap();
    // Without the intermediate, control cannot verify the proxy.
    let server = crate::quic::tls_config(&ca, ip).unwrap();
    assert!(handshake(server, proxy_client(&ca.roots(), chain[..1].to_vec(), key)).is_err());

    // Rotation, step 2: control issues from a new root and still trusts
    // the old one. A proxy with an old certificate that has learned the new
    // root from its trust bundle connects; one that has not, cannot verify
    // control (hence: wait for every ACK before switching).
    let new = a_root("new root");
    let mut rotated = load(&new.pem, &new.key_pem).unwrap();
    rotated
        .add_extra_roots("old", &root.pem, SystemTime::now())
        .unwrap();
    let (old_chain, old_key) = issue(&ca, "web");
    let server = crate::quic::tls_config(&rotated, ip).unwrap();
    let bundle = [root.der.clone(), new.der.clone()];
    handshake(
        server,
        proxy_client(&bundle, old_chain.clone(), old_key.clone_key()),
    )
    .unwrap();
    let server = crate::quic::tls_config(&rotated, ip).unwrap();
    assert!(handshake(
        server,
        proxy_client(std::slice::from_ref(&root.der), old_chain, old_key)
    )
    .is_err());
}
