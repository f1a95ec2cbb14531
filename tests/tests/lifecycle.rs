//! Process lifecycle: start-up errors, `--check`, SIGHUP reloads, SIGTERM
//! drain, the admin endpoints and log formats.

use std::time::{Duration, Instant};

use coremesh_e2e::proxy::check_config_text;
use coremesh_e2e::util::wait_for;
use coremesh_e2e::{Client, Origin, ProxyBuilder};

#[test]
fn sigterm_drains_an_in_flight_request_then_exits_0() {
    let api = Origin::start("api");
    let mut proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .start();
    let addr = proxy.outbound();
    let client = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.get("api", "/delay/1500")
    });
    // Wait until the request is at the origin, then ask the proxy to stop.
    let seen = wait_for(Duration::from_secs(10), || {
        (api.bytes_received() > 0).then_some(())
    });
    assert!(seen.is_some(), "the slow request never reached the origin");
    proxy.signal(libc::SIGTERM);

    let r = client.join().expect("client thread");
    assert_eq!(
        r.status, 200,
        "the in-flight request completes during the drain"
    );
    assert_eq!(r.json()["target"], "/delay/1500");
    let status = proxy
        .wait_exit(Duration::from_secs(12))
        .expect("the proxy should exit after draining");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
}

#[test]
fn sigint_on_an_idle_proxy_exits_0_promptly() {
    let mut proxy = ProxyBuilder::new("web").outbound().start();
    proxy.signal(libc::SIGINT);
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("exit after SIGINT");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn second_proxy_on_the_same_address_fails_with_address_in_use() {
    let api = Origin::start("api");
    let first = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .start();
    let taken = first.outbound().to_string();

    let (status, output) = ProxyBuilder::new("web")
        .outbound_at(&taken)
        .service("api", &[api.addr()])
        .start_expecting_exit(Duration::from_secs(15));
    assert!(
        !status.success(),
        "the second proxy must not start: {status}\n{output}"
    );
    assert!(
        output.to_ascii_lowercase().contains("address in use"),
        "the error should say `address in use`:\n{output}"
    );

    // The port was not silently shared: the first proxy serves every request.
    for _ in 0..5 {
        assert_eq!(first.outbound_client().get("api", "/mine").status, 200);
    }
    assert_eq!(api.requests(), 5);
}

#[test]
fn admin_port_in_use_is_a_start_error_too() {
    let first = ProxyBuilder::new("web").outbound().start();
    let taken = first.admin().to_string();
    let (status, output) = ProxyBuilder::new("web")
        .outbound()
        .admin_at(&taken)
        .start_expecting_exit(Duration::from_secs(15));
    assert!(!status.success(), "{output}");
    assert!(
        output.to_ascii_lowercase().contains("address in use"),
        "{output}"
    );
}

#[test]
fn check_catches_missing_tls_files_and_warns_of_a_missing_token() {
    let dir = std::env::temp_dir().join(format!("coremesh-check-{}", std::process::id()));
    let missing = dir.join("missing");
    let base = ProxyBuilder::new("web")
        .outbound()
        .service_raw("api", &["127.0.0.1:9000".into()])
        .render();
    // [tls] files that are not there: an error naming the file, exit 1.
    let tls = format!(
        "{base}\n[tls]\ncert = \"{m}/proxy.crt\"\nkey = \"{m}/proxy.key\"\nca = \"{m}/ca.crt\"\n",
        m = missing.display()
    );
    let (status, output) = check_config_text(&tls);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        output.contains("[tls]") && output.contains("proxy.crt"),
        "names the section and the file:\n{output}"
    );
    // A token file that is not there: the proxy would start and retry, so
    // --check passes, with a warning that says what and where.
    let token = base.replacen("[outbound]", &format!(
        "[control]\naddress = \"127.0.0.1:7443\"\ntoken_file = \"{m}/web.token\"\nstate_dir = \"{m}/state\"\n\n[outbound]",
        m = missing.display()
    ), 1);
    let (status, output) = check_config_text(&token);
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(
        output.contains("warning") && output.contains("token_file") && output.contains("web.token"),
        "warns about the token file:\n{output}"
    );
}

