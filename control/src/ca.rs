//! Control's certificate authority: created at first start (ECDSA P-256),
//! or supplied by the operator (`--ca-cert`, `--ca-key`: a root, or an
//! intermediate with its issuers). It signs the proxies' CSRs with their
//! SPIFFE ID (`spiffe://<trust-domain>/service/<name>`) as the only URI SAN
//! and the node they joined from in the subject (`OU=<node>`, [`NODE_DN`]),
//! and control's own QUIC server certificate. Proxies generate their keys;
//! only CSRs reach control.
//!
//! Chains: the CA file lists the issuing CA first, then its issuers; the
//! last certificate is the **trust anchor** (normally a self-signed root)
//! that proxies trust, and the ones before it are **intermediates**.
//! Every certificate control issues is sent as leaf + intermediates, so a
//! peer that trusts only the anchor can verify it. Control's QUIC server
//! chain is leaf + intermediates + anchor: a joining proxy finds the anchor
//! in it by the join token's fingerprint (see the proxy's
//! `FingerprintVerifier`).
//!
//! The **trust bundle** is the anchor, then any extra roots
//! (`--extra-roots`) trusted during a root rotation (README, "Certificates").
//! Proxies receive it in every snapshot; control's QUIC server accepts client
//! certificates that chain to any of it.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::time::ASN1Time;

use crate::Error;

