//! TLS audit (issue 5): testssl.sh (Debian package `testssl.sh`) probes a
//! static-mode inbound listener and must find TLS 1.3 only, with AEAD
//! ciphers and forward secrecy, and nothing weak.
//!
//! ```text
//!  testssl ──TLS probes──▶ api proxy [inbound, mutual TLS] ──▶ origin api
//! ```
//!
//! The listener asks for a client certificate, which testssl does not have;
//! protocol and cipher negotiation happen before that (ServerHello), so
//! every probe still learns what the server offers. testssl makes about a
//! hundred connections, half a minute here; under CI (`CI=true`) a missing
//! testssl fails the test instead of skipping it.

use std::process::Command;

use coremesh_e2e::pki::Pki;
use coremesh_e2e::util::{have_program, under_ci, TempDir};
use coremesh_e2e::{Origin, ProxyBuilder};
use serde_json::Value;

/// testssl's findings by id (`TLS1_2`, `cipher-tls1_3_x1302`, ...).
fn findings(json: &Value) -> Vec<(String, String, String)> {
    json.as_array()
        .expect("testssl's JSON is an array of findings")
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap_or_default().to_string();
            (s("id"), s("severity"), s("finding"))
        })
        .collect()
}

#[test]
fn testssl_finds_tls_1_3_only_and_no_weak_cipher_on_the_inbound_port() {
    let program = ["testssl", "testssl.sh"]
        .into_iter()
        .find(|p| have_program(p));
    let Some(program) = program else {
        assert!(
            !under_ci(),
            "testssl is not installed (Debian package testssl.sh; scripts/test.sh installs it)"
        );
        eprintln!("SKIPPED: testssl is not installed (Debian package testssl.sh)");
        return;
    };

    let dir = TempDir::new("tls-audit");
    let pki = Pki::new("mesh");
    let app = Origin::start("api");
    let files = pki.files(dir.path(), "api", "api");
    let api = ProxyBuilder::new("api")
        .inbound(app.addr())
        .extra(&files.toml())
        .start();

    let json_path = dir.path().join("testssl.json");
    let out = Command::new(program)
        .args(["--quiet", "--color", "0", "--warnings", "off"])
        .args(["--connect-timeout", "10", "--openssl-timeout", "10"])
        .args(["-p", "-E", "-f"])
        .arg("--jsonfile")
        .arg(&json_path)
        .arg(api.inbound().to_string())
        .output()
        .expect("run testssl");
    let text = String::from_utf8_lossy(&out.stdout);
    let json: Value = serde_json::from_slice(
        &std::fs::read(&json_path)
            .unwrap_or_else(|e| panic!("testssl wrote no JSON ({e}); its output:\n{text}")),
    )
    .expect("testssl's JSON");
    let all = findings(&json);
    let find = |id: &str| {
        all.iter()
            .find(|(i, _, _)| i == id)
            .map(|(_, _, f)| f.as_str())
            .unwrap_or_else(|| panic!("testssl reported no {id}; its output:\n{text}"))
    };

    // Protocols: TLS 1.3 offered, everything older refused.
    assert!(
        find("TLS1_3").starts_with("offered"),
        "TLS 1.3: {}\n{text}",
        find("TLS1_3")
    );
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2"] {
        assert!(
            find(old).starts_with("not offered"),
            "{old}: {}\n{text}",
            find(old)
        );
    }

    // Ciphers: each one offered is a TLS 1.3 AEAD suite (no CBC, RC4, 3DES,
    // NULL or export suite can even be named in TLS 1.3, so this also shows
    // nothing older slipped in).
    let ciphers: Vec<&str> = all
        .iter()
        .filter(|(id, _, _)| id.starts_with("cipher-") || id.starts_with("cipher_x"))
        .map(|(_, _, f)| f.as_str())
        .collect();
    assert!(!ciphers.is_empty(), "testssl listed no ciphers:\n{text}");
    for c in &ciphers {
        assert!(
            c.contains("TLS_AES_") || c.contains("TLS_CHACHA20_POLY1305"),
            "a cipher that is not a TLS 1.3 AEAD suite: {c}\n{text}"
        );
    }

    // Forward secrecy is offered, and nothing testssl rates as a problem.
    assert!(
        all.iter()
            .any(|(id, _, f)| (id == "FS" || id == "PFS") && f.starts_with("offered")),
        "no forward secrecy:\n{text}"
    );
    let bad: Vec<_> = all
        .iter()
        .filter(|(_, sev, _)| matches!(sev.as_str(), "MEDIUM" | "HIGH" | "CRITICAL"))
        .collect();
    assert!(bad.is_empty(), "testssl's problems: {bad:?}\n{text}");

    // The probes never reached the app: without a client certificate no
    // request gets past the handshake.
    assert_eq!(app.requests(), 0);
}
