use super::*;

fn plan() -> Plan {
    Plan {
        service: "api".into(),
        node: "host-7".into(),
        control_address: "control.example:7443".into(),
        token_file: "/etc/coremesh/join.token".into(),
        state_dir: "/var/lib/coremesh-proxy".into(),
        admin: "127.0.0.1:9901".into(),
        inbound: Some(("0.0.0.0:4143".into(), "127.0.0.1:8080".into())),
        outbound: Some("127.0.0.1:4140".into()),
    }
}

#[test]
fn renders_every_section_asked_for() {
    let text = render(&plan());
    for line in [
        "[proxy]\nservice = \"api\"\nadmin = \"127.0.0.1:9901\"\n",
        "[inbound]\nlisten = \"0.0.0.0:4143\"\napp = \"127.0.0.1:8080\"\n",
        "[outbound]\nlisten = \"127.0.0.1:4140\"\n",
        "[control]\naddress = \"control.example:7443\"\nnode = \"host-7\"\ntoken_file = \"/etc/coremesh/join.token\"\nstate_dir = \"/var/lib/coremesh-proxy\"\n",
    ] {
        assert!(text.contains(line), "{line:?} missing in:\n{text}");
    }
    let bare = render(&Plan {
        inbound: None,
        outbound: None,
        ..plan()
    });
    assert!(
        !bare.contains("[inbound]") && !bare.contains("[outbound]"),
        "{bare}"
    );
}

#[test]
fn strings_are_quoted_for_toml() {
    assert_eq!(q(r#"a"b\c"#), r#""a\"b\\c""#);
    assert_eq!(q("x\ny"), "\"x\\u000Ay\"");
}

#[test]
fn addresses() {
    for ok in [
        "control.example:7443",
        "10.0.0.5:7443",
        "[fd00::1]:7443",
        "localhost:1",
    ] {
        check_address("--control-address", ok).unwrap();
    }
    for bad in [
        "control.example",
        ":7443",
        "host:99999",
        "fd00::1:7443x",
        "a b:1",
        "[zz]:1",
    ] {
        let err = check_address("--control-address", bad).unwrap_err();
        assert!(err.to_string().starts_with("--control-address"), "{err}");
    }
    assert_eq!(
        default_control_address("https://control.example:7080/").as_deref(),
        Some("control.example:7443")
    );
    assert_eq!(
        default_control_address("http://[::1]:7080").as_deref(),
        Some("[::1]:7443")
    );
    assert_eq!(default_control_address("ftp://x"), None);
}

#[test]
fn files_are_new_and_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!(
        "coremesh-bootstrap-{}-{}",
        std::process::id(),
        crate::unix_millis(std::time::SystemTime::now())
    ));
    let out = prepare_dir(&dir.join("new")).unwrap();
    assert!(out.is_absolute());
    let (config, token) = targets(&out).unwrap();
    write_new(&token, "secret\n").unwrap();
    let mode = std::fs::metadata(&token).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(matches!(targets(&out), Err(BootstrapError::Exists(p)) if p == token));
    assert!(matches!(
        write_new(&token, "x"),
        Err(BootstrapError::Exists(_))
    ));
    write_new(&config, "x").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
