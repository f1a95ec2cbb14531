//! Who this proxy is and whom it trusts, and the rustls configurations built
//! from that, one set per shard.
//!
//! * [`Identity`]: the proxy's certificate chain and key and the trusted
//!   roots, from control (joined, renewed, trust bundle in the snapshots) or
//!   from files (`[tls]`, static mode). The agent builds it and sends it to
//!   every shard.
//! * [`ShardTls`]: the server and client configs a shard builds from it, with
//!   their own session caches, so no lock is shared across cores. A renewed
//!   identity replaces them; connections already open keep their keys.
//! * Peer verification: the chain must lead to a trusted root (TLS 1.3 only),
//!   and the leaf's SPIFFE ID (`spiffe://<trust-domain>/service/<name>`) must
//!   be in our trust domain. A client additionally checks that the server is
//!   the service it meant to call: the expected service travels in the server
//!   name the client connects with ([`server_name`]). Both directions refuse
//!   a certificate on the revocation list from control ([`super::revoked`])
//!   with `certificate_revoked`.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use super::revoked::Revocations;

/// Why PEM files do not make an [`Identity`]. `what` says where they came
/// from (the `[tls]` section of a file, "control certificate", "trust
/// bundle").
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{what}: certificate: not PEM: {source}")]
    CertPem {
        what: String,
        #[source]
        source: pem::Error,
    },
    #[error("{what}: certificate: no certificate in the file")]
    NoCert { what: String },
    #[error("{what}: key: not a PEM private key: {source}")]
    KeyPem {
        what: String,
        #[source]
        source: pem::Error,
    },
    #[error("{what}: CA: not PEM: {source}")]
    CaPem {
        what: String,
        #[source]
        source: pem::Error,
    },
    #[error("{what}: CA: no certificate to trust")]
    NoRoots { what: String },
    #[error("{what}: certificate: {source}")]
    Leaf {
        what: String,
        #[source]
        source: LeafError,
    },
    #[error("{what}: certificate: {spiffe_id:?} is not a SPIFFE ID")]
    NotSpiffe { what: String, spiffe_id: String },
    /// The files parse but rustls refuses the configuration built from them.
    #[error("{what}: {source}")]
    Config {
        what: String,
        #[source]
        source: ShardTlsError,
    },
}

/// Why a certificate has no SPIFFE identity to read.
#[derive(Debug, thiserror::Error)]
pub enum LeafError {
    #[error("not an X.509 certificate: {0}")]
    NotX509(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("bad subjectAltName: {0}")]
    BadSan(#[source] x509_parser::error::X509Error),
    #[error("no subjectAltName (a SPIFFE ID is required)")]
    NoSan,
    #[error("no spiffe:// URI in subjectAltName")]
    NoSpiffeUri,
}

/// Why rustls refused to build a shard's configurations from an identity.
#[derive(Debug, thiserror::Error)]
pub enum ShardTlsError {
    #[error("CA: not a usable trust anchor: {0}")]
    TrustAnchor(#[source] rustls::Error),
    #[error("CA: {0}")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
    /// TLS 1.3 is not available from the crypto provider.
    #[error("{0}")]
    ProtocolVersion(#[source] rustls::Error),
    #[error("certificate and key: {0}")]
    CertAndKey(#[source] rustls::Error),
}

/// ALPN of HTTP/1.1 between proxies.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN of HTTP/2 between proxies (h2 requests keep their protocol).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of a TCP service's byte stream between proxies.
pub const ALPN_TCP: &[u8] = b"coremesh-tcp";

/// The proxy's credentials and trust anchors.
pub struct Identity {
    /// Leaf first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Vec<CertificateDer<'static>>,
    /// `spiffe://<trust_domain>/service/<service>` of the leaf.
    pub spiffe_id: String,
    pub trust_domain: String,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: i64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Reads a certificate chain, its key and the trusted roots, all PEM.
    /// `what` names where they came from, for errors.
    pub fn from_pem(
        chain_pem: &str,
        key_pem: &str,
        roots_pem: &[&str],
        what: &str,
    ) -> Result<Identity, IdentityError> {
        let what = || what.to_string();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|source| IdentityError::CertPem {
                    what: what(),
                    source,
                })?;
        let Some(leaf) = chain.first() else {
            return Err(IdentityError::NoCert { what: what() });
        };
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| {
            IdentityError::KeyPem {
                what: what(),
                source,
            }
        })?;
        let mut roots = Vec::new();
        for pem in roots_pem {
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.push(c.map_err(|source| IdentityError::CaPem {
                    what: what(),
                    source,
                })?);
            }
        }
        if roots.is_empty() {
            return Err(IdentityError::NoRoots { what: what() });
        }
        let (spiffe_id, not_after) = leaf_identity(leaf).map_err(|source| IdentityError::Leaf {
            what: what(),
            source,
        })?;
        let Some(trust_domain) = trust_domain_of(&spiffe_id).map(str::to_string) else {
            return Err(IdentityError::NotSpiffe {
                what: what(),
                spiffe_id,
            });
        };
        let id = Identity {
            chain,
            key,
            roots,
            spiffe_id,
            trust_domain,
            not_after,
        };
        // Fail here, with the file named, rather than at the first handshake.
        ShardTls::new(&Arc::new(id.clone_identity())).map_err(|source| IdentityError::Config {
            what: what(),
            source,
        })?;
        Ok(id)
    }

