//! TLS for the control connection (QUIC, TLS 1.3, ring):
//!
//! * **Joining**: the proxy has no CA yet, only the join token's SHA-256
//!   fingerprint of control's CA. [`FingerprintVerifier`] accepts the
//!   server's chain only if one certificate in it is that CA (control sends
//!   leaf + CA) and the leaf verifies against it as the single trust anchor
//!   (signature, validity, server name [`SERVER_NAME`]). Nothing is sent
//!   before that, as kubeadm's join does it.
//! * **Session**: mutual TLS; the server is verified against the stored CA
//!   with ordinary webpki verification, and the proxy presents its own
//!   certificate.
//!
//! Also here: key and CSR generation (the key is made on this host and never
//! leaves it), and reading a certificate's validity and public key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coremesh_api::token::fingerprint_hex;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The name control's server certificate is issued for and verified against.
pub const SERVER_NAME: &str = "coremesh-control";

/// QUIC keep-alive: a PING after this long without sending anything, so a
/// quiet session stays up and a dead control is noticed (its ACKs stop).
/// At 10,000 proxies that is up to 10,000 small packets a second at
/// control, a few bytes each; heartbeats replace them when more frequent.
const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// A control that stopped answering (kill -9, network cut) is noticed after
/// this long without a packet from it (3 to 4 s after it died: the timer
/// restarts at the first keep-alive sent after the last packet received),
/// and the client reconnects, to the next listed control first. Both ends
/// use the smaller of the two peers' values, so control also drops a proxy
/// that went silent after this long (control's own limit is 45 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a QUIC client configuration for control could not be made. The
/// state_dir files are named as the messages have always named them.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// TLS 1.3 is not available from the crypto provider.
    #[error("TLS setup: {0}")]
    ProtocolVersion(#[source] rustls::Error),
    #[error("QUIC TLS setup: {0}")]
    Quic(#[source] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("idle timeout: {0}")]
    IdleTimeout(#[source] quinn::VarIntBoundsExceeded),
    #[error("ca.pem: {0}")]
    CaPem(#[source] pem::Error),
    #[error("ca.pem: {0}")]
    CaAnchor(#[source] rustls::Error),
    #[error("ca.pem holds no certificate")]
    NoCa,
    #[error("cert.pem: {0}")]
    CertPem(#[source] pem::Error),
    #[error("cert.pem holds no certificate")]
    NoCert,
    #[error("key.pem: {0}")]
    KeyPem(#[source] pem::Error),
    #[error("cert.pem/key.pem: {0}")]
    CertAndKey(#[source] rustls::Error),
}

/// Why a key or its CSR could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("key generation: {0}")]
    Key(#[source] rcgen::Error),
    #[error("CSR: {0}")]
    Csr(#[source] rcgen::Error),
}

/// Why a PEM document does not hold a readable certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertParseError {
    #[error("not a PEM certificate: {0}")]
    Pem(#[source] pem::Error),
    #[error("not an X.509 certificate: {0}")]
    X509(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts control's chain only if it contains the CA the join token names.
#[derive(Debug)]
pub struct FingerprintVerifier {
    /// Lowercase hex SHA-256 of the CA certificate's DER.
    fingerprint: String,
    provider: Arc<CryptoProvider>,
    /// Set when a presented chain held no certificate with the fingerprint,
    /// so the join can say exactly why it did not proceed.
    mismatch: Arc<AtomicBool>,
}

impl FingerprintVerifier {
    pub fn new(fingerprint: &str) -> FingerprintVerifier {
        FingerprintVerifier {
            fingerprint: fingerprint.to_ascii_lowercase(),
            provider: provider(),
            mismatch: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether a chain was refused for not containing the pinned CA.
    pub fn mismatch_flag(&self) -> Arc<AtomicBool> {
        self.mismatch.clone()
    }
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .chain(std::iter::once(end_entity))
            .find(|c| fingerprint_hex(c) == self.fingerprint)
        else {
            self.mismatch.store(true, Ordering::Relaxed);
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ));
        };
        // The pinned CA becomes the only trust anchor; webpki then checks
        // the leaf's signature, validity and name as for any server.
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(format!("CA from the chain: {e}")))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn builder(
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, TlsSetupError> {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsSetupError::ProtocolVersion)
}

fn quic(mut tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, TlsSetupError> {
    tls.alpn_protocols = vec![coremesh_api::wire::ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(TlsSetupError::Quic)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .map_err(TlsSetupError::IdleTimeout)?,
    ));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// The client configuration of a join: no client certificate, the server
/// verified by the token's CA fingerprint.
pub fn join_config(
    verifier: Arc<FingerprintVerifier>,
) -> Result<quinn::ClientConfig, TlsSetupError> {
    quic(
        builder()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    )
}

/// The client configuration of a session: mutual TLS with the stored
/// identity, the server verified against the stored CA.
pub fn session_config(
    key_pem: &str,
    cert_pem: &str,
    ca_pem: &str,
) -> Result<quinn::ClientConfig, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let ca = ca.map_err(TlsSetupError::CaPem)?;
        roots.add(ca).map_err(TlsSetupError::CaAnchor)?;
    }
    if roots.is_empty() {
        return Err(TlsSetupError::NoCa);
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(TlsSetupError::CertPem)?;
    if chain.is_empty() {
        return Err(TlsSetupError::NoCert);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(TlsSetupError::KeyPem)?;
    quic(
        builder()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(TlsSetupError::CertAndKey)?,
    )
}

/// A fresh ECDSA P-256 key (PKCS#8 PEM) and a CSR for it (PEM). Control
/// decides the certificate's names; the CSR's common name is the service,
/// for people reading it.
pub fn key_and_csr(service: &str) -> Result<(String, String), CsrError> {
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CsrError::Key)?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, service);
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(CsrError::Csr)?;
    Ok((key.serialize_pem(), csr))
}

/// What the client needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Validity, in seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// The subject public key (for an EC key, the point).
    pub public_key: Vec<u8>,
    /// DER of the first certificate.
    pub der: Vec<u8>,
}

impl CertInfo {
    /// Reads the first certificate of a PEM document.
    pub fn parse(pem: &str) -> Result<CertInfo, CertParseError> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(CertParseError::Pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(CertParseError::X509)?;
        Ok(CertInfo {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
            der: der.to_vec(),
        })
    }

    /// Whether `key_pem` is the private half of this certificate's key.
    pub fn matches_key(&self, key_pem: &str) -> bool {
        rcgen::KeyPair::from_pem(key_pem)
            .is_ok_and(|k| rcgen::PublicKeyData::der_bytes(&k) == self.public_key.as_slice())
    }

    /// When to renew: about two thirds into the lifetime, moved by up to
    /// ±10% of that point (`jitter` in [-1, 1]) so that proxies joined
    /// together do not all renew together. Seconds since the epoch.
    pub fn renew_at(&self, jitter: f64) -> i64 {
        let lifetime = (self.not_after - self.not_before).max(0) as f64;
        let point = lifetime * 2.0 / 3.0 * (1.0 + 0.1 * jitter.clamp(-1.0, 1.0));
        self.not_before + point as i64
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

    /// A CA and a server certificate for [`SERVER_NAME`] signed by it.
    pub(crate) struct TestPki {
        pub ca_der: CertificateDer<'static>,
        pub ca_pem: String,
        pub issuer: Issuer<'static, KeyPair>,
        pub server_chain: Vec<CertificateDer<'static>>,
        pub server_key: PrivateKeyDer<'static>,
    }

    impl TestPki {
        pub(crate) fn new(name: &str) -> TestPki {
            let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.distinguished_name
                .push(rcgen::DnType::CommonName, format!("{name} CA"));
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let ca_cert = ca.self_signed(&ca_key).unwrap();
            let issuer = Issuer::new(ca, ca_key);
            let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let server = CertificateParams::new(vec![SERVER_NAME.to_string()])
                .unwrap()
                .signed_by(&server_key, &issuer)
                .unwrap();
            TestPki {
                ca_der: ca_cert.der().clone(),
                ca_pem: ca_cert.pem(),
                issuer,
                server_chain: vec![server.der().clone(), ca_cert.der().clone()],
                server_key: PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
            }
        }

        pub(crate) fn fingerprint(&self) -> String {
            fingerprint_hex(&self.ca_der)
        }
    }

    fn verify(
        v: &FingerprintVerifier,
        chain: &[CertificateDer<'static>],
    ) -> Result<(), rustls::Error> {
        v.verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from(SERVER_NAME).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
    }

    #[test]
    fn fingerprint_verifier_accepts_only_the_pinned_ca() {
        let pki = TestPki::new("control");
        let other = TestPki::new("impostor");

        let v = FingerprintVerifier::new(&pki.fingerprint().to_uppercase());
        verify(&v, &pki.server_chain).unwrap();
        assert!(!v.mismatch_flag().load(Ordering::Relaxed));

        // Another CA's chain: refused, and flagged as a mismatch.
        let e = verify(&v, &other.server_chain).unwrap_err();
        assert_eq!(
            e,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        );
        assert!(v.mismatch_flag().load(Ordering::Relaxed));

        // Without the CA in the chain there is nothing to check against.
        let v = FingerprintVerifier::new(&pki.fingerprint());
        assert!(verify(&v, &pki.server_chain[..1]).is_err());

        // The pinned CA presented beside a leaf it did not sign: the
        // fingerprint matches but the signature does not.
        let v = FingerprintVerifier::new(&pki.fingerprint());
        let forged = vec![other.server_chain[0].clone(), pki.ca_der.clone()];
        let e = verify(&v, &forged).unwrap_err();
        assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e:?}");
        assert!(!v.mismatch_flag().load(Ordering::Relaxed));

        // The right chain but the wrong name.
        let e = v
            .verify_server_cert(
                &pki.server_chain[0],
                &pki.server_chain[1..],
                &ServerName::try_from("elsewhere").unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_err();
        assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e:?}");
    }

    #[test]
    fn key_csr_and_cert_info() {
        let pki = TestPki::new("control");
        let (key_pem, csr_pem) = key_and_csr("web").unwrap();
        assert!(key_pem.contains("PRIVATE KEY"));
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&csr_pem).unwrap();
        let cert = csr.signed_by(&pki.issuer).unwrap();
        let info = CertInfo::parse(&cert.pem()).unwrap();
        assert!(info.matches_key(&key_pem));
        assert!(!info.matches_key(&key_and_csr("web").unwrap().0));
        assert!(info.not_after > info.not_before);
        session_config(&key_pem, &cert.pem(), &pki.ca_pem).unwrap();
        assert!(matches!(
            session_config(&key_pem, &cert.pem(), ""),
            Err(TlsSetupError::NoCa)
        ));
        let e = CertInfo::parse("junk").unwrap_err();
        assert!(matches!(e, CertParseError::Pem(_)), "{e:?}");
        assert!(e.to_string().starts_with("not a PEM certificate: "), "{e}");
    }

    #[test]
    fn renewal_point_is_two_thirds_with_bounded_jitter() {
        let info = CertInfo {
            not_before: 1_000,
            not_after: 1_000 + 90_000,
            public_key: vec![],
            der: vec![],
        };
        assert_eq!(info.renew_at(0.0), 61_000);
        assert_eq!(info.renew_at(1.0), 67_000);
        assert_eq!(info.renew_at(-1.0), 55_000);
        assert_eq!(info.renew_at(7.0), 67_000);
    }
}