/// Certificates are valid from this long before they are issued, for hosts
/// whose clocks run a little behind control's.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// Default lifetime of a proxy certificate.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A new CA: (certificate PEM, PKCS#8 key PEM).
pub fn create_ca(trust_domain: &str, now: SystemTime) -> Result<(String, String), Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(ca_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("coremesh CA {trust_domain}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + CA_LIFETIME).into();
    let cert = params.self_signed(&key).map_err(ca_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn ca_err(e: rcgen::Error) -> Error {
    Error::internal(format!("CA: {e}"))
}

/// The subject attribute of a proxy certificate that names the node it was
/// issued to (from the join; a renewal keeps it): organizationalUnitName.
/// Control reads it back on renewals, so a host cannot move its
/// certificates to another node's name by what it says in its Hello.
pub const NODE_DN: DnType = DnType::OrganizationalUnitName;

/// A certificate control signed.
#[derive(Debug, Clone)]
pub struct Signed {
    pub cert_pem: String,
    /// Unix seconds.
    pub not_after: u64,
    /// [`coremesh_api::snapshot::serial_hex`] of the leaf's serial number.
    pub serial: String,
}

/// One certificate of a CA file: DER and its PEM.
#[derive(Debug, Clone)]
struct CaCert {
    der: CertificateDer<'static>,
    pem: String,
}

impl CaCert {
    fn new(der: CertificateDer<'static>) -> CaCert {
        let pem = pem_of(&der);
        CaCert { der, pem }
    }
}

fn pem_of(der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 is ASCII.
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// The loaded CA.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Between a leaf and the anchor: the issuing CA (unless it is the
    /// anchor) and its issuers below the anchor, in order.
    intermediates: Vec<CaCert>,
    /// The certificate proxies trust for this CA.
    anchor: CaCert,
    /// SHA-256 of the anchor, as join tokens carry it.
    fingerprint: String,
    /// Also trusted, during a root rotation.
    extra_roots: Vec<CaCert>,
    trust_domain: String,
    /// Unix seconds when the first certificate of the issuing chain
    /// expires: no certificate control issues outlives it.
    not_after: u64,
}

impl Ca {
    /// Loads a CA from PEM text with the current time; see [`Ca::from_pem`].
    pub fn load(cert_pem: &str, key_pem: &str, trust_domain: &str) -> Result<Ca, Error> {
        Ca::from_pem(
            "CA certificate",
            cert_pem,
            "CA key",
            key_pem,
            trust_domain,
            SystemTime::now(),
        )
    }

    /// Loads an operator's CA: `cert` is a PEM file with the issuing CA
    /// first, then its issuers (the last one is what proxies trust); `key`
    /// is the issuing CA's private key (PKCS#8 PEM).
    pub fn load_files(cert: &Path, key: &Path, trust_domain: &str) -> Result<Ca, Error> {
        let cert_pem = read_file(cert)?;
        let key_pem = read_file(key)?;
        Ca::from_pem(
            &cert.display().to_string(),
            &cert_pem,
            &key.display().to_string(),
            &key_pem,
            trust_domain,
            SystemTime::now(),
        )
    }

    /// Loads and checks a CA; errors name `cert_src` or `key_src` and say
    /// what is wrong: no certificate, not a CA, not yet valid or expired,
    /// the chain out of order, a key that is not the CA's.
    pub fn from_pem(
        cert_src: &str,
        cert_pem: &str,
        key_src: &str,
        key_pem: &str,
        trust_domain: &str,
        now: SystemTime,
    ) -> Result<Ca, Error> {
        let mut chain = ca_chain(cert_src, cert_pem, now)?;
        let first = chain[0].der.clone();
        let (_, cert) = x509_parser::parse_x509_certificate(&first)
            .map_err(|e| Error::rejected(format!("{cert_src}: {e}")))?;
        let key = load_key(key_src, key_pem)?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(Error::rejected(format!(
                "{key_src}: this key does not match the CA certificate in {cert_src} ({}); \
                 give the private key of the first certificate in the file",
                cert.subject()
            )));
        }
        let not_after = chain
            .iter()
            .filter_map(|c| x509_parser::parse_x509_certificate(&c.der).ok())
            .map(|(_, c)| c.validity().not_after.timestamp().max(0) as u64)
            .min()
            .unwrap_or(0);
        let issuer = Issuer::from_ca_cert_der(&first, key)
            .map_err(|e| Error::rejected(format!("{cert_src}: cannot issue from it: {e}")))?;
        // The last is the anchor; with one certificate, the CA is its own
        // anchor and there are no intermediates.
        let anchor = chain
            .pop()
            .ok_or_else(|| Error::rejected(format!("{cert_src}: holds no certificate")))?;
        Ok(Ca {
            issuer,
            fingerprint: coremesh_api::token::fingerprint_hex(&anchor.der),
            intermediates: chain,
            anchor,
            extra_roots: Vec::new(),
            trust_domain: trust_domain.to_string(),
            not_after,
        })
    }

    /// Adds the roots of a PEM file (one or more CA certificates) to the
    /// trust bundle; returns how many were new.
    pub fn add_extra_roots_file(&mut self, path: &Path, now: SystemTime) -> Result<usize, Error> {
        let pem = read_file(path)?;
        self.add_extra_roots(&path.display().to_string(), &pem, now)
    }

    /// Adds the CA certificates of `pem` (from `src`) to the trust bundle;
    /// each must be a CA and currently valid. Returns how many were new.
    pub fn add_extra_roots(
        &mut self,
        src: &str,
        pem: &str,
        now: SystemTime,
    ) -> Result<usize, Error> {
        let certs = ca_certs(src, pem, now)?;
        let mut added = 0;
        for c in certs {
            if c.der != self.anchor.der && !self.extra_roots.iter().any(|r| r.der == c.der) {
                self.extra_roots.push(c);
                added += 1;
            }
        }
        Ok(added)
    }

    /// The trust bundle: the anchor, then the extra roots; one PEM
    /// certificate each.
    pub fn trust_bundle(&self) -> Vec<String> {
        std::iter::once(&self.anchor)
            .chain(&self.extra_roots)
            .map(|c| c.pem.clone())
            .collect()
    }

    /// The trust bundle as one PEM document, anchor first (what a joining
    /// proxy receives and stores as its CA).
    pub fn trust_bundle_pem(&self) -> String {
        self.trust_bundle().concat()
    }

    /// The trust bundle, DER.
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(&self.anchor)
            .chain(&self.extra_roots)
            .map(|c| c.der.clone())
            .collect()
    }

    /// The anchor's PEM.
    pub fn cert_pem(&self) -> &str {
        &self.anchor.pem
    }

    /// The anchor's DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.anchor.der
    }

    /// The intermediates sent after every leaf (empty when control issues
    /// straight from the anchor).
    pub fn intermediates(&self) -> Vec<CertificateDer<'static>> {
        self.intermediates.iter().map(|c| c.der.clone()).collect()
    }

    /// Unix seconds when the issuing chain expires.
    pub fn not_after(&self) -> u64 {
        self.not_after
    }

    /// SHA-256 of the anchor certificate, as join tokens carry it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn spiffe_id(&self, service: &str) -> String {
        format!("spiffe://{}/service/{service}", self.trust_domain)
    }

    /// Checks a CSR (PEM) before a join token is spent on it.
    pub fn parse_csr(csr_pem: &str) -> Result<CertificateSigningRequestParams, Error> {
        CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| Error::rejected(format!("bad CSR: {e}")))
    }

    /// Signs `csr` for `service` on `node`, whatever names the CSR asked
    /// for: the only SAN is the SPIFFE ID, the subject is `CN=<service>`
    /// and, unless `node` is empty, `OU=<node>` ([`NODE_DN`]); valid for
    /// client and server auth (proxies are both), from `now - BACKDATE` to
    /// `now + lifetime` (or the CA's own expiry, if sooner). The PEM is the
    /// leaf followed by the intermediates.
    pub fn sign(
        &self,
        mut csr: CertificateSigningRequestParams,
        service: &str,
        node: &str,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<Signed, Error> {
        let spiffe = self.spiffe_id(service);
        let p = &mut csr.params;
        p.subject_alt_names =
            vec![SanType::URI(spiffe.as_str().try_into().map_err(|_| {
                Error::rejected(format!("{spiffe:?} is not a valid URI"))
            })?)];
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, service);
        if !node.is_empty() {
            p.distinguished_name.push(NODE_DN, node);
        }
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.serial_number = Some(serial());
        p.use_authority_key_identifier_extension = true;
        p.not_before = (now - BACKDATE).into();
        let ca_end = SystemTime::UNIX_EPOCH + Duration::from_secs(self.not_after);
        let not_after = (now + lifetime).min(ca_end);
        p.not_after = not_after.into();
        let cert = csr.signed_by(&self.issuer).map_err(ca_err)?;
        // The serial as a parser reads it back: what peers will compare.
        let serial = x509_parser::parse_x509_certificate(cert.der())
            .map(|(_, c)| coremesh_api::snapshot::serial_hex(c.raw_serial()))
            .map_err(|e| Error::internal(format!("CA: cannot read back what it signed: {e}")))?;
        let mut cert_pem = cert.pem();
        for c in &self.intermediates {
            cert_pem.push_str(&c.pem);
        }
        Ok(Signed {
            cert_pem,
            not_after: crate::unix_secs(not_after),
            serial,
        })
    }

    /// Control's own QUIC server chain (leaf, intermediates, anchor) and
    /// key, issued at each start: SANs `localhost`, `coremesh-control` and
    /// `ip` (unless unspecified). The anchor is in the chain for joining
    /// proxies, which find it by the token's fingerprint.
    pub fn server_cert(
        &self,
        ip: IpAddr,
        now: SystemTime,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
        let mut names = vec!["localhost".to_string(), "coremesh-control".to_string()];
        if !ip.is_unspecified() {
            names.push(ip.to_string());
        }
        self.server_cert_for(names, now)
    }

    /// A server chain (leaf, intermediates, anchor) and key for `names`
    /// (DNS names or IP literals, which become IP SANs), valid a tenth of
    /// the CA lifetime and never past the CA: control's QUIC certificate
    /// and the operator API's ([`crate::api_tls`]).
    pub fn server_cert_for(
        &self,
        names: Vec<String>,
        now: SystemTime,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(ca_err)?;
        // CertificateParams::new turns IP literals into IP SANs.
        let mut params = CertificateParams::new(names).map_err(ca_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "coremesh-control");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(serial());
        params.use_authority_key_identifier_extension = true;
        params.not_before = (now - BACKDATE).into();
        let ca_end = SystemTime::UNIX_EPOCH + Duration::from_secs(self.not_after);
        params.not_after = (now + CA_LIFETIME / 10).min(ca_end).into();
        let cert = params.signed_by(&key, &self.issuer).map_err(ca_err)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let chain = std::iter::once(cert.der().clone())
            .chain(self.intermediates())
            .chain(std::iter::once(self.anchor.der.clone()))
            .collect();
        Ok((chain, key))
    }
}

