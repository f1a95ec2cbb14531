use super::*;

fn ca() -> Ca {
    let (cert, key) = create_ca("coremesh.local", SystemTime::now()).unwrap();
    Ca::load(&cert, &key, "coremesh.local").unwrap()
}

fn csr(sans: Vec<String>) -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = CertificateParams::new(sans).unwrap();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[test]
fn signs_with_spiffe_id_and_lifetime() {
    let ca = ca();
    let now = SystemTime::now();
    // Whatever the CSR asks for, the certificate names only the service.
    let req = Ca::parse_csr(&csr(vec!["evil.example".into()])).unwrap();
    let signed = ca
        .sign(req, "api", "host-1", DEFAULT_CERT_LIFETIME, now)
        .unwrap();
    let der = CertificateDer::from_pem_slice(signed.cert_pem.as_bytes()).unwrap();
    let id = peer_identity(&der, "coremesh.local").unwrap();
    assert_eq!(id.service, "api");
    assert_eq!(id.spiffe_id, "spiffe://coremesh.local/service/api");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let nb = cert.validity().not_before.timestamp() as u64;
    let na = cert.validity().not_after.timestamp() as u64;
    let t = crate::unix_secs(now);
    assert_eq!(na - t, 24 * 3600);
    assert_eq!(t - nb, 300);
    assert_eq!(id.not_after, na);
    // The node is in the subject, the serial is what the parser reads.
    assert_eq!(id.node.as_deref(), Some("host-1"));
    assert_eq!(id.serial, signed.serial);
    assert_eq!(
        signed.serial,
        coremesh_api::snapshot::serial_hex(cert.raw_serial())
    );
    assert!(!signed.serial.is_empty());
    let sans = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(sans.value.general_names.len(), 1);
    assert_eq!(
        peer_identity(&der, "other.domain").unwrap_err(),
        PeerIdentityError::NoSpiffeId {
            prefix: "spiffe://other.domain/service/".into()
        }
    );
    let e = peer_identity(b"not a certificate", "coremesh.local").unwrap_err();
    assert!(matches!(e, PeerIdentityError::Unreadable(_)), "{e:?}");
    assert!(e.to_string().starts_with("unreadable certificate: "), "{e}");
    assert!(std::error::Error::source(&e).is_some());
    // It chains to the CA: the issuer is the CA's subject.
    let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
    assert_eq!(cert.issuer(), ca_cert.subject());
    assert!(cert.verify_signature(Some(ca_cert.public_key())).is_ok());
}

#[test]
fn garbage_csr_is_rejected() {
    assert!(Ca::parse_csr("not a csr").is_err());
}

#[test]
fn a_certificate_without_a_node_reads_as_none() {
    let ca = ca();
    let req = Ca::parse_csr(&csr(vec![])).unwrap();
    let signed = ca
        .sign(req, "api", "", DEFAULT_CERT_LIFETIME, SystemTime::now())
        .unwrap();
    let der = CertificateDer::from_pem_slice(signed.cert_pem.as_bytes()).unwrap();
    assert_eq!(peer_identity(&der, "coremesh.local").unwrap().node, None);
}