#[test]
fn check_accepts_a_good_file_and_names_the_key_in_a_bad_one() {
    let good = ProxyBuilder::new("web")
        .outbound()
        .service_raw("api", &["127.0.0.1:9000".into()])
        .timeout("connect", "1s")
        .limit("max_headers", 50)
        .render();
    let (status, output) = check_config_text(&good);
    assert_eq!(
        status.code(),
        Some(0),
        "--check on a good file:\n{good}\n{output}"
    );

    let cases = [("cores = \"two\"", "cores"), ("colour = \"red\"", "colour")];
    for (line, key) in cases {
        let bad = good.replacen("[proxy]\n", &format!("[proxy]\n{line}\n"), 1);
        let (status, output) = check_config_text(&bad);
        assert_eq!(
            status.code(),
            Some(1),
            "--check on a bad file ({line}):\n{output}"
        );
        assert!(
            output.contains(key),
            "the error should name `{key}`:\n{output}"
        );
        assert!(
            output.contains("proxy.toml"),
            "the error should name the file:\n{output}"
        );
    }

    let bad_listen = good.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:99999\"");
    let (status, output) = check_config_text(&bad_listen);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        output.contains("listen"),
        "the error should name `listen`:\n{output}"
    );

    let unknown_section = format!("{good}\n[tracing]\nenabled = true\n");
    let (status, output) = check_config_text(&unknown_section);
    assert_eq!(
        status.code(),
        Some(1),
        "an unknown table is rejected:\n{output}"
    );
    assert!(output.contains("tracing"), "{output}");

    let no_service = good.replace("service = \"web\"\n", "");
    let (status, output) = check_config_text(&no_service);
    assert_eq!(status.code(), Some(1), "`service` is required:\n{output}");
    assert!(output.contains("service"), "{output}");
}

#[test]
fn sighup_with_a_broken_file_keeps_the_old_config() {
    let api = Origin::start("api");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .start();
    let mut kept = proxy.outbound_client();
    assert_eq!(kept.get("api", "/before").status, 200);

    let lines_before = proxy.log_lines().len();
    let broken = proxy
        .builder()
        .render()
        .replacen("[proxy]\n", "[proxy]\nbogus_key = 1\n", 1);
    proxy.write_config(&broken);
    proxy.signal(libc::SIGHUP);

    let logged = proxy.wait_for_log(lines_before, Duration::from_secs(10), |l| {
        l.contains("bogus_key") && l.contains("proxy.toml")
    });
    assert!(
        logged.is_some(),
        "a rejected reload should log the file name and the reason (bogus_key); log after SIGHUP:\n{}",
        proxy.log_lines()[lines_before..].join("\n")
    );

    // Still routing with the old configuration, old and new connections alike.
    assert_eq!(kept.get("api", "/after-old-conn").status, 200);
    assert_eq!(
        proxy.outbound_client().get("api", "/after-new-conn").status,
        200
    );
    // And a later good reload still works.
    proxy.write_config(&proxy.builder().render());
    proxy.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(proxy.outbound_client().get("api", "/after-fix").status, 200);
}

#[test]
fn sighup_with_a_good_file_adds_a_service_without_dropping_connections() {
    let api = Origin::start("api");
    let billing = Origin::start("billing");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .start();

    let mut kept = proxy.outbound_client();
    assert_eq!(kept.get("api", "/before").status, 200);
    assert_eq!(
        kept.get("billing", "/before").status,
        404,
        "billing is not known yet"
    );

    let updated = proxy
        .builder()
        .clone()
        .service("billing", &[billing.addr()])
        .render();
    proxy.write_config(&updated);
    proxy.signal(libc::SIGHUP);

    let routable = wait_for(Duration::from_secs(10), || {
        let r = proxy.outbound_client().get("billing", "/new");
        (r.status == 200).then_some(r)
    });
    let r = routable.unwrap_or_else(|| {
        panic!(
            "billing never became routable after SIGHUP; log:\n{}",
            proxy.log_tail(30)
        )
    });
    assert_eq!(r.header("x-origin"), Some("billing"));

    // The connection opened before the reload is still open and routes with
    // the new configuration.
    let r = kept.get("api", "/after");
    assert_eq!(r.status, 200, "keep-alive connection after reload");
    let r = kept.get("billing", "/after");
    assert_eq!(
        r.status, 200,
        "new service on a connection opened before the reload"
    );
    assert_eq!(r.header("x-origin"), Some("billing"));
}

