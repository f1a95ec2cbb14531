//! Control's certificate authority: created at first start (ECDSA P-256),
//! it signs the proxies' CSRs with their SPIFFE ID
//! (`spiffe://<trust-domain>/service/<name>`) as the only URI SAN, and
//! control's own QUIC server certificate. Proxies generate their keys; only
//! CSRs reach control.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::extensions::GeneralName;

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

/// A certificate control signed.
#[derive(Debug, Clone)]
pub struct Signed {
    pub cert_pem: String,
    /// Unix seconds.
    pub not_after: u64,
}

/// The loaded CA.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    fingerprint: String,
    trust_domain: String,
}

impl Ca {
    pub fn load(cert_pem: &str, key_pem: &str, trust_domain: &str) -> Result<Ca, Error> {
        let key = KeyPair::from_pem(key_pem).map_err(ca_err)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(ca_err)?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| Error::internal(format!("CA certificate: {e}")))?;
        Ok(Ca {
            issuer,
            cert_pem: cert_pem.to_string(),
            fingerprint: coremesh_api::token::fingerprint_hex(&cert_der),
            cert_der,
            trust_domain: trust_domain.to_string(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate, as join tokens carry it.
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

    /// Signs `csr` for `service`, whatever names the CSR asked for: the
    /// only SAN is the SPIFFE ID, valid for client and server auth (proxies
    /// are both), from `now - BACKDATE` to `now + lifetime`.
    pub fn sign(
        &self,
        mut csr: CertificateSigningRequestParams,
        service: &str,
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
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.serial_number = Some(serial());
        p.use_authority_key_identifier_extension = true;
        p.not_before = (now - BACKDATE).into();
        let not_after = now + lifetime;
        p.not_after = not_after.into();
        let cert = csr.signed_by(&self.issuer).map_err(ca_err)?;
        Ok(Signed {
            cert_pem: cert.pem(),
            not_after: crate::unix_secs(not_after),
        })
    }

    /// Control's own QUIC server certificate and key, issued at each start:
    /// SANs `localhost`, `coremesh-control` and `ip` (unless unspecified).
    pub fn server_cert(
        &self,
        ip: IpAddr,
        now: SystemTime,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(ca_err)?;
        let mut names = vec!["localhost".to_string(), "coremesh-control".to_string()];
        if !ip.is_unspecified() {
            names.push(ip.to_string());
        }
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
        params.not_after = (now + CA_LIFETIME / 10).into();
        let cert = params.signed_by(&key, &self.issuer).map_err(ca_err)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((cert.der().clone(), key))
    }
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
}

/// Reads the service out of a (chain-verified) certificate's SPIFFE URI SAN
/// `spiffe://<trust_domain>/service/<name>`.
pub fn peer_identity(der: &[u8], trust_domain: &str) -> Result<PeerIdentity, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let not_after = cert.validity().not_after.timestamp().max(0) as u64;
    let prefix = format!("spiffe://{trust_domain}/service/");
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName: {e}"))?
        .ok_or("certificate has no subjectAltName")?;
    for name in &san.value.general_names {
        if let GeneralName::URI(uri) = name {
            if let Some(service) = uri.strip_prefix(&prefix) {
                if !service.is_empty() && !service.contains('/') {
                    return Ok(PeerIdentity {
                        service: service.to_string(),
                        spiffe_id: uri.to_string(),
                        not_after,
                    });
                }
            }
        }
    }
    Err(format!("certificate has no SPIFFE ID under {prefix}"))
}

#[cfg(test)]
mod tests {
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
        let signed = ca.sign(req, "api", DEFAULT_CERT_LIFETIME, now).unwrap();
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
        let sans = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(sans.value.general_names.len(), 1);
        assert!(peer_identity(&der, "other.domain").is_err());
        // It chains to the CA: the issuer is the CA's subject.
        let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
        assert!(cert.verify_signature(Some(ca_cert.public_key())).is_ok());
    }

    #[test]
    fn garbage_csr_is_rejected() {
        assert!(Ca::parse_csr("not a csr").is_err());
    }
}
