//! The API over TLS with the real client: what meshctl sees when the CA,
//! the name or the scheme is right or wrong.

use std::path::PathBuf;

use axum::routing::get;

use super::*;
use crate::client::{Client, ClientError};

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!(
        "coremesh-api-tls-{name}-{}-{}",
        std::process::id(),
        crate::unix_millis(SystemTime::now())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

fn new_ca() -> Ca {
    let (cert, key) = crate::ca::create_ca("coremesh.local", SystemTime::now()).unwrap();
    Ca::load(&cert, &key, "coremesh.local").unwrap()
}

/// Serves a one-route router on 127.0.0.1 with `args` on a runtime of its
/// own; returns the address (the runtime lives as long as the test).
fn start(
    args: &ApiTlsArgs,
    ca: &Ca,
    dir: &Path,
) -> Result<(SocketAddr, tokio::runtime::Runtime), ApiTlsError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr = listener.local_addr().unwrap();
    let tls = acceptor(args, ca, addr, dir, SystemTime::now())?;
    let app = axum::Router::new().route("/v1/ping", get(|| async { "{\"ok\":true}" }));
    rt.spawn(serve(listener, app, tls, std::future::pending()));
    Ok((addr, rt))
}

#[test]
fn names_in_the_certificate() {
    let sans = |listen: &str, extra: &[&str]| {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        api_names(listen.parse().unwrap(), &extra)
    };
    assert_eq!(
        sans("10.0.0.5:7080", &["control.example", "10.0.0.5", "fd00::1"]).unwrap(),
        ["localhost", "10.0.0.5", "control.example", "fd00::1"]
    );
    assert_eq!(
        sans("0.0.0.0:7080", &[]).unwrap(),
        ["localhost", "127.0.0.1", "::1"]
    );
    for bad in ["", "two words", "bad/name"] {
        assert!(
            matches!(sans("127.0.0.1:1", &[bad]), Err(ApiTlsError::BadSan(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn plaintext_only_on_loopback() {
    let dir = temp_dir("plain");
    let args = ApiTlsArgs {
        api_plaintext: true,
        ..ApiTlsArgs::default()
    };
    let ca = new_ca();
    let now = SystemTime::now();
    let Err(err) = acceptor(&args, &ca, "10.0.0.5:7080".parse().unwrap(), &dir.0, now) else {
        panic!("plain HTTP on 10.0.0.5 was accepted");
    };
    assert!(err.to_string().contains("loopback"), "{err}");
    assert!(
        acceptor(&args, &ca, "127.0.0.1:7080".parse().unwrap(), &dir.0, now)
            .unwrap()
            .is_none()
    );
    assert!(
        acceptor(&args, &ca, "[::1]:7080".parse().unwrap(), &dir.0, now)
            .unwrap()
            .is_none()
    );
}

#[test]
fn meshctl_client_pins_the_api_ca_and_checks_the_name() {
    let dir = temp_dir("pin");
    let ca = new_ca();
    let args = ApiTlsArgs {
        api_san: vec!["control.example".into()],
        ..ApiTlsArgs::default()
    };
    let (addr, _rt) = start(&args, &ca, &dir.0).unwrap();
    let pinned = dir.0.join(datadir::API_CA);
    assert_eq!(std::fs::read_to_string(&pinned).unwrap(), ca.cert_pem());

    let ok = Client::new(&format!("https://{addr}"), "x", Some(&pinned)).unwrap();
    let r = ok.get("/v1/ping").unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"{\"ok\":true}"[..]));
    let by_name = Client::new(
        &format!("https://localhost:{}", addr.port()),
        "x",
        Some(&pinned),
    )
    .unwrap();
    assert_eq!(by_name.get("/v1/ping").unwrap().status, 200);

    // Another CA: untrusted.
    let other = temp_dir("other-ca");
    let other_ca = other.0.join("ca.pem");
    std::fs::write(&other_ca, new_ca().cert_pem()).unwrap();
    let c = Client::new(&format!("https://{addr}"), "x", Some(&other_ca)).unwrap();
    let err = c.get("/v1/ping").unwrap_err();
    assert!(matches!(err, ClientError::Untrusted { .. }), "{err}");
    assert!(err.to_string().contains("untrusted certificate"), "{err}");

    // Plain HTTP at a TLS API: no HTTP answer.
    let plain = Client::new(&format!("http://{addr}"), "x", None).unwrap();
    assert!(plain.get("/v1/ping").is_err());
    // https:// without a CA says so.
    assert!(matches!(
        Client::new(&format!("https://{addr}"), "x", None),
        Err(ClientError::NoCa { .. })
    ));
}

#[test]
fn plaintext_api_and_tls_client() {
    let dir = temp_dir("plain-serve");
    let ca = new_ca();
    let args = ApiTlsArgs {
        api_plaintext: true,
        ..ApiTlsArgs::default()
    };
    let (addr, _rt) = start(&args, &ca, &dir.0).unwrap();
    let plain = Client::new(&format!("http://{addr}"), "x", None).unwrap();
    assert_eq!(plain.get("/v1/ping").unwrap().status, 200);
    std::fs::write(dir.0.join("ca.pem"), ca.cert_pem()).unwrap();
    let tls = Client::new(&format!("https://{addr}"), "x", Some(&dir.0.join("ca.pem"))).unwrap();
    let err = tls.get("/v1/ping").unwrap_err();
    assert!(matches!(err, ClientError::Tls { .. }), "{err}");
}

#[test]
fn operator_certificate_files_are_checked() {
    let dir = temp_dir("operator");
    let ca = new_ca();
    let (chain, key) = ca
        .server_cert_for(vec!["localhost".into()], SystemTime::now())
        .unwrap();
    let cert_pem: String = chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
    let cert_file = dir.0.join("api.crt");
    let key_file = dir.0.join("api.key");
    std::fs::write(&cert_file, cert_pem).unwrap();
    std::fs::write(&key_file, pem("PRIVATE KEY", key.secret_der())).unwrap();
    // A stale api-ca.pem goes: meshctl must not pin it.
    std::fs::write(dir.0.join(datadir::API_CA), "stale").unwrap();
    let args = ApiTlsArgs {
        api_cert: Some(cert_file.clone()),
        api_key: Some(key_file.clone()),
        ..ApiTlsArgs::default()
    };
    let (addr, _rt) = start(&args, &ca, &dir.0).unwrap();
    assert!(!dir.0.join(datadir::API_CA).exists());
    std::fs::write(dir.0.join("ca.pem"), ca.cert_pem()).unwrap();
    let c = Client::new(
        &format!("https://localhost:{}", addr.port()),
        "x",
        Some(&dir.0.join("ca.pem")),
    )
    .unwrap();
    assert_eq!(c.get("/v1/ping").unwrap().status, 200);
    // The certificate names localhost only: 127.0.0.1 is the wrong name.
    let by_ip = Client::new(&format!("https://{addr}"), "x", Some(&dir.0.join("ca.pem"))).unwrap();
    let err = by_ip.get("/v1/ping").unwrap_err();
    let ClientError::WrongName {
        ref name,
        ref presented,
        ..
    } = err
    else {
        panic!("expected a wrong-name error, got {err}");
    };
    assert_eq!(name, "127.0.0.1");
    assert_eq!(presented, "localhost");
    let text = err.to_string();
    assert!(
        text.contains("wrong name") && text.contains("--api-san 127.0.0.1"),
        "{text}"
    );

    // A key that is not the certificate's.
    let (_, other_key) = ca
        .server_cert_for(vec!["localhost".into()], SystemTime::now())
        .unwrap();
    std::fs::write(&key_file, pem("PRIVATE KEY", other_key.secret_der())).unwrap();
    let err = start(&args, &ca, &dir.0).unwrap_err();
    assert!(matches!(err, ApiTlsError::Unusable { .. }), "{err}");
    std::fs::write(&key_file, "not a key").unwrap();
    let err = start(&args, &ca, &dir.0).unwrap_err();
    assert!(err.to_string().contains("api.key"), "{err}");
}

/// PEM text of `der` under `label`.
fn pem(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::new();
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                text.push('=');
            }
        }
    }
    let body: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        body.join("\n")
    )
}

#[test]
fn flags_are_consistent() {
    use clap::Args;
    ApiTlsArgs::augment_args(clap::Command::new("coremesh-control")).debug_assert();
}