    pub(crate) fn clone_identity(&self) -> Identity {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
            spiffe_id: self.spiffe_id.clone(),
            trust_domain: self.trust_domain.clone(),
            not_after: self.not_after,
        }
    }
}

/// The SPIFFE ID (URI SAN starting `spiffe://`) and notAfter of a certificate.
pub fn leaf_identity(der: &[u8]) -> Result<(String, i64), LeafError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(LeafError::NotX509)?;
    let not_after = cert.validity().not_after.timestamp();
    let san = cert
        .subject_alternative_name()
        .map_err(LeafError::BadSan)?
        .ok_or(LeafError::NoSan)?;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name {
            // Visible ASCII only: the ID may travel in a header to the app.
            if uri.starts_with("spiffe://") && uri.bytes().all(|b| b.is_ascii_graphic()) {
                return Ok((uri.to_string(), not_after));
            }
        }
    }
    Err(LeafError::NoSpiffeUri)
}

/// `td` of `spiffe://td/...`.
pub fn trust_domain_of(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("spiffe://")?;
    let td = rest.split('/').next()?;
    (!td.is_empty()).then_some(td)
}

/// The service of `spiffe://<td>/service/<name>` when `td` is ours.
pub fn service_of<'a>(id: &'a str, trust_domain: &str) -> Option<&'a str> {
    let rest = id.strip_prefix("spiffe://")?.strip_prefix(trust_domain)?;
    let name = rest.strip_prefix("/service/")?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// The server name a client connects to `addr` of `service` with. The
/// service is the first label (the verifier reads it back); the address
/// makes resumed sessions per endpoint, as rustls caches them by name and a
/// ticket from one endpoint means nothing to another.
pub fn server_name(service: &str, addr: SocketAddr) -> Option<ServerName<'static>> {
    let mut tag = String::with_capacity(48);
    match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().iter().for_each(|b| push_hex(&mut tag, *b)),
        std::net::IpAddr::V6(ip) => ip.octets().iter().for_each(|b| push_hex(&mut tag, *b)),
    }
    tag.push('-');
    tag.push_str(&addr.port().to_string());
    ServerName::try_from(format!("{}.e{tag}.coremesh", service.to_ascii_lowercase())).ok()
}

fn push_hex(s: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    s.push(HEX[(b >> 4) as usize] as char);
    s.push(HEX[(b & 15) as usize] as char);
}