#[test]
fn admin_ready_live_and_config() {
    let api = Origin::start("api");
    let app = Origin::start("app");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .inbound(app.addr())
        .service("api", &[api.addr()])
        .start();

    let ready = wait_for(Duration::from_secs(10), || {
        (proxy.admin_get("/ready").status == 200).then_some(())
    });
    assert!(ready.is_some(), "/ready never answered 200");
    assert_eq!(proxy.admin_get("/live").status, 200);

    let r = proxy.admin_get("/config");
    assert_eq!(r.status, 200);
    let cfg = r.json();
    let bound = &cfg["bound"];
    assert_eq!(
        bound["outbound"],
        proxy.outbound().to_string(),
        "/config: {cfg}"
    );
    assert_eq!(
        bound["inbound"],
        proxy.inbound().to_string(),
        "/config: {cfg}"
    );
    assert_eq!(bound["admin"], proxy.admin().to_string(), "/config: {cfg}");
    let text = cfg.to_string();
    assert!(
        text.contains("\"web\""),
        "the effective config names the service: {text}"
    );
    assert!(
        text.contains(&api.addr().to_string()),
        "and the endpoints: {text}"
    );

    assert_eq!(proxy.admin_get("/no-such-page").status, 404);
}

#[test]
fn json_log_format_prints_json_lines() {
    let api = Origin::start("api");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .log_json()
        .start();
    assert_eq!(proxy.outbound_client().get("api", "/").status, 200);
    let lines = proxy.log_lines();
    assert!(!lines.is_empty());
    for line in lines.iter().filter(|l| !l.trim().is_empty()) {
        let v: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(
            v.is_ok_and(|v| v.is_object()),
            "not a JSON object log line: {line:?}"
        );
    }
}

#[test]
fn starts_quickly() {
    let t = Instant::now();
    let _proxy = ProxyBuilder::new("web").outbound().cores(2).start();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "start-up took {:?}",
        t.elapsed()
    );
}

#[test]
fn check_warns_of_a_loopback_registration_with_a_control_on_another_host() {
    let dir = std::env::temp_dir().join(format!("coremesh-check-{}", std::process::id()));
    let state = dir.join("state");
    let config = |advertise: &str| {
        format!(
            "[proxy]\nservice = \"api\"\nadmin = \"127.0.0.1:0\"\n\n[inbound]\nlisten = \"127.0.0.1:0\"\napp = \"127.0.0.1:9000\"\n\n[control]\naddress = \"10.20.30.40:4443\"\nstate_dir = {state:?}\nnode = \"n1\"\n{advertise}"
        )
    };
    // Valid, so --check passes, but it says what will go wrong.
    let (status, output) = check_config_text(&config(""));
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(
        output.contains("warning:")
            && output.contains("a loopback address")
            && output.contains("10.20.30.40:4443")
            && output.contains("[control] advertise"),
        "{output}"
    );
    // With an address other hosts reach, nothing to say.
    let (status, output) = check_config_text(&config("advertise = \"10.20.30.41:4143\"\n"));
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(!output.contains("warning:"), "{output}");
}

#[test]
fn check_refuses_a_missing_tls_file_and_warns_of_a_missing_token_file() {
    let missing = std::env::temp_dir().join(format!("coremesh-none-{}", std::process::id()));
    let tls = format!(
        "[proxy]\nservice = \"api\"\nadmin = \"127.0.0.1:0\"\n\n[inbound]\nlisten = \"127.0.0.1:0\"\napp = \"127.0.0.1:9000\"\n\n[tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"\nca = \"{0}/ca.pem\"\n",
        missing.display()
    );
    let (status, output) = check_config_text(&tls);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        output.contains("[tls]") && output.contains(&format!("{}/cert.pem", missing.display())),
        "{output}"
    );
    let token = format!(
        "[proxy]\nservice = \"api\"\nadmin = \"127.0.0.1:0\"\n\n[inbound]\nlisten = \"127.0.0.1:0\"\napp = \"127.0.0.1:9000\"\n\n[control]\naddress = \"127.0.0.1:4443\"\nstate_dir = \"{0}/state\"\ntoken_file = \"{0}/token\"\nnode = \"n1\"\n",
        missing.display()
    );
    // A token the proxy cannot read does not stop it (it retries the
    // join), so it is a warning.
    let (status, output) = check_config_text(&token);
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(
        output.contains("warning:")
            && output.contains("token_file")
            && output.contains(&format!("{}/token", missing.display())),
        "{output}"
    );
}
