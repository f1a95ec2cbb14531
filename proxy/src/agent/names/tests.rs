use super::*;

fn localhost(port: u16) -> HostPort {
    HostPort {
        host: "localhost".into(),
        port,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn localhost_resolves_to_loopback() {
    let addrs = rt().block_on(lookup(&localhost(9000))).unwrap();
    assert!(!addrs.is_empty());
    assert!(
        addrs
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 9000),
        "{addrs:?}"
    );
}

#[test]
fn a_failed_resolution_keeps_the_last_good_addresses() {
    let rt = rt();
    let names = Names::default();
    let good = rt.block_on(names.resolve("test", &localhost(9000)));
    assert!(!good.is_empty());
    // Pretend the same name now fails: a name under .invalid never
    // resolves (RFC 6761), so seed its cache and resolve it.
    let gone = HostPort {
        host: "gone.invalid".into(),
        port: 9000,
    };
    names.last.borrow_mut().insert(gone.clone(), good.clone());
    assert_eq!(rt.block_on(names.resolve("test", &gone)), good);
    let never = HostPort {
        host: "never.invalid".into(),
        port: 1,
    };
    assert!(rt.block_on(names.resolve("test", &never)).is_empty());
}

#[test]
fn services_get_their_names_addresses() {
    let text = r#"
[proxy]
service = "web"
[outbound]
listen = "127.0.0.1:0"
[[services]]
name = "api"
endpoints = ["10.0.0.5:80", "localhost:9000"]
"#;
    let dir = std::env::temp_dir().join(format!("coremesh-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let cfg = Config::load(&path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(has_names(&cfg));
    assert_eq!(cfg.services[0].endpoints, ["10.0.0.5:80".parse().unwrap()]);
    let names = Names::default();
    assert_eq!(names.with_cached(&cfg).services[0].endpoints.len(), 1);
    let resolved = rt().block_on(names.resolved(&cfg));
    let eps = &resolved.services[0].endpoints;
    assert_eq!(eps[0], "10.0.0.5:80".parse().unwrap());
    assert!(
        eps.len() >= 2 && eps[1..].iter().all(|a| a.ip().is_loopback()),
        "{eps:?}"
    );
    // A reload installs the cached addresses at once.
    assert_eq!(names.with_cached(&cfg).services[0].endpoints, *eps);
}
