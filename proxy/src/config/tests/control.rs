//! `[control]` and `[control.health]`: values, defaults, and the one-line
//! message for each mistake.

use std::path::Path;
use std::time::Duration;

use super::super::*;

const BASE: &str = "[proxy]\nservice = \"web\"\n[inbound]\napp = \"127.0.0.1:8080\"\n";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse_with_cpus(Path::new("proxy.toml"), text, || Ok(vec![0, 1, 2, 3]))
}

fn control(section: &str) -> Result<ControlConfig, String> {
    parse(&format!("{BASE}{section}"))
        .map(|c| c.control.expect("[control] parsed"))
        .map_err(|e| e.to_string())
}

fn error(section: &str) -> String {
    match control(section) {
        Ok(c) => panic!("accepted:\n{section}\n{c:?}"),
        Err(e) => e,
    }
}

#[test]
fn full_control_section() {
    let c = control(
        r#"
[control]
address = ["127.0.0.1:7443", "[::1]:7443"]
token_file = "/etc/coremesh/web.token"
state_dir = "/var/lib/coremesh-proxy"
node = "vm-7"
advertise = "10.0.0.7:4143"
calls = ["api", "db"]
allow_store_change = true

[control.health]
kind = "http"
path = "/healthz?deep=1"
interval = "2s"
timeout = "500ms"
"#,
    )
    .unwrap();
    assert_eq!(
        c,
        ControlConfig {
            addresses: vec![
                Target::Addr("127.0.0.1:7443".parse().unwrap()),
                Target::Addr("[::1]:7443".parse().unwrap())
            ],
            token_file: Some("/etc/coremesh/web.token".into()),
            state_dir: "/var/lib/coremesh-proxy".into(),
            node: "vm-7".into(),
            advertise: Some("10.0.0.7:4143".parse().unwrap()),
            calls: Some(vec!["api".into(), "db".into()]),
            allow_store_change: true,
            health: HealthConfig {
                kind: HealthKind::Http,
                path: "/healthz?deep=1".into(),
                grpc_service: String::new(),
                interval: Duration::from_secs(2),
                timeout: Duration::from_millis(500),
            },
        }
    );
}

#[test]
fn control_defaults() {
    let c = control("[control]\naddress = \"127.0.0.1:7443\"\nstate_dir = \"st\"\n").unwrap();
    assert_eq!(
        c.addresses,
        vec![Target::Addr("127.0.0.1:7443".parse().unwrap())]
    );
    assert_eq!(c.token_file, None);
    assert_eq!(c.state_dir, Path::new("st"));
    assert!(!c.node.is_empty(), "node defaults to the host name");
    assert_eq!(c.node, Config::hostname());
    assert_eq!(c.advertise, None);
    assert_eq!(c.calls, None);
    assert_eq!(c.health, HealthConfig::default());
    assert_eq!(c.health.kind, HealthKind::Tcp);
    assert_eq!(c.health.path, "/healthz");
    assert_eq!(c.health.interval, Duration::from_secs(5));
    assert_eq!(c.health.timeout, Duration::from_secs(1));
    // Without the section there is no control.
    assert_eq!(parse(BASE).unwrap().control, None);
    // An outbound-only proxy may use control (it only subscribes).
    let c = parse("[proxy]\nservice = \"web\"\n[outbound]\n[control]\naddress = \"127.0.0.1:7443\"\nstate_dir = \"st\"\n").unwrap();
    assert!(c.control.is_some());
}