fn read_file(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::rejected(format!("{}: cannot read: {e}", path.display())))
}

/// The issuing CA's key. With ring, rcgen reads PKCS#8 only.
fn load_key(src: &str, pem: &str) -> Result<KeyPair, Error> {
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| Error::rejected(format!("{src}: no PEM private key: {e}")))?;
    if !matches!(der, PrivateKeyDer::Pkcs8(_)) {
        return Err(Error::rejected(format!(
            "{src}: the key is not PKCS#8 (\"BEGIN PRIVATE KEY\"); convert it with \
             `openssl pkcs8 -topk8 -nocrypt -in {src} -out ca.key`"
        )));
    }
    KeyPair::try_from(&der).map_err(|e| {
        Error::rejected(format!(
            "{src}: not a key control can sign with (ECDSA P-256 or P-384, Ed25519, RSA): {e}"
        ))
    })
}

/// `2030-01-31 12:00:00 UTC`
fn utc(t: &ASN1Time) -> String {
    let d = t.to_datetime();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

/// The certificates of a PEM file, each checked to be a CA valid at `now`.
fn ca_certs(src: &str, pem: &str, now: SystemTime) -> Result<Vec<CaCert>, Error> {
    let ders = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::rejected(format!("{src}: not PEM: {e}")))?;
    if ders.is_empty() {
        return Err(Error::rejected(format!(
            "{src}: holds no certificate (expected PEM \"BEGIN CERTIFICATE\")"
        )));
    }
    let total = ders.len();
    let now = crate::unix_secs(now) as i64;
    for (i, der) in ders.iter().enumerate() {
        let which = |cert: Option<&X509Certificate>| {
            let n = if total == 1 {
                "the certificate".to_string()
            } else {
                format!("certificate {} of {total}", i + 1)
            };
            match cert {
                Some(c) => format!("{src}: {n} ({})", c.subject()),
                None => format!("{src}: {n}"),
            }
        };
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| Error::rejected(format!("{} is not X.509: {e}", which(None))))?;
        let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if !is_ca {
            return Err(Error::rejected(format!(
                "{} is not a CA certificate (no basicConstraints CA:TRUE)",
                which(Some(&cert))
            )));
        }
        if let Ok(Some(ku)) = cert.key_usage() {
            if !ku.value.key_cert_sign() {
                return Err(Error::rejected(format!(
                    "{} may not sign certificates (its keyUsage lacks keyCertSign)",
                    which(Some(&cert))
                )));
            }
        }
        let validity = cert.validity();
        if now < validity.not_before.timestamp() {
            return Err(Error::rejected(format!(
                "{} is not valid before {}",
                which(Some(&cert)),
                utc(&validity.not_before)
            )));
        }
        if now > validity.not_after.timestamp() {
            return Err(Error::rejected(format!(
                "{} expired on {}",
                which(Some(&cert)),
                utc(&validity.not_after)
            )));
        }
    }
    Ok(ders
        .into_iter()
        .map(|d| CaCert::new(d.into_owned()))
        .collect())
}

