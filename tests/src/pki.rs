//! Certificates for the tests: a CA per [`Pki`], SPIFFE leaves it signs
//! (valid, expired, for any trust domain), written as PEM files for
//! `[tls]` in proxy.toml.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// The three `[tls]` files of one proxy.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    /// The `[tls]` section naming these files.
    pub fn toml(&self) -> String {
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
            self.cert.display().to_string(),
            self.key.display().to_string(),
            self.ca.display().to_string()
        )
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new("test")
    }
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = ca.self_signed(&key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(ca, key),
        }
    }

    /// A leaf (PEM cert, PEM key) for `spiffe_id`, valid from `from` to `to`
    /// seconds relative to now.
    pub fn leaf_valid(&self, spiffe_id: &str, from: i64, to: i64) -> (String, String) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::seconds(from);
        p.not_after = now + time::Duration::seconds(to);
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A leaf (PEM cert, PEM key) for a server at `ip` (also `localhost`),
    /// good for server and client authentication, valid for an hour: for
    /// third-party servers (etcd) and their clients.
    pub fn leaf_for_ip(&self, ip: std::net::IpAddr) -> (String, String) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names.push(SanType::IpAddress(ip));
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::seconds(60);
        p.not_after = now + time::Duration::seconds(3600);
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// `[tls]` files for service `service` in trust domain `mesh.test`,
    /// valid for an hour, written into `dir` as `<tag>.crt` etc.
    pub fn files(&self, dir: &Path, tag: &str, service: &str) -> TlsFiles {
        let id = format!("spiffe://mesh.test/service/{service}");
        self.files_for(dir, tag, &id, -60, 3600, &self.ca_pem)
    }

    /// `[tls]` files with full control over the leaf and the trusted CA.
    pub fn files_for(
        &self,
        dir: &Path,
        tag: &str,
        spiffe_id: &str,
        from: i64,
        to: i64,
        trusted_ca_pem: &str,
    ) -> TlsFiles {
        let (cert, key) = self.leaf_valid(spiffe_id, from, to);
        let f = TlsFiles {
            cert: dir.join(format!("{tag}.crt")),
            key: dir.join(format!("{tag}.key")),
            ca: dir.join(format!("{tag}-ca.crt")),
        };
        std::fs::write(&f.cert, cert).unwrap();
        std::fs::write(&f.key, key).unwrap();
        std::fs::write(&f.ca, trusted_ca_pem).unwrap();
        f
    }
}