#[test]
fn control_errors_name_key_and_value() {
    const OK: &str = "state_dir = \"st\"\n";
    assert_eq!(
        error(&format!("[control]\n{OK}")),
        "proxy.toml: [control] address: is required"
    );
    assert_eq!(
        error("[control]\naddress = \"127.0.0.1:7443\"\n"),
        "proxy.toml: [control] state_dir: is required"
    );
    assert_eq!(
        error(&format!("[control]\naddress = \"control\"\n{OK}")),
        r#"proxy.toml: [control] address: "control" is not an address (IP:port, [IPv6]:port or host:port)"#
    );
    assert_eq!(
        error(&format!("[control]\naddress = 7443\n{OK}")),
        r#"proxy.toml: [control] address: 7443 must be an address string ("127.0.0.1:7443") or a list of them"#
    );
    assert_eq!(
        error(&format!("[control]\naddress = [\"127.0.0.1:1\", 2]\n{OK}")),
        r#"proxy.toml: [control] address: 2 must be an address string ("127.0.0.1:7443") or a list of them"#
    );
    assert_eq!(
        error(&format!("[control]\naddress = []\n{OK}")),
        "proxy.toml: [control] address: is an empty list; name at least one address"
    );
    assert_eq!(
        error(&format!(
            "[control]\naddress = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n{OK}"
        )),
        r#"proxy.toml: [control] address: "127.0.0.1:1" is listed twice"#
    );
    assert_eq!(
        error(&format!("[control]\naddress = \"127.0.0.1:0\"\n{OK}")),
        r#"proxy.toml: [control] address: "127.0.0.1:0" has port 0, which cannot be connected to"#
    );
    let a = "[control]\naddress = \"127.0.0.1:7443\"\n";
    assert_eq!(
        error(&format!("{a}{OK}advertise = \"0.0.0.0:4143\"\n")),
        r#"proxy.toml: [control] advertise: "0.0.0.0:4143" is a wildcard address, which peers cannot connect to"#
    );
    assert_eq!(
        error(&format!("{a}{OK}calls = [\"API\"]\n"))
            .split(" (")
            .next(),
        Some(r#"proxy.toml: [control] calls: "API" is not a valid name"#)
    );
    assert_eq!(
        error(&format!("{a}{OK}calls = [\"api\", \"api\"]\n")),
        r#"proxy.toml: [control] calls: "api" is listed twice"#
    );
    assert_eq!(
        error(&format!("{a}state_dir = \"\"\n")),
        "proxy.toml: [control] state_dir: is empty"
    );
    assert_eq!(
        error(&format!("{a}{OK}node = \"a b\"\n")),
        r#"proxy.toml: [control] node: "a b" is not a node name (1 to 253 characters, no spaces)"#
    );
    // Unknown keys, in both tables, are syntax errors with their position.
    let e = error(&format!("{a}{OK}tokenfile = \"x\"\n"));
    assert!(
        e.starts_with("proxy.toml:8:1: [control] tokenfile: unknown field `tokenfile`"),
        "{e}"
    );
    let e = error(&format!("{a}{OK}[control.health]\nintervall = \"1s\"\n"));
    assert!(
        e.starts_with("proxy.toml:9:1: [control.health] intervall: unknown field `intervall`"),
        "{e}"
    );
    // Sections that only make sense with [inbound].
    let out = "[proxy]\nservice = \"web\"\n[outbound]\n";
    let e = parse(&format!("{out}{a}{OK}advertise = \"10.0.0.1:1\"\n")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "proxy.toml: [control] advertise: needs an [inbound] section: it is the address peers reach [inbound] listen at"
    );
    let e = parse(&format!("{out}{a}{OK}[control.health]\n")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "proxy.toml: [control.health]: needs an [inbound] section: the check connects to [inbound] app"
    );
}

#[test]
fn health_errors_name_key_and_value() {
    let a = "[control]\naddress = \"127.0.0.1:7443\"\nstate_dir = \"st\"\n[control.health]\n";
    assert_eq!(
        error(&format!("{a}kind = \"udp\"\n")),
        r#"proxy.toml: [control.health] kind: "udp" is not a check kind ("tcp", "http" or "grpc")"#
    );
    assert_eq!(
        error(&format!("{a}path = \"/x\"\n")),
        r#"proxy.toml: [control.health] path: "/x" is only used with kind = "http""#
    );
    assert_eq!(
        error(&format!("{a}kind = \"http\"\npath = \"healthz\"\n")),
        r#"proxy.toml: [control.health] path: "healthz" must start with '/' and contain no spaces or control characters"#
    );
    assert_eq!(
        error(&format!("{a}kind = \"http\"\npath = \"/a b\"\n")),
        r#"proxy.toml: [control.health] path: "/a b" must start with '/' and contain no spaces or control characters"#
    );
    assert_eq!(
        error(&format!("{a}interval = \"0s\"\n")),
        r#"proxy.toml: [control.health] interval: "0s" must be greater than 0"#
    );
    assert!(error(&format!("{a}timeout = \"1\"\n"))
        .starts_with(r#"proxy.toml: [control.health] timeout: "1" is not a duration"#));
    let c = control(&format!("{a}kind = \"http\"\n")).unwrap();
    assert_eq!(
        (c.health.kind, c.health.path.as_str()),
        (HealthKind::Http, "/healthz")
    );
}

#[test]
fn control_changes_need_a_restart() {
    let with = |extra: &str| {
        parse(&format!(
            "{BASE}[control]\naddress = \"127.0.0.1:7443\"\nstate_dir = \"st\"\nnode = \"n1\"\n{extra}"
        ))
        .unwrap()
    };
    let old = with("");
    old.check_reload(&old).unwrap();
    let e = old.check_reload(&parse(BASE).unwrap()).unwrap_err();
    assert_eq!(e.kind(), ConfigErrorKind::NeedsRestart);
    assert_eq!(
        e.to_string(),
        "proxy.toml: [control]: section was removed; this needs a restart"
    );
    assert_eq!(
        parse(BASE)
            .unwrap()
            .check_reload(&old)
            .unwrap_err()
            .to_string(),
        "proxy.toml: [control]: section was added; this needs a restart"
    );
    let new = parse(&format!(
        "{BASE}[control]\naddress = \"127.0.0.1:7444\"\nstate_dir = \"st\"\nnode = \"n1\"\n"
    ))
    .unwrap();
    assert_eq!(
        old.check_reload(&new).unwrap_err().to_string(),
        "proxy.toml: [control] address: changed from [127.0.0.1:7443] to [127.0.0.1:7444]; this key needs a restart"
    );
    assert_eq!(
        old.check_reload(&with("calls = [\"api\"]\n"))
            .unwrap_err()
            .to_string(),
        r#"proxy.toml: [control] calls: changed from None to Some(["api"]); this key needs a restart"#
    );
    assert_eq!(
        old.check_reload(&with("[control.health]\ninterval = \"7s\"\n"))
            .unwrap_err()
            .to_string(),
        r#"proxy.toml: [control.health] interval: changed from "5s" to "7s"; this key needs a restart"#
    );
}

#[test]
fn control_json_lists_the_effective_values() {
    let c = parse(&format!(
        "{BASE}[control]\naddress = \"127.0.0.1:7443\"\nstate_dir = \"st\"\nnode = \"n1\"\n"
    ))
    .unwrap();
    let j = c.to_json();
    assert_eq!(
        j["control"]["address"],
        serde_json::json!(["127.0.0.1:7443"])
    );
    assert_eq!(j["control"]["state_dir"], "st");
    assert_eq!(j["control"]["node"], "n1");
    assert_eq!(j["control"]["token_file"], serde_json::Value::Null);
    assert_eq!(j["control"]["calls"], serde_json::Value::Null);
    assert_eq!(j["control"]["health"]["kind"], "tcp");
    assert_eq!(j["control"]["health"]["interval"], "5s");
    assert_eq!(
        parse(BASE).unwrap().to_json()["control"],
        serde_json::Value::Null
    );
}

#[test]
fn grpc_health_checks_name_their_service() {
    let a = "[control]\naddress = \"127.0.0.1:7443\"\nstate_dir = \"st\"\n[control.health]\n";
    let c = control(&format!("{a}kind = \"grpc\"\nservice = \"pkg.v1.Echo\"\n")).unwrap();
    let h = &c.health;
    assert_eq!(
        (h.kind, h.grpc_service.as_str()),
        (HealthKind::Grpc, "pkg.v1.Echo")
    );
    assert_eq!(
        error(&format!("{a}kind = \"http\"\nservice = \"pkg.Echo\"\n")),
        r#"proxy.toml: [control.health] service: "pkg.Echo" is only used with kind = "grpc""#
    );
    assert_eq!(
        error(&format!("{a}kind = \"grpc\"\nservice = \"pkg/Echo\"\n")),
        r#"proxy.toml: [control.health] service: "pkg/Echo" is not a gRPC service name (package.Service)"#
    );
}