/// [`ca_certs`], and each certificate issued by the next one.
fn ca_chain(src: &str, pem: &str, now: SystemTime) -> Result<Vec<CaCert>, Error> {
    let certs = ca_certs(src, pem, now)?;
    for (i, pair) in certs.windows(2).enumerate() {
        // Both parsed in ca_certs.
        let (Ok((_, child)), Ok((_, parent))) = (
            x509_parser::parse_x509_certificate(&pair[0].der),
            x509_parser::parse_x509_certificate(&pair[1].der),
        ) else {
            continue;
        };
        if child.issuer() != parent.subject()
            || child.verify_signature(Some(parent.public_key())).is_err()
        {
            return Err(Error::rejected(format!(
                "{src}: certificate {} ({}) was not issued by certificate {} ({}); \
                 list the issuing CA first, then each issuer up to the root",
                i + 1,
                child.subject(),
                i + 2,
                parent.subject()
            )));
        }
    }
    Ok(certs)
}

fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    let hex = crate::tokens::random_hex(16);
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    // RFC 5280 4.1.2.2: a positive integer; clear the sign bit.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// Who a client certificate names, as control reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub service: String,
    pub spiffe_id: String,
    /// Unix seconds.
    pub not_after: u64,
    /// [`coremesh_api::snapshot::serial_hex`] of its serial number.
    pub serial: String,
    /// The node it was issued to ([`NODE_DN`]); `None` for a certificate
    /// from before control wrote it.
    pub node: Option<String>,
}

/// Why a client certificate names no service ([`peer_identity`]); the
/// message goes back to the proxy.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PeerIdentityError {
    #[error("unreadable certificate: {0}")]
    Unreadable(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("bad subjectAltName: {0}")]
    BadSubjectAltName(#[source] x509_parser::error::X509Error),
    #[error("certificate has no subjectAltName")]
    NoSubjectAltName,
    /// No URI SAN `<prefix><name>` (`prefix` is
    /// `spiffe://<trust domain>/service/`).
    #[error("certificate has no SPIFFE ID under {prefix}")]
    NoSpiffeId { prefix: String },
}

/// Reads the service out of a (chain-verified) certificate's SPIFFE URI SAN
/// `spiffe://<trust_domain>/service/<name>`.
pub fn peer_identity(der: &[u8], trust_domain: &str) -> Result<PeerIdentity, PeerIdentityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(PeerIdentityError::Unreadable)?;
    let not_after = cert.validity().not_after.timestamp().max(0) as u64;
    let serial = coremesh_api::snapshot::serial_hex(cert.raw_serial());
    let node = cert
        .subject()
        .iter_organizational_unit()
        .next()
        .and_then(|ou| ou.as_str().ok())
        .map(str::to_string);
    let prefix = format!("spiffe://{trust_domain}/service/");
    let san = cert
        .subject_alternative_name()
        .map_err(PeerIdentityError::BadSubjectAltName)?
        .ok_or(PeerIdentityError::NoSubjectAltName)?;
    for name in &san.value.general_names {
        if let GeneralName::URI(uri) = name {
            if let Some(service) = uri.strip_prefix(&prefix) {
                if !service.is_empty() && !service.contains('/') {
                    return Ok(PeerIdentity {
                        service: service.to_string(),
                        spiffe_id: uri.to_string(),
                        not_after,
                        serial,
                        node,
                    });
                }
            }
        }
    }
    Err(PeerIdentityError::NoSpiffeId { prefix })
}

#[cfg(test)]
mod chain_tests;

#[cfg(test)]
mod tests;
