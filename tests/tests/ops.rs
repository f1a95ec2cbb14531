//! What a remote operator and a real network need (issue 18, item 6): the
//! operator API over TLS and how meshctl trusts it, `meshctl bootstrap`,
//! and host names where addresses are configured.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use coremesh_e2e::{Control, ControlBuilder, Origin, ProxyBuilder, TempDir};

const SOON: Duration = Duration::from_secs(10);

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// meshctl with only the arguments given (no --data-dir from the helper).
fn meshctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(coremesh_e2e::control::meshctl_bin())
        .args(args)
        .env_remove("COREMESH_API")
        .env_remove("COREMESH_CREDENTIAL")
        .env_remove("COREMESH_CA")
        .output()
        .expect("run meshctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_remote_operator_pins_control_with_the_credential_and_api_ca_copied_together() {
    let control = ControlBuilder::new()
        .arg("--api-san", "control.example")
        .start();
    let data = control.data_dir();
    assert_eq!(mode(&data.join("api-ca.pem")), 0o600);

    // The operator copies the credential and api-ca.pem into one directory.
    let remote = TempDir::new("remote-operator");
    for f in ["operator.credential", "api-ca.pem"] {
        let text = std::fs::read_to_string(data.join(f)).expect(f);
        remote.write(f, text);
    }
    let cred = remote.path().join("operator.credential");
    let cred = cred.to_str().expect("UTF-8");
    let url = control.api_url();
    let (code, out, err) = meshctl(&["--api", &url, "--credential", cred, "status"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("SERVICE"), "{out}");

    // By name: localhost is always in the certificate.
    let by_name = format!("https://localhost:{}", control.api().port());
    let (code, out, err) = meshctl(&["--api", &by_name, "--credential", cred, "status"]);
    assert_eq!(code, 0, "localhost is in the certificate: {out}{err}");

    // Another CA pinned: untrusted certificate, exit 2.
    let other = Control::start();
    let other_ca = other.data_dir().join("api-ca.pem");
    let other_ca = other_ca.to_str().expect("UTF-8");
    let (code, _, err) = meshctl(&[
        "--api",
        &url,
        "--credential",
        cred,
        "--ca",
        other_ca,
        "status",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("untrusted certificate"), "{err}");

    // No CA anywhere: meshctl says what to pass.
    let bare = TempDir::new("no-ca");
    bare.write(
        "operator.credential",
        std::fs::read_to_string(data.join("operator.credential")).expect("credential"),
    );
    let bare_cred = bare.path().join("operator.credential");
    let (code, _, err) = meshctl(&[
        "--api",
        &url,
        "--credential",
        bare_cred.to_str().expect("UTF-8"),
        "status",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--ca FILE"), "{err}");

    // Plain HTTP at the TLS API does not get an answer.
    let plain = format!("http://{}", control.api());
    let (code, _, err) = meshctl(&["--api", &plain, "--credential", cred, "status"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("https://"), "{err}");
}

#[test]
fn plaintext_api_is_for_loopback_only() {
    let control = ControlBuilder::new().flag("--api-plaintext").start();
    let cred = control.data_dir().join("operator.credential");
    let cred = cred.to_str().expect("UTF-8");
    let plain = format!("http://{}", control.api());
    let (code, out, err) = meshctl(&["--api", &plain, "--credential", cred, "status"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !control.data_dir().join("api-ca.pem").exists(),
        "no CA to pin without TLS"
    );

    let data = TempDir::new("plain-wildcard");
    let out = Command::new(coremesh_e2e::control::control_bin())
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--api",
            "0.0.0.0:0",
            "--api-plaintext",
        ])
        .output()
        .expect("run coremesh-control");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--api-plaintext") && err.contains("loopback"),
        "{err}"
    );
}

#[test]
fn a_bootstrapped_host_joins_and_registers() {
    let control = Control::start();
    control.apply("kind: Service\nname: api\n");
    let app = Origin::start("api-boot");
    let host = TempDir::new("bootstrap-host");
    let out_dir = host.path().join("etc");
    let state = host.path().join("state");
    // Control by name: the proxy resolves it when it connects.
    let quic = format!("localhost:{}", control.quic().port());
    let run = control
        .meshctl(&[
            "bootstrap",
            "api",
            "--node",
            "boot-node-1",
            "--out",
            out_dir.to_str().expect("UTF-8"),
            "--inbound-app",
            &app.addr().to_string(),
            "--inbound-listen",
            "127.0.0.1:0",
            "--outbound-listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--state-dir",
            state.to_str().expect("UTF-8"),
            "--control-address",
            &quic,
        ])
        .ok();
    assert!(run.stdout.contains("proxy.toml"), "{}", run.stdout);
    let config = out_dir.join("proxy.toml");
    let token = out_dir.join("join.token");
    assert_eq!(mode(&config), 0o600);
    assert_eq!(mode(&token), 0o600);
    let text = std::fs::read_to_string(&config).expect("proxy.toml");
    for want in [
        "[control]",
        &format!("address = \"{quic}\""),
        "node = \"boot-node-1\"",
        "[inbound]",
    ] {
        assert!(text.contains(want), "{want:?} missing:\n{text}");
    }
    // A second bootstrap into the same directory overwrites nothing.
    let again = control.meshctl(&[
        "bootstrap",
        "api",
        "--node",
        "boot-node-1",
        "--out",
        out_dir.to_str().expect("UTF-8"),
        "--control-address",
        &quic,
    ]);
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    let tokens = control.meshctl(&["token", "list"]).ok().stdout;
    assert_eq!(tokens.lines().count(), 2, "one token only:\n{tokens}");

    let proxy = ProxyBuilder::new("api")
        .inbound(app.addr())
        .outbound()
        .start_file(host, config);
    control.wait_converged(1, 1, 1, SOON);
    let eps = control.endpoints();
    assert_eq!(eps[0]["service"], "api");
    assert_eq!(eps[0]["node"], "boot-node-1");
    assert_eq!(eps[0]["address"], proxy.inbound().to_string());
    assert!(
        proxy
            .wait_for_log(0, SOON, |l| l.contains("joined control"))
            .is_some(),
        "the proxy joined with the bootstrap token"
    );
}

#[test]
fn a_static_endpoint_given_by_host_name_is_resolved_and_served() {
    let app = Origin::start("api-by-name");
    let by_name = format!("localhost:{}", app.addr().port());
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service_raw("api", std::slice::from_ref(&by_name))
        .start();
    // /config shows the name and the addresses it resolved to (before the
    // proxy accepted: they are there at once).
    let config = proxy.admin_get("/config");
    let j: serde_json::Value = serde_json::from_str(&config.body_str()).expect("/config JSON");
    let api = &j["services"][0];
    assert_eq!(api["names"][0], by_name.as_str(), "{j}");
    let eps: Vec<&str> = api["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(
        eps.contains(&app.addr().to_string().as_str()),
        "localhost resolved to {eps:?}"
    );
    let r = proxy.outbound_client().get("api", "/by-name");
    assert_eq!(r.status, 200, "{:?}", r.body_str());
    assert_eq!(r.header("x-origin"), Some("api-by-name"));
}

#[test]
fn a_reload_adds_a_host_name_endpoint_that_resolves_at_once() {
    let app = Origin::start("api-reload");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service_raw("api", &[])
        .start();
    assert_eq!(proxy.outbound_client().get("api", "/").status, 503);
    let by_name = format!("localhost:{}", app.addr().port());
    let next = ProxyBuilder::new("web")
        .outbound()
        .service_raw("api", std::slice::from_ref(&by_name));
    proxy.write_config(&next.render());
    proxy.signal(libc::SIGHUP);
    // The reload installs the name without addresses (never resolved
    // yet); the resolution right after it adds them.
    let served = coremesh_e2e::util::wait_for(SOON, || {
        let r = proxy.outbound_client().get("api", "/after-reload");
        (r.status == 200).then_some(r)
    })
    .unwrap_or_else(|| panic!("api by name never served:\n{}", proxy.log_text()));
    assert_eq!(served.header("x-origin"), Some("api-reload"));
    assert!(
        proxy
            .wait_for_log(0, SOON, |l| l.contains("[[services]] endpoints changed"))
            .is_some(),
        "{}",
        proxy.log_text()
    );
}