/// A shard's TLS configurations.
pub struct ShardTls {
    pub identity: Arc<Identity>,
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

impl ShardTls {
    /// The configurations for `identity` with nothing revoked.
    pub fn new(identity: &Arc<Identity>) -> Result<ShardTls, ShardTlsError> {
        Self::with_revoked(identity, &Arc::default())
    }

    /// The configurations for `identity`, refusing peers whose certificate
    /// `revoked` lists. New configurations mean new session caches: a
    /// session resumed from before the list must handshake in full.
    pub fn with_revoked(
        identity: &Arc<Identity>,
        revoked: &Arc<Revocations>,
    ) -> Result<ShardTls, ShardTlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for r in &identity.roots {
            roots.add(r.clone()).map_err(ShardTlsError::TrustAnchor)?;
        }
        let roots = Arc::new(roots);

        let inner = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(ShardTlsError::ClientVerifier)?;
        let client_verifier = Arc::new(PeerVerifier {
            inner,
            trust_domain: identity.trust_domain.clone(),
            revoked: revoked.clone(),
        });
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(ShardTlsError::ProtocolVersion)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(ShardTlsError::CertAndKey)?;
        server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec(), ALPN_TCP.to_vec()];
        server.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);

        let server_verifier = Arc::new(ServiceVerifier {
            roots,
            provider: provider.clone(),
            trust_domain: identity.trust_domain.clone(),
            revoked: revoked.clone(),
        });
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(ShardTlsError::ProtocolVersion)?
            .dangerous()
            .with_custom_certificate_verifier(server_verifier)
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(ShardTlsError::CertAndKey)?;
        client.resumption = rustls::client::Resumption::in_memory_sessions(4096);
        Ok(ShardTls {
            identity: identity.clone(),
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// The inbound side's check of a caller: webpki chain verification to our
/// roots (validity, client-auth usage), then a SPIFFE ID in our trust domain.
#[derive(Debug)]
struct PeerVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
    revoked: Arc<Revocations>,
}

/// Refuses a chain-verified leaf that the revocation list names.
fn check_revoked(
    revoked: &Revocations,
    end_entity: &CertificateDer<'_>,
    side: &str,
) -> Result<(), rustls::Error> {
    if revoked.revokes(end_entity) {
        let peer = leaf_identity(end_entity)
            .map(|(id, _)| id)
            .unwrap_or_default();
        crate::lograte::log_limited!(tracing::Level::WARN, %peer, "refused a {side} whose certificate is revoked (its node was evicted)");
        return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
    }
    Ok(())
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_revoked(&self.revoked, end_entity, "caller")?;
        let (id, _) = leaf_identity(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if trust_domain_of(&id) != Some(self.trust_domain.as_str()) {
            tracing::warn!(peer = %id, "refused a caller from another trust domain");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(UnknownTrustDomain(id))),
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct UnknownTrustDomain(String);

impl std::fmt::Display for UnknownTrustDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is not in this mesh's trust domain", self.0)
    }
}

impl std::error::Error for UnknownTrustDomain {}

/// The outbound side's check of the peer it called: chain to our roots, and
/// the SPIFFE ID is exactly the service named in the server name (the first
/// label of [`server_name`]). Anything else is an impersonation attempt
/// (`ApplicationVerificationFailure`, reported as "peer identity mismatch").
#[derive(Debug)]
struct ServiceVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    trust_domain: String,
    revoked: Arc<Revocations>,
}

impl ServerCertVerifier for ServiceVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        check_revoked(&self.revoked, end_entity, "peer it called")?;
        let ServerName::DnsName(name) = server_name else {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        };
        // "<service>.e<tag>.coremesh": the service is everything before the
        // last two labels (a service name may itself contain dots).
        let service = name.as_ref().rsplitn(3, '.').nth(2).unwrap_or_default();
        let (id, _) = leaf_identity(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if service_of(&id, &self.trust_domain) != Some(service) {
            tracing::warn!(expected = %service, presented = %id, "peer identity mismatch");
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.3 only (the config offers no other version).
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
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
